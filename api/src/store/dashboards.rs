//! The SQL of the dashboards, shared by both engines: the summary's rollups (kept by the triggers of migration
//! `0010`/`0009`), the status and write history, and the fleet-wide gauges. Folding deltas into the rollups is
//! each engine's own (see `compact_rollups` in `postgres.rs` and `sqlite.rs`).

/// The columns of `status_history`, in `StatusRecord`'s order.
macro_rules! status_columns {
    () => {
        "id, at, cluster_path, subscription_key, resource_group_key, name, policy_assignment, event, generation, \
         reported_generation, compliance_state, provisioning_state, commit_id, message"
    };
}

/// The columns of `write_history`, in `WriteRecord`'s order.
macro_rules! write_columns {
    () => {
        "id, at, subscription_key, resource_key, resource_id, actor, action, status_code, request_id"
    };
}

/// The scope condition on a table with `subscription_key` and `resource_group_key`, bound to `$1` and `$2`.
macro_rules! in_scope {
    () => {
        "subscription_key = $1 AND ($2 = '' OR resource_group_key = $2)"
    };
}

/// The instance counts: the rollups plus the deltas not yet folded into them (the last second's).
macro_rules! current_instances {
    () => {
        concat!(
            "SELECT policy_assignment, compliance_state, provisioning_state, reported, instances \
             FROM instance_rollups WHERE ",
            in_scope!(),
            " UNION ALL SELECT policy_assignment, compliance_state, provisioning_state, reported, instances \
             FROM instance_deltas WHERE ",
            in_scope!()
        )
    };
}

macro_rules! current_clusters {
    () => {
        concat!(
            "SELECT dimension, value, clusters FROM cluster_rollups WHERE ",
            in_scope!(),
            " UNION ALL SELECT dimension, value, clusters FROM cluster_deltas WHERE ",
            in_scope!()
        )
    };
}

/// The summary's current instance counts of the scope `$1`, `$2`.
pub(super) const INSTANCES_NOW: &str = concat!(
    "SELECT policy_assignment, compliance_state, provisioning_state, reported, \
     CAST(SUM(instances) AS BIGINT) AS instances FROM (",
    current_instances!(),
    ") t GROUP BY 1, 2, 3, 4 HAVING SUM(instances) <> 0"
);

/// What the clusters' changes not folded yet (`pending_cluster_counts`, migration 0023 on PostgreSQL, 0019 on
/// SQLite) move in the scope `$1`, `$2`, `$when` restricting them by time: rows of `dimension, value, clusters`.
/// Whether a cluster enters or leaves a value is the fold's own rule, `$moved!(before, after)` (each engine's
/// `clusters_moved!`), over its folded count and the pending sum; the counts and the pending changes are read in the
/// summary's snapshot, so a fold between two summaries moves nothing.
macro_rules! pending_clusters {
    ($moved:ident, $when:literal) => {
        concat!(
            "SELECT s.dimension, s.value, ",
            $moved!("COALESCE(k.n, 0)", "COALESCE(k.n, 0) + s.d"),
            " FROM (SELECT cluster_id, dimension, value, SUM(d) AS d FROM pending_cluster_counts WHERE ",
            in_scope!(),
            $when,
            " GROUP BY 1, 2, 3 HAVING SUM(d) <> 0) s LEFT JOIN cluster_state_counts k \
             ON k.cluster_id = s.cluster_id AND k.dimension = s.dimension AND k.value = s.value"
        )
    };
}

/// The summary's cluster counts of the scope `$1`, `$2`: the rollups, the deltas and what the pending changes move
/// (`pending_clusters!`, with the engine's rule `$moved`); now, or with `as_of` as of the time `$3`.
macro_rules! clusters_counted {
    (now, $moved:ident) => {
        concat!(
            "SELECT dimension, value, CAST(SUM(clusters) AS BIGINT) AS clusters FROM (",
            current_clusters!(),
            " UNION ALL ",
            pending_clusters!($moved, ""),
            ") t GROUP BY 1, 2 HAVING SUM(clusters) <> 0"
        )
    };
    (as_of, $moved:ident) => {
        concat!(
            "SELECT dimension, value, CAST(SUM(clusters) AS BIGINT) AS clusters FROM (",
            current_clusters!(),
            " UNION ALL SELECT dimension, value, -clusters FROM cluster_deltas WHERE at > $3 AND ",
            in_scope!(),
            " UNION ALL SELECT dimension, value, -clusters FROM cluster_delta_history WHERE at > $3 AND ",
            in_scope!(),
            " UNION ALL ",
            pending_clusters!($moved, " AND at <= $3"),
            ") t GROUP BY 1, 2 HAVING SUM(clusters) <> 0"
        )
    };
}

/// Implements `Dashboards` for `$store` over `$db`; `$begin` starts a transaction whose reads are one snapshot (one
/// statement: a connection handed back inside a cut-off transaction answers a second one with an error),
/// `$unheard` reads the configurations of the clusters not in the Connected status (`UnheardCount`s of the scope
/// `$1`, `$2`), `$clusters_now` and `$clusters_as_of` the cluster counts (`clusters_counted!`), `$extra` holds the
/// methods the engine implements its own way.
macro_rules! dashboards_store {
    (
        $store:ty,
        $db:ty,
        begin = $begin:literal,
        unheard = $unheard:expr,
        clusters_now = $clusters_now:expr,
        clusters_as_of = $clusters_as_of:expr,
        { $($extra:tt)* }
    ) => {
        #[async_trait::async_trait]
        impl $crate::store::Dashboards for $store {
        $($extra)*

        async fn rollup(
            &self,
            scope: &$crate::arm::scope::ClusterSet,
            as_of: Option<chrono::DateTime<chrono::Utc>>,
            with_unheard: bool,
        ) -> $crate::store::StoreResult<$crate::model::Rollup> {
            let (subscription_key, resource_group_key) = scope.keys();
            // The past is the present minus what changed since: the deltas written after `as_of`. Two statements
            // rather than one with an optional bound, so that the current summary never plans a scan of history.
            let (instances_sql, clusters_sql) = match as_of {
                None => ($crate::store::dashboards::INSTANCES_NOW, $clusters_now),
                Some(_) => (
                    concat!(
                        "SELECT policy_assignment, compliance_state, provisioning_state, reported, \
                         CAST(SUM(instances) AS BIGINT) AS instances FROM (",
                        current_instances!(),
                        " UNION ALL SELECT policy_assignment, compliance_state, provisioning_state, reported, \
                         -instances FROM instance_deltas WHERE at > $3 AND ",
                        in_scope!(),
                        " UNION ALL SELECT policy_assignment, compliance_state, provisioning_state, reported, \
                         -instances FROM instance_delta_history WHERE at > $3 AND ",
                        in_scope!(),
                        ") t GROUP BY 1, 2, 3, 4 HAVING SUM(instances) <> 0"
                    ),
                    $clusters_as_of,
                ),
            };
            // one snapshot: a write between the reads would count its configurations twice or not at all
            let mut tx = $crate::store::begin(&self.pool, Some($begin)).await?;
            let instances = sqlx::query_as::<$db, $crate::model::InstanceCount>(instances_sql)
                .bind(subscription_key)
                .bind(resource_group_key)
                .bind(as_of)
                .fetch_all(&mut *tx)
                .await?;
            let clusters = sqlx::query_as::<$db, $crate::model::ClusterCount>(clusters_sql)
                .bind(subscription_key)
                .bind(resource_group_key)
                .bind(as_of)
                .fetch_all(&mut *tx)
                .await?;
            let unheard = if with_unheard {
                Self::unheard(&mut tx, scope).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            Ok($crate::model::Rollup {
                instances,
                clusters,
                unheard,
            })
        }
        async fn mark_offline(
            &self,
            heard_before: chrono::DateTime<chrono::Utc>,
        ) -> $crate::store::StoreResult<u64> {
            Ok(sqlx::query::<$db>(
                "UPDATE clusters SET connectivity_status = 'Offline' WHERE connectivity_status = 'Connected' \
                 AND (last_connectivity_time IS NULL OR last_connectivity_time < $1)",
            )
            .bind(heard_before)
            .execute(self.writer())
            .await?
            .rows_affected())
        }

        async fn prune_history(
            &self,
            before: chrono::DateTime<chrono::Utc>,
            since: Option<chrono::DateTime<chrono::Utc>>,
        ) -> $crate::store::StoreResult<u64> {
            // the epoch: PostgreSQL refuses chrono's earliest time
            let since = since.unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
            let mut pruned = 0;
            // Each configuration name keeps its last state before the cut-off, which it was still in after it: the
            // rows an entry that crossed the cut-off since `since` supersedes go, then the crossed entries that
            // hold no state (a deletion is no state to keep; a restoration is an event).
            for sql in [
                "DELETE FROM status_history WHERE id IN (SELECT h.id FROM status_history h JOIN ( \
                 SELECT cluster_id, name, MAX(at) AS base FROM status_history \
                 WHERE at >= $2 AND at < $1 AND event <> 'Restored' GROUP BY cluster_id, name) n \
                 ON h.cluster_id = n.cluster_id AND h.name = n.name AND h.at < n.base)",
                "DELETE FROM status_history WHERE at >= $2 AND at < $1 AND event IN ('Deleted', 'Restored')",
            ] {
                pruned += sqlx::query::<$db>(sql)
                    .bind(before)
                    .bind(since)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
            }
            for sql in [
                "DELETE FROM instance_delta_history WHERE at < $1",
                "DELETE FROM cluster_delta_history WHERE at < $1",
                "DELETE FROM write_history WHERE at < $1",
                "DELETE FROM circuit_breaker_trips WHERE at < $1",
                "DELETE FROM rollout_history WHERE at < $1",
            ] {
                pruned += sqlx::query::<$db>(sql)
                    .bind(before)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
            }
            Ok(pruned)
        }

        async fn record_writes(&self, writes: &[$crate::model::WriteRecord]) -> $crate::store::StoreResult<()> {
            if writes.is_empty() {
                return Ok(());
            }
            sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO write_history (subscription_key, resource_key, resource_id, actor, action, status_code, \
                 request_id) ",
            )
            .push_values(writes, |mut row, write| {
                row.push_bind(&write.subscription_key)
                    .push_bind(&write.resource_key)
                    .push_bind(&write.resource_id)
                    .push_bind(&write.actor)
                    .push_bind(&write.action)
                    .push_bind(write.status_code)
                    .push_bind(&write.request_id);
            })
            .build()
            .execute(self.writer())
            .await?;
            Ok(())
        }

        async fn history(
            &self,
            query: &$crate::model::HistoryQuery,
        ) -> $crate::store::StoreResult<$crate::model::HistoryRows> {
            // one statement per subject, each answered by its own index
            let status = match &query.subject {
                $crate::model::HistorySubject::Configuration { cluster_id, name } => {
                    let sql = concat!(
                        "SELECT ",
                        status_columns!(),
                        " FROM status_history WHERE cluster_id = $1 AND name = $2 \
                         AND at >= $3 AND at < $4 AND id > $5 ORDER BY id LIMIT $6"
                    );
                    sqlx::query_as::<$db, $crate::model::StatusRecord>(sql)
                        .bind(cluster_id)
                        .bind(name)
                }
                $crate::model::HistorySubject::Cluster { cluster_id } => {
                    let sql = concat!(
                        "SELECT ",
                        status_columns!(),
                        " FROM status_history WHERE cluster_id = $1 AND $2 = '' \
                         AND at >= $3 AND at < $4 AND id > $5 ORDER BY id LIMIT $6"
                    );
                    sqlx::query_as::<$db, $crate::model::StatusRecord>(sql)
                        .bind(cluster_id)
                        .bind("")
                }
                $crate::model::HistorySubject::Assignment { id } => {
                    let sql = concat!(
                        "SELECT ",
                        status_columns!(),
                        " FROM status_history WHERE policy_assignment = $1 AND $2 = '' \
                         AND at >= $3 AND at < $4 AND id > $5 ORDER BY id LIMIT $6"
                    );
                    sqlx::query_as::<$db, $crate::model::StatusRecord>(sql)
                        .bind(id)
                        .bind("")
                }
            }
            .bind(query.from)
            .bind(query.to)
            .bind(query.after_status)
            .bind(query.limit)
            .fetch_all(&self.pool)
            .await?;
            // a resource's writes, and with `below` those of everything under it: the keys in ["{key}/", "{key}0")
            // ('0' follows '/'); without it the range is empty
            let (low, high) = if query.below {
                (format!("{}/", query.resource_key), format!("{}0", query.resource_key))
            } else {
                (String::new(), String::new())
            };
            let sql = concat!(
                "SELECT ",
                write_columns!(),
                " FROM write_history WHERE (resource_key = $1 OR (resource_key >= $2 AND resource_key < $3)) \
                 AND at >= $4 AND at < $5 AND id > $6 ORDER BY id LIMIT $7"
            );
            let writes = sqlx::query_as::<$db, $crate::model::WriteRecord>(sql)
                .bind(&query.resource_key)
                .bind(low)
                .bind(high)
                .bind(query.from)
                .bind(query.to)
                .bind(query.after_write)
                .bind(query.limit)
                .fetch_all(&self.pool)
                .await?;
            let rollouts = match &query.subject {
                $crate::model::HistorySubject::Assignment { id } => {
                    sqlx::query_as::<$db, $crate::model::RolloutRecord>(
                        "SELECT id, at, policy_assignment, event, generation, batch, batches, message \
                         FROM rollout_history WHERE policy_assignment = $1 AND at >= $2 AND at < $3 AND id > $4 \
                         ORDER BY id LIMIT $5",
                    )
                    .bind(id)
                    .bind(query.from)
                    .bind(query.to)
                    .bind(query.after_rollout)
                    .bind(query.limit)
                    .fetch_all(&self.pool)
                    .await?
                }
                _ => Vec::new(),
            };
            Ok($crate::model::HistoryRows { status, writes, rollouts })
        }

        async fn configuration_states(
            &self,
            scope: &$crate::arm::scope::ClusterSet,
            first: &str,
            last: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::model::ConfigurationState>> {
            let (subscription_key, resource_group_key) = scope.keys();
            Ok(sqlx::query_as::<$db, $crate::model::ConfigurationState>(
                "SELECT f.cluster_id, f.name, f.compliance_state, f.provisioning_state, \
                 COALESCE(f.reported_generation = f.generation, FALSE) AS reported, \
                 COALESCE(f.managed_by_id, '') AS policy_assignment, \
                 f.observed ->> 'sourceSyncedCommitId' AS commit_id \
                 FROM clusters c JOIN flux_configurations f ON f.cluster_id = c.id \
                 WHERE c.subscription_key = $1 AND ($2 = '' OR c.resource_group_key = $2) \
                 AND c.key >= $3 AND c.key <= $4 ORDER BY c.key, f.name",
            )
            .bind(subscription_key)
            .bind(resource_group_key)
            .bind(first)
            .bind(last)
            .fetch_all(&self.pool)
            .await?)
        }

        async fn states_as_of(
            &self,
            cluster_id: i64,
            at: chrono::DateTime<chrono::Utc>,
            only: Option<&str>,
            after: &str,
            limit: i64,
        ) -> $crate::store::StoreResult<(Vec<String>, Vec<$crate::model::StatusRecord>)> {
            // the cluster's names one index seek each (`status_history_by_cluster_name`), then each one's latest
            // entry by then
            let names: Vec<String> = match only {
                Some(name) => vec![name.to_owned()],
                None => sqlx::query_scalar::<$db, String>(
                    "WITH RECURSIVE names (name, n) AS ( \
                     SELECT (SELECT name FROM status_history WHERE cluster_id = $1 AND name > $2 \
                     ORDER BY name LIMIT 1), 1 \
                     UNION ALL SELECT (SELECT s.name FROM status_history s WHERE s.cluster_id = $1 \
                     AND s.name > names.name ORDER BY s.name LIMIT 1), names.n + 1 \
                     FROM names WHERE names.name IS NOT NULL AND names.n < $3) \
                     SELECT name FROM names WHERE name IS NOT NULL ORDER BY name",
                )
                .bind(cluster_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
            };
            if names.is_empty() {
                return Ok((names, Vec::new()));
            }
            let mut q = sqlx::QueryBuilder::<$db>::new(concat!(
                "SELECT ",
                status_columns!(),
                " FROM status_history WHERE id IN (SELECT (SELECT s.id FROM status_history s \
                 WHERE s.cluster_id = "
            ));
            q.push_bind(cluster_id)
                .push(" AND s.name = n.column1 AND s.at <= ")
                .push_bind(at)
                .push(" AND s.event <> 'Restored' ORDER BY s.at DESC, s.id DESC LIMIT 1) FROM (VALUES ");
            // a VALUES list, not a UNION: SQLite allows 500 terms in a compound SELECT, and a page holds 1,001 names
            let mut list = q.separated(", ");
            for name in &names {
                list.push("(").push_bind_unseparated(name.as_str()).push_unseparated(")");
            }
            q.push(") n) ORDER BY name");
            let entries = q
                .build_query_as::<$crate::model::StatusRecord>()
                .fetch_all(&self.pool)
                .await?;
            Ok((names, entries))
        }

        async fn assignment_commits(
            &self,
            assignment: &str,
            limit: i64,
        ) -> $crate::store::StoreResult<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
            // the assignment's distinct commits one seek each (`status_history_by_commit`, whose condition each
            // statement repeats so that SQLite uses it), and each one's first entry
            Ok(sqlx::query_as::<$db, (String, chrono::DateTime<chrono::Utc>)>(
                "WITH RECURSIVE commits (commit_id, n) AS ( \
                 SELECT (SELECT commit_id FROM status_history WHERE policy_assignment = $1 \
                 AND policy_assignment <> '' AND commit_id IS NOT NULL ORDER BY commit_id LIMIT 1), 1 \
                 UNION ALL SELECT (SELECT s.commit_id FROM status_history s WHERE s.policy_assignment = $1 \
                 AND s.policy_assignment <> '' AND s.commit_id IS NOT NULL AND s.commit_id > commits.commit_id \
                 ORDER BY s.commit_id LIMIT 1), commits.n + 1 \
                 FROM commits WHERE commits.commit_id IS NOT NULL AND commits.n < $2) \
                 SELECT commit_id, (SELECT s.at FROM status_history s WHERE s.policy_assignment = $1 \
                 AND s.policy_assignment <> '' AND s.commit_id = commits.commit_id ORDER BY s.at LIMIT 1) AS first_seen \
                 FROM commits WHERE commit_id IS NOT NULL",
            )
            .bind(assignment)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        }

        async fn commit_sightings(
            &self,
            assignment: &str,
            commit: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::fleet::commits::Sighting>> {
            Ok(sqlx::query_as::<$db, $crate::fleet::commits::Sighting>(
                "SELECT cluster_id, provisioning_state, compliance_state, \
                 COALESCE(reported_generation = generation, FALSE) AS reported, MIN(at) AS first_at \
                 FROM status_history WHERE policy_assignment = $1 AND policy_assignment <> '' \
                 AND commit_id IS NOT NULL AND commit_id = $2 \
                 GROUP BY cluster_id, provisioning_state, compliance_state, 4",
            )
            .bind(assignment)
            .bind(commit)
            .fetch_all(&self.pool)
            .await?)
        }

        async fn latest_status_event(&self) -> $crate::store::StoreResult<i64> {
            Ok(
                sqlx::query_scalar::<$db, i64>("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM status_history")
                    .fetch_one(&self.pool)
                    .await?,
            )
        }

        async fn status_events(
            &self,
            scope: Option<&$crate::arm::scope::ClusterSet>,
            after: i64,
            limit: i64,
        ) -> $crate::store::StoreResult<Vec<$crate::model::StatusRecord>> {
            Ok(match scope {
                Some(scope) => {
                    let (subscription_key, resource_group_key) = scope.keys();
                    let sql = concat!(
                        "SELECT ",
                        status_columns!(),
                        " FROM status_history WHERE ",
                        in_scope!(),
                        " AND id > $3 ORDER BY id LIMIT $4"
                    );
                    sqlx::query_as::<$db, $crate::model::StatusRecord>(sql)
                        .bind(subscription_key)
                        .bind(resource_group_key)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
                None => {
                    let sql = concat!("SELECT ", status_columns!(), " FROM status_history WHERE id > $1 ORDER BY id LIMIT $2");
                    sqlx::query_as::<$db, $crate::model::StatusRecord>(sql)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
            })
        }

        async fn fleet_gauges(
            &self,
            heard_since: chrono::DateTime<chrono::Utc>,
        ) -> $crate::store::StoreResult<$crate::model::FleetGauges> {
            let instances = sqlx::query_as::<$db, (String, String, i64)>(
                "SELECT compliance_state, provisioning_state, CAST(SUM(instances) AS BIGINT) FROM ( \
                 SELECT compliance_state, provisioning_state, instances FROM instance_rollups \
                 UNION ALL SELECT compliance_state, provisioning_state, instances FROM instance_deltas \
                 ) t GROUP BY 1, 2 HAVING SUM(instances) <> 0",
            )
            .fetch_all(&self.pool)
            .await?;
            let clusters = sqlx::query_as::<$db, (String, bool, i64)>(
                "SELECT connectivity_status, \
                 (last_connectivity_time IS NOT NULL AND last_connectivity_time >= $1) AS heard, COUNT(*) \
                 FROM clusters GROUP BY 1, 2",
            )
            .bind(heard_since)
            .fetch_all(&self.pool)
            .await?;
            Ok($crate::model::FleetGauges { instances, clusters })
        }

        async fn failing_gauges(&self) -> $crate::store::StoreResult<$crate::model::FailingGauges> {
            let by_assignment = sqlx::query_as::<$db, (String, i64)>(
                "SELECT policy_assignment, CAST(SUM(CASE WHEN compliance_state = 'Non-Compliant' \
                 OR provisioning_state = 'Failed' THEN instances ELSE 0 END) AS BIGINT) FROM ( \
                 SELECT policy_assignment, compliance_state, provisioning_state, instances FROM instance_rollups \
                 UNION ALL SELECT policy_assignment, compliance_state, provisioning_state, instances \
                 FROM instance_deltas) t GROUP BY 1 HAVING SUM(instances) <> 0",
            )
            .fetch_all(&self.pool)
            .await?;
            // the predicate is the partial index's (migrations: postgres 0020, sqlite 0018): failing rows only
            let clusters = sqlx::query_as::<$db, $crate::model::FailingCluster>(
                "SELECT c.subscription_key, c.resource_group_key, c.tags, f.failing FROM ( \
                 SELECT cluster_id, COUNT(*) AS failing FROM flux_configurations \
                 WHERE compliance_state = 'Non-Compliant' OR provisioning_state = 'Failed' GROUP BY cluster_id) f \
                 JOIN clusters c ON c.id = f.cluster_id",
            )
            .fetch_all(&self.pool)
            .await?;
            let sql = concat!("SELECT ", cluster_group_columns!(), " FROM cluster_groups ORDER BY key");
            let groups = sqlx::query_as::<$db, $crate::model::ClusterGroupRecord>(sql)
                .fetch_all(&self.pool)
                .await?;
            Ok($crate::model::FailingGauges { by_assignment, clusters, groups })
        }
        }

        impl $store {
            /// The configurations, by cluster and states, of the scope's clusters not in the Connected status.
            async fn unheard(
                tx: &mut sqlx::Transaction<'_, $db>,
                scope: &$crate::arm::scope::ClusterSet,
            ) -> Result<Vec<$crate::model::UnheardCount>, sqlx::Error> {
                let (subscription_key, resource_group_key) = scope.keys();
                sqlx::query_as::<$db, $crate::model::UnheardCount>($unheard)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .fetch_all(&mut **tx)
                    .await
            }
        }
    };
}

pub(super) use {
    clusters_counted, current_clusters, current_instances, dashboards_store, in_scope, pending_clusters,
    status_columns, write_columns,
};
