//! The state every handler shares.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::agents::auth::VerifiedTokens;
use crate::agents::ingest::Ingest;
use crate::agents::lookups::{ClusterLookups, DesiredLookups, RevisionLookups};
use crate::alerts::outbox::Sender;
use crate::alerts::receivers_service::Receivers;
use crate::alerts::rules_service::Rules;
use crate::auth::Authenticator;
use crate::availability::DatabaseHealth;
use crate::clusters::service::Clusters;
use crate::config::ServeConfig;
use crate::dashboards::feed::Feed;
use crate::dashboards::write_log::WriteLog;
use crate::extensions::service::Extensions;
use crate::fleet::assignments::pace::Pace;
use crate::fleet::assignments::service::Assignments;
use crate::fleet::groups_service::Groups;
use crate::fleet::receivers::limits::HookLimits;
use crate::fleet::receivers::service::GitReceivers;
use crate::flux::service::Configurations;
use crate::lifecycle::ExpiryMessages;
use crate::lifecycle::Lifetimes;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::Store;
use crate::tls::Certificates;
use crate::turns::Turns;
use crate::vault::Vault;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServeConfig>,
    pub store: Arc<dyn Store>,
    pub auth: Arc<Authenticator>,
    /// What configurations the control plane fails itself say.
    pub messages: Arc<ExpiryMessages>,
    pub metrics: Arc<Metrics>,
    pub notifier: Arc<Notifier>,
    pub agent_tokens: Arc<VerifiedTokens>,
    /// Where agents' requests look their cluster up, together with the others waiting (`agents::lookups`).
    pub agent_clusters: ClusterLookups,
    /// Where agents' polls read their cluster's revision, together with the others waiting (`agents::lookups`).
    pub agent_revisions: RevisionLookups,
    /// Where woken agents' polls read their cluster's desired state, together with the others woken
    /// (`agents::lookups`).
    pub agent_desired: DesiredLookups,
    /// The live status changes this replica streams.
    pub feed: Arc<Feed>,
    /// Where accepted writes are recorded in the history.
    pub writes: WriteLog,
    /// Seals the server's own credentials at rest; `None` when no `--secrets-key-file` exists (a shared
    /// PostgreSQL without one): what needs it is refused with a clear error.
    pub vault: Option<Arc<Vault>>,
    /// Posts alert messages (the outbox's senders and the receivers' test action share it).
    pub alert_sender: Arc<Sender>,
    /// Wakes the task that moves rollouts on (`fleet::assignments::pace`).
    pub rollouts: Arc<Pace>,
    /// Where agents' status reports are applied, together with the others waiting (`agents::ingest`).
    pub reports: Ingest,
    /// The rate limits of the Git receivers' webhook on this replica.
    pub hooks: Arc<HookLimits>,
    /// Writers of one resource take turns.
    pub turns: Arc<Turns>,
    /// How long what writes create lives unless acted upon.
    pub lifetimes: Lifetimes,
    /// Whether the database was last seen reachable.
    pub database: Arc<DatabaseHealth>,
    /// The certificate connections are served with over TLS, or none for plain HTTP.
    pub tls: Option<Arc<Certificates>>,
    /// Ends the background tasks (following the store's changes, sweeping, folding rollups, tailing the history,
    /// appending to the write history, applying status reports, watching an unreachable database, delivering
    /// alerts, reloading the TLS certificate) when the last clone of the state goes.
    pub(crate) _tasks: Arc<[TaskGuard]>,
}

impl FromRef<AppState> for Clusters {
    fn from_ref(state: &AppState) -> Self {
        Clusters::new(
            state.store.clone(),
            state.turns.clone(),
            state.lifetimes,
            state.messages.clone(),
        )
    }
}

impl FromRef<AppState> for Configurations {
    fn from_ref(state: &AppState) -> Self {
        Configurations::new(
            state.store.clone(),
            state.turns.clone(),
            state.lifetimes,
            state.config.offline_after,
        )
    }
}

impl FromRef<AppState> for Extensions {
    fn from_ref(state: &AppState) -> Self {
        Extensions::new(state.store.clone(), state.turns.clone(), state.lifetimes)
    }
}

impl FromRef<AppState> for Groups {
    fn from_ref(state: &AppState) -> Self {
        Groups::new(state.store.clone(), state.turns.clone(), state.lifetimes)
    }
}

impl FromRef<AppState> for Assignments {
    fn from_ref(state: &AppState) -> Self {
        Assignments::new(
            state.store.clone(),
            state.turns.clone(),
            state.lifetimes,
            state.metrics.clone(),
            state.rollouts.clone(),
        )
    }
}

impl FromRef<AppState> for GitReceivers {
    fn from_ref(state: &AppState) -> Self {
        GitReceivers::new(state.store.clone(), state.turns.clone(), state.vault.clone())
    }
}

impl FromRef<AppState> for Receivers {
    fn from_ref(state: &AppState) -> Self {
        Receivers::new(
            state.store.clone(),
            state.turns.clone(),
            state.vault.clone(),
            state.alert_sender.clone(),
            state.metrics.clone(),
        )
    }
}

impl FromRef<AppState> for Rules {
    fn from_ref(state: &AppState) -> Self {
        Rules::new(state.store.clone(), state.turns.clone())
    }
}

impl FromRef<AppState> for Arc<ServeConfig> {
    fn from_ref(state: &AppState) -> Self {
        state.config.clone()
    }
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AppState> for Arc<dyn Store> {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}

impl FromRef<AppState> for Arc<VerifiedTokens> {
    fn from_ref(state: &AppState) -> Self {
        state.agent_tokens.clone()
    }
}

impl FromRef<AppState> for WriteLog {
    fn from_ref(state: &AppState) -> Self {
        state.writes.clone()
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(pub(crate) tokio::task::AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
