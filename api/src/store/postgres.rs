//! The PostgreSQL store: the production backend, safe for several `serve` replicas sharing one database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use crate::notify::Notifier;

use super::StoreResult;
use super::alerts::{alerts_store, delivery_columns, receiver_columns, rule_columns};
use super::dashboards::{
    clusters_counted, current_clusters, current_instances, dashboards_store, in_scope, pending_clusters,
    status_columns, write_columns,
};
use super::receivers::git_receiver_columns;
use super::sql::{
    bind_configuration, cluster_columns, cluster_group_columns, configuration_columns, extension_columns,
    policy_assignment_columns, sql_store,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel notified with a cluster's key when its desired state changes: by the configurations' trigger
/// (migration 0013), or by `announce` after the commit of a configuration write (migration 0014).
const DESIRED_STATE_CHANNEL: &str = "fluxplane_desired";

pub struct PgStore {
    pool: PgPool,
    /// When the pending delta tables are to be vacuumed next (see `compact_rollups`).
    vacuums: std::sync::Mutex<Vacuums>,
    /// The keys of clusters whose desired state a committed configuration write changed, for `announce`.
    announcements: mpsc::UnboundedSender<String>,
}

/// How long a pooled connection may sit idle before it is pinged when lent (see `PgStore::connect`).
pub(super) const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How often at most the pending delta tables are vacuumed after deltas moved out of them.
const VACUUM_EVERY: Duration = Duration::from_secs(10);

/// When the pending tables are vacuumed: at most every [`VACUUM_EVERY`], and only after rows moved out of them, but
/// then surely. Rows moved less than that after the last vacuum wait for the next compaction past it, even one that
/// moves nothing: otherwise the last fold of a burst (a fleet write's 100,000 rows) left its dead rows for every
/// summary to read past (45 ms a summary at 100,000 clusters) until autovacuum came round.
#[derive(Debug)]
struct Vacuums {
    last: std::time::Instant,
    owed: bool,
}

impl Vacuums {
    fn new(now: std::time::Instant) -> Self {
        Self { last: now, owed: false }
    }

    /// Whether to vacuum now, after a compaction that moved rows (`moved`) or not.
    fn due(&mut self, moved: bool, now: std::time::Instant) -> bool {
        self.owed |= moved;
        let due = self.owed && now.duration_since(self.last) >= VACUUM_EVERY;
        if due {
            *self = Self::new(now);
        }
        due
    }
}

impl PgStore {
    /// A set of ids as a statement's `in_ids` binds it: an array.
    fn id_set(ids: &[i64]) -> &[i64] {
        ids
    }

    pub async fn connect(url: &str) -> StoreResult<Self> {
        // No JIT compilation: it pays off for long analytical queries, not for the control plane's short ones.
        // A plan costed high (the fleet summary's, on statistics a registration burst left behind) was compiled
        // at every execution: 4-25 ms for a statement that reads nothing.
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            // A fleet-wide rollout queues 10,000 agents' fetches for seconds by design; at sqlx's default of 2 s,
            // it logged a warning per agent. Half the timeout: a wait worth a warning is one nearing failure.
            .acquire_slow_threshold(Duration::from_secs(5))
            // sqlx pings every connection before lending it: one more round trip per statement, 5-10% of a PUT's
            // or a poll's rate (docs/benchmarks/latest.md). Only a connection idle long enough for PostgreSQL or
            // a proxy to have dropped it is pinged; a broken busy one fails its statement, which is retried or
            // answered 503 like any lost connection.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let (announcements, pending) = mpsc::unbounded_channel();
        tokio::spawn(announce(pool.clone(), pending));
        Ok(Self {
            pool,
            vacuums: std::sync::Mutex::new(Vacuums::new(std::time::Instant::now())),
            announcements,
        })
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    /// The pool writing transactions draw from: the one pool, as PostgreSQL runs writers side by side.
    fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Commits a writing transaction. Its wake-ups need nothing more: the triggers notify every replica of the
    /// clusters whose desired state it changed, or leave it to `written` (migrations 0013 and 0014).
    async fn commit(&self, tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), sqlx::Error> {
        tx.commit().await
    }

    /// Requests to re-check sources at once moved the revisions of these clusters: no trigger notified them (no
    /// generation moved), so `announce` does, as for a configuration write.
    fn revised(&self, keys: Vec<String>) {
        for key in keys {
            let _ = self.announcements.send(key);
        }
    }

    /// A configuration write committed on the cluster `key`: its notification is left to `announce`.
    fn written(&self, key: String) -> crate::model::Write {
        // the receiver lives as long as the store
        let _ = self.announcements.send(key);
        crate::model::Write::Written
    }
}

/// Sends the notifications that configuration writes leave to after their commit (migration 0014), all those
/// waiting in one statement, until the store is dropped. The statement commits nothing, so it holds PostgreSQL's
/// notification lock only briefly, where a notifying write holds it through its commit's flush to disk.
async fn announce(pool: PgPool, mut pending: mpsc::UnboundedReceiver<String>) {
    let mut keys = Vec::new();
    while pending.recv_many(&mut keys, 1024).await > 0 {
        keys.sort_unstable();
        keys.dedup();
        let sent = sqlx::query("SELECT pg_notify($1, key) FROM unnest($2::TEXT[]) AS key")
            .bind(DESIRED_STATE_CHANNEL)
            .bind(&keys)
            .execute(&pool)
            .await;
        if let Err(err) = sent {
            // the write is committed: other replicas' agents receive it at their next poll instead
            tracing::warn!(error = %err, clusters = keys.len(), "notifying other replicas of configuration writes failed");
        }
        keys.clear();
    }
}

/// The fleet lock taken shared, by a write that decides for one cluster only (`lock_fleet_for_cluster`): such writes
/// run side by side, and wait for the fleet writes that take it whole (`fleet_lock` below), as those wait for them.
pub(super) const CLUSTER_FLEET_LOCK: &str = "SELECT pg_advisory_xact_lock_shared(hashtext('fluxplane-fleet:' || $1))";

// Fleet writes of one subscription take a transaction-scoped advisory lock, so that two of them never decide on
// what the other is changing (READ COMMITTED alone would let each miss the other's write). In the same statement
// they raise their own `work_mem`: an assignment's rollup sorts and joins five counts per cluster, which spilled to
// disk at the default 4 MB for 10,000 clusters (migration 0022).
sql_store!(
    PgStore,
    sqlx::Postgres,
    fleet_lock = "SELECT pg_advisory_xact_lock(hashtext('fluxplane-fleet:' || $1)), \
                  set_config('work_mem', '64MB', TRUE)",
    cluster_lock = CLUSTER_FLEET_LOCK,
    row_lock = " FOR NO KEY UPDATE",
    write_begin = None,
    history_now = "now()",
    in_ids = "= ANY($1)",
    {
        async fn clusters_by_key(&self, keys: &[String]) -> StoreResult<Vec<crate::model::ClusterRecord>> {
            let sql = concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE key = ANY($1)");
            Ok(sqlx::query_as::<sqlx::Postgres, crate::model::ClusterRecord>(sql)
                .bind(keys)
                .fetch_all(&self.pool)
                .await?)
        }

        // A configuration write is one statement: the row, its sealed secrets and its operation in data-modifying
        // CTEs, which PostgreSQL runs as one atomic command on one snapshot (so the operation inserted is not among
        // those it supersedes). Against a transaction of a statement per table, that is one round trip instead of
        // five. The statement also tells the trigger to leave the notification of the cluster's new revision to
        // `announce`, after the commit (migration 0014): its key is what the statement answers.
        async fn insert_configuration(
            &self,
            c: &crate::model::ConfigurationRecord,
            secrets: &crate::model::SecretsWrite,
            op: &crate::model::OperationRecord,
        ) -> StoreResult<crate::model::Write> {
            let query = sqlx::query_scalar::<sqlx::Postgres, String>(
                "WITH inserted AS (INSERT INTO flux_configurations (cluster_id, name, spec, secrets_version, generation, \
                 etag, provisioning_state, compliance_state, observed, system_data, secrets_expire_at, \
                 generation_expires_at, failure) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (cluster_id, name) DO NOTHING RETURNING id, cluster_id), \
                 sealed AS (INSERT INTO sealed_secrets (configuration_id, version, change, base_version, recipient, \
                 encapsulated_key, ciphertext) SELECT id, $14, $15, $16, $17, $18, $19 FROM inserted \
                 WHERE $14 IS NOT NULL), \
                 started AS (INSERT INTO operations (id, resource_key, resource_id, kind, generation, status, \
                 start_time, end_time, error, reconcile_by) SELECT $20, $21, $22, $23, $24, $25, $26, $27, $28, $29 \
                 FROM inserted), \
                 flux AS (INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, \
                 provisioning_state, observed, system_data, generation_expires_at) \
                 SELECT cluster_id, 'flux', 'microsoft.flux', $30, 1, $31, 'Creating', $32, $10, $12 FROM inserted \
                 WHERE NOT EXISTS (SELECT 1 FROM extensions WHERE cluster_id = $1 \
                 AND extension_type = 'microsoft.flux') ON CONFLICT DO NOTHING) \
                 SELECT c.key, set_config('fluxplane.notify', 'after-commit', TRUE) \
                 FROM inserted JOIN clusters c ON c.id = inserted.cluster_id",
            )
            .bind(c.cluster_id)
            .bind(&c.name);
            let query = bind_configuration!(query, c);
            // a cluster's first configuration brings the Flux extension (`ensure_flux_extension!` in one statement)
            let inserted = bind_sealed_and_operation(query, SealedParams::of(secrets), op)
                .bind(sqlx::types::Json(
                    crate::extensions::model::ExtensionSpec::flux_default(),
                ))
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(sqlx::types::Json(crate::extensions::model::ExtensionObserved::default()))
                .fetch_optional(&self.pool)
                .await;
            match inserted {
                Err(err) if super::sql::is_foreign_key_violation(&err) => Ok(crate::model::Write::ParentMissing),
                Err(err) => Err(err.into()),
                Ok(None) => Ok(crate::model::Write::Conflict),
                Ok(Some(key)) => Ok(self.written(key)),
            }
        }

        async fn update_configuration(
            &self,
            c: &crate::model::ConfigurationRecord,
            secrets: &crate::model::SecretsWrite,
            expected_etag: &str,
            op: &crate::model::OperationRecord,
        ) -> StoreResult<crate::model::Write> {
            let sealed = SealedParams::of(secrets);
            let query = sqlx::query_scalar::<sqlx::Postgres, String>(
                "WITH updated AS (UPDATE flux_configurations SET spec = $1, secrets_version = $2, generation = $3, \
                 etag = $4, provisioning_state = $5, compliance_state = $6, observed = $7, system_data = $8, \
                 secrets_expire_at = $9, generation_expires_at = $10, failure = $11, managed_generation = NULL, \
                 drifted_at = CASE WHEN managed_by IS NULL THEN NULL ELSE $14 END \
                 WHERE id = $12 AND etag = $13 RETURNING id, cluster_id), \
                 cleared AS (DELETE FROM sealed_secrets WHERE $15 AND configuration_id IN (SELECT id FROM updated)), \
                 sealed AS (INSERT INTO sealed_secrets (configuration_id, version, change, base_version, recipient, \
                 encapsulated_key, ciphertext) SELECT id, $16, $17, $18, $19, $20, $21 FROM updated \
                 WHERE $16 IS NOT NULL), \
                 superseded AS (UPDATE operations SET status = 'Canceled', end_time = $28 \
                 WHERE resource_key = $23 AND status = 'InProgress' AND EXISTS (SELECT FROM updated)), \
                 started AS (INSERT INTO operations (id, resource_key, resource_id, kind, generation, status, \
                 start_time, end_time, error, reconcile_by) SELECT $22, $23, $24, $25, $26, $27, $28, $29, $30, $31 \
                 FROM updated) \
                 SELECT c.key, set_config('fluxplane.notify', 'after-commit', TRUE) \
                 FROM updated JOIN clusters c ON c.id = updated.cluster_id",
            );
            let query = bind_configuration!(query, c)
                .bind(c.id)
                .bind(expected_etag)
                // a write by hand to a configuration an assignment manages is drift: the assignment restores it
                .bind(chrono::Utc::now())
                .bind(sealed.clear);
            let updated = bind_sealed_and_operation(query, sealed, op)
                .fetch_optional(&self.pool)
                .await?;
            Ok(updated.map_or(crate::model::Write::Conflict, |key| self.written(key)))
        }

        /// Nothing PostgreSQL can be asked to overwrite: dead rows stay in their pages until vacuum reuses the
        /// space, and in the write-ahead log until its segments are recycled (docs/SECURITY.md).
        async fn scrub(&self) -> StoreResult<()> {
            Ok(())
        }

        /// Forwards the `fluxplane_desired` notifications (see migration 0002) to this replica's waiting polls, so a
        /// write on any replica wakes agents polling any other. Runs until the task is dropped.
        async fn follow_changes(&self, notifier: Arc<Notifier>) -> StoreResult<()> {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(DESIRED_STATE_CHANNEL).await?;
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => notifier.notify(notification.payload()),
                    // the connection dropped and was re-established: what it missed is unknown
                    Ok(None) => notifier.notify_all(),
                    Err(err) => {
                        tracing::warn!(error = %err, "listening for desired-state changes failed; retrying");
                        notifier.notify_all();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
);

/// Applies the plain reports at `positions` (each naming another configuration) as `apply_one_report` would, in three
/// statements for them all, and fills their outcomes.
async fn apply_statuses(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    reports: &[crate::model::ConfigurationReportWrite],
    positions: &[usize],
    at: chrono::DateTime<chrono::Utc>,
    outcomes: &mut [Option<crate::model::ReportOutcome>],
) -> Result<(), sqlx::Error> {
    use crate::model::{ReportDisposition, ReportOutcome, ReportWrite};
    use fluxplane_agent_protocol::flux::ComplianceState;
    use sqlx::types::Json;

    if positions.is_empty() {
        return Ok(());
    }
    let n = positions.len();
    let (mut at_position, mut clusters, mut names, mut generations) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut provisioning, mut compliance, mut observed) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut keys, mut operation_status, mut operation_error, mut compliant) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &i in positions {
        let report = &reports[i];
        let ReportWrite::Status {
            provisioning_state,
            compliance_state,
            observed: seen,
            operation_status: status,
            operation_error: error,
            ..
        } = &report.write
        else {
            continue;
        };
        at_position.push(i as i64);
        clusters.push(report.cluster_id);
        names.push(report.name.as_str());
        generations.push(report.generation);
        provisioning.push(provisioning_state.as_str());
        compliance.push(compliance_state.as_str());
        observed.push(Json(seen.as_ref()));
        keys.push(report.resource_key.as_str());
        operation_status.push(status.as_str());
        operation_error.push(error.as_ref());
        // an operation that waits for reconciliation succeeds only on a Compliant report; a failure ends it
        compliant.push(*compliance_state == ComplianceState::Compliant);
    }
    let recorded: Vec<i64> = sqlx::query_scalar(
        "UPDATE flux_configurations f SET provisioning_state = r.provisioning_state, \
         compliance_state = r.compliance_state, observed = r.observed, reported_generation = r.generation, \
         generation_expires_at = NULL \
         FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::JSONB[]) \
         AS r(position, cluster_id, name, generation, provisioning_state, compliance_state, observed) \
         WHERE f.cluster_id = r.cluster_id AND f.name = r.name AND f.generation = r.generation \
         AND f.provisioning_state <> 'Deleting' AND f.failure IS NULL \
         RETURNING r.position",
    )
    .bind(&at_position)
    .bind(&clusters)
    .bind(&names)
    .bind(&generations)
    .bind(&provisioning)
    .bind(&compliance)
    .bind(&observed)
    .fetch_all(&mut **tx)
    .await?;
    let recorded: std::collections::HashSet<i64> = recorded.into_iter().collect();
    // the others are stale or unknown: the generation the configuration holds, if it is there, says which
    let missed: Vec<usize> = (0..n).filter(|&k| !recorded.contains(&at_position[k])).collect();
    if !missed.is_empty() {
        let current: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT r.position, f.generation FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[]) \
             AS r(position, cluster_id, name) \
             LEFT JOIN flux_configurations f ON f.cluster_id = r.cluster_id AND f.name = r.name",
        )
        .bind(missed.iter().map(|&k| at_position[k]).collect::<Vec<_>>())
        .bind(missed.iter().map(|&k| clusters[k]).collect::<Vec<_>>())
        .bind(missed.iter().map(|&k| names[k]).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        for (position, generation) in current {
            outcomes[position as usize] = Some(ReportOutcome {
                disposition: crate::lifecycle::unrecorded(generation),
                written_at: None,
            });
        }
    }
    let ended: Vec<usize> = (0..n).filter(|&k| recorded.contains(&at_position[k])).collect();
    if ended.is_empty() {
        return Ok(());
    }
    let written: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "UPDATE operations o SET status = r.status, end_time = $1, error = r.error \
         FROM unnest($2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::JSONB[], $7::BOOLEAN[]) \
         AS r(position, resource_key, generation, status, error, compliant) \
         WHERE o.resource_key = r.resource_key AND o.generation = r.generation AND o.status = 'InProgress' \
         AND (o.reconcile_by IS NULL OR r.compliant OR r.status <> 'Succeeded') \
         RETURNING r.position, o.start_time",
    )
    .bind(at)
    .bind(ended.iter().map(|&k| at_position[k]).collect::<Vec<_>>())
    .bind(ended.iter().map(|&k| keys[k]).collect::<Vec<_>>())
    .bind(ended.iter().map(|&k| generations[k]).collect::<Vec<_>>())
    .bind(ended.iter().map(|&k| operation_status[k]).collect::<Vec<_>>())
    .bind(ended.iter().map(|&k| operation_error[k].map(Json)).collect::<Vec<_>>())
    .bind(ended.iter().map(|&k| compliant[k]).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let mut started: std::collections::HashMap<i64, chrono::DateTime<chrono::Utc>> = std::collections::HashMap::new();
    for (position, start_time) in written {
        started.entry(position).or_insert(start_time);
    }
    for k in ended {
        let position = at_position[k];
        outcomes[position as usize] = Some(ReportOutcome {
            disposition: ReportDisposition::Recorded,
            written_at: started.get(&position).copied(),
        });
    }
    Ok(())
}

/// Records the heartbeats as they would be one after another, in one statement: a cluster heard from twice gets
/// the time once and what its agent said last of each fact (`batch::merged_heartbeats`). Answers each heartbeat's
/// revision, in order.
async fn record_heartbeats(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    heartbeats: &[crate::model::HeartbeatWrite],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    if heartbeats.is_empty() {
        return Ok(Vec::new());
    }
    let merged = super::batch::merged_heartbeats(heartbeats);
    // the rows locked in id order first, as every statement that writes many clusters does (the configurations'
    // trigger, 0013): an UPDATE joined to a list locks in whatever order its plan reads, and a fleet write locking
    // the same clusters in id order would deadlock with it
    let revisions: std::collections::HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "WITH locked AS (SELECT id FROM clusters WHERE id = ANY ($2) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE clusters c SET last_connectivity_time = $1, connectivity_status = 'Connected', \
         agent_version = COALESCE(h.agent_version, c.agent_version), \
         kubernetes_version = COALESCE(h.kubernetes_version, c.kubernetes_version), \
         total_node_count = COALESCE(h.total_node_count, c.total_node_count) \
         FROM unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[]) \
         AS h(id, agent_version, kubernetes_version, total_node_count) \
         JOIN locked l ON l.id = h.id \
         WHERE c.id = h.id RETURNING c.id, c.revision",
    )
    .bind(at)
    .bind(merged.keys().copied().collect::<Vec<_>>())
    .bind(merged.values().map(|i| i.agent_version.clone()).collect::<Vec<_>>())
    .bind(
        merged
            .values()
            .map(|i| i.kubernetes_version.clone())
            .collect::<Vec<_>>(),
    )
    .bind(merged.values().map(|i| i.total_node_count).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    Ok(super::batch::revisions_in_order(heartbeats, &revisions))
}

super::receivers::receivers_store!(
    PgStore,
    sqlx::Postgres,
    row_lock = " FOR NO KEY UPDATE",
    write_begin = None
);

// READ COMMITTED would give each statement its own snapshot. The clusters not connected are listed in a table of
// their own (migration 0013), usually empty; each is looked up by id, and its configurations are read per cluster
// (the LATERAL subqueries, which LIMIT and GROUP BY keep from being flattened into joins): whatever statistics a
// registration burst left behind, the planner cannot turn this into a scan of the fleet.
pub(super) const UNHEARD: &str = "SELECT c.id AS cluster_id, c.connectivity_status, c.last_connectivity_time, f.policy_assignment, \
               f.compliance_state, f.provisioning_state, f.reported, f.count \
               FROM unconnected_clusters u \
               CROSS JOIN LATERAL ( \
                   SELECT id, connectivity_status, last_connectivity_time FROM clusters WHERE id = u.cluster_id \
                   LIMIT 1) c \
               CROSS JOIN LATERAL ( \
                   SELECT COALESCE(managed_by_id, '') AS policy_assignment, compliance_state, provisioning_state, \
                   COALESCE(reported_generation = generation, FALSE) AS reported, COUNT(*) AS count \
                   FROM flux_configurations WHERE cluster_id = c.id GROUP BY 1, 2, 3, 4) f \
               WHERE u.subscription_key = $1 AND ($2 = '' OR u.resource_group_key = $2)";

/// Whether a cluster entered (1) or left (-1) a value as its count moved from `before` to `after`: the fold's rule,
/// held once in the database (`fluxplane_clusters_moved`, migration 0024) and called by the summary's read.
macro_rules! clusters_moved {
    ($before:literal, $after:literal) => {
        concat!("fluxplane_clusters_moved(", $before, ", ", $after, ")")
    };
}

/// The summary's current cluster counts on PostgreSQL: the rollups and deltas with the changes not folded yet.
pub(super) const CLUSTERS_NOW: &str = clusters_counted!(now, clusters_moved);

/// The same as of the time `$3`.
const CLUSTERS_AS_OF: &str = clusters_counted!(as_of, clusters_moved);

dashboards_store!(
    PgStore,
    sqlx::Postgres,
    begin = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    unheard = UNHEARD,
    clusters_now = CLUSTERS_NOW,
    clusters_as_of = CLUSTERS_AS_OF,
    {
        /// Folds the clusters' pending changes into their counts and the cluster deltas (migration 0023), then
        /// moves the pending deltas into the rollups and the history in one statement: a delta committed meanwhile
        /// is left for the next run, and two replicas compacting at once fold each delta once (the second waits
        /// on the first's rows, then finds them gone).
        async fn compact_rollups(&self) -> StoreResult<u64> {
            let changes: i64 = sqlx::query_scalar("SELECT fluxplane_fold_cluster_changes()")
                .fetch_one(&self.pool)
                .await?;
            let instances = sqlx::query(
                "WITH moved AS (DELETE FROM instance_deltas RETURNING at, subscription_key, resource_group_key, \
                 policy_assignment, compliance_state, provisioning_state, reported, instances), \
                 kept AS (INSERT INTO instance_delta_history (at, subscription_key, resource_group_key, \
                 policy_assignment, compliance_state, provisioning_state, reported, instances) \
                 SELECT * FROM moved) \
                 INSERT INTO instance_rollups AS r SELECT subscription_key, resource_group_key, policy_assignment, \
                 compliance_state, provisioning_state, reported, SUM(instances) FROM moved GROUP BY 1, 2, 3, 4, 5, 6 \
                 ON CONFLICT (subscription_key, resource_group_key, policy_assignment, compliance_state, \
                 provisioning_state, reported) DO UPDATE SET instances = r.instances + excluded.instances",
            )
            .execute(&self.pool)
            .await?;
            let clusters = sqlx::query(
                "WITH moved AS (DELETE FROM cluster_deltas \
                 RETURNING at, subscription_key, resource_group_key, dimension, value, clusters), \
                 kept AS (INSERT INTO cluster_delta_history (at, subscription_key, resource_group_key, dimension, \
                 value, clusters) SELECT * FROM moved) \
                 INSERT INTO cluster_rollups AS r SELECT subscription_key, resource_group_key, dimension, value, \
                 SUM(clusters) FROM moved GROUP BY 1, 2, 3, 4 \
                 ON CONFLICT (subscription_key, resource_group_key, dimension, value) \
                 DO UPDATE SET clusters = r.clusters + excluded.clusters",
            )
            .execute(&self.pool)
            .await?;
            let folded = changes.unsigned_abs() + instances.rows_affected() + clusters.rows_affected();
            // A burst of reports leaves the pending tables full of dead rows that every summary would read past until
            // autovacuum comes round (a minute or more): this replica vacuums them itself, a few milliseconds each time.
            let due = self
                .vacuums
                .lock()
                .expect("the vacuum clock is never poisoned")
                .due(folded > 0, std::time::Instant::now());
            if due {
                sqlx::query(
                    "VACUUM (SKIP_LOCKED) pending_cluster_changes, instance_deltas, cluster_deltas, \
                     instance_rollups, cluster_rollups, cluster_state_counts",
                )
                .execute(&self.pool)
                .await?;
            }
            Ok(folded)
        }
    }
);

/// A configuration write's sealed secrets as statement parameters: whether the undelivered ones are cleared first,
/// and the change to add (all `None` without one).
#[derive(Default)]
struct SealedParams<'a> {
    clear: bool,
    version: Option<i64>,
    change: Option<&'static str>,
    base_version: Option<i64>,
    recipient: Option<&'a str>,
    encapsulated_key: Option<&'a str>,
    ciphertext: Option<&'a str>,
}

impl<'a> SealedParams<'a> {
    fn of(secrets: &'a crate::model::SecretsWrite) -> Self {
        use crate::model::SecretsWrite;
        let clear = matches!(secrets, SecretsWrite::Clear | SecretsWrite::Replace(_));
        match secrets {
            SecretsWrite::Keep | SecretsWrite::Clear => Self {
                clear,
                ..Self::default()
            },
            SecretsWrite::Replace(sealed) | SecretsWrite::Merge(sealed) => Self {
                clear,
                version: Some(sealed.version),
                change: Some(sealed.change.as_str()),
                base_version: sealed.base_version,
                recipient: Some(&sealed.recipient),
                encapsulated_key: Some(&sealed.encapsulated_key),
                ciphertext: Some(&sealed.ciphertext),
            },
        }
    }
}

/// A configuration write's statement answering its cluster's key.
type KeyQuery<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>;

/// Binds the parameters that end both configuration writes: the sealed change, then the operation.
fn bind_sealed_and_operation<'q>(
    query: KeyQuery<'q>,
    sealed: SealedParams<'q>,
    op: &'q crate::model::OperationRecord,
) -> KeyQuery<'q> {
    query
        .bind(sealed.version)
        .bind(sealed.change)
        .bind(sealed.base_version)
        .bind(sealed.recipient)
        .bind(sealed.encapsulated_key)
        .bind(sealed.ciphertext)
        .bind(&op.id)
        .bind(&op.resource_key)
        .bind(&op.resource_id)
        .bind(&op.kind)
        .bind(op.generation)
        .bind(op.status.as_str())
        .bind(op.start_time)
        .bind(op.end_time)
        .bind(op.error.as_ref().map(sqlx::types::Json))
        .bind(op.reconcile_by)
}

// Replicas share the outbox's work: each takes rows no other holds (`SKIP LOCKED`) and never waits for them.
alerts_store!(
    PgStore,
    sqlx::Postgres,
    skip = " FOR UPDATE SKIP LOCKED",
    skip_no_key = " FOR NO KEY UPDATE SKIP LOCKED",
    lock = " FOR NO KEY UPDATE",
    write_begin = None
);

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{VACUUM_EVERY, Vacuums};

    #[test]
    fn rows_moved_just_after_a_vacuum_are_vacuumed_by_a_later_compaction_that_moves_none() {
        let start = Instant::now();
        let mut vacuums = Vacuums::new(start);
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert!(!vacuums.due(false, at(60)), "nothing moved, nothing to vacuum");
        let mut vacuums = Vacuums::new(start);
        assert!(!vacuums.due(true, at(1)), "too soon after the last vacuum");
        assert!(
            vacuums.due(false, start + VACUUM_EVERY),
            "the rows moved at 1 s are owed their vacuum"
        );
        assert!(!vacuums.due(false, at(60)), "and vacuumed once");
        assert!(
            vacuums.due(true, at(61)),
            "rows moved long after the last vacuum are vacuumed at once"
        );
    }
}
