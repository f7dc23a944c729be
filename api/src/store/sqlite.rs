//! The embedded SQLite store: the default, so that fluxplane runs on a fresh machine with no database server.
//! WAL mode lets readers proceed beside the single writer; the busy timeout makes concurrent writers queue instead
//! of failing.

use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::StoreResult;
use super::alerts::{alerts_store, delivery_columns, receiver_columns, rule_columns};
use super::dashboards::{
    clusters_counted, current_clusters, current_instances, dashboards_store, in_scope, pending_clusters,
    status_columns, write_columns,
};
use super::receivers::git_receiver_columns;
use super::sql::{
    bind_configuration, cluster_columns, cluster_group_columns, configuration_columns, ensure_flux_extension,
    extension_columns, policy_assignment_columns, sql_store,
};
use crate::notify::Notifier;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How a transaction that writes begins.
const WRITE: &str = "BEGIN IMMEDIATE";

pub struct SqliteStore {
    /// Reads, each on a snapshot of its own (WAL mode), side by side.
    pool: SqlitePool,
    /// The one connection that writes (see `writer`).
    writer: SqlitePool,
    /// The wake-ups of the apps following this store (`follow_changes`).
    followers: Mutex<Vec<Weak<Notifier>>>,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // deleted rows (delivered and expired sealed secrets among them) are overwritten with zeros in the
            // database file, not only unlinked from its pages; `scrub` clears what the write-ahead log still holds
            .pragma("secure_delete", "ON");
        let pool_of = |connections| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                // sqlx's default timeout, stated; warnings at half of it, as on PostgreSQL (see there)
                .acquire_timeout(Duration::from_secs(30))
                .acquire_slow_threshold(Duration::from_secs(15))
                // a file in this process cannot drop a connection: sqlx's ping before each lending is a wasted step
                .test_before_acquire(false)
        };
        // the same options, so that an in-memory database (`sqlite::memory:`) is the same one to both pools
        let pool = pool_of(8).connect_with(options.clone()).await?;
        let writer = pool_of(1).connect_with(options).await?;
        MIGRATOR.run(&writer).await?;
        Ok(Self {
            pool,
            writer,
            followers: Mutex::default(),
        })
    }

    /// The pool writing transactions draw from: one connection, so that writers queue for it in this process, in
    /// order, each starting the moment the one before it ends. SQLite lets one transaction write at a time; when
    /// writers on several connections raced for that lock, the losers slept in SQLite's busy handler (1, 2, 5, 10,
    /// then up to 100 ms between tries) while the lock was free, and a configuration PUT's p99 reached 230 ms at
    /// 8 clients. The busy timeout still covers another process writing to the file.
    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Commits a writing transaction, and then wakes the polls of the clusters whose desired state it changed:
    /// the keys the triggers of migration 0012 left in `desired_changes`, taken out in the same transaction.
    async fn commit(&self, mut tx: sqlx::Transaction<'static, sqlx::Sqlite>) -> Result<(), sqlx::Error> {
        let mut changed: Vec<String> = sqlx::query_scalar("DELETE FROM desired_changes RETURNING cluster_key")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if changed.is_empty() {
            return Ok(());
        }
        changed.sort_unstable();
        changed.dedup();
        let mut followers = self.followers.lock().unwrap_or_else(PoisonError::into_inner);
        followers.retain(|follower| follower.strong_count() > 0);
        for notifier in followers.iter().filter_map(Weak::upgrade) {
            for key in &changed {
                notifier.notify(key);
            }
        }
        Ok(())
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    /// Requests to re-check sources at once moved the revisions of these clusters: `commit` has woken their polls
    /// already (the revision's trigger left their keys), so nothing is left to announce.
    fn revised(&self, _keys: Vec<String>) {}
}

super::receivers::receivers_store!(SqliteStore, sqlx::Sqlite, row_lock = "", write_begin = Some(WRITE));

// SQLite lets one transaction write at a time, so fleet writes are serialised already: the lock statement does
// nothing. A transaction that writes takes the write lock as it begins (`BEGIN IMMEDIATE`): one that read first
// could not turn into a writer once another had written, and would fail at once with "database is locked"
// instead of waiting its turn (the busy timeout does not apply to that case).
sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    fleet_lock = "SELECT $1",
    cluster_lock = "SELECT $1",
    row_lock = "",
    write_begin = Some(WRITE),
    // the format the history triggers write (migration 0009), which its range scans compare as text
    history_now = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')",
    // a set of ids binds as one JSON array (`SqliteStore::id_set`)
    in_ids = "IN (SELECT value FROM json_each($1))",
    {
        // SQLite binds no arrays: the keys go as one JSON array, unpacked by `json_each`
        async fn clusters_by_key(&self, keys: &[String]) -> StoreResult<Vec<crate::model::ClusterRecord>> {
            let sql = concat!(
                "SELECT ",
                cluster_columns!(),
                " FROM clusters WHERE key IN (SELECT value FROM json_each($1))"
            );
            Ok(sqlx::query_as::<sqlx::Sqlite, crate::model::ClusterRecord>(sql)
                .bind(sqlx::types::Json(keys))
                .fetch_all(&self.pool)
                .await?)
        }

        /// Checkpoints the write-ahead log into the database file (where `secure_delete` has zeroed deleted rows) and
        /// truncates it, so that the log's copies of deleted rows go with it. Busy readers make it wait for the next
        /// sweep.
        async fn scrub(&self) -> StoreResult<()> {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            if busy != 0 {
                tracing::debug!("the write-ahead log is in use; truncating it at the next sweep");
            }
            Ok(())
        }

        /// One process owns the embedded store: its commits wake the polls (`commit`), from now on.
        async fn follow_changes(&self, notifier: Arc<Notifier>) -> StoreResult<()> {
            self.followers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(&notifier));
            Ok(())
        }

        // SQLite has no data-modifying CTEs: a configuration write is a transaction of a statement per table.
        async fn insert_configuration(
            &self,
            c: &crate::model::ConfigurationRecord,
            secrets: &crate::model::SecretsWrite,
            op: &crate::model::OperationRecord,
        ) -> crate::store::StoreResult<crate::model::Write> {
            let mut tx = crate::store::begin(self.writer(), Some(WRITE)).await?;
            let insert = sqlx::query_scalar::<sqlx::Sqlite, i64>(
                "INSERT INTO flux_configurations (cluster_id, name, spec, secrets_version, generation, etag, \
             provisioning_state, compliance_state, observed, system_data, secrets_expire_at, \
             generation_expires_at, failure) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (cluster_id, name) DO NOTHING RETURNING id",
            )
            .bind(c.cluster_id)
            .bind(&c.name);
            let inserted = bind_configuration!(insert, c).fetch_optional(&mut *tx).await;
            let id = match inserted {
                Err(err) if crate::store::sql::is_foreign_key_violation(&err) => {
                    return Ok(crate::model::Write::ParentMissing);
                }
                Err(err) => return Err(err.into()),
                Ok(None) => return Ok(crate::model::Write::Conflict),
                Ok(Some(id)) => id,
            };
            Self::write_secrets(&mut tx, id, secrets).await?;
            // a configuration that did not exist has no running operation: deletes end theirs
            Self::insert_operation(&mut tx, op).await?;
            Self::ensure_flux_extension(&mut tx, c).await?;
            self.commit(tx).await?;
            Ok(crate::model::Write::Written)
        }

        async fn update_configuration(
            &self,
            c: &crate::model::ConfigurationRecord,
            secrets: &crate::model::SecretsWrite,
            expected_etag: &str,
            op: &crate::model::OperationRecord,
        ) -> crate::store::StoreResult<crate::model::Write> {
            let mut tx = crate::store::begin(self.writer(), Some(WRITE)).await?;
            let update = sqlx::query::<sqlx::Sqlite>(
                "UPDATE flux_configurations SET spec = $1, secrets_version = $2, generation = $3, etag = $4, \
             provisioning_state = $5, compliance_state = $6, observed = $7, system_data = $8, \
             secrets_expire_at = $9, generation_expires_at = $10, failure = $11, \
             managed_generation = NULL, drifted_at = CASE WHEN managed_by IS NULL THEN NULL ELSE $14 END \
             WHERE id = $12 AND etag = $13",
            );
            let done = bind_configuration!(update, c)
                .bind(c.id)
                .bind(expected_etag)
                // a write by hand to a configuration an assignment manages is drift: the assignment restores it
                .bind(chrono::Utc::now())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Ok(crate::model::Write::Conflict);
            }
            Self::write_secrets(&mut tx, c.id, secrets).await?;
            Self::start_operation(&mut tx, op).await?;
            self.commit(tx).await?;
            Ok(crate::model::Write::Written)
        }
    }
);

impl SqliteStore {
    /// A set of ids as a statement's `in_ids` binds it: SQLite binds no arrays, so one JSON array.
    fn id_set(ids: &[i64]) -> sqlx::types::Json<&[i64]> {
        sqlx::types::Json(ids)
    }

    /// Writes what a configuration write does to its sealed secrets.
    async fn write_secrets(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        configuration_id: i64,
        secrets: &crate::model::SecretsWrite,
    ) -> Result<(), sqlx::Error> {
        use crate::model::SecretsWrite;
        if matches!(secrets, SecretsWrite::Clear | SecretsWrite::Replace(_)) {
            Self::delete_sealed_secrets(tx, configuration_id).await?;
        }
        if let SecretsWrite::Replace(sealed) | SecretsWrite::Merge(sealed) = secrets {
            let row = crate::model::SealedSecretsRecord::new(configuration_id, sealed);
            sqlx::query::<sqlx::Sqlite>(
                "INSERT INTO sealed_secrets (configuration_id, version, change, base_version, recipient, \
                 encapsulated_key, ciphertext) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(row.configuration_id)
            .bind(row.version)
            .bind(&row.change)
            .bind(row.base_version)
            .bind(&row.recipient)
            .bind(&row.encapsulated_key)
            .bind(&row.ciphertext)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Gives the cluster the Flux extension its first configuration `c` brings, unless it holds one.
    async fn ensure_flux_extension(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        c: &crate::model::ConfigurationRecord,
    ) -> Result<(), sqlx::Error> {
        sqlx::query::<sqlx::Sqlite>(ensure_flux_extension!())
            .bind(c.cluster_id)
            .bind(sqlx::types::Json(
                crate::extensions::model::ExtensionSpec::flux_default(),
            ))
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(sqlx::types::Json(crate::extensions::model::ExtensionObserved::default()))
            .bind(sqlx::types::Json(&c.system_data))
            .bind(c.generation_expires_at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Starts `op`, superseding the operations still running on its resource.
    async fn start_operation(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        op: &crate::model::OperationRecord,
    ) -> Result<(), sqlx::Error> {
        Self::supersede_operations(tx, &op.resource_key, op.start_time).await?;
        Self::insert_operation(tx, op).await
    }

    async fn insert_operation(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        op: &crate::model::OperationRecord,
    ) -> Result<(), sqlx::Error> {
        sqlx::query::<sqlx::Sqlite>(
            "INSERT INTO operations (id, resource_key, resource_id, kind, generation, status, start_time, \
             end_time, error, reconcile_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
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
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

// A transaction in WAL mode reads one snapshot from its first read on: a plain BEGIN. SQLite joins by nested loops:
// the clusters not connected (their partial index, migration 0010), then their configurations by index.
pub(super) const UNHEARD: &str = "SELECT f.cluster_id, \
    c.connectivity_status, c.last_connectivity_time, COALESCE(f.managed_by_id, '') AS policy_assignment, \
    f.compliance_state, f.provisioning_state, COALESCE(f.reported_generation = f.generation, FALSE) AS reported, \
    COUNT(*) AS count FROM clusters c JOIN flux_configurations f ON f.cluster_id = c.id \
    WHERE c.subscription_key = $1 AND ($2 = '' OR c.resource_group_key = $2) \
    AND c.connectivity_status <> 'Connected' \
    GROUP BY f.cluster_id, c.connectivity_status, c.last_connectivity_time, 4, 5, 6, 7";

/// Whether a cluster entered (1) or left (-1) a value as its count moved from `before` to `after`: the one rule of
/// both the fold (`FOLD_CLUSTER_DELTAS`) and the summary's read of the changes not folded yet. PostgreSQL holds the
/// same rule in a function (its migration 0024).
macro_rules! clusters_moved {
    ($before:literal, $after:literal) => {
        concat!(
            "CASE WHEN ",
            $before,
            " = 0 AND ",
            $after,
            " > 0 THEN 1 WHEN ",
            $before,
            " > 0 AND ",
            $after,
            " = 0 THEN -1 ELSE 0 END"
        )
    };
}

/// The summary's current cluster counts on SQLite: the rollups and deltas with the changes not folded yet.
pub(super) const CLUSTERS_NOW: &str = clusters_counted!(now, clusters_moved);

/// The same as of the time `$3`.
const CLUSTERS_AS_OF: &str = clusters_counted!(as_of, clusters_moved);

/// The fold's cluster deltas (PostgreSQL's `fluxplane_fold_cluster_changes`, migrations 0023 and 0024): a
/// statement's changes of one count netted (an update out of and back into a value is no change), then a cluster's
/// changes applied in the order they were appended, a running sum over its folded count, so that each entry into or
/// exit from a value is a delta at its own write's time. It reads the counts before `FOLD_CLUSTER_COUNTS` moves them.
const FOLD_CLUSTER_DELTAS: &str = concat!(
    "INSERT INTO cluster_deltas (at, subscription_key, resource_group_key, dimension, value, clusters) \
     SELECT at, subscription_key, resource_group_key, dimension, value, SUM(moved) FROM (\
     SELECT at, subscription_key, resource_group_key, dimension, value, ",
    clusters_moved!("after - d", "after"),
    " AS moved FROM (SELECT s.at, s.subscription_key, s.resource_group_key, s.dimension, s.value, s.d, \
     COALESCE(k.n, 0) + SUM(s.d) OVER (PARTITION BY s.cluster_id, s.dimension, s.value ORDER BY s.first) AS after \
     FROM (SELECT MIN(id) AS first, at, cluster_id, subscription_key, resource_group_key, dimension, value, \
     SUM(d) AS d FROM pending_cluster_counts \
     GROUP BY at, cluster_id, subscription_key, resource_group_key, dimension, value HAVING SUM(d) <> 0) s \
     LEFT JOIN cluster_state_counts k \
     ON k.cluster_id = s.cluster_id AND k.dimension = s.dimension AND k.value = s.value)) \
     WHERE TRUE GROUP BY 1, 2, 3, 4, 5 HAVING SUM(moved) <> 0 ORDER BY 1"
);

/// The fold's counts: each count moved by the sum of its pending changes.
const FOLD_CLUSTER_COUNTS: &str = "INSERT INTO cluster_state_counts (cluster_id, dimension, value, n) \
     SELECT cluster_id, dimension, value, SUM(d) FROM pending_cluster_counts WHERE TRUE \
     GROUP BY 1, 2, 3 HAVING SUM(d) <> 0 \
     ON CONFLICT (cluster_id, dimension, value) DO UPDATE SET n = n + excluded.n";

/// A deleted cluster's configurations were deleted first (`delete_cluster`), so the fold brought its counts to zero:
/// they go with it.
const FOLD_COUNTS_OF_CLUSTERS_GONE: &str = "DELETE FROM cluster_state_counts \
     WHERE n = 0 AND cluster_id IN (SELECT cluster_id FROM pending_cluster_changes) \
     AND NOT EXISTS (SELECT 1 FROM clusters c WHERE c.id = cluster_state_counts.cluster_id)";

dashboards_store!(
    SqliteStore,
    sqlx::Sqlite,
    begin = "BEGIN",
    unheard = UNHEARD,
    clusters_now = CLUSTERS_NOW,
    clusters_as_of = CLUSTERS_AS_OF,
    {
        /// Folds the clusters' pending changes into their counts and the cluster deltas (migration 0019), then
        /// moves the pending deltas into the rollups and the history, in one transaction (the only writer).
        async fn compact_rollups(&self) -> StoreResult<u64> {
            let mut tx = crate::store::begin(self.writer(), Some(WRITE)).await?;
            let mut folded = 0;
            for sql in [
                FOLD_CLUSTER_DELTAS,
                FOLD_CLUSTER_COUNTS,
                FOLD_COUNTS_OF_CLUSTERS_GONE,
                "DELETE FROM pending_cluster_changes",
                "INSERT INTO instance_rollups SELECT subscription_key, resource_group_key, policy_assignment, \
                 compliance_state, provisioning_state, reported, SUM(instances) FROM instance_deltas WHERE TRUE \
                 GROUP BY 1, 2, 3, 4, 5, 6 ON CONFLICT (subscription_key, resource_group_key, policy_assignment, \
                 compliance_state, provisioning_state, reported) DO UPDATE SET instances = instances + excluded.instances",
                "INSERT INTO instance_delta_history (at, subscription_key, resource_group_key, policy_assignment, \
                 compliance_state, provisioning_state, reported, instances) SELECT at, subscription_key, \
                 resource_group_key, policy_assignment, compliance_state, provisioning_state, reported, instances \
                 FROM instance_deltas ORDER BY id",
                "DELETE FROM instance_deltas",
                "INSERT INTO cluster_rollups SELECT subscription_key, resource_group_key, dimension, value, \
                 SUM(clusters) FROM cluster_deltas WHERE TRUE GROUP BY 1, 2, 3, 4 \
                 ON CONFLICT (subscription_key, resource_group_key, dimension, value) \
                 DO UPDATE SET clusters = clusters + excluded.clusters",
                "INSERT INTO cluster_delta_history (at, subscription_key, resource_group_key, dimension, value, \
                 clusters) SELECT at, subscription_key, resource_group_key, dimension, value, clusters \
                 FROM cluster_deltas ORDER BY id",
                "DELETE FROM cluster_deltas",
            ] {
                folded += sqlx::query(sql).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(folded)
        }
    }
);

// One writer at a time: the outbox's steps need no row locks.
alerts_store!(
    SqliteStore,
    sqlx::Sqlite,
    skip = "",
    skip_no_key = "",
    lock = "",
    write_begin = Some(WRITE)
);

/// Applies the plain reports at `positions` (each naming another configuration) as `apply_one_report` would, in two
/// statements for them all and a third for those it did not record, and fills their outcomes. SQLite binds no
/// arrays: each statement's rows go as one JSON array of arrays, unpacked by `json_each`, and its `RETURNING` names
/// only the updated table's columns, so rows are matched back by configuration (unique in a round).
async fn apply_statuses(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    reports: &[crate::model::ConfigurationReportWrite],
    positions: &[usize],
    at: chrono::DateTime<chrono::Utc>,
    outcomes: &mut [Option<crate::model::ReportOutcome>],
) -> Result<(), sqlx::Error> {
    use std::collections::HashMap;

    use fluxplane_agent_protocol::flux::ComplianceState;
    use serde_json::{Value, json};

    use crate::model::{ReportDisposition, ReportOutcome, ReportWrite};

    let mut statuses = Vec::with_capacity(positions.len());
    let mut operations: HashMap<&str, Value> = HashMap::with_capacity(positions.len());
    for &i in positions {
        let report = &reports[i];
        let ReportWrite::Status {
            provisioning_state,
            compliance_state,
            observed,
            operation_status,
            operation_error,
            ..
        } = &report.write
        else {
            continue;
        };
        statuses.push(json!([
            report.cluster_id,
            report.name,
            report.generation,
            provisioning_state.as_str(),
            compliance_state.as_str(),
            json_text(observed)?,
        ]));
        let error = operation_error.as_ref().map(json_text).transpose()?;
        // an operation that waits for reconciliation succeeds only on a Compliant report; a failure ends it
        let compliant = *compliance_state == ComplianceState::Compliant;
        operations.insert(
            report.resource_key.as_str(),
            json!([
                report.resource_key,
                report.generation,
                operation_status.as_str(),
                error,
                compliant
            ]),
        );
    }
    if statuses.is_empty() {
        return Ok(());
    }
    let recorded: std::collections::HashSet<(i64, String)> = sqlx::query_as::<_, (i64, String)>(
        "UPDATE flux_configurations AS f SET provisioning_state = r.provisioning_state, \
         compliance_state = r.compliance_state, observed = r.observed, reported_generation = r.generation, \
         generation_expires_at = NULL \
         FROM (SELECT value ->> 0 AS cluster_id, value ->> 1 AS name, value ->> 2 AS generation, \
         value ->> 3 AS provisioning_state, value ->> 4 AS compliance_state, value ->> 5 AS observed \
         FROM json_each($1)) AS r \
         WHERE f.cluster_id = r.cluster_id AND f.name = r.name AND f.generation = r.generation \
         AND f.provisioning_state <> 'Deleting' AND f.failure IS NULL \
         RETURNING cluster_id, name",
    )
    .bind(sqlx::types::Json(statuses))
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let (ended, missed): (Vec<usize>, Vec<usize>) = positions.iter().partition(|&&i| {
        let report = &reports[i];
        recorded.contains(&(report.cluster_id, report.name.clone()))
    });
    if !missed.is_empty() {
        // the others are stale or unknown: the generation the configuration holds, if it is there, says which
        let keys: Vec<Value> = missed
            .iter()
            .map(|&i| json!([i, reports[i].cluster_id, reports[i].name]))
            .collect();
        let current: Vec<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT r.value ->> 0, f.generation FROM json_each($1) AS r \
             LEFT JOIN flux_configurations f ON f.cluster_id = r.value ->> 1 AND f.name = r.value ->> 2",
        )
        .bind(sqlx::types::Json(keys))
        .fetch_all(&mut **tx)
        .await?;
        for (position, generation) in current {
            outcomes[position as usize] = Some(ReportOutcome {
                disposition: crate::lifecycle::unrecorded(generation),
                written_at: None,
            });
        }
    }
    if ended.is_empty() {
        return Ok(());
    }
    let ending: Vec<Value> = ended
        .iter()
        .filter_map(|&i| operations.remove(reports[i].resource_key.as_str()))
        .collect();
    let started: HashMap<String, chrono::DateTime<chrono::Utc>> = sqlx::query_as(
        "UPDATE operations AS o SET status = r.status, end_time = $1, error = r.error \
         FROM (SELECT value ->> 0 AS resource_key, value ->> 1 AS generation, value ->> 2 AS status, \
         value ->> 3 AS error, value ->> 4 AS compliant FROM json_each($2)) AS r \
         WHERE o.resource_key = r.resource_key AND o.generation = r.generation AND o.status = 'InProgress' \
         AND (o.reconcile_by IS NULL OR r.compliant OR r.status <> 'Succeeded') \
         RETURNING resource_key, start_time",
    )
    .bind(at)
    .bind(sqlx::types::Json(ending))
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    for i in ended {
        outcomes[i] = Some(ReportOutcome {
            disposition: ReportDisposition::Recorded,
            written_at: started.get(&reports[i].resource_key).copied(),
        });
    }
    Ok(())
}

/// Records the heartbeats as they would be one after another, in one statement (`batch::merged_heartbeats`).
/// Answers each heartbeat's revision, in order.
async fn record_heartbeats(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    heartbeats: &[crate::model::HeartbeatWrite],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    if heartbeats.is_empty() {
        return Ok(Vec::new());
    }
    let merged: Vec<serde_json::Value> = super::batch::merged_heartbeats(heartbeats)
        .into_iter()
        .map(|(id, info)| serde_json::json!([id, info.agent_version, info.kubernetes_version, info.total_node_count]))
        .collect();
    let revisions: std::collections::HashMap<i64, i64> = sqlx::query_as::<_, (i64, i64)>(
        "UPDATE clusters AS c SET last_connectivity_time = $1, connectivity_status = 'Connected', \
         agent_version = COALESCE(h.agent_version, c.agent_version), \
         kubernetes_version = COALESCE(h.kubernetes_version, c.kubernetes_version), \
         total_node_count = COALESCE(h.total_node_count, c.total_node_count) \
         FROM (SELECT value ->> 0 AS id, value ->> 1 AS agent_version, value ->> 2 AS kubernetes_version, \
         value ->> 3 AS total_node_count FROM json_each($2)) AS h \
         WHERE c.id = h.id RETURNING id, revision",
    )
    .bind(at)
    .bind(sqlx::types::Json(merged))
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    Ok(super::batch::revisions_in_order(heartbeats, &revisions))
}

/// `value` as the JSON text a column holds it in (what binding it as `Json` writes), for a row of a JSON array bound
/// whole, whose `->>` answers the text unchanged.
fn json_text<T: serde::Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|err| sqlx::Error::Encode(Box::new(err)))
}
