//! The store conformance suite: every case runs against SQLite and PostgreSQL, each on a fresh database.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec};

use fluxplane_agent_protocol::agent::{SealedSecrets, SecretsChange};

use super::Store;
use crate::arm::paging::PageRequest;
use crate::arm::scope::ClusterSet;
use crate::arm::system_data::SystemData;
use crate::clusters::model::ClusterSpec;
use crate::lifecycle::ManagedWrite;
use crate::lifecycle::ProvisioningState;
use crate::model::{
    AgentInfo, ClusterRecord, ConfigurationRecord, DesiredRecords, OperationRecord, SecretsWrite, Write,
};
use crate::on_both_backends;
use crate::testing::{Backend, TestDatabase, with_database};

fn cluster(subscription: &str, resource_group: &str, name: &str) -> ClusterRecord {
    ClusterRecord {
        id: 0,
        key: format!("{subscription}/{resource_group}/{name}").to_lowercase(),
        subscription_key: subscription.to_lowercase(),
        resource_group_key: resource_group.to_lowercase(),
        subscription: subscription.to_owned(),
        resource_group: resource_group.to_owned(),
        name: name.to_owned(),
        location: "westeurope".to_owned(),
        tags: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        spec: serde_json::from_value::<ClusterSpec>(serde_json::json!({
            "identity": null, "kind": null, "properties": {"agentPublicKeyCertificate": "a2V5"}
        }))
        .unwrap(),
        connectivity_status: "Connecting".to_owned(),
        last_connectivity_time: None,
        agent_version: None,
        kubernetes_version: None,
        total_node_count: None,
        etag: uuid::Uuid::new_v4().to_string(),
        system_data: SystemData::created("tester", Utc::now()),
        revision: 0,
        agent_encryption_key: None,
    }
}

pub(crate) fn configuration(cluster_id: i64, name: &str) -> ConfigurationRecord {
    ConfigurationRecord {
        id: 0,
        cluster_id,
        name: name.to_owned(),
        spec: FluxConfigurationSpec::default(),
        secrets_version: None,
        generation: 1,
        etag: uuid::Uuid::new_v4().to_string(),
        provisioning_state: ProvisioningState::Creating,
        compliance_state: ComplianceState::Pending,
        observed: Default::default(),
        system_data: SystemData::created("tester", Utc::now()),
        reported_generation: None,
        secrets_expire_at: None,
        generation_expires_at: None,
        failure: None,
        managed_by_id: None,
        drifted_at: None,
        managed_by: None,
        managed_generation: None,
        reconcile_requested_at: None,
    }
}

pub(crate) fn operation(resource_key: &str, generation: i64) -> OperationRecord {
    OperationRecord {
        id: uuid::Uuid::new_v4().to_string(),
        resource_key: resource_key.to_owned(),
        resource_id: format!("/id/{resource_key}"),
        kind: "Create".to_owned(),
        generation,
        status: crate::lifecycle::OperationState::InProgress,
        start_time: Utc::now(),
        end_time: None,
        error: None,
        reconcile_by: None,
    }
}

pub(crate) async fn registered(store: &Arc<dyn Store>, name: &str) -> ClusterRecord {
    let record = cluster("sub", "rg", name);
    assert_eq!(
        store.insert_cluster(&record, &ManagedWrite::default()).await.unwrap(),
        Write::Written
    );
    store
        .get_cluster(&record.key)
        .await
        .unwrap()
        .expect("the cluster just inserted")
}

/// One report applied alone: a batch of one, as a request carrying one report without a heartbeat is applied.
#[async_trait::async_trait]
trait ApplyAlone {
    #[allow(clippy::too_many_arguments)]
    async fn apply_report(
        &self,
        cluster_id: i64,
        name: &str,
        generation: i64,
        resource_key: &str,
        write: &crate::model::ReportWrite,
        secrets_version: Option<i64>,
        at: chrono::DateTime<Utc>,
    ) -> super::StoreResult<crate::model::ReportOutcome>;
}

#[async_trait::async_trait]
impl<S: Store + ?Sized> ApplyAlone for S {
    async fn apply_report(
        &self,
        cluster_id: i64,
        name: &str,
        generation: i64,
        resource_key: &str,
        write: &crate::model::ReportWrite,
        secrets_version: Option<i64>,
        at: chrono::DateTime<Utc>,
    ) -> super::StoreResult<crate::model::ReportOutcome> {
        let report = crate::model::ConfigurationReportWrite {
            cluster_id,
            name: name.to_owned(),
            generation,
            resource_key: resource_key.to_owned(),
            write: write.clone(),
            secrets_version,
        };
        let mut outcome = self.apply_reports(&[report], &[], at).await?;
        assert_eq!(outcome.reports.len(), 1, "one outcome per report");
        Ok(outcome.reports.remove(0))
    }
}

fn page(after: Option<String>, limit: u32) -> PageRequest {
    PageRequest { after, limit }
}

on_both_backends!(a_migrated_store_is_ready, a_migrated_store_is_ready_case);
async fn a_migrated_store_is_ready_case(backend: Backend) {
    with_database(backend, |db| async move {
        db.store().await.check_ready().await.unwrap();
    })
    .await;
}

on_both_backends!(clusters_round_trip_and_refuse_duplicates, clusters_round_trip_case);
async fn clusters_round_trip_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let stored = registered(&store, "Cluster1").await;
        assert_eq!(stored.name, "Cluster1");
        assert_eq!(stored.tags["env"], "prod");
        assert_eq!(stored.spec.properties.agent_public_key_certificate, "a2V5");
        assert_eq!(
            store
                .insert_cluster(&cluster("sub", "rg", "Cluster1"), &ManagedWrite::default())
                .await
                .unwrap(),
            Write::Conflict
        );
        assert!(store.get_cluster("sub/rg/other").await.unwrap().is_none());
    })
    .await;
}

on_both_backends!(
    updates_succeed_only_against_the_current_etag,
    updates_need_current_etag_case
);
async fn updates_need_current_etag_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let stored = registered(&store, "c1").await;
        let mut changed = stored.clone();
        changed.tags.insert("team".into(), "blue".into());
        changed.etag = "second".into();
        assert_eq!(
            store
                .update_cluster(&changed, "stale", None, &ManagedWrite::default())
                .await
                .unwrap(),
            Write::Conflict
        );
        assert_eq!(
            store
                .update_cluster(&changed, &stored.etag, None, &ManagedWrite::default())
                .await
                .unwrap(),
            Write::Written
        );
        let reread = store.get_cluster(&stored.key).await.unwrap().unwrap();
        assert_eq!(reread.etag, "second");
        assert_eq!(reread.tags["team"], "blue");
    })
    .await;
}

on_both_backends!(
    concurrent_writers_with_one_etag_have_exactly_one_winner,
    one_winner_case
);
async fn one_winner_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let stored = registered(&store, "c1").await;
        let mut writers = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let expected = stored.etag.clone();
            let mut next = stored.clone();
            next.etag = format!("writer-{i}");
            writers.push(tokio::spawn(async move {
                store
                    .update_cluster(&next, &expected, None, &ManagedWrite::default())
                    .await
                    .unwrap()
            }));
        }
        let mut winners = 0;
        for writer in writers {
            if writer.await.unwrap() == Write::Written {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    })
    .await;
}

on_both_backends!(cluster_lists_page_in_key_order_within_scope, cluster_paging_case);
async fn cluster_paging_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        for (rg, name) in [("rg-a", "c3"), ("rg-a", "c1"), ("rg-b", "c2"), ("rg-a", "c2")] {
            store
                .insert_cluster(&cluster("sub", rg, name), &ManagedWrite::default())
                .await
                .unwrap();
        }
        store
            .insert_cluster(&cluster("other-sub", "rg-a", "c9"), &ManagedWrite::default())
            .await
            .unwrap();
        let rg = ClusterSet::ResourceGroup {
            subscription_key: "sub".into(),
            resource_group_key: "rg-a".into(),
        };
        let first = store.list_clusters(&rg, &page(None, 2)).await.unwrap();
        // limit + 1 items tell the caller another page exists
        assert_eq!(
            first.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["c1", "c2", "c3"]
        );
        let rest = store
            .list_clusters(&rg, &page(Some(first[1].key.clone()), 2))
            .await
            .unwrap();
        assert_eq!(rest.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["c3"]);
        let sub = ClusterSet::Subscription {
            subscription_key: "sub".into(),
        };
        assert_eq!(store.list_clusters(&sub, &page(None, 100)).await.unwrap().len(), 4);
    })
    .await;
}

on_both_backends!(
    configurations_need_their_cluster,
    configurations_need_their_cluster_case
);
async fn configurations_need_their_cluster_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let missing = configuration(987_654, "cfg");
        let outcome = store
            .insert_configuration(&missing, &SecretsWrite::Keep, &operation("k", 1))
            .await
            .unwrap();
        assert_eq!(outcome, Write::ParentMissing);
        assert!(store.get_operation("k").await.unwrap().is_none());
    })
    .await;
}

on_both_backends!(a_new_write_supersedes_the_running_operation, supersede_case);
async fn supersede_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let first_op = operation("sub/rg/c1/cfg", 1);
        let record = configuration(c.id, "cfg");
        assert_eq!(
            store
                .insert_configuration(&record, &SecretsWrite::Keep, &first_op)
                .await
                .unwrap(),
            Write::Written
        );
        assert_eq!(
            store
                .insert_configuration(&record, &SecretsWrite::Keep, &operation("x", 1))
                .await
                .unwrap(),
            Write::Conflict
        );
        let stored = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        assert_eq!(stored.provisioning_state, ProvisioningState::Creating);
        assert_eq!(
            store.get_operation(&first_op.id).await.unwrap().unwrap().status,
            "InProgress"
        );

        let second_op = operation("sub/rg/c1/cfg", 2);
        let next = ConfigurationRecord {
            generation: 2,
            etag: "e2".into(),
            provisioning_state: ProvisioningState::Updating,
            ..stored.clone()
        };
        assert_eq!(
            store
                .update_configuration(&next, &SecretsWrite::Keep, "stale", &second_op)
                .await
                .unwrap(),
            Write::Conflict
        );
        assert!(
            store.get_operation(&second_op.id).await.unwrap().is_none(),
            "a lost write starts nothing"
        );
        assert_eq!(
            store
                .update_configuration(&next, &SecretsWrite::Keep, &stored.etag, &second_op)
                .await
                .unwrap(),
            Write::Written
        );
        let first = store.get_operation(&first_op.id).await.unwrap().unwrap();
        assert_eq!(first.status, "Canceled");
        assert!(first.end_time.is_some());
        assert_eq!(
            store.get_operation(&second_op.id).await.unwrap().unwrap().status,
            "InProgress"
        );
        let reread = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        assert_eq!(
            (reread.generation, reread.provisioning_state),
            (2, ProvisioningState::Updating)
        );
    })
    .await;
}

on_both_backends!(
    deleting_a_cluster_removes_its_configurations_and_their_counts,
    cascade_case
);
async fn cascade_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        store
            .insert_configuration(&configuration(c.id, "a"), &SecretsWrite::Keep, &operation("k/a", 1))
            .await
            .unwrap();
        store
            .insert_configuration(&configuration(c.id, "b"), &SecretsWrite::Keep, &operation("k/b", 1))
            .await
            .unwrap();
        // the only cluster with configurations: every per-cluster count is its own (folded by the compaction,
        // migrations 0023 on PostgreSQL and 0019 on SQLite)
        let counts = "SELECT COUNT(*) FROM cluster_state_counts";
        store.compact_rollups().await.unwrap();
        assert!(
            count_rows(&db, counts).await > 0,
            "the cluster's configurations are counted"
        );
        assert!(store.delete_cluster(&c.key).await.unwrap());
        assert!(!store.delete_cluster(&c.key).await.unwrap());
        assert!(store.get_configuration(c.id, "a").await.unwrap().is_none());
        store.compact_rollups().await.unwrap();
        assert_eq!(
            count_rows(&db, counts).await,
            0,
            "a deleted cluster's counts go with it"
        );
        let again = registered(&store, "c1").await;
        assert!(
            store
                .list_configurations(again.id, &page(None, 10))
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

on_both_backends!(configuration_lists_page_by_name, configuration_paging_case);
async fn configuration_paging_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let other = registered(&store, "c2").await;
        for name in ["b", "a", "d", "c"] {
            store
                .insert_configuration(&configuration(c.id, name), &SecretsWrite::Keep, &operation(name, 1))
                .await
                .unwrap();
        }
        store
            .insert_configuration(&configuration(other.id, "z"), &SecretsWrite::Keep, &operation("z", 1))
            .await
            .unwrap();
        let first = store.list_configurations(c.id, &page(None, 3)).await.unwrap();
        assert_eq!(
            first.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        let rest = store
            .list_configurations(c.id, &page(Some("c".into()), 3))
            .await
            .unwrap();
        assert_eq!(rest.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["d"]);
    })
    .await;
}

on_both_backends!(force_deleting_a_configuration_ends_its_operations, force_delete_case);
async fn force_delete_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let op = operation("sub/rg/c1/cfg", 1);
        store
            .insert_configuration(&configuration(c.id, "cfg"), &SecretsWrite::Keep, &op)
            .await
            .unwrap();
        assert!(store.delete_configuration(c.id, "cfg", "sub/rg/c1/cfg").await.unwrap());
        assert!(!store.delete_configuration(c.id, "cfg", "sub/rg/c1/cfg").await.unwrap());
        assert_eq!(store.get_operation(&op.id).await.unwrap().unwrap().status, "Canceled");
    })
    .await;
}

fn applied(compliance: ComplianceState) -> crate::model::ReportWrite {
    crate::model::ReportWrite::Status {
        provisioning_state: ProvisioningState::Succeeded,
        compliance_state: compliance,
        observed: Box::new(crate::flux::model::Observed {
            source_synced_commit_id: Some("main@sha1:abc".into()),
            ..Default::default()
        }),
        operation_status: crate::lifecycle::OperationState::Succeeded,
        operation_error: None,
        restored: Vec::new(),
    }
}

on_both_backends!(
    the_revision_follows_desired_state_changes_and_not_status_reports,
    revision_case
);
async fn revision_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let revision = |store: Arc<dyn Store>| async move { store.desired_state(c.id).await.unwrap().revision };
        assert_eq!(revision(store.clone()).await, 0);
        let record = configuration(c.id, "cfg");
        store
            .insert_configuration(&record, &SecretsWrite::Keep, &operation("sub/rg/c1/cfg", 1))
            .await
            .unwrap();
        // the first configuration and the Flux extension it brings: once or twice (PostgreSQL does not bump a
        // cluster its transaction already bumped, migration 0022), moved either way
        let first = revision(store.clone()).await;
        assert!(first > 0, "the first configuration and the Flux extension it brings");
        let stored = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        let next = ConfigurationRecord {
            generation: 2,
            etag: "e2".into(),
            ..stored.clone()
        };
        store
            .update_configuration(&next, &SecretsWrite::Keep, &stored.etag, &operation("sub/rg/c1/cfg", 2))
            .await
            .unwrap();
        assert_eq!(revision(store.clone()).await, first + 1);
        let outcome = store
            .apply_report(
                c.id,
                "cfg",
                2,
                "sub/rg/c1/cfg",
                &applied(ComplianceState::Compliant),
                None,
                Utc::now(),
            )
            .await
            .unwrap()
            .disposition;
        assert_eq!(outcome, crate::model::ReportDisposition::Recorded);
        assert_eq!(
            revision(store.clone()).await,
            first + 1,
            "a status report is not a desired-state change"
        );
        store.delete_configuration(c.id, "cfg", "sub/rg/c1/cfg").await.unwrap();
        let after_delete = store.desired_state(c.id).await.unwrap();
        assert_eq!(
            (after_delete.revision, after_delete.configurations.len()),
            (first + 2, 0)
        );
    })
    .await;
}

on_both_backends!(heartbeats_mark_the_cluster_connected, heartbeat_case);
async fn heartbeat_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let info = crate::model::AgentInfo {
            agent_version: Some("0.1.0".into()),
            kubernetes_version: Some("v1.31.2".into()),
            total_node_count: Some(3),
        };
        // whole seconds: both engines store them exactly
        let at = Utc::now().trunc_subsecs(0);
        assert_eq!(heard(store.as_ref(), c.id, at, Some(&info)).await, Some(0));
        assert_eq!(
            heard(store.as_ref(), c.id, at, None).await,
            Some(0),
            "a poll keeps what reports said"
        );
        let reread = store.get_cluster(&c.key).await.unwrap().unwrap();
        assert_eq!(reread.connectivity_status, "Connected");
        assert_eq!(reread.kubernetes_version.as_deref(), Some("v1.31.2"));
        assert_eq!(reread.total_node_count, Some(3));
        assert_eq!(reread.last_connectivity_time, Some(at));
        assert_eq!(heard(store.as_ref(), 987_654, at, None).await, None);
        assert_eq!(store.revision(c.id).await.unwrap(), Some(0));
        assert_eq!(store.revision(987_654).await.unwrap(), None);
    })
    .await;
}

on_both_backends!(reports_apply_to_their_own_generation_only, report_case);
async fn report_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let key = "sub/rg/c1/cfg";
        let first = operation(key, 1);
        store
            .insert_configuration(&configuration(c.id, "cfg"), &SecretsWrite::Keep, &first)
            .await
            .unwrap();
        let stored = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        let second = operation(key, 2);
        let next = ConfigurationRecord {
            generation: 2,
            etag: "e2".into(),
            provisioning_state: ProvisioningState::Updating,
            ..stored.clone()
        };
        store
            .update_configuration(&next, &SecretsWrite::Keep, &stored.etag, &second)
            .await
            .unwrap();

        let report = applied(ComplianceState::Compliant);
        let stale = store
            .apply_report(c.id, "cfg", 1, key, &report, None, Utc::now())
            .await
            .unwrap()
            .disposition;
        assert_eq!(stale, crate::model::ReportDisposition::Stale);
        let now = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        assert_eq!(
            now.provisioning_state,
            ProvisioningState::Updating,
            "an old report changed nothing"
        );

        for _ in 0..2 {
            let recorded = store
                .apply_report(c.id, "cfg", 2, key, &report, None, Utc::now())
                .await
                .unwrap()
                .disposition;
            assert_eq!(
                recorded,
                crate::model::ReportDisposition::Recorded,
                "replaying a report is harmless"
            );
        }
        let now = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        assert_eq!(now.provisioning_state, ProvisioningState::Succeeded);
        assert_eq!(now.compliance_state, ComplianceState::Compliant);
        assert_eq!(now.reported_generation, Some(2));
        assert_eq!(now.observed.source_synced_commit_id.as_deref(), Some("main@sha1:abc"));
        assert_eq!(
            store.get_operation(&second.id).await.unwrap().unwrap().status,
            "Succeeded"
        );
        assert_eq!(
            store.get_operation(&first.id).await.unwrap().unwrap().status,
            "Canceled"
        );

        let removed = crate::model::ReportWrite::Removed;
        let refused = store
            .apply_report(c.id, "cfg", 2, key, &removed, None, Utc::now())
            .await
            .unwrap()
            .disposition;
        assert_eq!(
            refused,
            crate::model::ReportDisposition::Stale,
            "only a configuration being deleted is removed"
        );
        let deleting = ConfigurationRecord {
            generation: 3,
            etag: "e3".into(),
            provisioning_state: ProvisioningState::Deleting,
            ..now.clone()
        };
        let delete_op = operation(key, 3);
        store
            .update_configuration(&deleting, &SecretsWrite::Keep, &now.etag, &delete_op)
            .await
            .unwrap();
        let gone = store
            .apply_report(c.id, "cfg", 3, key, &removed, None, Utc::now())
            .await
            .unwrap()
            .disposition;
        assert_eq!(gone, crate::model::ReportDisposition::Recorded);
        assert!(store.get_configuration(c.id, "cfg").await.unwrap().is_none());
        assert_eq!(
            store.get_operation(&delete_op.id).await.unwrap().unwrap().status,
            "Succeeded"
        );
        let unknown = store
            .apply_report(c.id, "cfg", 3, key, &report, None, Utc::now())
            .await
            .unwrap()
            .disposition;
        assert_eq!(unknown, crate::model::ReportDisposition::Unknown);
    })
    .await;
}

fn messages() -> super::ExpiryMessages {
    super::ExpiryMessages {
        secrets: "secrets expired".into(),
        pending: "not picked up".into(),
        rotated: "keys changed".into(),
        extension_secrets: "extension settings expired".into(),
        extension_pending: "extension not picked up".into(),
    }
}

/// A sealed change as the store sees it: opaque text.
fn sealed(version: i64, change: SecretsChange, base_version: Option<i64>, recipient: &str) -> SealedSecrets {
    SealedSecrets {
        version,
        change,
        base_version,
        recipient: recipient.to_owned(),
        encapsulated_key: format!("enc-{version}"),
        ciphertext: format!("ct-{version}"),
    }
}

/// The versions of the undelivered sealed secrets of the cluster's configuration `name`.
async fn undelivered(store: &Arc<dyn Store>, cluster_id: i64, name: &str) -> Vec<i64> {
    let desired = store.desired_state(cluster_id).await.unwrap();
    let id = desired
        .configurations
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.id)
        .expect("the configuration exists");
    desired
        .sealed
        .into_iter()
        .filter(|s| s.configuration_id == id)
        .map(|s| s.version)
        .collect()
}

/// Records that the cluster's agent was heard from at `at`, as a poll (`info` `None`) or a report does, through the
/// batch writer's statement; answers the cluster's revision.
async fn heard(store: &dyn Store, cluster_id: i64, at: DateTime<Utc>, info: Option<&AgentInfo>) -> Option<i64> {
    let heartbeat = crate::model::HeartbeatWrite {
        cluster_id,
        info: info.cloned().unwrap_or_default(),
    };
    store.apply_reports(&[], &[heartbeat], at).await.unwrap().revisions[0]
}

/// How many sealed changes the database holds, read directly (the store's reads skip them when no configuration
/// expects any).
async fn sealed_rows(db: &TestDatabase) -> i64 {
    count_rows(db, "SELECT COUNT(*) FROM sealed_secrets").await
}

/// The count `sql` answers, read directly from the database.
async fn count_rows(db: &TestDatabase, sql: &'static str) -> i64 {
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
        }
    }
}

/// Inserts the configuration `name` with undelivered secrets sealed to `recipient`, expiring at `expire_at`.
async fn with_secrets(
    store: &Arc<dyn Store>,
    cluster_id: i64,
    name: &str,
    recipient: &str,
    expire_at: chrono::DateTime<Utc>,
) -> OperationRecord {
    let record = ConfigurationRecord {
        secrets_version: Some(1),
        secrets_expire_at: Some(expire_at),
        ..configuration(cluster_id, name)
    };
    let op = operation(&format!("sub/rg/c1/{name}"), 1);
    let secrets = SecretsWrite::Replace(sealed(1, SecretsChange::Replace, None, recipient));
    assert_eq!(
        store.insert_configuration(&record, &secrets, &op).await.unwrap(),
        Write::Written
    );
    op
}

on_both_backends!(
    desired_states_read_together_are_each_clusters_own,
    desired_states_together_case
);
async fn desired_states_together_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let (a, b, bare) = (
            registered(&store, "a").await,
            registered(&store, "b").await,
            registered(&store, "bare").await,
        );
        let expire_at = Utc::now() + chrono::Duration::hours(1);
        for name in ["y", "x"] {
            let op = operation(&format!("sub/rg/a/{name}"), 1);
            store
                .insert_configuration(&configuration(a.id, name), &SecretsWrite::Keep, &op)
                .await
                .unwrap();
        }
        with_secrets(&store, b.id, "z", "agent-key", expire_at).await;
        with_secrets(&store, a.id, "w", "other-key", expire_at).await;

        let missing = 1_000_000;
        let states: std::collections::HashMap<i64, DesiredRecords> = store
            .desired_states(&[bare.id, b.id, missing, a.id])
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(states.len(), 3, "a missing cluster is left out");
        for cluster in [&a, &b, &bare] {
            let alone = store.desired_state(cluster.id).await.unwrap();
            let together = &states[&cluster.id];
            assert_eq!(together.revision, alone.revision);
            let names = |d: &DesiredRecords| d.configurations.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
            assert_eq!(
                names(together),
                names(&alone),
                "each cluster's own configurations, in name order"
            );
            let sealed = |d: &DesiredRecords| {
                d.sealed
                    .iter()
                    .map(|s| (s.configuration_id, s.recipient.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(sealed(together), sealed(&alone), "each cluster's own sealed secrets");
            let extensions = |d: &DesiredRecords| d.extensions.iter().map(|e| e.cluster_id).collect::<Vec<_>>();
            assert_eq!(extensions(together), extensions(&alone));
        }
        let names: Vec<&str> = states[&a.id].configurations.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["w", "x", "y"]);
        let recipients: Vec<&str> = states[&a.id].sealed.iter().map(|s| s.recipient.as_str()).collect();
        assert_eq!(recipients, ["other-key"], "a's secrets, not b's");
        assert_eq!(states[&b.id].sealed.len(), 1);
        assert!(states[&bare.id].configurations.is_empty() && states[&bare.id].sealed.is_empty());
        assert!(
            states[&a.id].extensions.iter().all(|e| e.cluster_id == a.id) && !states[&a.id].extensions.is_empty(),
            "the Flux extension a's first configuration brought, and only a's"
        );
        assert_eq!(store.desired_state(missing).await.unwrap().revision, 0);
    })
    .await;
}

on_both_backends!(sealed_secrets_are_kept_in_order_until_acknowledged, sealed_secrets_case);
async fn sealed_secrets_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let expire_at = Utc::now() + chrono::Duration::hours(1);
        with_secrets(&store, c.id, "cfg", "agent-key", expire_at).await;
        assert_eq!(undelivered(&store, c.id, "cfg").await, [1]);
        let stored = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        let patched = ConfigurationRecord {
            generation: 2,
            secrets_version: Some(2),
            etag: "e2".into(),
            ..stored.clone()
        };
        let patch = SecretsWrite::Merge(sealed(2, SecretsChange::Merge, Some(1), "agent-key"));
        store
            .update_configuration(&patched, &patch, &stored.etag, &operation("sub/rg/c1/cfg", 2))
            .await
            .unwrap();
        let desired = store.desired_state(c.id).await.unwrap();
        let wire: Vec<SealedSecrets> = desired.sealed.into_iter().map(|s| s.into_wire()).collect();
        assert_eq!(
            wire,
            [
                sealed(1, SecretsChange::Replace, None, "agent-key"),
                sealed(2, SecretsChange::Merge, Some(1), "agent-key")
            ],
            "every undelivered change, in order, as written"
        );

        // an acknowledgement removes what it covers, even from a report about an older generation
        let report = applied(ComplianceState::Compliant);
        let stale = store
            .apply_report(c.id, "cfg", 1, "sub/rg/c1/cfg", &report, Some(1), Utc::now())
            .await
            .unwrap()
            .disposition;
        assert_eq!(stale, crate::model::ReportDisposition::Stale);
        assert_eq!(undelivered(&store, c.id, "cfg").await, [2]);
        assert!(
            store
                .get_configuration(c.id, "cfg")
                .await
                .unwrap()
                .unwrap()
                .secrets_expire_at
                .is_some()
        );
        store
            .apply_report(c.id, "cfg", 2, "sub/rg/c1/cfg", &report, Some(2), Utc::now())
            .await
            .unwrap();
        assert!(undelivered(&store, c.id, "cfg").await.is_empty());
        let acknowledged = store.get_configuration(c.id, "cfg").await.unwrap().unwrap();
        assert_eq!(acknowledged.secrets_expire_at, None, "nothing left to expire");
        assert_eq!(acknowledged.secrets_version, Some(2), "the cluster keeps its copy");

        // a replacement drops the undelivered changes before it; clearing drops them all
        let next = ConfigurationRecord {
            generation: 3,
            etag: "e3".into(),
            secrets_expire_at: Some(expire_at),
            ..acknowledged.clone()
        };
        let patch = SecretsWrite::Merge(sealed(3, SecretsChange::Merge, Some(2), "agent-key"));
        store
            .update_configuration(&next, &patch, &acknowledged.etag, &operation("sub/rg/c1/cfg", 3))
            .await
            .unwrap();
        let last = ConfigurationRecord {
            generation: 4,
            etag: "e4".into(),
            ..next.clone()
        };
        let replace = SecretsWrite::Replace(sealed(4, SecretsChange::Replace, None, "agent-key"));
        store
            .update_configuration(&last, &replace, &next.etag, &operation("sub/rg/c1/cfg", 4))
            .await
            .unwrap();
        assert_eq!(undelivered(&store, c.id, "cfg").await, [4]);
        let cleared = ConfigurationRecord {
            generation: 5,
            etag: "e5".into(),
            ..last.clone()
        };
        store
            .update_configuration(
                &cleared,
                &SecretsWrite::Clear,
                &last.etag,
                &operation("sub/rg/c1/cfg", 5),
            )
            .await
            .unwrap();
        assert!(undelivered(&store, c.id, "cfg").await.is_empty());
        // and they go with their configuration
        with_secrets(&store, c.id, "other", "agent-key", expire_at).await;
        store
            .delete_configuration(c.id, "other", "sub/rg/c1/other")
            .await
            .unwrap();
        assert_eq!(sealed_rows(&db).await, 0);
    })
    .await;
}

on_both_backends!(undelivered_secrets_fail_when_the_agents_keys_change, key_change_case);
async fn key_change_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let later = Utc::now() + chrono::Duration::hours(1);
        let old_op = with_secrets(&store, c.id, "old", "old-key", later).await;
        with_secrets(&store, c.id, "new", "new-key", later).await;

        let failed = store
            .set_agent_encryption_key(c.id, "new-key", "keys changed")
            .await
            .unwrap();
        assert_eq!(failed.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["old"]);
        let old = store.get_configuration(c.id, "old").await.unwrap().unwrap();
        assert_eq!(old.provisioning_state, ProvisioningState::Failed);
        assert_eq!(old.failure.as_deref(), Some("keys changed"));
        assert_eq!(old.secrets_expire_at, None);
        assert_eq!(
            sealed_rows(&db).await,
            1,
            "only the secrets sealed to the registered key are left"
        );
        let op = store.get_operation(&old_op.id).await.unwrap().unwrap();
        assert_eq!(
            (op.status.as_str(), op.error.unwrap().message.as_str()),
            ("Failed", "keys changed")
        );
        assert_eq!(
            undelivered(&store, c.id, "new").await,
            [1],
            "sealed to the registered key: kept"
        );
        let cluster = store.get_cluster(&c.key).await.unwrap().unwrap();
        assert_eq!(cluster.agent_encryption_key.as_deref(), Some("new-key"));
        assert!(
            store
                .set_agent_encryption_key(c.id, "new-key", "keys changed")
                .await
                .unwrap()
                .is_empty(),
            "registering the same key again changes nothing"
        );

        // a new agent identity: the encryption key is forgotten, and nothing sealed to it can be delivered
        let renamed = ClusterRecord {
            etag: "e2".into(),
            ..cluster.clone()
        };
        assert_eq!(
            store
                .update_cluster(
                    &renamed,
                    &cluster.etag,
                    Some("identity changed"),
                    &ManagedWrite::default()
                )
                .await
                .unwrap(),
            Write::Written
        );
        let cluster = store.get_cluster(&c.key).await.unwrap().unwrap();
        assert_eq!(cluster.agent_encryption_key, None);
        let new = store.get_configuration(c.id, "new").await.unwrap().unwrap();
        assert_eq!(new.failure.as_deref(), Some("identity changed"));
        assert_eq!(sealed_rows(&db).await, 0);
        // a write that keeps the identity keeps the key
        store
            .set_agent_encryption_key(c.id, "newer-key", "keys changed")
            .await
            .unwrap();
        let tagged = ClusterRecord {
            etag: "e3".into(),
            ..cluster.clone()
        };
        store
            .update_cluster(&tagged, &cluster.etag, None, &ManagedWrite::default())
            .await
            .unwrap();
        let cluster = store.get_cluster(&c.key).await.unwrap().unwrap();
        assert_eq!(cluster.agent_encryption_key.as_deref(), Some("newer-key"));
    })
    .await;
}

on_both_backends!(undelivered_secrets_and_unpicked_changes_expire_once, expiry_case);
async fn expiry_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let past = Utc::now() - chrono::Duration::seconds(1);
        let future = Utc::now() + chrono::Duration::hours(1);
        // undelivered secrets past their time
        let undelivered_op = with_secrets(&store, c.id, "undelivered", "key", past).await;
        // a change nobody picked up in time
        let pending = ConfigurationRecord {
            generation_expires_at: Some(past),
            ..configuration(c.id, "pending")
        };
        let pending_op = operation("sub/rg/c1/pending", 1);
        store
            .insert_configuration(&pending, &SecretsWrite::Keep, &pending_op)
            .await
            .unwrap();
        // one with time left
        with_secrets(&store, c.id, "fresh", "key", future).await;

        let mut expired = store.expire(Utc::now(), &messages()).await.unwrap();
        expired.sort_by(|a, b| a.name.cmp(&b.name));
        let summary: Vec<_> = expired.iter().map(|e| (e.name.as_str(), e.secrets)).collect();
        assert_eq!(summary, [("pending", false), ("undelivered", true)]);

        let get = |name: &'static str| {
            let store = store.clone();
            async move { store.get_configuration(c.id, name).await.unwrap().unwrap() }
        };
        let failed = get("undelivered").await;
        assert_eq!(
            sealed_rows(&db).await,
            1,
            "the expired ciphertext is gone, the fresh one kept"
        );
        assert_eq!(failed.provisioning_state, ProvisioningState::Failed);
        assert_eq!(failed.failure.as_deref(), Some("secrets expired"));
        assert_eq!(
            store.get_operation(&undelivered_op.id).await.unwrap().unwrap().status,
            "Failed"
        );
        let pending = get("pending").await;
        assert_eq!(pending.failure.as_deref(), Some("not picked up"));
        let pending_op = store.get_operation(&pending_op.id).await.unwrap().unwrap();
        assert_eq!(pending_op.status, "Failed");
        assert_eq!(pending_op.error.unwrap().message, "not picked up");
        assert_eq!(undelivered(&store, c.id, "fresh").await, [1]);

        assert!(
            store.expire(Utc::now(), &messages()).await.unwrap().is_empty(),
            "nothing expires twice"
        );
        // a late report does not revive an expired generation
        let report = applied(ComplianceState::Compliant);
        let late = store
            .apply_report(c.id, "pending", 1, "sub/rg/c1/pending", &report, None, Utc::now())
            .await
            .unwrap()
            .disposition;
        assert_eq!(late, crate::model::ReportDisposition::Stale);
    })
    .await;
}

/// Two transactions locking the same rows in opposite orders: PostgreSQL rolls one back. That error must read as
/// transient (the write loop tries again) and, if it reaches a client, as a 503 to retry, not a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_postgres_breaks_is_transient_and_answered_503_to_retry() {
    with_database(Backend::Postgres, |db| async move {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE crossing (id INT PRIMARY KEY); INSERT INTO crossing VALUES (1), (2)")
            .execute(&pool)
            .await
            .unwrap();
        let first_locks = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let crossing = |first: i32, second: i32| {
            let (pool, first_locks) = (pool.clone(), first_locks.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("UPDATE crossing SET id = id WHERE id = $1")
                    .bind(first)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                first_locks.wait().await;
                let crossed = sqlx::query("UPDATE crossing SET id = id WHERE id = $1")
                    .bind(second)
                    .execute(&mut *tx)
                    .await;
                crossed.map(|_| ())
            })
        };
        let (a, b) = (crossing(1, 2), crossing(2, 1));
        let outcomes = [a.await.unwrap(), b.await.unwrap()];
        let broken: Vec<_> = outcomes.into_iter().filter_map(Result::err).collect();
        assert_eq!(broken.len(), 1, "PostgreSQL broke the deadlock by rolling one back");
        let err = super::StoreError::from(broken.into_iter().next().unwrap());
        assert!(err.is_transient(), "{err:?}");
        assert!(!err.is_unavailable(), "the database is there");
        let answered = crate::error::ApiError::from(err);
        assert_eq!(answered.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answered.code(), "ServerBusy");
        assert!(!super::StoreError::NotReady("x".into()).is_transient());
    })
    .await;
}

/// Writes that decide for one cluster each (registrations here) take the subscription's fleet lock shared: one does
/// not wait for another in flight, while an assignment, which decides for the whole fleet, waits for them, and then
/// reaches the cluster registered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_do_not_wait_for_each_other_but_an_assignment_waits_for_them() {
    with_database(Backend::Postgres, |db| async move {
        let store = db.store().await;
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        // a registration of subscription `sub` in flight: its transaction holds the lock as the store takes it
        let mut in_flight = pool.begin().await.unwrap();
        sqlx::query(super::postgres::CLUSTER_FLEET_LOCK)
            .bind("sub")
            .execute(&mut *in_flight)
            .await
            .unwrap();
        let waited = std::time::Duration::from_secs(30);
        let other = tokio::time::timeout(waited, registered(&store, "c2"))
            .await
            .expect("a registration waited for another one in flight");
        let assigning = tokio::spawn({
            let store = store.clone();
            async move { assignment(&store, "web", "https://example.com/web", None, None).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !assigning.is_finished(),
            "the assignment did not wait for the registration in flight"
        );
        in_flight.commit().await.unwrap();
        tokio::time::timeout(waited, assigning)
            .await
            .expect("the assignment went on once the registration committed")
            .unwrap();
        let given = store.get_configuration(other.id, "web").await.unwrap();
        assert!(
            given.is_some_and(|c| c.managed_by_id.is_some()),
            "the cluster registered meanwhile got the assignment's configuration"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sweeping_at_once_expire_each_row_once() {
    with_database(Backend::Postgres, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let past = Utc::now() - chrono::Duration::seconds(1);
        for i in 0..50 {
            with_secrets(&store, c.id, &format!("cfg-{i}"), "key", past).await;
        }
        let replicas = [db.store().await, db.store().await, db.store().await];
        let sweeps: Vec<_> = replicas
            .into_iter()
            .map(|replica| tokio::spawn(async move { replica.expire(Utc::now(), &messages()).await.unwrap() }))
            .collect();
        let mut names = Vec::new();
        for sweep in sweeps {
            names.extend(sweep.await.unwrap().into_iter().map(|e| (e.name, e.secrets)));
        }
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "no row expired twice");
        assert_eq!(
            names.iter().filter(|(_, secrets)| *secrets).count(),
            50,
            "every secret set expired once"
        );
        assert_eq!(sealed_rows(&db).await, 0, "no ciphertext is left");
    })
    .await;
}

/// The rollups' counts of the subscription `sub`, and the same counted from the configurations themselves.
async fn rollups_and_truth(store: &Arc<dyn Store>) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let scope = ClusterSet::Subscription {
        subscription_key: "sub".to_owned(),
    };
    let mut rolled = BTreeMap::new();
    let rollup = store.rollup(&scope, None, false).await.unwrap();
    for row in rollup.instances {
        let key = format!(
            "{}|{}|{}|{}",
            row.policy_assignment, row.compliance_state, row.provisioning_state, row.reported
        );
        *rolled.entry(key).or_default() += row.instances;
    }
    for row in rollup.clusters {
        *rolled
            .entry(format!("clusters {}={}", row.dimension, row.value))
            .or_default() += row.clusters;
    }
    let query = super::StateCountQuery {
        by_assignment: true,
        ..Default::default()
    };
    let mut truth = BTreeMap::new();
    let mut clusters: BTreeMap<String, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for row in store.state_counts(&scope, &query).await.unwrap() {
        let key = format!(
            "{}|{}|{}|{}",
            row.managed_by_id, row.compliance_state, row.provisioning_state, row.reported
        );
        *truth.entry(key).or_default() += row.count;
        let freshness = if row.reported { "fresh" } else { "stale" };
        for (dimension, value) in [
            ("all", ""),
            ("complianceState", row.compliance_state.as_str()),
            ("provisioningState", row.provisioning_state.as_str()),
            ("policyAssignment", row.managed_by_id.as_str()),
            ("freshness", freshness),
        ] {
            clusters
                .entry(format!("clusters {dimension}={value}"))
                .or_default()
                .insert(row.cluster_id);
        }
    }
    truth.extend(clusters.into_iter().map(|(k, ids)| (k, ids.len() as i64)));
    (rolled, truth)
}

on_both_backends!(
    the_rollups_count_what_the_configurations_say_through_writes_reports_and_deletions,
    rollup_case
);
async fn rollup_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let mut clusters = Vec::new();
        for name in ["c1", "c2", "c3"] {
            let c = registered(&store, name).await;
            for cfg in ["a", "b"] {
                let write = store
                    .insert_configuration(
                        &configuration(c.id, cfg),
                        &SecretsWrite::Keep,
                        &operation(&format!("sub/rg/{name}/{cfg}"), 1),
                    )
                    .await
                    .unwrap();
                assert_eq!(write, Write::Written);
            }
            clusters.push(c);
        }
        let same = |(rolled, truth): (BTreeMap<String, i64>, BTreeMap<String, i64>), when: &str| {
            assert_eq!(rolled, truth, "{when}");
        };
        same(rollups_and_truth(&store).await, "created, deltas pending");
        for (c, state) in [
            (&clusters[0], ComplianceState::Compliant),
            (&clusters[1], ComplianceState::NonCompliant),
        ] {
            let key = format!("{}/a", c.key);
            let outcome = store
                .apply_report(c.id, "a", 1, &key, &applied(state), None, Utc::now())
                .await
                .unwrap();
            assert_eq!(outcome.disposition, crate::model::ReportDisposition::Recorded);
            assert!(
                outcome.written_at.is_some(),
                "the first report on a write ends its operation"
            );
        }
        same(rollups_and_truth(&store).await, "reported");
        store.compact_rollups().await.unwrap();
        same(rollups_and_truth(&store).await, "compacted");
        assert!(store.delete_cluster(&clusters[1].key).await.unwrap());
        assert!(
            store
                .delete_configuration(clusters[0].id, "b", "sub/rg/c1/b")
                .await
                .unwrap()
        );
        same(rollups_and_truth(&store).await, "deleted, deltas pending");
        store.compact_rollups().await.unwrap();
        let (rolled, truth) = rollups_and_truth(&store).await;
        assert_eq!(rolled, truth, "deleted and compacted");
        assert!(
            !rolled.contains_key("clusters complianceState=Non-Compliant"),
            "{rolled:?}"
        );
        assert_eq!(truth["clusters all="], 2);
    })
    .await;
}

on_both_backends!(
    cluster_counts_are_exact_now_and_as_of_a_past_time_before_and_after_the_changes_are_folded,
    folded_later_case
);
async fn folded_later_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let scope = ClusterSet::Subscription {
            subscription_key: "sub".to_owned(),
        };
        let c = registered(&store, "c1").await;
        let other = registered(&store, "c2").await;
        for cluster in [&c, &other] {
            let key = format!("{}/a", cluster.key);
            store
                .insert_configuration(
                    &configuration(cluster.id, "a"),
                    &SecretsWrite::Keep,
                    &operation(&key, 1),
                )
                .await
                .unwrap();
        }
        store.compact_rollups().await.unwrap();
        let pause = || tokio::time::sleep(std::time::Duration::from_millis(50));
        pause().await;
        let created = Utc::now();
        pause().await;
        // c1 goes Non-Compliant, then Compliant, and c2 Non-Compliant, all waiting to be folded together
        let mut times = Vec::new();
        for (cluster, state) in [
            (&c, ComplianceState::NonCompliant),
            (&c, ComplianceState::Compliant),
            (&other, ComplianceState::NonCompliant),
        ] {
            let key = format!("{}/a", cluster.key);
            let outcome = store
                .apply_report(cluster.id, "a", 1, &key, &applied(state), None, Utc::now())
                .await
                .unwrap();
            assert_eq!(outcome.disposition, crate::model::ReportDisposition::Recorded);
            pause().await;
            times.push(Utc::now());
            pause().await;
        }
        let counted = |rollup: super::Rollup| {
            let mut by_value: BTreeMap<String, i64> = BTreeMap::new();
            for row in rollup.clusters.into_iter().filter(|r| r.dimension == "complianceState") {
                by_value.insert(row.value, row.clusters);
            }
            by_value
        };
        let expect = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        let expected = [
            (Some(created), expect(&[("Pending", 2)])),
            (Some(times[0]), expect(&[("Non-Compliant", 1), ("Pending", 1)])),
            (Some(times[1]), expect(&[("Compliant", 1), ("Pending", 1)])),
            (None, expect(&[("Compliant", 1), ("Non-Compliant", 1)])),
        ];
        for stage in ["pending", "folded"] {
            if stage == "folded" {
                assert!(store.compact_rollups().await.unwrap() > 0);
            }
            for (at, counts) in &expected {
                let rolled = counted(store.rollup(&scope, *at, false).await.unwrap());
                assert_eq!(&rolled, counts, "as of {at:?}, {stage}");
            }
        }
    })
    .await;
}

on_both_backends!(
    pruning_drops_old_history_but_each_configurations_last_state_and_leaves_the_current_counts,
    prune_case
);
async fn prune_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let write = store
            .insert_configuration(
                &configuration(c.id, "a"),
                &SecretsWrite::Keep,
                &operation("sub/rg/c1/a", 1),
            )
            .await
            .unwrap();
        assert_eq!(write, Write::Written);
        let scope = ClusterSet::Subscription {
            subscription_key: "sub".to_owned(),
        };
        assert_eq!(store.status_events(Some(&scope), 0, 10).await.unwrap().len(), 1);
        // not yet folded: pruning keeps the deltas the current counts still read, and the configuration's one
        // entry (the state it is still in)
        assert_eq!(
            store
                .prune_history(Utc::now() + chrono::Duration::seconds(5), None)
                .await
                .unwrap(),
            0
        );
        let sorted = |mut rollup: super::Rollup| {
            rollup
                .clusters
                .sort_by(|a, b| (&a.dimension, &a.value).cmp(&(&b.dimension, &b.value)));
            rollup
        };
        let before = sorted(store.rollup(&scope, None, false).await.unwrap());
        assert_eq!(before.instances.iter().map(|i| i.instances).sum::<i64>(), 1);
        store.compact_rollups().await.unwrap();
        assert!(
            store
                .prune_history(Utc::now() + chrono::Duration::seconds(5), None)
                .await
                .unwrap()
                > 0
        );
        let kept = store.status_events(Some(&scope), 0, 10).await.unwrap();
        assert_eq!(kept.len(), 1, "the state 'a' is still in: {kept:?}");
        let after = sorted(store.rollup(&scope, None, false).await.unwrap());
        assert_eq!(after, before, "the current counts outlive the history");
        assert_eq!(
            store.prune_history(Utc::now(), None).await.unwrap(),
            0,
            "nothing left to prune"
        );
    })
    .await;
}

on_both_backends!(
    a_connected_cluster_silent_too_long_is_marked_offline_until_heard_again,
    mark_offline_case
);
async fn mark_offline_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let long_ago = Utc::now() - chrono::Duration::minutes(10);
        heard(store.as_ref(), c.id, long_ago, None).await;
        let status = |store: Arc<dyn Store>| async move {
            store
                .get_cluster("sub/rg/c1")
                .await
                .unwrap()
                .unwrap()
                .connectivity_status
        };
        assert_eq!(
            store
                .mark_offline(long_ago - chrono::Duration::minutes(1))
                .await
                .unwrap(),
            0
        );
        assert_eq!(status(store.clone()).await, "Connected");
        assert_eq!(
            store
                .mark_offline(Utc::now() - chrono::Duration::minutes(5))
                .await
                .unwrap(),
            1
        );
        assert_eq!(status(store.clone()).await, "Offline");
        assert_eq!(store.mark_offline(Utc::now()).await.unwrap(), 0, "marked once");
        heard(store.as_ref(), c.id, Utc::now(), None).await;
        assert_eq!(status(store.clone()).await, "Connected");
    })
    .await;
}

/// Not a conformance case: it holds the pool the PostgreSQL store is built on to the promise `store::begin` makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_beginning_hands_back_no_open_transaction() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    // one connection, handed out without a ping: the cancelled `BEGIN` is the only thing that can be on it
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&db.url)
        .await
        .unwrap();
    for polls in 1..=4 {
        {
            let mut beginning = std::pin::pin!(super::begin(&pool, None));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for _ in 0..polls {
                if beginning.as_mut().poll(&mut cx).is_ready() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        // two statements on their own take two transaction ids; inside a transaction left open, they share one
        let transaction = || async {
            sqlx::query_scalar::<_, String>("SELECT pg_current_xact_id()::text")
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        assert_ne!(
            transaction().await,
            transaction().await,
            "after {polls} poll(s), the next borrowers ran inside the cancelled transaction"
        );
    }
}

/// The pool lends connections without sqlx's ping before every statement; one PostgreSQL dropped while it sat idle
/// (a restart, an idle timeout, a proxy) must still be replaced before a request meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_while_idle_is_replaced_before_a_request_meets_it() {
    with_database(Backend::Postgres, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&admin)
            .await
            .unwrap();
        let dropped: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&database)
        .fetch_all(&admin)
        .await
        .unwrap();
        assert!(!dropped.is_empty(), "the store's pooled connections were dropped");
        tokio::time::sleep(super::postgres::PING_IDLE_AFTER + std::time::Duration::from_millis(200)).await;
        for _ in 0..dropped.len() + 1 {
            let found = store.get_cluster(&c.key).await;
            assert!(matches!(found, Ok(Some(_))), "{found:?}");
        }
    })
    .await;
}

/// Every table and view column of a migrated database, as `table.column`.
async fn columns(db: &TestDatabase) -> std::collections::BTreeSet<String> {
    use sqlx::Connection;
    let rows: Vec<(String, String)> = match db.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(
                "SELECT table_name::TEXT, column_name::TEXT FROM information_schema.columns \
                 WHERE table_schema = current_schema()",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(
                "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                 WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
    };
    rows.into_iter()
        .filter(|(table, _)| table != "_sqlx_migrations")
        .map(|(table, column)| format!("{table}.{column}"))
        .collect()
}

/// Tables one engine has for what only it needs (see the migration that makes each).
const SQLITE_ONLY: &[&str] = &[
    // 0012_wakeups: the clusters a transaction changed, for the wake-ups PostgreSQL sends with NOTIFY
    "desired_changes.cluster_key",
];

const POSTGRES_ONLY: &[&str] = &[
    // 0013_one_trigger_per_event: the clusters not connected, kept by a trigger so that the summary reads them
    // without scanning every cluster; SQLite's summary filters the clusters table instead (`sqlite::UNHEARD`)
    "unconnected_clusters.cluster_id",
    "unconnected_clusters.resource_group_key",
    "unconnected_clusters.subscription_key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_end_with_the_same_tables_and_columns() {
    let sqlite = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let Some(postgres) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    // migrated by opening them
    sqlite.store().await;
    postgres.store().await;
    let (on_sqlite, on_postgres) = (columns(&sqlite).await, columns(&postgres).await);
    assert!(
        on_postgres.contains("flux_configurations.generation"),
        "{on_postgres:?}"
    );
    let expected_sqlite_only: std::collections::BTreeSet<String> =
        SQLITE_ONLY.iter().map(|c| (*c).to_owned()).collect();
    let sqlite_only: std::collections::BTreeSet<String> = on_sqlite.difference(&on_postgres).cloned().collect();
    let expected_postgres_only: std::collections::BTreeSet<String> =
        POSTGRES_ONLY.iter().map(|c| (*c).to_owned()).collect();
    let postgres_only: std::collections::BTreeSet<String> = on_postgres.difference(&on_sqlite).cloned().collect();
    assert_eq!(sqlite_only, expected_sqlite_only, "columns only SQLite has");
    assert_eq!(postgres_only, expected_postgres_only, "columns only PostgreSQL has");
}

fn extension(cluster_id: i64, name: &str) -> crate::model::ExtensionRecord {
    crate::model::ExtensionRecord {
        id: 0,
        cluster_id,
        name: name.to_owned(),
        extension_type: "microsoft.flux".to_owned(),
        spec: crate::extensions::model::ExtensionSpec::flux_default(),
        generation: 1,
        etag: uuid::Uuid::new_v4().to_string(),
        provisioning_state: ProvisioningState::Creating,
        observed: Default::default(),
        system_data: SystemData::created("tester", Utc::now()),
        reported_generation: None,
        secrets_version: None,
        sealed: Vec::new(),
        secrets_expire_at: None,
        generation_expires_at: None,
        failure: None,
    }
}

fn installed(outcome: crate::lifecycle::OperationState) -> crate::model::ExtensionReportWrite {
    let state = if outcome == crate::lifecycle::OperationState::Succeeded {
        ProvisioningState::Succeeded
    } else {
        ProvisioningState::Failed
    };
    crate::model::ExtensionReportWrite::Status {
        provisioning_state: state,
        observed: Box::new(crate::extensions::model::ExtensionObserved {
            current_version: Some("0.1.0".into()),
            ..Default::default()
        }),
        operation_status: outcome,
        operation_error: None,
    }
}

on_both_backends!(
    a_cluster_holds_one_extension_of_a_type_and_its_writes_move_the_revision,
    extension_writes_case
);
async fn extension_writes_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let revision = |store: Arc<dyn Store>| async move { store.revision(c.id).await.unwrap().unwrap() };
        let created = operation("sub/rg/c1/extensions/flux", 1);
        let flux = extension(c.id, "flux");
        assert_eq!(store.insert_extension(&flux, &created).await.unwrap(), Write::Written);
        assert_eq!(
            revision(store.clone()).await,
            1,
            "a new extension is a desired-state change"
        );
        let again = operation("sub/rg/c1/extensions/flux", 1);
        assert_eq!(
            store.insert_extension(&flux, &again).await.unwrap(),
            Write::Conflict,
            "the name is taken"
        );
        let other = operation("sub/rg/c1/extensions/gitops", 1);
        assert_eq!(
            store
                .insert_extension(&extension(c.id, "gitops"), &other)
                .await
                .unwrap(),
            Write::Conflict,
            "a second extension of the type"
        );
        assert!(
            store.get_operation(&other.id).await.unwrap().is_none(),
            "a refused write starts nothing"
        );
        let stored = store.extension_of_type(c.id, "microsoft.flux").await.unwrap().unwrap();
        assert_eq!(
            (stored.name.as_str(), stored.spec.release_namespace.as_str()),
            ("flux", "flux-system")
        );

        let updated = crate::model::ExtensionRecord {
            generation: 2,
            etag: "e2".into(),
            ..stored.clone()
        };
        let update = operation("sub/rg/c1/extensions/flux", 2);
        assert_eq!(
            store.update_extension(&updated, "stale", &update).await.unwrap(),
            Write::Conflict
        );
        assert_eq!(
            store.update_extension(&updated, &stored.etag, &update).await.unwrap(),
            Write::Written
        );
        assert_eq!(revision(store.clone()).await, 2);
        assert_eq!(
            store.get_operation(&created.id).await.unwrap().unwrap().status,
            "Canceled",
            "the newer write supersedes the running operation"
        );
        let listed = store.list_extensions(c.id, &page(None, 10)).await.unwrap();
        assert_eq!(listed.len(), 1);
        let desired = store.desired_state(c.id).await.unwrap();
        assert_eq!(desired.extensions.len(), 1, "the agent reads it");

        assert!(
            store
                .delete_extension(c.id, "flux", "sub/rg/c1/extensions/flux")
                .await
                .unwrap()
        );
        assert_eq!(revision(store.clone()).await, 3);
        assert_eq!(
            store.get_operation(&update.id).await.unwrap().unwrap().status,
            "Canceled"
        );
        assert!(
            !store
                .delete_extension(c.id, "flux", "sub/rg/c1/extensions/flux")
                .await
                .unwrap()
        );
    })
    .await;
}

/// An assignment writes each cluster's configuration, then its Flux extension, in one transaction: the extensions'
/// trigger bumps the revision of a cluster the transaction has not written, and neither bumps nor locks again one
/// it has (migration 0025): a lock on a row version of its own would be written into the row and the log for
/// nothing.
#[tokio::test]
async fn extensions_leave_alone_the_clusters_their_transaction_already_wrote() {
    with_database(Backend::Postgres, |db| async move {
        let store = db.store().await;
        let written = registered(&store, "c1").await;
        let untouched = registered(&store, "c2").await;
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pgrowlocks")
            .execute(&pool)
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE clusters SET revision = revision + 1 WHERE id = $1")
            .bind(written.id)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, provisioning_state, \
             observed, system_data) SELECT id, 'flux', 'microsoft.flux', '{}', 1, 'e', 'Creating', '{}', '{}' \
             FROM clusters WHERE id = ANY($1)",
        )
        .bind(vec![written.id, untouched.id])
        .execute(&mut *tx)
        .await
        .unwrap();
        // the row locks this transaction holds on the clusters' current versions (`pgrowlocks`, contrib): the
        // foreign key's of each new extension, and for the cluster written first no second lock of its own
        let rows: Vec<(i64, i64, Vec<String>)> = sqlx::query_as(
            "SELECT c.id, c.revision, l.modes FROM clusters c JOIN pgrowlocks('clusters') l ON l.locked_row = c.ctid \
             WHERE c.id = ANY($1) ORDER BY c.id",
        )
        .bind(vec![written.id, untouched.id])
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let key_share = vec!["For Key Share".to_owned()];
        assert_eq!(
            rows,
            [(written.id, 1, key_share.clone()), (untouched.id, 1, key_share)],
            "each cluster bumped once, and the one written first not locked again"
        );
    })
    .await;
}

on_both_backends!(
    a_first_configuration_brings_the_flux_extension_and_leaves_one_the_cluster_has,
    extension_brought_case
);
async fn extension_brought_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let first = ConfigurationRecord {
            system_data: SystemData::created("alice", Utc::now()),
            ..configuration(c.id, "cfg")
        };
        store
            .insert_configuration(&first, &SecretsWrite::Keep, &operation("sub/rg/c1/cfg", 1))
            .await
            .unwrap();
        let brought = store.extension_of_type(c.id, "microsoft.flux").await.unwrap().unwrap();
        assert_eq!(brought.name, "flux");
        assert_eq!(brought.provisioning_state, ProvisioningState::Creating);
        assert_eq!(
            brought.system_data.created_by, "alice",
            "created with the configuration"
        );
        assert_eq!(brought.spec, crate::extensions::model::ExtensionSpec::flux_default());

        // a cluster whose Flux extension has another name keeps it alone
        let d = registered(&store, "c2").await;
        let own = extension(d.id, "gitops");
        store
            .insert_extension(&own, &operation("sub/rg/c2/extensions/gitops", 1))
            .await
            .unwrap();
        store
            .insert_configuration(
                &configuration(d.id, "cfg"),
                &SecretsWrite::Keep,
                &operation("sub/rg/c2/cfg", 1),
            )
            .await
            .unwrap();
        let kept = store.list_extensions(d.id, &page(None, 10)).await.unwrap();
        assert_eq!(kept.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["gitops"]);
        store
            .insert_configuration(
                &configuration(c.id, "second"),
                &SecretsWrite::Keep,
                &operation("sub/rg/c1/second", 1),
            )
            .await
            .unwrap();
        assert_eq!(store.list_extensions(c.id, &page(None, 10)).await.unwrap().len(), 1);

        assert!(store.delete_cluster(&c.key).await.unwrap());
        assert!(
            store.extension_of_type(c.id, "microsoft.flux").await.unwrap().is_none(),
            "it goes with its cluster"
        );
    })
    .await;
}

on_both_backends!(
    a_configurations_write_reads_it_with_what_its_clusters_flux_extension_gates,
    configuration_for_write_case
);
async fn configuration_for_write_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let empty = store
            .configuration_for_write(c.id, "cfg", "microsoft.flux")
            .await
            .unwrap();
        assert!(empty.current.is_none());
        assert!(empty.flux.extension.is_none());
        assert!(!empty.flux.has_configurations);

        let first = configuration(c.id, "cfg");
        store
            .insert_configuration(&first, &SecretsWrite::Keep, &operation("sub/rg/c1/cfg", 1))
            .await
            .unwrap();
        let read = store
            .configuration_for_write(c.id, "cfg", "microsoft.flux")
            .await
            .unwrap();
        let current = read.current.expect("the configuration as stored");
        assert_eq!(
            (current.name.as_str(), current.etag.as_str()),
            ("cfg", first.etag.as_str())
        );
        assert_eq!(current.generation, 1);
        assert_eq!(
            read.flux.extension,
            Some(("flux".to_owned(), ProvisioningState::Creating))
        );
        assert!(read.flux.has_configurations);
        let other = store
            .configuration_for_write(c.id, "other", "microsoft.flux")
            .await
            .unwrap();
        assert!(other.current.is_none(), "another name of the same cluster");
        assert_eq!(other.flux.extension, read.flux.extension);
        assert!(other.flux.has_configurations);

        // the extension deleted from a cluster that still holds its configuration
        assert!(
            store
                .delete_extension(c.id, "flux", "sub/rg/c1/extensions/flux")
                .await
                .unwrap()
        );
        let gone = store
            .configuration_for_write(c.id, "cfg", "microsoft.flux")
            .await
            .unwrap();
        assert!(gone.current.is_some());
        assert!(gone.flux.extension.is_none());
        assert!(gone.flux.has_configurations);

        // a Flux extension of another name, on another cluster, is what that cluster's writes read
        let d = registered(&store, "c2").await;
        store
            .insert_extension(&extension(d.id, "gitops"), &operation("sub/rg/c2/extensions/gitops", 1))
            .await
            .unwrap();
        let own = store
            .configuration_for_write(d.id, "cfg", "microsoft.flux")
            .await
            .unwrap();
        assert_eq!(
            own.flux.extension,
            Some(("gitops".to_owned(), ProvisioningState::Creating))
        );
        assert!(!own.flux.has_configurations);
    })
    .await;
}

on_both_backends!(
    an_extension_report_acknowledges_its_settings_and_ends_its_generations_operation,
    extension_report_case
);
async fn extension_report_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let key = "sub/rg/c1/extensions/flux";
        let flux = crate::model::ExtensionRecord {
            secrets_version: Some(1),
            sealed: vec![sealed(1, SecretsChange::Replace, None, "key")],
            secrets_expire_at: Some(Utc::now() + chrono::Duration::hours(48)),
            generation_expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
            ..extension(c.id, "flux")
        };
        let created = operation(key, 1);
        store.insert_extension(&flux, &created).await.unwrap();
        let success = installed(crate::lifecycle::OperationState::Succeeded);
        let stale = store
            .apply_extension_report(c.id, "flux", 0, key, &success, None, Utc::now())
            .await
            .unwrap();
        assert_eq!(stale.disposition, crate::model::ReportDisposition::Stale);
        assert_eq!(
            store.get_operation(&created.id).await.unwrap().unwrap().status,
            "InProgress"
        );

        let recorded = store
            .apply_extension_report(c.id, "flux", 1, key, &success, Some(1), Utc::now())
            .await
            .unwrap();
        assert_eq!(recorded.disposition, crate::model::ReportDisposition::Recorded);
        assert!(
            recorded.written_at.is_some(),
            "the first report ends the write's operation"
        );
        let done = store.get_extension(c.id, "flux").await.unwrap().unwrap();
        assert_eq!(done.provisioning_state, ProvisioningState::Succeeded);
        assert_eq!(done.observed.current_version.as_deref(), Some("0.1.0"));
        assert!(done.sealed.is_empty(), "acknowledged settings are deleted");
        assert_eq!((done.secrets_expire_at, done.generation_expires_at), (None, None));
        assert_eq!(done.secrets_version, Some(1), "the cluster still holds version 1");
        assert_eq!(
            store.get_operation(&created.id).await.unwrap().unwrap().status,
            "Succeeded"
        );

        let removed = crate::model::ExtensionReportWrite::Removed;
        let early = store
            .apply_extension_report(c.id, "flux", 1, key, &removed, None, Utc::now())
            .await
            .unwrap();
        assert_eq!(
            early.disposition,
            crate::model::ReportDisposition::Stale,
            "only a deletion is removed"
        );
        let deleting = crate::model::ExtensionRecord {
            generation: 2,
            etag: "e2".into(),
            provisioning_state: ProvisioningState::Deleting,
            ..done.clone()
        };
        let deletion = operation(key, 2);
        store.update_extension(&deleting, &done.etag, &deletion).await.unwrap();
        let gone = store
            .apply_extension_report(c.id, "flux", 2, key, &removed, None, Utc::now())
            .await
            .unwrap();
        assert_eq!(gone.disposition, crate::model::ReportDisposition::Recorded);
        assert!(store.get_extension(c.id, "flux").await.unwrap().is_none());
        assert_eq!(
            store.get_operation(&deletion.id).await.unwrap().unwrap().status,
            "Succeeded"
        );
        let unknown = store
            .apply_extension_report(c.id, "flux", 2, key, &removed, None, Utc::now())
            .await
            .unwrap();
        assert_eq!(unknown.disposition, crate::model::ReportDisposition::Unknown);
    })
    .await;
}

on_both_backends!(
    an_extensions_undelivered_settings_expire_and_fail_when_the_agents_key_changes,
    extension_expiry_case
);
async fn extension_expiry_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let past = Utc::now() - chrono::Duration::seconds(1);
        let flux = crate::model::ExtensionRecord {
            secrets_version: Some(1),
            sealed: vec![sealed(1, SecretsChange::Replace, None, "key")],
            secrets_expire_at: Some(past),
            ..extension(c.id, "flux")
        };
        let created = operation("sub/rg/c1/extensions/flux", 1);
        store.insert_extension(&flux, &created).await.unwrap();
        let expired = store.expire(Utc::now(), &messages()).await.unwrap();
        let summary: Vec<_> = expired.iter().map(|e| (e.name.as_str(), e.secrets)).collect();
        assert_eq!(summary, [("extensions/flux", true)]);
        let failed = store.get_extension(c.id, "flux").await.unwrap().unwrap();
        assert_eq!(failed.provisioning_state, ProvisioningState::Failed);
        assert!(failed.sealed.is_empty(), "no secret outlives its time");
        assert_eq!(failed.failure.as_deref(), Some("extension settings expired"));
        let ended = store.get_operation(&created.id).await.unwrap().unwrap();
        assert_eq!(ended.status, "Failed");
        assert!(store.expire(Utc::now(), &messages()).await.unwrap().is_empty());

        let d = registered(&store, "c2").await;
        let sealed_to_old = crate::model::ExtensionRecord {
            secrets_version: Some(1),
            sealed: vec![sealed(1, SecretsChange::Replace, None, "old")],
            secrets_expire_at: Some(Utc::now() + chrono::Duration::hours(1)),
            ..extension(d.id, "flux")
        };
        store
            .insert_extension(&sealed_to_old, &operation("sub/rg/c2/extensions/flux", 1))
            .await
            .unwrap();
        let failed = store
            .set_agent_encryption_key(d.id, "new", "keys changed")
            .await
            .unwrap();
        assert_eq!(failed.len(), 1);
        let rotated = store.get_extension(d.id, "flux").await.unwrap().unwrap();
        assert!(rotated.sealed.is_empty());
        assert_eq!(rotated.failure.as_deref(), Some("keys changed"));
        assert!(
            store
                .set_agent_encryption_key(d.id, "new", "keys changed")
                .await
                .unwrap()
                .is_empty(),
            "the same key again changes nothing"
        );
    })
    .await;
}

/// A report of the configuration `name` at `generation`: `commit`, failed or compliant.
async fn report_commit(store: &Arc<dyn Store>, c: &ClusterRecord, name: &str, commit: &str, failed: bool) {
    let generation = store.get_configuration(c.id, name).await.unwrap().unwrap().generation;
    let report = crate::model::ReportWrite::Status {
        provisioning_state: if failed {
            ProvisioningState::Failed
        } else {
            ProvisioningState::Succeeded
        },
        compliance_state: if failed {
            ComplianceState::NonCompliant
        } else {
            ComplianceState::Compliant
        },
        observed: Box::new(crate::flux::model::Observed {
            source_synced_commit_id: Some(commit.to_owned()),
            ..Default::default()
        }),
        operation_status: crate::lifecycle::OperationState::Succeeded,
        operation_error: None,
        restored: Vec::new(),
    };
    let key = format!("{}/{name}", c.key);
    let outcome = store
        .apply_report(c.id, name, generation, &key, &report, None, Utc::now())
        .await
        .unwrap();
    assert_eq!(outcome.disposition, crate::model::ReportDisposition::Recorded);
}

/// The history's clock moves on (SQLite records milliseconds; PostgreSQL, its transactions' start).
async fn tick() -> chrono::DateTime<Utc> {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let now = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    now
}

on_both_backends!(
    the_state_counts_and_the_grid_carry_the_commit_each_agent_last_reported,
    commit_counts_case
);
async fn commit_counts_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let scope = ClusterSet::Subscription {
            subscription_key: "sub".to_owned(),
        };
        let c1 = registered(&store, "c1").await;
        let c2 = registered(&store, "c2").await;
        for (c, name) in [(&c1, "a"), (&c1, "b"), (&c2, "a")] {
            store
                .insert_configuration(
                    &configuration(c.id, name),
                    &SecretsWrite::Keep,
                    &operation(&format!("{}/{name}", c.key), 1),
                )
                .await
                .unwrap();
        }
        report_commit(&store, &c1, "a", "main@sha1:aaa", false).await;
        report_commit(&store, &c2, "a", "main@sha1:aaa", true).await;
        // c1/b has not synced yet
        let by_commit = super::StateCountQuery {
            by_commit: true,
            ..Default::default()
        };
        let mut counted: BTreeMap<(i64, Option<String>), i64> = BTreeMap::new();
        for row in store.state_counts(&scope, &by_commit).await.unwrap() {
            *counted.entry((row.cluster_id, row.commit_id)).or_default() += row.count;
        }
        let aaa = Some("main@sha1:aaa".to_owned());
        assert_eq!(
            counted,
            BTreeMap::from([((c1.id, aaa.clone()), 1), ((c1.id, None), 1), ((c2.id, aaa.clone()), 1)])
        );
        let unsplit = store
            .state_counts(&scope, &super::StateCountQuery::default())
            .await
            .unwrap();
        assert!(unsplit.iter().all(|r| r.commit_id.is_none()), "only split when asked");
        let cells = store
            .configuration_states(&scope, "sub/rg/c1", "sub/rg/c2")
            .await
            .unwrap();
        let commits: Vec<(&str, Option<&str>)> = cells
            .iter()
            .map(|c| (c.name.as_str(), c.commit_id.as_deref()))
            .collect();
        assert_eq!(commits, [("a", aaa.as_deref()), ("b", None), ("a", aaa.as_deref())]);
    })
    .await;
}

on_both_backends!(
    a_clusters_configurations_are_answered_as_they_were_at_a_time,
    states_as_of_case
);
async fn states_as_of_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let other = registered(&store, "c2").await;
        let insert = |cluster: ClusterRecord, name: &'static str| {
            let store = store.clone();
            async move {
                store
                    .insert_configuration(
                        &configuration(cluster.id, name),
                        &SecretsWrite::Keep,
                        &operation(&format!("{}/{name}", cluster.key), 1),
                    )
                    .await
                    .unwrap();
            }
        };
        let before_anything = tick().await;
        insert(c.clone(), "b").await;
        insert(c.clone(), "a").await;
        insert(other.clone(), "a").await;
        report_commit(&store, &c, "a", "main@sha1:one", false).await;
        report_commit(&store, &c, "b", "main@sha1:one", false).await;
        let on_one = tick().await;
        report_commit(&store, &c, "a", "main@sha1:two", true).await;
        assert!(store.delete_configuration(c.id, "b", "sub/rg/c1/b").await.unwrap());
        insert(c.clone(), "c").await;
        let on_two = tick().await;

        let at = |when, only: Option<&'static str>, after: &'static str, limit| {
            let store = store.clone();
            async move { store.states_as_of(c.id, when, only, after, limit).await.unwrap() }
        };
        let states = |entries: &[crate::model::StatusRecord]| -> Vec<(String, String, Option<String>)> {
            entries
                .iter()
                .map(|e| (e.name.clone(), e.event.as_str().to_owned(), e.commit_id.clone()))
                .collect()
        };
        let one = Some("main@sha1:one".to_owned());
        let (names, entries) = at(on_one, None, "", 10).await;
        assert_eq!(names, ["a", "b", "c"], "every name the cluster had, in order");
        assert_eq!(
            states(&entries),
            [
                ("a".into(), "Updated".into(), one.clone()),
                ("b".into(), "Updated".into(), one.clone())
            ],
            "c did not exist yet"
        );
        let (_, entries) = at(on_two, None, "", 10).await;
        assert_eq!(
            states(&entries),
            [
                ("a".into(), "Updated".into(), Some("main@sha1:two".into())),
                ("b".into(), "Deleted".into(), one.clone()),
                ("c".into(), "Created".into(), None)
            ]
        );
        assert_eq!(entries[0].compliance_state, "Non-Compliant");
        let (_, entries) = at(before_anything, None, "", 10).await;
        assert!(entries.is_empty(), "{entries:?}");
        // a page of names, and the next
        let (names, _) = at(on_two, None, "", 2).await;
        assert_eq!(names, ["a", "b"]);
        let (names, entries) = at(on_two, None, "b", 2).await;
        assert_eq!((names.as_slice(), entries.len()), (["c".to_owned()].as_slice(), 1));
        // one name
        let (_, entries) = at(on_one, Some("a"), "", 1).await;
        assert_eq!(states(&entries), [("a".into(), "Updated".into(), one.clone())]);
        let (_, entries) = at(on_one, Some("missing"), "", 1).await;
        assert!(entries.is_empty());
    })
    .await;
}

on_both_backends!(
    pruning_keeps_the_state_each_name_was_in_at_the_cut_off_and_drops_what_a_later_entry_supersedes,
    prune_keeps_state_case
);
async fn prune_keeps_state_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        for name in ["a", "b"] {
            store
                .insert_configuration(
                    &configuration(c.id, name),
                    &SecretsWrite::Keep,
                    &operation(&format!("sub/rg/c1/{name}"), 1),
                )
                .await
                .unwrap();
        }
        report_commit(&store, &c, "a", "main@sha1:one", false).await;
        assert!(store.delete_configuration(c.id, "b", "sub/rg/c1/b").await.unwrap());
        let cut = tick().await;
        report_commit(&store, &c, "a", "main@sha1:two", false).await;
        let later = tick().await;

        // a's Created is superseded before the cut; b was deleted before it: nothing of b stays
        let pruned = store.prune_history(cut, None).await.unwrap();
        assert!(pruned > 0);
        let (_, entries) = store.states_as_of(c.id, cut, None, "", 10).await.unwrap();
        let kept: Vec<(String, Option<String>)> =
            entries.iter().map(|e| (e.name.clone(), e.commit_id.clone())).collect();
        assert_eq!(
            kept,
            [("a".to_owned(), Some("main@sha1:one".to_owned()))],
            "a at the cut, still answerable"
        );
        assert_eq!(
            store.prune_history(cut, Some(cut)).await.unwrap(),
            0,
            "a window with nothing in it"
        );
        // the next window: a's new entry crosses and supersedes the one kept
        let pruned = store.prune_history(later, Some(cut)).await.unwrap();
        assert!(pruned > 0);
        let (_, entries) = store.states_as_of(c.id, later, None, "", 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].commit_id.as_deref(), Some("main@sha1:two"));
        let (_, gone) = store.states_as_of(c.id, cut, None, "", 10).await.unwrap();
        assert!(gone.is_empty(), "before the retention nothing is kept: {gone:?}");
    })
    .await;
}

/// Writes the assignment `name` of subscription `sub` (selecting env=prod) reading `url` at branch `main`, with a
/// breaker and a rollout if given.
async fn assignment(
    store: &Arc<dyn Store>,
    name: &str,
    url: &str,
    breaker: Option<serde_json::Value>,
    rollout: Option<serde_json::Value>,
) -> crate::model::PolicyAssignmentRecord {
    assignment_at(store, name, url, "main", breaker, rollout).await
}

async fn assignment_at(
    store: &Arc<dyn Store>,
    name: &str,
    url: &str,
    branch: &str,
    breaker: Option<serde_json::Value>,
    rollout: Option<serde_json::Value>,
) -> crate::model::PolicyAssignmentRecord {
    let mut spec = serde_json::json!({
        "selector": {"matchLabels": {"env": "prod"}},
        "configurationName": name,
        "configurationTemplate": {"gitRepository": {"url": url, "repositoryRef": {"branch": branch}}}
    });
    if let Some(breaker) = breaker {
        spec["circuitBreaker"] = breaker;
    }
    if let Some(rollout) = rollout {
        spec["rollout"] = rollout;
    }
    assignment_of(store, name, spec).await
}

/// Writes the assignment `name` of subscription `sub` as `spec` says.
async fn assignment_of(
    store: &Arc<dyn Store>,
    name: &str,
    spec: serde_json::Value,
) -> crate::model::PolicyAssignmentRecord {
    use crate::fleet::assignments::model::{AssignmentSpec, render};
    let spec: AssignmentSpec = serde_json::from_value(spec).unwrap();
    let rendered = render(&spec).unwrap();
    let scope = crate::arm::scope::FleetScope::parse("sub", None).unwrap();
    let current = store.get_policy_assignment(&format!("sub/{name}")).await.unwrap();
    let expected = current.as_ref().map(|a| a.etag.clone());
    let record = crate::fleet::assignments::service::proposed(&scope, name, &spec, &rendered, None, current, "tester");
    let written = store
        .write_policy_assignment(&record, expected.as_deref(), &ManagedWrite::default())
        .await
        .unwrap();
    assert_eq!(written, crate::model::AssignmentWrite::Written);
    store
        .get_policy_assignment(&format!("sub/{name}"))
        .await
        .unwrap()
        .unwrap()
}

on_both_backends!(
    an_assignment_over_several_chunks_gives_each_cluster_its_own_rendering_and_the_flux_extension,
    chunked_rendering_case
);
async fn chunked_rendering_case(backend: Backend) {
    // past one chunk the template is rendered on a thread of its own, a chunk ahead of the writes
    const CLUSTERS: usize = 2 * super::fleet::CHUNK + 150;
    // these have no team tag, which the template reads: they get nothing, wherever they fall in a chunk
    let unresolvable = |i: usize| i % 7 == 3;
    with_database(backend, |db| async move {
        let store = db.store().await;
        let mut registering = tokio::task::JoinSet::new();
        for i in 0..CLUSTERS {
            let store = store.clone();
            registering.spawn(async move {
                let mut record = cluster("sub", "rg", &format!("c{i:04}"));
                if !unresolvable(i) {
                    record.tags.insert("team".to_owned(), format!("team-{}", i % 5));
                }
                let written = store.insert_cluster(&record, &ManagedWrite::default()).await.unwrap();
                assert_eq!(written, Write::Written);
                (i, store.get_cluster(&record.key).await.unwrap().unwrap().id)
            });
        }
        let mut ids = vec![0; CLUSTERS];
        while let Some(registered) = registering.join_next().await {
            let (i, id) = registered.unwrap();
            ids[i] = id;
        }
        let spec = |branch: &str| {
            serde_json::json!({
                "selector": {"matchLabels": {"env": "prod"}},
                "configurationName": "apps",
                "configurationTemplate": {
                    "gitRepository": {"url": "https://h/org/fleet", "repositoryRef": {"branch": branch}},
                    "kustomizations": {"apps": {
                        "path": "[concat('./clusters/', cluster().name)]",
                        "postBuild": {"substitute": {"team": "[cluster().tags.team]"}}
                    }}
                }
            })
        };
        let check = |generation: i64, branch: &'static str| {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                for (i, id) in ids.into_iter().enumerate() {
                    let configuration = store.get_configuration(id, "apps").await.unwrap();
                    let extension = store.extension_of_type(id, "microsoft.flux").await.unwrap();
                    if unresolvable(i) {
                        assert!(configuration.is_none(), "c{i:04} cannot be rendered for");
                        assert!(extension.is_none(), "nor given Flux");
                        continue;
                    }
                    let configuration = configuration.unwrap_or_else(|| panic!("c{i:04} has the configuration"));
                    assert_eq!(configuration.generation, generation, "c{i:04}");
                    let spec = serde_json::to_value(&configuration.spec).unwrap();
                    let apps = &spec["kustomizations"]["apps"];
                    assert_eq!(apps["path"], format!("./clusters/c{i:04}"), "its own rendering");
                    assert_eq!(apps["postBuild"]["substitute"]["team"], format!("team-{}", i % 5));
                    assert_eq!(spec["gitRepository"]["repositoryRef"]["branch"], branch, "c{i:04}");
                    assert!(extension.is_some(), "c{i:04} holds the Flux extension");
                }
            }
        };
        assignment_of(&store, "apps", spec("main")).await;
        check(1, "main").await;
        // the template changed: every configuration rewritten, each still its own
        assignment_of(&store, "apps", spec("next")).await;
        check(2, "next").await;
    })
    .await;
}

on_both_backends!(
    an_assignments_commits_are_listed_with_their_first_sighting_and_each_clusters_entries,
    assignment_commits_case
);
async fn assignment_commits_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c1 = registered(&store, "c1").await;
        let c2 = registered(&store, "c2").await;
        let a = assignment(&store, "infra", "https://h/org/fleet", None, None).await;
        let other = assignment(&store, "apps", "https://h/org/apps", None, None).await;
        let start = tick().await;
        report_commit(&store, &c1, "infra", "main@sha1:one", false).await;
        let first = tick().await;
        report_commit(&store, &c2, "infra", "main@sha1:one", true).await;
        report_commit(&store, &c1, "apps", "main@sha1:elsewhere", false).await;
        report_commit(&store, &c1, "infra", "main@sha1:two", false).await;
        let commits = store.assignment_commits(&a.arm_id(), 100).await.unwrap();
        let names: Vec<&str> = commits.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["main@sha1:one", "main@sha1:two"], "its own commits only");
        assert!(commits[0].1 >= start && commits[0].1 <= first, "{commits:?}");
        assert!(commits[1].1 > first);
        assert_eq!(
            store.assignment_commits(&a.arm_id(), 1).await.unwrap().len(),
            1,
            "bounded"
        );
        assert_eq!(store.assignment_commits(&other.arm_id(), 100).await.unwrap().len(), 1);

        let mut seen = store.commit_sightings(&a.arm_id(), "main@sha1:one").await.unwrap();
        seen.sort_by_key(|s| (s.cluster_id, s.first_at));
        let selected = [c1.id, c2.id].into();
        let spread = crate::fleet::commits::spread(&seen, &selected);
        assert_eq!((spread.clusters, spread.failed), (2, 1), "{seen:?}");
        assert!(spread.reached[0].is_some_and(|t| t <= first), "c1 is half");
        assert!(spread.reached[2].is_some_and(|t| t > first), "c2 completed it");
    })
    .await;
}

on_both_backends!(
    a_commit_failing_past_the_breaker_halts_every_assignment_reading_its_repository_once,
    breaker_case
);
async fn breaker_case(backend: Backend) {
    use crate::fleet::assignments::rollout::RolloutPhase;
    with_database(backend, |db| async move {
        let store = db.store().await;
        let mut clusters = Vec::new();
        for name in ["c1", "c2", "c3", "c4"] {
            clusters.push(registered(&store, name).await);
        }
        let breaker = serde_json::json!({"maxFailurePercent": 50, "minClusters": 3});
        let rollout = serde_json::json!({"batchSize": 1});
        let infra = assignment(&store, "infra", "https://h/org/fleet.git", Some(breaker), None).await;
        // the same repository spelled otherwise, without a breaker of its own, rolling out in batches (written
        // first without, so that every cluster has it and its rollout is at rest)
        assignment(&store, "apps", "ssh://git@H/org/fleet", None, None).await;
        assignment(&store, "apps", "ssh://git@H/org/fleet", None, Some(rollout.clone())).await;
        assignment(&store, "other", "https://h/org/other", None, None).await;
        // a source that is no Git repository: its configurations' sources are read, and nothing is watched
        {
            use crate::fleet::assignments::model::{AssignmentSpec, render};
            let spec: AssignmentSpec = serde_json::from_value(serde_json::json!({
                "selector": {"matchLabels": {"env": "prod"}},
                "configurationName": "objects",
                "configurationTemplate": {"sourceKind": "Bucket",
                                          "bucket": {"url": "https://h/org/fleet", "bucketName": "fleet"}}
            }))
            .unwrap();
            let scope = crate::arm::scope::FleetScope::parse("sub", None).unwrap();
            let record = crate::fleet::assignments::service::proposed(
                &scope,
                "objects",
                &spec,
                &render(&spec).unwrap(),
                None,
                None,
                "tester",
            );
            store
                .write_policy_assignment(&record, None, &ManagedWrite::default())
                .await
                .unwrap();
        }
        let state = |name: &'static str| {
            let store = store.clone();
            async move {
                store
                    .get_policy_assignment(&format!("sub/{name}"))
                    .await
                    .unwrap()
                    .unwrap()
                    .rollout_state
            }
        };
        let reconcile = || async { store.reconcile_assignments(&ManagedWrite::default()).await.unwrap() };
        // failing on two clusters, as on a cluster of another repository: not yet enough clusters applied it
        report_commit(&store, &clusters[0], "infra", "main@sha1:bad", true).await;
        report_commit(&store, &clusters[1], "infra", "main@sha1:bad", true).await;
        report_commit(&store, &clusters[3], "other", "main@sha1:bad", true).await;
        reconcile().await;
        assert_eq!(state("infra").await, None);
        // a third cluster applies it through the other assignment: 2 of 3 failed, more than 50%
        report_commit(&store, &clusters[2], "apps", "main@sha1:bad", false).await;
        report_commit(&store, &clusters[1], "apps", "main@sha1:bad", true).await;
        reconcile().await;
        for name in ["infra", "apps"] {
            let halted = state(name).await.expect("halted");
            assert_eq!(halted.state, RolloutPhase::Halted, "{name}");
            let message = halted.message.unwrap();
            for part in [
                "main@sha1:bad",
                "2 of the 3 clusters",
                "(66%)",
                "h/org/fleet",
                "'infra'",
            ] {
                assert!(message.contains(part), "{name}: {message} lacks {part}");
            }
        }
        assert_eq!(state("other").await, None, "another repository goes on");
        assert_eq!(state("objects").await, None, "a bucket is no Git repository");
        assert_eq!(state("apps").await.unwrap().batch, 4, "at rest: every batch reached");

        // a write that renders the same configuration leaves the halt as it is
        let same = assignment(&store, "apps", "ssh://git@H/org/fleet", None, Some(rollout.clone())).await;
        assert_eq!(same.rollout_state.unwrap().state, RolloutPhase::Halted);
        // once per commit: a corrected template goes on, though its clusters still report the commit failing
        let corrected = assignment_at(
            &store,
            "infra",
            "https://h/org/fleet.git",
            "fixed",
            Some(serde_json::json!({"maxFailurePercent": 50, "minClusters": 3})),
            Some(rollout),
        )
        .await;
        assert_eq!(corrected.generation, infra.generation + 1);
        assert_eq!(
            corrected.rollout_state.as_ref().unwrap().state,
            RolloutPhase::Progressing
        );
        reconcile().await;
        assert_ne!(
            state("infra").await.unwrap().state,
            RolloutPhase::Halted,
            "not halted again by the same commit"
        );
        // another failing commit trips it again
        for c in &clusters[..3] {
            report_commit(&store, c, "apps", "main@sha1:worse", true).await;
        }
        reconcile().await;
        let halted = state("infra").await.unwrap();
        assert_eq!(halted.state, RolloutPhase::Halted);
        assert!(halted.message.unwrap().contains("main@sha1:worse"));
        assert!(
            state("apps").await.unwrap().message.unwrap().contains("main@sha1:bad"),
            "a halt stays what it was"
        );
    })
    .await;
}

on_both_backends!(
    a_page_of_a_clusters_past_reads_more_names_than_a_compound_select_may_hold,
    states_as_of_many_case
);
async fn states_as_of_many_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        // SQLite refuses a compound SELECT of more than 500 terms
        for i in 0..600 {
            let name = format!("cfg-{i:03}");
            store
                .insert_configuration(
                    &configuration(c.id, &name),
                    &SecretsWrite::Keep,
                    &operation(&format!("sub/rg/c1/{name}"), 1),
                )
                .await
                .unwrap();
        }
        let (names, entries) = store.states_as_of(c.id, tick().await, None, "", 1001).await.unwrap();
        assert_eq!((names.len(), entries.len()), (600, 600));
        assert_eq!(entries[599].name, "cfg-599", "in name order");
    })
    .await;
}

fn git_configuration(cluster_id: i64, name: &str, url: &str, reference: serde_json::Value) -> ConfigurationRecord {
    ConfigurationRecord {
        spec: serde_json::from_value(serde_json::json!({
            "sourceKind": "GitRepository",
            "gitRepository": {"url": url, "repositoryRef": reference}
        }))
        .unwrap(),
        ..configuration(cluster_id, name)
    }
}

on_both_backends!(
    a_reconcile_request_moves_the_revision_and_wakes_polls_but_no_generation,
    reconcile_request_case
);
async fn reconcile_request_case(backend: Backend) {
    use crate::model::ReconcileTarget;
    use crate::notify::Notifier;
    with_database(backend, |db| async move {
        let store = db.store().await;
        let (a, b) = (registered(&store, "a").await, registered(&store, "b").await);
        for (cluster, name, url) in [
            (a.id, "fleet", "https://github.com/org/fleet.git"),
            (a.id, "other", "https://github.com/org/other"),
            (b.id, "fleet", "git@github.com:org/fleet.git"),
        ] {
            let record = git_configuration(cluster, name, url, serde_json::json!({"branch": "main"}));
            store
                .insert_configuration(
                    &record,
                    &SecretsWrite::Keep,
                    &operation(&format!("{cluster}/{name}"), 1),
                )
                .await
                .unwrap();
        }
        let sources = store
            .git_sources(
                &ClusterSet::Subscription {
                    subscription_key: "sub".into(),
                },
                "FLEET",
            )
            .await
            .unwrap();
        assert_eq!(
            sources.len(),
            2,
            "looked up by the repository's name, in any case: {sources:?}"
        );
        assert_eq!(sources[0].reference.branch.as_deref(), Some("main"));
        let revision = |cluster: i64| {
            let store = store.clone();
            async move { store.revision(cluster).await.unwrap().unwrap() }
        };
        let (before_a, before_b) = (revision(a.id).await, revision(b.id).await);

        // an agent of `a` waits, as a long-poll does
        let notifier = Arc::new(Notifier::default());
        let follower = tokio::spawn({
            let (store, notifier) = (store.clone(), notifier.clone());
            async move { store.follow_changes(notifier).await }
        });
        let mut waiting = notifier.subscribe(&a.key);
        let at = crate::lifecycle::reconcile_requested(Utc::now());
        let ids: Vec<i64> = sources.iter().map(|s| s.configuration_id).collect();
        // retried until the follower listens (PostgreSQL's LISTEN starts on a connection of its own)
        let mut woken = false;
        for _ in 0..20 {
            assert_eq!(
                store
                    .request_reconcile(ReconcileTarget::Configurations(&ids), at, None)
                    .await
                    .unwrap(),
                2
            );
            if tokio::time::timeout(std::time::Duration::from_millis(250), waiting.changed())
                .await
                .is_ok()
            {
                woken = true;
                break;
            }
        }
        follower.abort();
        assert!(woken, "the waiting poll of the cluster woke");
        assert!(revision(a.id).await > before_a);
        assert!(revision(b.id).await > before_b);
        let desired = store.desired_state(a.id).await.unwrap();
        let fleet = desired.configurations.iter().find(|c| c.name == "fleet").unwrap();
        let other = desired.configurations.iter().find(|c| c.name == "other").unwrap();
        assert_eq!(fleet.reconcile_requested_at, Some(at));
        assert_eq!(fleet.generation, 1, "no new generation");
        assert_eq!(other.reconcile_requested_at, None, "only those asked");
        let history = store.latest_status_event().await.unwrap();
        assert!(history > 0);
        store
            .request_reconcile(ReconcileTarget::Configurations(&ids), at, None)
            .await
            .unwrap();
        assert_eq!(
            store.latest_status_event().await.unwrap(),
            history,
            "a request is no event of the configurations' history"
        );
    })
    .await;
}

on_both_backends!(
    the_failing_configurations_are_read_per_cluster_and_per_assignment,
    failing_gauges_case
);
async fn failing_gauges_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let (a, b) = (registered(&store, "a").await, registered(&store, "b").await);
        for (cluster, name, compliance) in [
            (a.id, "x", ComplianceState::NonCompliant),
            (a.id, "y", ComplianceState::NonCompliant),
            (a.id, "z", ComplianceState::Compliant),
            (b.id, "x", ComplianceState::Pending),
        ] {
            let record = ConfigurationRecord {
                compliance_state: compliance,
                ..configuration(cluster, name)
            };
            store
                .insert_configuration(
                    &record,
                    &SecretsWrite::Keep,
                    &operation(&format!("{cluster}/{name}"), 1),
                )
                .await
                .unwrap();
        }
        let gauges = store.failing_gauges().await.unwrap();
        assert_eq!(
            gauges.by_assignment,
            [(String::new(), 2)],
            "unmanaged: two of four fail"
        );
        assert_eq!(
            gauges.clusters.len(),
            1,
            "only clusters with failing configurations: {:?}",
            gauges.clusters
        );
        assert_eq!(gauges.clusters[0].failing, 2);
        assert_eq!(gauges.clusters[0].tags["env"], "prod");
        store.compact_rollups().await.unwrap();
        assert_eq!(
            store.failing_gauges().await.unwrap().by_assignment,
            [(String::new(), 2)],
            "folded the same"
        );
    })
    .await;
}

fn receiver(subscription: &str, name: &str, per_minute: u32) -> crate::model::AlertReceiverRecord {
    let spec = crate::alerts::model::ReceiverSpec {
        kind: crate::alerts::model::ReceiverKind::Webhook,
        url_host: "127.0.0.1".into(),
        rate_limit_per_minute: per_minute,
    };
    crate::model::AlertReceiverRecord {
        id: 0,
        key: format!("{subscription}/{name}"),
        subscription_key: subscription.into(),
        resource_group_key: String::new(),
        subscription: subscription.into(),
        resource_group: None,
        name: name.into(),
        spec,
        sealed_url: "sealed".into(),
        sealed_signing_key: None,
        etag: "e".into(),
        system_data: SystemData::created("tester", Utc::now()),
        tokens: crate::alerts::model::RateLimit { per_minute }.capacity(),
        tokens_at: Utc::now(),
        dropped: 0,
        dropped_at: None,
    }
}

fn rule(subscription: &str, name: &str, spec: serde_json::Value, receivers: Vec<i64>) -> crate::model::AlertRuleRecord {
    let mut spec = spec;
    spec["receiverIds"] = serde_json::json!(["/x"]);
    crate::model::AlertRuleRecord {
        id: 0,
        key: format!("{subscription}/{name}"),
        subscription_key: subscription.into(),
        resource_group_key: String::new(),
        subscription: subscription.into(),
        resource_group: None,
        name: name.into(),
        spec: serde_json::from_value(spec).unwrap(),
        cluster_group_id: None,
        etag: "e".into(),
        system_data: SystemData::created("tester", Utc::now()),
        receivers,
    }
}

/// A receiver and a rule sending it `events` (interval in seconds), as stored.
async fn alerting(
    store: &Arc<dyn Store>,
    events: serde_json::Value,
    interval: u32,
) -> (crate::model::AlertReceiverRecord, crate::model::AlertRuleRecord) {
    assert_eq!(
        store.insert_alert_receiver(&receiver("sub", "ops", 60)).await.unwrap(),
        Write::Written
    );
    let receiver = store.get_alert_receiver("sub/ops").await.unwrap().unwrap();
    let record = rule(
        "sub",
        "prod",
        serde_json::json!({"events": events, "minimumIntervalInSeconds": interval, "severity": "Error"}),
        vec![receiver.id],
    );
    assert_eq!(store.insert_alert_rule(&record).await.unwrap(), Write::Written);
    let rule = store.get_alert_rule("sub/prod").await.unwrap().unwrap();
    assert_eq!(rule.receivers, vec![receiver.id]);
    (receiver, rule)
}

const LIMITS: crate::model::DispatchLimits = crate::model::DispatchLimits {
    batch: 500,
    backlog: 10_000,
};

async fn report(store: &Arc<dyn Store>, cluster: i64, name: &str, compliance: ComplianceState) {
    store
        .apply_report(
            cluster,
            name,
            1,
            &format!("sub/rg/c1/{name}"),
            &applied(compliance),
            None,
            Utc::now(),
        )
        .await
        .unwrap();
}

on_both_backends!(
    status_transitions_become_messages_once_and_the_minimum_interval_holds_back_the_rest,
    outbox_case
);
async fn outbox_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        store
            .insert_configuration(
                &configuration(c.id, "cfg"),
                &SecretsWrite::Keep,
                &operation("sub/rg/c1/cfg", 1),
            )
            .await
            .unwrap();
        report(&store, c.id, "cfg", ComplianceState::NonCompliant).await;
        assert_eq!(store.alert_queues().await.unwrap(), (0, 0), "no rule, nothing queued");

        let (receiver, rule) = alerting(
            &store,
            serde_json::json!(["BecameNonCompliant", "BecameCompliant"]),
            300,
        )
        .await;
        // the history remembers the Non-Compliant report from before the rule: this is back to Compliant
        report(&store, c.id, "cfg", ComplianceState::Compliant).await;
        assert_eq!(store.alert_queues().await.unwrap(), (1, 0));
        let now = Utc::now();
        let done = store.dispatch_alerts(now, &LIMITS).await.unwrap();
        assert_eq!((done.taken, done.queued, done.held), (1, 1, 0));
        assert_eq!(
            store.alert_queues().await.unwrap(),
            (0, 1),
            "the event became one message"
        );
        assert_eq!(
            store.dispatch_alerts(now, &LIMITS).await.unwrap().taken,
            0,
            "and is gone"
        );

        // flapping within the interval: held back, then one message standing for both
        report(&store, c.id, "cfg", ComplianceState::NonCompliant).await;
        report(&store, c.id, "cfg", ComplianceState::Compliant).await;
        let done = store.dispatch_alerts(now, &LIMITS).await.unwrap();
        assert_eq!((done.taken, done.queued, done.held), (2, 0, 2));
        assert_eq!(
            store.flush_held_alerts(now, &LIMITS).await.unwrap().queued,
            0,
            "not yet"
        );
        let later = now + chrono::Duration::seconds(301);
        assert_eq!(store.flush_held_alerts(later, &LIMITS).await.unwrap().queued, 1);
        assert_eq!(
            store.flush_held_alerts(later, &LIMITS).await.unwrap().taken,
            0,
            "flushed once"
        );

        let log = store.list_deliveries(receiver.id, None, 10).await.unwrap();
        assert_eq!(log.len(), 2);
        let digest = &log[0].message;
        assert_eq!(digest.kind, "BecameCompliant", "the latest state");
        assert_eq!(digest.digest.as_ref().unwrap().events, 2);
        assert_eq!(digest.rule.as_ref().unwrap().name, "prod");
        assert_eq!(digest.severity, crate::alerts::model::Severity::Error);
        assert_eq!(log[1].message.kind, "BecameCompliant");
        assert_eq!(log[1].message.configuration_name.as_deref(), Some("cfg"));
        assert_ne!(log[0].delivery_id, log[1].delivery_id);
        assert_eq!(
            store.list_deliveries(receiver.id, Some(log[0].id), 10).await.unwrap()[0].id,
            log[1].id,
            "paged newest first"
        );

        // leased, rate-limited, finished
        let lease = later + chrono::Duration::seconds(30);
        let (_, claimed, limited) = store
            .claim_deliveries(receiver.id, later, lease, 50)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((claimed.len(), limited), (2, false));
        assert!(
            claimed
                .iter()
                .all(|d| d.attempts == 1 && d.state == crate::lifecycle::DeliveryState::Sending)
        );
        assert!(
            store
                .claim_deliveries(receiver.id, later, lease, 50)
                .await
                .unwrap()
                .unwrap()
                .1
                .is_empty(),
            "leased"
        );
        let delivered = crate::model::DeliveryOutcome {
            state: crate::lifecycle::DeliveryState::Delivered,
            due_at: later,
            status_code: Some(200),
            error: None,
        };
        let finish = |id: i64, attempts: i32, outcome: &crate::model::DeliveryOutcome, attempted: bool| {
            let store = store.clone();
            let finished = crate::model::FinishedDelivery {
                id,
                attempts,
                attempted_at: attempted.then_some(later),
                outcome: outcome.clone(),
            };
            async move { store.finish_deliveries(&[finished]).await.unwrap()[0] }
        };
        assert!(finish(claimed[0].id, 1, &delivered, true).await);
        assert!(!finish(claimed[0].id, 1, &delivered, true).await, "finished once");
        // the second one's sender died: its lease ends, and it is taken again
        let after_lease = lease + chrono::Duration::seconds(1);
        let (_, again, _) = store
            .claim_deliveries(
                receiver.id,
                after_lease,
                after_lease + chrono::Duration::seconds(30),
                50,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.len(), again[0].id, again[0].attempts), (1, claimed[1].id, 2));
        assert!(
            !finish(claimed[1].id, 1, &delivered, true).await,
            "the dead lease's end is void"
        );
        let retry = crate::model::DeliveryOutcome {
            state: crate::lifecycle::DeliveryState::Pending,
            due_at: after_lease + chrono::Duration::seconds(10),
            status_code: Some(503),
            error: Some("the receiver answered 503".into()),
        };
        assert!(finish(claimed[1].id, 2, &retry, true).await);
        let status = store.receiver_status(receiver.id).await.unwrap();
        assert_eq!(status.backlog, 1);
        assert_eq!(
            status.next_attempt_at.map(|t| t.trunc_subsecs(6)),
            Some(retry.due_at.trunc_subsecs(6))
        );
        assert_eq!(status.last_failure.unwrap().1, Some(503));
        assert!(status.last_delivered_at.is_some());
        assert_eq!(
            store.due_receivers(after_lease, 10).await.unwrap(),
            Vec::<i64>::new(),
            "not due yet"
        );
        assert_eq!(store.due_receivers(retry.due_at, 10).await.unwrap(), vec![receiver.id]);
        // released without an attempt: the attempt its lease counted is given back
        let (_, leased, _) = store
            .claim_deliveries(
                receiver.id,
                retry.due_at,
                retry.due_at + chrono::Duration::seconds(30),
                50,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(leased[0].attempts, 3);
        let back = crate::model::DeliveryOutcome {
            state: crate::lifecycle::DeliveryState::Pending,
            due_at: retry.due_at,
            status_code: None,
            error: None,
        };
        assert!(finish(leased[0].id, 3, &back, false).await);
        let log = store.list_deliveries(receiver.id, None, 10).await.unwrap();
        let released = log.iter().find(|d| d.id == leased[0].id).unwrap();
        assert_eq!(
            (released.attempts, released.state),
            (2, crate::lifecycle::DeliveryState::Pending)
        );
        assert_eq!(
            released.last_error.as_deref(),
            Some("the receiver answered 503"),
            "its last error kept"
        );

        // a full backlog drops what does not fit, and counts it
        report(&store, c.id, "cfg", ComplianceState::NonCompliant).await;
        let tight = crate::model::DispatchLimits { batch: 500, backlog: 1 };
        let done = store
            .dispatch_alerts(later + chrono::Duration::seconds(600), &tight)
            .await
            .unwrap();
        assert_eq!((done.queued, done.dropped.clone()), (0, vec![(receiver.id, 1)]));
        assert_eq!(store.get_alert_receiver("sub/ops").await.unwrap().unwrap().dropped, 1);

        // a receiver that rules send to stays; deleting both takes the log with them
        assert_eq!(
            store.delete_alert_receiver("sub/ops").await.unwrap(),
            crate::model::GroupDelete::InUse
        );
        assert!(store.delete_alert_rule(&rule.key).await.unwrap());
        assert_eq!(
            store.delete_alert_receiver("sub/ops").await.unwrap(),
            crate::model::GroupDelete::Deleted
        );
        assert_eq!(store.alert_queues().await.unwrap(), (0, 0));
    })
    .await;
}

on_both_backends!(
    silence_reconnection_and_expiry_are_queued_in_their_own_transactions,
    connectivity_alerts_case
);
async fn connectivity_alerts_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let (receiver, _) = alerting(
            &store,
            serde_json::json!(["ClusterOffline", "ClusterReconnected", "ChangeExpired"]),
            0,
        )
        .await;
        let start = Utc::now();
        heard(store.as_ref(), c.id, start - chrono::Duration::hours(1), None).await;
        assert_eq!(
            store.mark_offline(start - chrono::Duration::minutes(5)).await.unwrap(),
            1
        );
        heard(store.as_ref(), c.id, start, None).await;
        heard(store.as_ref(), c.id, start, None).await;
        let expiring = ConfigurationRecord {
            generation_expires_at: Some(start - chrono::Duration::seconds(1)),
            ..configuration(c.id, "cfg")
        };
        store
            .insert_configuration(&expiring, &SecretsWrite::Keep, &operation("sub/rg/c1/cfg", 1))
            .await
            .unwrap();
        let messages = crate::lifecycle::Lifetimes {
            secrets: std::time::Duration::from_secs(3600),
            pending: std::time::Duration::from_secs(3600),
        }
        .messages();
        assert_eq!(
            store.expire(start, &messages).await.unwrap().len(),
            2,
            "the configuration and its extension"
        );
        store.dispatch_alerts(start, &LIMITS).await.unwrap();
        let log = store.list_deliveries(receiver.id, None, 10).await.unwrap();
        let mut kinds: Vec<&str> = log.iter().map(|d| d.message.kind.as_str()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            ["ChangeExpired", "ChangeExpired", "ClusterOffline", "ClusterReconnected"],
            "the first heartbeat (Connecting) and the repeated one alert nothing"
        );
        let mut subjects: Vec<&str> = log
            .iter()
            .filter(|d| d.message.kind == "ChangeExpired")
            .map(|d| d.message.subject.rsplit_once("/providers/").unwrap().1)
            .collect();
        subjects.sort();
        assert_eq!(
            subjects,
            [
                "Microsoft.KubernetesConfiguration/extensions/flux",
                "Microsoft.KubernetesConfiguration/fluxConfigurations/cfg"
            ]
        );
    })
    .await;
}

on_both_backends!(
    dispatchers_running_at_once_turn_each_event_into_its_messages_once,
    concurrent_dispatch_case
);
async fn concurrent_dispatch_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let (receiver, _) = alerting(&store, serde_json::json!(["BecameNonCompliant"]), 0).await;
        const CONFIGURATIONS: usize = 120;
        for i in 0..CONFIGURATIONS {
            let name = format!("cfg-{i:03}");
            store
                .insert_configuration(
                    &configuration(c.id, &name),
                    &SecretsWrite::Keep,
                    &operation(&format!("sub/rg/c1/{name}"), 1),
                )
                .await
                .unwrap();
            report(&store, c.id, &name, ComplianceState::NonCompliant).await;
        }
        let small = crate::model::DispatchLimits {
            batch: 7,
            backlog: 10_000,
        };
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut queued = 0;
                    loop {
                        let done = store.dispatch_alerts(Utc::now(), &small).await.unwrap();
                        queued += done.queued;
                        if done.taken == 0 {
                            return queued;
                        }
                    }
                })
            })
            .collect();
        let mut queued = 0;
        for worker in workers {
            queued += worker.await.unwrap();
        }
        assert_eq!(queued, CONFIGURATIONS);
        let log = store.list_deliveries(receiver.id, None, 1000).await.unwrap();
        let subjects: std::collections::BTreeSet<_> = log.iter().map(|d| d.message.subject.clone()).collect();
        assert_eq!(
            (log.len(), subjects.len()),
            (CONFIGURATIONS, CONFIGURATIONS),
            "each once"
        );
    })
    .await;
}

on_both_backends!(
    dispatchers_meeting_on_one_flapping_subject_send_one_message_and_hold_the_rest,
    concurrent_throttle_case
);
async fn concurrent_throttle_case(backend: Backend) {
    with_database(backend, |db| async move {
        let store = db.store().await;
        let c = registered(&store, "c1").await;
        let (receiver, _) = alerting(
            &store,
            serde_json::json!(["BecameNonCompliant", "BecameCompliant"]),
            300,
        )
        .await;
        store
            .insert_configuration(
                &configuration(c.id, "cfg"),
                &SecretsWrite::Keep,
                &operation("sub/rg/c1/cfg", 1),
            )
            .await
            .unwrap();
        const FLAPS: usize = 40;
        for i in 0..FLAPS {
            let state = if i % 2 == 0 {
                ComplianceState::NonCompliant
            } else {
                ComplianceState::Compliant
            };
            report(&store, c.id, "cfg", state).await;
        }
        let now = Utc::now();
        let small = crate::model::DispatchLimits {
            batch: 3,
            backlog: 10_000,
        };
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let (mut queued, mut held) = (0, 0);
                    loop {
                        let done = store.dispatch_alerts(now, &small).await.unwrap();
                        queued += done.queued;
                        held += done.held;
                        if done.taken == 0 {
                            return (queued, held);
                        }
                    }
                })
            })
            .collect();
        let (mut queued, mut held) = (0, 0);
        for worker in workers {
            let (q, h) = worker.await.unwrap();
            queued += q;
            held += h;
        }
        assert_eq!((queued, held), (1, FLAPS - 1), "one message, the rest held back");
        let flushed = store
            .flush_held_alerts(now + chrono::Duration::seconds(301), &LIMITS)
            .await
            .unwrap();
        assert_eq!(flushed.queued, 1);
        let log = store.list_deliveries(receiver.id, None, 10).await.unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].message.digest.as_ref().unwrap().events, (FLAPS - 1) as u64);
        assert_eq!(log[0].message.kind, "BecameCompliant", "the flapping's last state");
    })
    .await;
}

fn batched(
    cluster: &ClusterRecord,
    name: &str,
    generation: i64,
    write: crate::model::ReportWrite,
) -> crate::model::ConfigurationReportWrite {
    crate::model::ConfigurationReportWrite {
        cluster_id: cluster.id,
        name: name.to_owned(),
        generation,
        resource_key: format!("{}/{name}", cluster.key),
        write,
        secrets_version: None,
    }
}

on_both_backends!(
    a_batch_of_reports_answers_each_as_if_applied_alone_and_in_order,
    batch_case
);
async fn batch_case(backend: Backend) {
    use crate::model::{AgentInfo, HeartbeatWrite, ReportDisposition};
    with_database(backend, |db| async move {
        let store = db.store().await;
        let (c1, c2) = (registered(&store, "c1").await, registered(&store, "c2").await);
        let mut operations = BTreeMap::new();
        for (c, name) in [(&c1, "a"), (&c1, "b"), (&c2, "a")] {
            let op = operation(&format!("{}/{name}", c.key), 1);
            store
                .insert_configuration(&configuration(c.id, name), &SecretsWrite::Keep, &op)
                .await
                .unwrap();
            operations.insert((c.id, name), op.id);
        }
        // b moves on to generation 2: a report on 1 is stale
        let stored = store.get_configuration(c1.id, "b").await.unwrap().unwrap();
        let next = ConfigurationRecord {
            generation: 2,
            etag: "e2".into(),
            ..stored.clone()
        };
        let b_key = format!("{}/b", c1.key);
        store
            .update_configuration(&next, &SecretsWrite::Keep, &stored.etag, &operation(&b_key, 2))
            .await
            .unwrap();
        // held's secrets are acknowledged in the batch
        with_secrets(
            &store,
            c2.id,
            "held",
            "agent-key",
            Utc::now() + chrono::Duration::hours(1),
        )
        .await;
        let mut acknowledging = batched(&c2, "held", 1, applied(ComplianceState::Compliant));
        acknowledging.secrets_version = Some(1);

        let reports = vec![
            batched(&c1, "a", 1, applied(ComplianceState::Compliant)),
            batched(&c1, "b", 1, applied(ComplianceState::Compliant)),
            batched(&c1, "gone", 1, applied(ComplianceState::Compliant)),
            batched(&c2, "a", 1, applied(ComplianceState::Compliant)),
            // the same configuration again, later: applied after the first, as it would be alone
            batched(&c1, "a", 1, applied(ComplianceState::NonCompliant)),
            acknowledging,
        ];
        let heartbeats = vec![
            HeartbeatWrite {
                cluster_id: c1.id,
                info: AgentInfo {
                    agent_version: Some("1.2.3".into()),
                    ..Default::default()
                },
            },
            HeartbeatWrite {
                cluster_id: 987_654,
                info: AgentInfo::default(),
            },
            HeartbeatWrite {
                cluster_id: c1.id,
                info: AgentInfo {
                    total_node_count: Some(3),
                    ..Default::default()
                },
            },
        ];
        let outcome = store.apply_reports(&reports, &heartbeats, Utc::now()).await.unwrap();
        let dispositions: Vec<_> = outcome.reports.iter().map(|o| o.disposition).collect();
        assert_eq!(
            dispositions,
            [
                ReportDisposition::Recorded,
                ReportDisposition::Stale,
                ReportDisposition::Unknown,
                ReportDisposition::Recorded,
                ReportDisposition::Recorded,
                ReportDisposition::Recorded,
            ]
        );
        assert!(
            outcome.reports[0].written_at.is_some(),
            "the first report on a write ends its operation"
        );
        assert!(outcome.reports[3].written_at.is_some());
        assert_eq!(outcome.reports[4].written_at, None, "the operation had ended already");
        assert_eq!(
            store
                .get_operation(&operations[&(c1.id, "a")])
                .await
                .unwrap()
                .unwrap()
                .status,
            "Succeeded"
        );

        let a = store.get_configuration(c1.id, "a").await.unwrap().unwrap();
        assert_eq!(
            a.compliance_state,
            ComplianceState::NonCompliant,
            "the later report is the status"
        );
        let b = store.get_configuration(c1.id, "b").await.unwrap().unwrap();
        assert_eq!(b.reported_generation, None, "a stale report changed nothing");
        let held = store.get_configuration(c2.id, "held").await.unwrap().unwrap();
        assert_eq!(held.compliance_state, ComplianceState::Compliant);
        assert_eq!(held.secrets_expire_at, None, "the acknowledged secrets are deleted");
        assert!(undelivered(&store, c2.id, "held").await.is_empty());

        let revision = store.revision(c1.id).await.unwrap();
        assert!(revision.is_some());
        assert_eq!(
            outcome.revisions,
            [revision, None, revision],
            "a heartbeat of a cluster gone finds none"
        );
        let heard = store.get_cluster(&c1.key).await.unwrap().unwrap();
        assert_eq!(heard.connectivity_status, "Connected");
        assert_eq!(
            heard.agent_version.as_deref(),
            Some("1.2.3"),
            "what the agent said first is kept"
        );
        assert_eq!(heard.total_node_count, Some(3));

        // both reports on a are in its history, in the order they came
        let history = store
            .history(&crate::model::HistoryQuery {
                subject: crate::model::HistorySubject::Configuration {
                    cluster_id: c1.id,
                    name: "a".into(),
                },
                resource_key: format!("{}/a", c1.key),
                below: false,
                from: Utc::now() - chrono::Duration::hours(1),
                to: Utc::now() + chrono::Duration::hours(1),
                after_status: 0,
                after_write: 0,
                after_rollout: 0,
                limit: 100,
            })
            .await
            .unwrap();
        let mut states: Vec<_> = history
            .status
            .iter()
            .map(|s| (s.id, s.compliance_state.clone()))
            .collect();
        states.sort();
        let states: Vec<_> = states.into_iter().map(|(_, state)| state).collect();
        assert_eq!(states, ["Pending", "Compliant", "Non-Compliant"]);

        let (rolled, truth) = rollups_and_truth(&store).await;
        assert_eq!(rolled, truth, "the summary's rollups stay exact");
    })
    .await;
}
