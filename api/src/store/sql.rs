//! The SQL both backends share. PostgreSQL and SQLite accept the same statements here (`$n` parameters,
//! `ON CONFLICT`, `RETURNING`), and sqlx maps JSON, timestamps and bytes to each engine's own column types, so one
//! body, instantiated per engine by `sql_store!`, serves both.

use sqlx::error::ErrorKind;

/// The columns of `ClusterRecord`, as a macro so that statements stay `&'static str` (sqlx refuses built strings).
macro_rules! cluster_columns {
    () => {
        "id, key, subscription_key, resource_group_key, subscription, resource_group, name, location, tags, spec, \
         connectivity_status, last_connectivity_time, agent_version, kubernetes_version, total_node_count, etag, \
         system_data, revision, agent_encryption_key"
    };
}

/// The columns of `ConfigurationRecord`.
macro_rules! configuration_columns {
    () => {
        "id, cluster_id, name, spec, secrets_version, generation, etag, provisioning_state, compliance_state, \
         observed, system_data, reported_generation, secrets_expire_at, generation_expires_at, failure, managed_by_id, \
         drifted_at, managed_by, managed_generation, reconcile_requested_at"
    };
}

/// The columns of `ExtensionRecord`.
macro_rules! extension_columns {
    () => {
        "id, cluster_id, name, extension_type, spec, generation, etag, provisioning_state, observed, system_data, \
         reported_generation, secrets_version, sealed, secrets_expire_at, generation_expires_at, failure"
    };
}

/// Gives cluster `$1` the Flux extension unless it holds one: `flux`, with the spec `$2`, etag `$3`, observed
/// `$4`, system data `$5` and generation expiry `$6` (those of the configuration that brings it).
macro_rules! ensure_flux_extension {
    () => {
        "INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, provisioning_state, \
         observed, system_data, generation_expires_at) \
         SELECT $1, 'flux', 'microsoft.flux', $2, 1, $3, 'Creating', $4, $5, $6 \
         WHERE NOT EXISTS (SELECT 1 FROM extensions WHERE cluster_id = $1 AND extension_type = 'microsoft.flux') \
         ON CONFLICT DO NOTHING"
    };
}

/// The columns of `PolicyAssignmentRecord`.
macro_rules! policy_assignment_columns {
    () => {
        "id, key, subscription_key, resource_group_key, subscription, resource_group, name, cluster_group_id, \
         configuration_name, spec, rendered, generation, etag, system_data, rollout_state, last_compliant"
    };
}

/// The columns of `ClusterGroupRecord`.
macro_rules! cluster_group_columns {
    () => {
        "id, key, subscription_key, resource_group_key, subscription, resource_group, name, selector, etag, \
         system_data"
    };
}

/// Binds what both configuration writes store of `$c` (a `ConfigurationRecord`), eleven parameters in this
/// order: spec, secrets version, generation, etag, provisioning and compliance state, observed, system data, the
/// secrets' and the generation's expiry, failure. A macro because the writes' queries differ in type.
macro_rules! bind_configuration {
    ($query:expr, $c:expr) => {
        $query
            .bind(sqlx::types::Json(&$c.spec))
            .bind($c.secrets_version)
            .bind($c.generation)
            .bind(&$c.etag)
            .bind($c.provisioning_state.as_str())
            .bind($c.compliance_state.as_str())
            .bind(sqlx::types::Json(&$c.observed))
            .bind(sqlx::types::Json(&$c.system_data))
            .bind($c.secrets_expire_at)
            .bind($c.generation_expires_at)
            .bind(&$c.failure)
    };
}

pub(super) fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .is_some_and(|e| e.kind() == ErrorKind::ForeignKeyViolation)
}

/// Implements `Store` for `$store`, whose `pool` field is a `sqlx::Pool<$db>`; `$extra` holds the methods the
/// engine implements its own way, `$lock` the statement that serialises fleet writes of one subscription (its
/// key is `$1`) where the engine needs it, `$cluster_lock` the statement by which a write that decides for one
/// cluster only waits for those (but not for others of its kind), `$row_lock` what ends a `SELECT` that locks the
/// rows it reads for an update where the engine locks rows, `$write` the statement that begins a transaction that
/// writes (`None`: the engine's plain `BEGIN`).
macro_rules! sql_store {
    (
        $store:ty,
        $db:ty,
        fleet_lock = $lock:literal,
        cluster_lock = $cluster_lock:expr,
        row_lock = $row_lock:literal,
        write_begin = $write:expr,
        history_now = $history_now:literal,
        in_ids = $in_ids:literal,
        { $($extra:tt)* }
    ) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            $($extra)*

            // Set-based: a round's plain reports (a status, no secrets acknowledged, nothing restored, see
            // `batch::set_based`) are one UPDATE of the configurations and one of their operations
            // (`apply_statuses`, each backend's), a round a few statements, not three per report; the rest, rare, run
            // one by one (`apply_one_report`). The heartbeats are one UPDATE of the clusters after
            // (`record_heartbeats`). On PostgreSQL the configurations' statement triggers (history, rollups, alerts)
            // then run once per round; SQLite's row triggers run a row at a time as before, but a statement sent
            // through `sqlx`'s worker thread costs more than the row it writes.
            async fn apply_reports(
                &self,
                reports: &[$crate::model::ConfigurationReportWrite],
                heartbeats: &[$crate::model::HeartbeatWrite],
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::model::BatchOutcome> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let mut outcomes = vec![None; reports.len()];
                for round in $crate::store::batch::rounds(reports.iter().map(|r| (r.cluster_id, r.name.as_str()))) {
                    let (plain, others): (Vec<usize>, Vec<usize>) =
                        round.into_iter().partition(|&i| $crate::store::batch::set_based(&reports[i]));
                    for i in others {
                        outcomes[i] = Some(Self::apply_one_report(&mut tx, &reports[i], at).await?);
                    }
                    apply_statuses(&mut tx, reports, &plain, at, &mut outcomes).await?;
                }
                let revisions = record_heartbeats(&mut tx, heartbeats, at).await?;
                self.commit(tx).await?;
                let reports = outcomes.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
                    $crate::store::StoreError::NotReady("a report of the batch was left unapplied".into())
                })?;
                Ok($crate::model::BatchOutcome { reports, revisions })
            }

            async fn reachable(&self) -> $crate::store::StoreResult<()> {
                use sqlx::Connection as _;
                let options = self.pool.connect_options();
                let mut connection = <$db as sqlx::Database>::Connection::connect_with(&*options).await?;
                sqlx::query("SELECT 1").execute(&mut connection).await?;
                connection.close().await?;
                Ok(())
            }

            async fn check_ready(&self) -> $crate::store::StoreResult<()> {
                let applied: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                        .fetch_one(&self.pool)
                        .await?;
                let expected = self.migrator().iter().map(|m| m.version).max();
                if applied < expected {
                    return Err($crate::store::StoreError::NotReady(format!(
                        "schema version {applied:?}, this build needs {expected:?}"
                    )));
                }
                Ok(())
            }

            async fn subscriptions(
                &self,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<(String, String)>> {
                // every table has an index on (subscription_key, ...): each part reads its index in order
                let sql = "SELECT subscription_key, MIN(subscription) FROM ( \
                               SELECT subscription_key, subscription FROM clusters WHERE subscription_key > $1 \
                               UNION ALL SELECT subscription_key, subscription FROM cluster_groups WHERE subscription_key > $1 \
                               UNION ALL SELECT subscription_key, subscription FROM policy_assignments WHERE subscription_key > $1 \
                           ) AS known GROUP BY subscription_key ORDER BY subscription_key LIMIT $2";
                Ok(sqlx::query_as::<$db, (String, String)>(sql)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn get_cluster(&self, key: &str) -> $crate::store::StoreResult<Option<$crate::model::ClusterRecord>> {
                let sql = concat!("SELECT ", cluster_columns!(), " FROM clusters WHERE key = $1");
                Ok(sqlx::query_as::<$db, $crate::model::ClusterRecord>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_clusters(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ClusterRecord>> {
                let after = page.after.clone().unwrap_or_default();
                let limit = i64::from(page.limit) + 1;
                let rows = match scope {
                    $crate::arm::scope::ClusterSet::Subscription { subscription_key } => {
                        let sql = concat!(
                            "SELECT ",
                            cluster_columns!(),
                            " FROM clusters WHERE subscription_key = $1 AND key > $2 ORDER BY key LIMIT $3"
                        );
                        sqlx::query_as::<$db, $crate::model::ClusterRecord>(sql)
                            .bind(subscription_key)
                            .bind(after)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    $crate::arm::scope::ClusterSet::ResourceGroup {
                        subscription_key,
                        resource_group_key,
                    } => {
                        let sql = concat!(
                            "SELECT ",
                            cluster_columns!(),
                            " FROM clusters WHERE subscription_key = $1 AND resource_group_key = $2 AND key > $3 \
                             ORDER BY key LIMIT $4"
                        );
                        sqlx::query_as::<$db, $crate::model::ClusterRecord>(sql)
                            .bind(subscription_key)
                            .bind(resource_group_key)
                            .bind(after)
                            .bind(limit)
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                Ok(rows)
            }

            async fn insert_cluster(
                &self,
                c: &$crate::model::ClusterRecord,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                Self::lock_fleet_for_cluster(&mut tx, &c.subscription_key).await?;
                let inserted = sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO clusters (key, subscription_key, resource_group_key, subscription, resource_group, \
                     name, location, tags, spec, connectivity_status, last_connectivity_time, agent_version, \
                     kubernetes_version, total_node_count, etag, system_data) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                     ON CONFLICT (key) DO NOTHING RETURNING id",
                )
                .bind(&c.key)
                .bind(&c.subscription_key)
                .bind(&c.resource_group_key)
                .bind(&c.subscription)
                .bind(&c.resource_group)
                .bind(&c.name)
                .bind(&c.location)
                .bind(sqlx::types::Json(&c.tags))
                .bind(sqlx::types::Json(&c.spec))
                .bind(&c.connectivity_status)
                .bind(c.last_connectivity_time)
                .bind(&c.agent_version)
                .bind(&c.kubernetes_version)
                .bind(c.total_node_count)
                .bind(&c.etag)
                .bind(sqlx::types::Json(&c.system_data))
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = inserted else {
                    return Ok($crate::model::Write::Conflict);
                };
                Self::reconcile_cluster(&mut tx, id, &c.subscription_key, &c.resource_group_key, managed).await?;
                self.commit(tx).await?;
                Ok($crate::model::Write::Written)
            }

            async fn update_cluster(
                &self,
                c: &$crate::model::ClusterRecord,
                expected_etag: &str,
                identity_changed: Option<&str>,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                Self::lock_fleet_for_cluster(&mut tx, &c.subscription_key).await?;
                let updated = sqlx::query_scalar::<$db, i64>(
                    "UPDATE clusters SET location = $1, tags = $2, spec = $3, etag = $4, system_data = $5, \
                     agent_encryption_key = CASE WHEN $8 THEN NULL ELSE agent_encryption_key END \
                     WHERE key = $6 AND etag = $7 RETURNING id",
                )
                .bind(&c.location)
                .bind(sqlx::types::Json(&c.tags))
                .bind(sqlx::types::Json(&c.spec))
                .bind(&c.etag)
                .bind(sqlx::types::Json(&c.system_data))
                .bind(&c.key)
                .bind(expected_etag)
                .bind(identity_changed.is_some())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(cluster_id) = updated else {
                    return Ok($crate::model::Write::Conflict);
                };
                if let Some(message) = identity_changed {
                    Self::fail_undelivered_secrets(&mut tx, cluster_id, None, message, chrono::Utc::now()).await?;
                }
                Self::reconcile_cluster(&mut tx, cluster_id, &c.subscription_key, &c.resource_group_key, managed)
                    .await?;
                self.commit(tx).await?;
                Ok($crate::model::Write::Written)
            }

            async fn set_agent_encryption_key(
                &self,
                cluster_id: i64,
                key: &str,
                message: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::model::Expired>> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                sqlx::query::<$db>("UPDATE clusters SET agent_encryption_key = $1 WHERE id = $2")
                    .bind(key)
                    .bind(cluster_id)
                    .execute(&mut *tx)
                    .await?;
                let failed =
                    Self::fail_undelivered_secrets(&mut tx, cluster_id, Some(key), message, chrono::Utc::now()).await?;
                self.commit(tx).await?;
                Ok(failed)
            }

            async fn delete_cluster(&self, key: &str) -> $crate::store::StoreResult<bool> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                // the fleet lock first, as every write that moves managed configurations takes it; then the
                // cluster's row, before its configurations: a cluster PUT of the same cluster, which the shared lock
                // lets run alongside, locks the row and then the configurations its tags release, and the two
                // orders deadlocked
                let subscription_key = key.split('/').next().unwrap_or_default();
                Self::lock_fleet_for_cluster(&mut tx, subscription_key).await?;
                sqlx::query::<$db>(concat!("SELECT id FROM clusters WHERE key = $1", $row_lock))
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                // the configurations first, while their cluster is there for the rollup and history triggers to
                // read its scope (a cascade would run them after the cluster is gone)
                sqlx::query::<$db>(
                    "DELETE FROM flux_configurations WHERE cluster_id = (SELECT id FROM clusters WHERE key = $1)",
                )
                .bind(key)
                .execute(&mut *tx)
                .await?;
                sqlx::query::<$db>(
                    "DELETE FROM extensions WHERE cluster_id = (SELECT id FROM clusters WHERE key = $1)",
                )
                .bind(key)
                .execute(&mut *tx)
                .await?;
                let done = sqlx::query::<$db>("DELETE FROM clusters WHERE key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                // the configurations went with the cluster: their running operations end too. Their keys are
                // "{cluster key}/{name}", the range ["{key}/", "{key}0") ('0' follows '/').
                sqlx::query::<$db>(
                    "UPDATE operations SET status = 'Canceled', end_time = $1 \
                     WHERE resource_key >= $2 AND resource_key < $3 AND status = 'InProgress'",
                )
                .bind(chrono::Utc::now())
                .bind(format!("{key}/"))
                .bind(format!("{key}0"))
                .execute(&mut *tx)
                .await?;
                self.commit(tx).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn get_configuration(
                &self,
                cluster_id: i64,
                name: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::ConfigurationRecord>> {
                let sql = concat!(
                    "SELECT ",
                    configuration_columns!(),
                    " FROM flux_configurations WHERE cluster_id = $1 AND name = $2"
                );
                Ok(sqlx::query_as::<$db, $crate::model::ConfigurationRecord>(sql)
                    .bind(cluster_id)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn configuration_for_write(
                &self,
                cluster_id: i64,
                name: &str,
                flux_type: &str,
            ) -> $crate::store::StoreResult<$crate::model::ConfigurationForWrite> {
                use sqlx::Row;
                let sql = concat!(
                    "SELECT f.*, x.name AS flux_extension_name, x.provisioning_state AS flux_extension_state, \
                     EXISTS (SELECT 1 FROM flux_configurations WHERE cluster_id = $1) AS has_configurations \
                     FROM (SELECT 1) AS one LEFT JOIN (SELECT ",
                    configuration_columns!(),
                    " FROM flux_configurations WHERE cluster_id = $1 AND name = $2) AS f ON TRUE \
                     LEFT JOIN (SELECT name, provisioning_state FROM extensions \
                     WHERE cluster_id = $1 AND extension_type = $3) AS x ON TRUE"
                );
                let row = sqlx::query::<$db>(sql)
                    .bind(cluster_id)
                    .bind(name)
                    .bind(flux_type)
                    .fetch_one(&self.pool)
                    .await?;
                let current = match row.try_get::<Option<i64>, _>("id")? {
                    Some(_) => Some(<$crate::model::ConfigurationRecord as sqlx::FromRow<_>>::from_row(&row)?),
                    None => None,
                };
                let extension = match row.try_get::<Option<String>, _>("flux_extension_name")? {
                    Some(name) => {
                        let state: String = row.try_get("flux_extension_state")?;
                        let state = $crate::lifecycle::ProvisioningState::try_from(state)
                            .map_err(|message| sqlx::Error::Decode(message.into()))?;
                        Some((name, state))
                    }
                    None => None,
                };
                Ok($crate::model::ConfigurationForWrite {
                    current,
                    flux: $crate::model::FluxGate {
                        extension,
                        has_configurations: row.try_get("has_configurations")?,
                    },
                })
            }

            async fn list_configurations(
                &self,
                cluster_id: i64,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ConfigurationRecord>> {
                let sql = concat!(
                    "SELECT ",
                    configuration_columns!(),
                    " FROM flux_configurations WHERE cluster_id = $1 AND name > $2 ORDER BY name LIMIT $3"
                );
                Ok(sqlx::query_as::<$db, $crate::model::ConfigurationRecord>(sql)
                    .bind(cluster_id)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn delete_configuration(
                &self,
                cluster_id: i64,
                name: &str,
                resource_key: &str,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let done = sqlx::query::<$db>("DELETE FROM flux_configurations WHERE cluster_id = $1 AND name = $2")
                    .bind(cluster_id)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                Self::supersede_operations(&mut tx, resource_key, chrono::Utc::now()).await?;
                self.commit(tx).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn time_out_reconciliations(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let error = $crate::error::ErrorDetail::new(
                    $crate::lifecycle::failure::RECONCILIATION_TIMED_OUT,
                    "the configuration was not reported Compliant within its reconciliationWaitDuration",
                );
                let done = sqlx::query::<$db>(
                    "UPDATE operations SET status = 'Failed', end_time = $1, error = $2 \
                     WHERE status = 'InProgress' AND reconcile_by IS NOT NULL AND reconcile_by <= $1",
                )
                .bind(now)
                .bind(sqlx::types::Json(&error))
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected())
            }

            async fn get_operation(&self, id: &str) -> $crate::store::StoreResult<Option<$crate::model::OperationRecord>> {
                Ok(sqlx::query_as::<$db, $crate::model::OperationRecord>(
                    "SELECT id, resource_key, resource_id, kind, generation, status, start_time, end_time, error, \
                     reconcile_by FROM operations WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn get_extension(
                &self,
                cluster_id: i64,
                name: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::ExtensionRecord>> {
                let sql = concat!("SELECT ", extension_columns!(), " FROM extensions WHERE cluster_id = $1 AND name = $2");
                Ok(sqlx::query_as::<$db, $crate::model::ExtensionRecord>(sql)
                    .bind(cluster_id)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn extension_of_type(
                &self,
                cluster_id: i64,
                extension_type: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::ExtensionRecord>> {
                let sql = concat!(
                    "SELECT ",
                    extension_columns!(),
                    " FROM extensions WHERE cluster_id = $1 AND extension_type = $2"
                );
                Ok(sqlx::query_as::<$db, $crate::model::ExtensionRecord>(sql)
                    .bind(cluster_id)
                    .bind(extension_type)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_extensions(
                &self,
                cluster_id: i64,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ExtensionRecord>> {
                let sql = concat!(
                    "SELECT ",
                    extension_columns!(),
                    " FROM extensions WHERE cluster_id = $1 AND name > $2 ORDER BY name LIMIT $3"
                );
                Ok(sqlx::query_as::<$db, $crate::model::ExtensionRecord>(sql)
                    .bind(cluster_id)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_extension(
                &self,
                e: &$crate::model::ExtensionRecord,
                op: &$crate::model::OperationRecord,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let inserted = sqlx::query::<$db>(
                    "INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, \
                     provisioning_state, observed, system_data, reported_generation, secrets_version, sealed, \
                     secrets_expire_at, generation_expires_at, failure) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT DO NOTHING",
                )
                .bind(e.cluster_id)
                .bind(&e.name)
                .bind(&e.extension_type)
                .bind(sqlx::types::Json(&e.spec))
                .bind(e.generation)
                .bind(&e.etag)
                .bind(e.provisioning_state.as_str())
                .bind(sqlx::types::Json(&e.observed))
                .bind(sqlx::types::Json(&e.system_data))
                .bind(e.reported_generation)
                .bind(e.secrets_version)
                .bind(sqlx::types::Json(&e.sealed))
                .bind(e.secrets_expire_at)
                .bind(e.generation_expires_at)
                .bind(&e.failure)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        return Ok($crate::model::Write::ParentMissing);
                    }
                    Err(err) => return Err(err.into()),
                    Ok(done) if done.rows_affected() == 0 => return Ok($crate::model::Write::Conflict),
                    Ok(_) => {}
                }
                Self::start_extension_operation(&mut tx, op).await?;
                self.commit(tx).await?;
                Ok($crate::model::Write::Written)
            }

            async fn update_extension(
                &self,
                e: &$crate::model::ExtensionRecord,
                expected_etag: &str,
                op: &$crate::model::OperationRecord,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let done = sqlx::query::<$db>(
                    "UPDATE extensions SET spec = $1, generation = $2, etag = $3, provisioning_state = $4, \
                     observed = $5, system_data = $6, secrets_version = $7, sealed = $8, secrets_expire_at = $9, \
                     generation_expires_at = $10, failure = $11 WHERE id = $12 AND etag = $13",
                )
                .bind(sqlx::types::Json(&e.spec))
                .bind(e.generation)
                .bind(&e.etag)
                .bind(e.provisioning_state.as_str())
                .bind(sqlx::types::Json(&e.observed))
                .bind(sqlx::types::Json(&e.system_data))
                .bind(e.secrets_version)
                .bind(sqlx::types::Json(&e.sealed))
                .bind(e.secrets_expire_at)
                .bind(e.generation_expires_at)
                .bind(&e.failure)
                .bind(e.id)
                .bind(expected_etag)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Ok($crate::model::Write::Conflict);
                }
                Self::supersede_operations(&mut tx, &op.resource_key, op.start_time).await?;
                Self::start_extension_operation(&mut tx, op).await?;
                self.commit(tx).await?;
                Ok($crate::model::Write::Written)
            }

            async fn delete_extension(
                &self,
                cluster_id: i64,
                name: &str,
                resource_key: &str,
            ) -> $crate::store::StoreResult<bool> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let done = sqlx::query::<$db>("DELETE FROM extensions WHERE cluster_id = $1 AND name = $2")
                    .bind(cluster_id)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                Self::supersede_operations(&mut tx, resource_key, chrono::Utc::now()).await?;
                self.commit(tx).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn apply_extension_report(
                &self,
                cluster_id: i64,
                name: &str,
                generation: i64,
                resource_key: &str,
                write: &$crate::model::ExtensionReportWrite,
                secrets_version: Option<i64>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::model::ReportOutcome> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!(
                    "SELECT ",
                    extension_columns!(),
                    " FROM extensions WHERE cluster_id = $1 AND name = $2",
                    $row_lock
                );
                let Some(current) = sqlx::query_as::<$db, $crate::model::ExtensionRecord>(sql)
                    .bind(cluster_id)
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    self.commit(tx).await?;
                    return Ok($crate::model::ReportOutcome {
                        disposition: $crate::lifecycle::unrecorded(None),
                        written_at: None,
                    });
                };
                if let Some(version) = secrets_version
                    && current.sealed.iter().any(|s| s.version <= version)
                {
                    // the cluster holds the settings: the control plane's copy goes, whatever became of the rest
                    let kept: Vec<_> = current.sealed.iter().filter(|s| s.version > version).cloned().collect();
                    sqlx::query::<$db>(
                        "UPDATE extensions SET sealed = $1, \
                         secrets_expire_at = CASE WHEN $2 THEN NULL ELSE secrets_expire_at END WHERE id = $3",
                    )
                    .bind(sqlx::types::Json(&kept))
                    .bind(kept.is_empty())
                    .bind(current.id)
                    .execute(&mut *tx)
                    .await?;
                }
                let current_generation = current.generation == generation;
                let (changed, operation_status, operation_error) = match write {
                    $crate::model::ExtensionReportWrite::Status {
                        provisioning_state,
                        observed,
                        operation_status,
                        operation_error,
                    } => {
                        let applies = current_generation
                            && current.provisioning_state != $crate::lifecycle::ProvisioningState::Deleting
                            && current.failure.is_none();
                        if applies {
                            sqlx::query::<$db>(
                                "UPDATE extensions SET provisioning_state = $1, observed = $2, \
                                 reported_generation = $3, generation_expires_at = NULL WHERE id = $4",
                            )
                            .bind(provisioning_state.as_str())
                            .bind(sqlx::types::Json(observed.as_ref()))
                            .bind(generation)
                            .bind(current.id)
                            .execute(&mut *tx)
                            .await?;
                        }
                        (applies, *operation_status, operation_error.clone())
                    }
                    $crate::model::ExtensionReportWrite::Removed => {
                        let applies = current_generation
                            && current.provisioning_state == $crate::lifecycle::ProvisioningState::Deleting;
                        if applies {
                            sqlx::query::<$db>("DELETE FROM extensions WHERE id = $1")
                                .bind(current.id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        (applies, $crate::lifecycle::OperationState::Succeeded, None)
                    }
                };
                if !changed {
                    self.commit(tx).await?;
                    return Ok($crate::model::ReportOutcome {
                        disposition: $crate::lifecycle::unrecorded(Some(current.generation)),
                        written_at: None,
                    });
                }
                let written_at = sqlx::query_scalar::<$db, chrono::DateTime<chrono::Utc>>(
                    "UPDATE operations SET status = $1, end_time = $2, error = $3 \
                     WHERE resource_key = $4 AND generation = $5 AND status = 'InProgress' RETURNING start_time",
                )
                .bind(operation_status.as_str())
                .bind(at)
                .bind(operation_error.as_ref().map(sqlx::types::Json))
                .bind(resource_key)
                .bind(generation)
                .fetch_optional(&mut *tx)
                .await?;
                self.commit(tx).await?;
                Ok($crate::model::ReportOutcome {
                    disposition: $crate::model::ReportDisposition::Recorded,
                    written_at,
                })
            }

            async fn get_cluster_group(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::ClusterGroupRecord>> {
                let sql = concat!("SELECT ", cluster_group_columns!(), " FROM cluster_groups WHERE key = $1");
                Ok(sqlx::query_as::<$db, $crate::model::ClusterGroupRecord>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_cluster_groups(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ClusterGroupRecord>> {
                let after = page.after.clone().unwrap_or_default();
                let limit = i64::from(page.limit) + 1;
                let (subscription_key, resource_group_key) = scope.keys();
                // an empty resource group key stands for "any": a subscription lists its groups' too
                let sql = concat!(
                    "SELECT ",
                    cluster_group_columns!(),
                    " FROM cluster_groups WHERE subscription_key = $1 AND ($2 = '' OR resource_group_key = $2) \
                     AND key > $3 ORDER BY key LIMIT $4"
                );
                Ok(sqlx::query_as::<$db, $crate::model::ClusterGroupRecord>(sql)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_cluster_group(
                &self,
                g: &$crate::model::ClusterGroupRecord,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let done = sqlx::query::<$db>(
                    "INSERT INTO cluster_groups (key, subscription_key, resource_group_key, subscription, \
                     resource_group, name, selector, etag, system_data) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (key) DO NOTHING",
                )
                .bind(&g.key)
                .bind(&g.subscription_key)
                .bind(&g.resource_group_key)
                .bind(&g.subscription)
                .bind(&g.resource_group)
                .bind(&g.name)
                .bind(sqlx::types::Json(&g.selector))
                .bind(&g.etag)
                .bind(sqlx::types::Json(&g.system_data))
                .execute(self.writer())
                .await?;
                Ok(if done.rows_affected() == 1 {
                    $crate::model::Write::Written
                } else {
                    $crate::model::Write::Conflict
                })
            }

            async fn update_cluster_group(
                &self,
                g: &$crate::model::ClusterGroupRecord,
                expected_etag: &str,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                Self::lock_fleet(&mut tx, &g.subscription_key).await?;
                let updated = sqlx::query_scalar::<$db, i64>(
                    "UPDATE cluster_groups SET selector = $1, etag = $2, system_data = $3 \
                     WHERE key = $4 AND etag = $5 RETURNING id",
                )
                .bind(sqlx::types::Json(&g.selector))
                .bind(&g.etag)
                .bind(sqlx::types::Json(&g.system_data))
                .bind(&g.key)
                .bind(expected_etag)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = updated else {
                    return Ok($crate::model::Write::Conflict);
                };
                let sql = concat!(
                    "SELECT ",
                    policy_assignment_columns!(),
                    " FROM policy_assignments WHERE cluster_group_id = $1 ORDER BY id"
                );
                let following = sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .bind(id)
                    .fetch_all(&mut *tx)
                    .await?;
                for assignment in &following {
                    Self::reconcile(&mut tx, assignment, None, managed).await?;
                }
                self.commit(tx).await?;
                Ok($crate::model::Write::Written)
            }

            async fn delete_cluster_group(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<$crate::model::GroupDelete> {
                let done = sqlx::query::<$db>("DELETE FROM cluster_groups WHERE key = $1")
                    .bind(key)
                    .execute(self.writer())
                    .await;
                Ok(match done {
                    Err(err) if $crate::store::sql::is_foreign_key_violation(&err) => {
                        $crate::model::GroupDelete::InUse
                    }
                    Err(err) => return Err(err.into()),
                    Ok(done) if done.rows_affected() > 0 => $crate::model::GroupDelete::Deleted,
                    Ok(_) => $crate::model::GroupDelete::Missing,
                })
            }

            async fn get_policy_assignment(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::PolicyAssignmentRecord>> {
                let sql = concat!("SELECT ", policy_assignment_columns!(), " FROM policy_assignments WHERE key = $1");
                Ok(sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_policy_assignments(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::PolicyAssignmentRecord>> {
                let (subscription_key, resource_group_key) = scope.keys();
                let sql = concat!(
                    "SELECT ",
                    policy_assignment_columns!(),
                    " FROM policy_assignments WHERE subscription_key = $1 AND ($2 = '' OR resource_group_key = $2) \
                     AND key > $3 ORDER BY key LIMIT $4"
                );
                Ok(sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn write_policy_assignment(
                &self,
                a: &$crate::model::PolicyAssignmentRecord,
                expected_etag: Option<&str>,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<$crate::model::AssignmentWrite> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                Self::lock_fleet(&mut tx, &a.subscription_key).await?;
                // the rollout state it replaces, for the history of its transition
                let previous = match expected_etag {
                    None => None,
                    Some(_) => sqlx::query_scalar::<$db, Option<sqlx::types::Json<$crate::fleet::assignments::rollout::RolloutState>>>(
                        "SELECT rollout_state FROM policy_assignments WHERE key = $1",
                    )
                    .bind(&a.key)
                    .fetch_optional(&mut *tx)
                    .await?
                    .flatten()
                    .map(|s| s.0),
                };
                let written = match expected_etag {
                    None => {
                        sqlx::query_scalar::<$db, i64>(
                            "INSERT INTO policy_assignments (key, subscription_key, resource_group_key, subscription, \
                             resource_group, name, cluster_group_id, configuration_name, spec, rendered, generation, \
                             etag, system_data, rollout_state) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                             ON CONFLICT (key) DO NOTHING RETURNING id",
                        )
                        .bind(&a.key)
                        .bind(&a.subscription_key)
                        .bind(&a.resource_group_key)
                        .bind(&a.subscription)
                        .bind(&a.resource_group)
                        .bind(&a.name)
                        .bind(a.cluster_group_id)
                        .bind(&a.configuration_name)
                        .bind(sqlx::types::Json(&a.spec))
                        .bind(sqlx::types::Json(&a.rendered))
                        .bind(a.generation)
                        .bind(&a.etag)
                        .bind(sqlx::types::Json(&a.system_data))
                        .bind(a.rollout_state.as_ref().map(sqlx::types::Json))
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                    Some(expected) => {
                        sqlx::query_scalar::<$db, i64>(
                            "UPDATE policy_assignments SET cluster_group_id = $1, configuration_name = $2, spec = $3, \
                             rendered = $4, generation = $5, etag = $6, system_data = $7, rollout_state = $10 \
                             WHERE key = $8 AND etag = $9 RETURNING id",
                        )
                        .bind(a.cluster_group_id)
                        .bind(&a.configuration_name)
                        .bind(sqlx::types::Json(&a.spec))
                        .bind(sqlx::types::Json(&a.rendered))
                        .bind(a.generation)
                        .bind(&a.etag)
                        .bind(sqlx::types::Json(&a.system_data))
                        .bind(&a.key)
                        .bind(expected)
                        .bind(a.rollout_state.as_ref().map(sqlx::types::Json))
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                };
                let Some(id) = written else {
                    return Ok($crate::model::AssignmentWrite::Conflict);
                };
                let a = $crate::model::PolicyAssignmentRecord { id, ..a.clone() };
                if let Some(next) = &a.rollout_state {
                    Self::record_rollout(&mut tx, &a, previous.as_ref(), next, next.batch_started_at).await?;
                }
                let overlapping = Self::overlapping(&mut tx, &a).await?;
                if !overlapping.is_empty() {
                    tx.rollback().await?;
                    return Ok($crate::model::AssignmentWrite::Overlap(overlapping));
                }
                Self::reconcile(&mut tx, &a, None, managed).await?;
                self.commit(tx).await?;
                Ok($crate::model::AssignmentWrite::Written)
            }

            async fn delete_policy_assignment(&self, key: &str) -> $crate::store::StoreResult<bool> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!("SELECT ", policy_assignment_columns!(), " FROM policy_assignments WHERE key = $1");
                let Some(a) = sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    return Ok(false);
                };
                Self::lock_fleet(&mut tx, &a.subscription_key).await?;
                Self::let_go(&mut tx, &a, None, &uuid::Uuid::new_v4().to_string()).await?;
                sqlx::query::<$db>("DELETE FROM policy_assignments WHERE id = $1")
                    .bind(a.id)
                    .execute(&mut *tx)
                    .await?;
                self.commit(tx).await?;
                Ok(true)
            }

            async fn reconcile_assignments(
                &self,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<usize> {
                let sql = concat!("SELECT ", policy_assignment_columns!(), " FROM policy_assignments ORDER BY id");
                let assignments = sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .fetch_all(&self.pool)
                    .await?;
                // the circuit breakers first: a rollout halted by one does not advance below
                self.trip_breakers(&assignments).await?;
                for a in &assignments {
                    self.reconcile_listed(a, managed).await?;
                }
                Ok(assignments.len())
            }

            async fn advance_rollouts(
                &self,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<usize> {
                // the assignments are few (one per configuration a fleet shares): read them all, keep the moving
                let sql = concat!("SELECT ", policy_assignment_columns!(), " FROM policy_assignments ORDER BY id");
                let assignments = sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .fetch_all(&self.pool)
                    .await?;
                let mut moving = 0;
                for a in assignments.iter().filter(|a| {
                    a.rollout_state.as_ref().is_some_and(|s| s.generation == a.generation && s.state.moving())
                }) {
                    moving += usize::from(self.reconcile_listed(a, managed).await?);
                }
                Ok(moving)
            }

            async fn steer_rollout(
                &self,
                key: &str,
                steer: $crate::fleet::assignments::rollout::Steer,
                by: &str,
                managed: &$crate::lifecycle::ManagedWrite,
            ) -> $crate::store::StoreResult<Option<Result<$crate::model::PolicyAssignmentRecord, $crate::fleet::assignments::rollout::Refused>>> {
                use $crate::fleet::assignments::rollout::{Steer, pause, resume};
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let sql = concat!("SELECT ", policy_assignment_columns!(), " FROM policy_assignments WHERE key = $1");
                let Some(a) = sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    return Ok(None);
                };
                Self::lock_fleet(&mut tx, &a.subscription_key).await?;
                // read again under the lock: a reconciliation may have moved the rollout meanwhile
                let sql = concat!("SELECT ", policy_assignment_columns!(), " FROM policy_assignments WHERE id = $1");
                let a = sqlx::query_as::<$db, $crate::model::PolicyAssignmentRecord>(sql)
                    .bind(a.id)
                    .fetch_one(&mut *tx)
                    .await?;
                let now = chrono::Utc::now();
                let next = match steer {
                    Steer::Pause => pause(a.rollout_state.as_ref(), a.generation, by),
                    Steer::Resume => resume(a.rollout_state.as_ref(), a.generation, by, now),
                };
                let next = match next {
                    Err(refused) => {
                        tx.rollback().await?;
                        return Ok(Some(Err(refused)));
                    }
                    Ok(None) => {
                        tx.rollback().await?;
                        return Ok(Some(Ok(a)));
                    }
                    Ok(Some(next)) => next,
                };
                Self::move_rollout(&mut tx, &a, &next, now).await?;
                let a = $crate::model::PolicyAssignmentRecord { rollout_state: Some(next), ..a };
                if steer == Steer::Resume {
                    // the batch it was at may be done already: move on now, not at the next sweep
                    Self::reconcile(&mut tx, &a, None, managed).await?;
                }
                self.commit(tx).await?;
                Ok(Some(Ok(a)))
            }

            async fn assignment_matches(
                &self,
                a: &$crate::model::PolicyAssignmentRecord,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ClusterTags>> {
                // the rule that writes managed configurations, read-only
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                let matched = Self::matched(&mut tx, a, None).await?;
                tx.rollback().await?;
                Ok(matched)
            }

            async fn configurations_named(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                name: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ConfigurationRecord>> {
                let (subscription_key, resource_group_key) = scope.keys();
                let sql = concat!(
                    "SELECT ",
                    configuration_columns!(),
                    " FROM flux_configurations WHERE name = $1 AND cluster_id IN (SELECT id FROM clusters \
                     WHERE subscription_key = $2 AND ($3 = '' OR resource_group_key = $3))"
                );
                Ok(sqlx::query_as::<$db, $crate::model::ConfigurationRecord>(sql)
                    .bind(name)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn cluster_tags(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
            ) -> $crate::store::StoreResult<Vec<$crate::model::ClusterTags>> {
                let (subscription_key, resource_group_key) = scope.keys();
                Ok(sqlx::query_as::<$db, $crate::model::ClusterTags>(
                    "SELECT id, key, resource_group, name, location, tags, connectivity_status, last_connectivity_time FROM clusters \
                     WHERE subscription_key = $1 AND ($2 = '' OR resource_group_key = $2) ORDER BY key",
                )
                .bind(subscription_key)
                .bind(resource_group_key)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn state_counts(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                query: &$crate::model::StateCountQuery,
            ) -> $crate::store::StoreResult<Vec<$crate::model::StateCount>> {
                let (subscription_key, resource_group_key) = scope.keys();
                // one row per cluster and combination: a fleet's rows number its clusters times a few states
                Ok(sqlx::query_as::<$db, $crate::model::StateCount>(
                    "SELECT f.cluster_id, \
                     CASE WHEN $4 THEN f.name ELSE '' END AS name, \
                     CASE WHEN $5 THEN COALESCE(f.managed_by_id, '') ELSE '' END AS managed_by_id, \
                     f.compliance_state, f.provisioning_state, \
                     COALESCE(f.reported_generation = f.generation, FALSE) AS reported, \
                     CASE WHEN $6 THEN f.observed ->> 'sourceSyncedCommitId' END AS commit_id, COUNT(*) AS count \
                     FROM flux_configurations f JOIN clusters c ON c.id = f.cluster_id \
                     WHERE c.subscription_key = $1 AND ($2 = '' OR c.resource_group_key = $2) \
                     AND ($3 = 0 OR f.managed_by = $3) \
                     GROUP BY f.cluster_id, 2, 3, f.compliance_state, f.provisioning_state, 6, 7",
                )
                .bind(subscription_key)
                .bind(resource_group_key)
                .bind(query.managed_by.unwrap_or(0))
                .bind(query.by_name)
                .bind(query.by_assignment)
                .bind(query.by_commit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn revisions(&self, cluster_ids: &[i64]) -> $crate::store::StoreResult<Vec<(i64, i64)>> {
                Ok(sqlx::query_as::<$db, (i64, i64)>(concat!("SELECT id, revision FROM clusters WHERE id ", $in_ids))
                    .bind(Self::id_set(cluster_ids))
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn desired_states(
                &self,
                cluster_ids: &[i64],
            ) -> $crate::store::StoreResult<Vec<(i64, $crate::model::DesiredRecords)>> {
                // The revisions first, then the configurations, without a transaction: a write in between makes
                // the configurations newer than the revision, which costs the agent one redundant wake-up; the
                // other order could hand out an old desired state under a new revision, and the agent would miss
                // the change until the next one.
                let mut states: std::collections::HashMap<i64, $crate::model::DesiredRecords> = self
                    .revisions(cluster_ids)
                    .await?
                    .into_iter()
                    .map(|(id, revision)| (id, $crate::model::DesiredRecords { revision, ..Default::default() }))
                    .collect();
                if states.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = concat!(
                    "SELECT ",
                    configuration_columns!(),
                    " FROM flux_configurations WHERE cluster_id ",
                    $in_ids,
                    " ORDER BY cluster_id, name"
                );
                let configurations = sqlx::query_as::<$db, $crate::model::ConfigurationRecord>(sql)
                    .bind(Self::id_set(cluster_ids))
                    .fetch_all(&self.pool)
                    .await?;
                // most polls find no undelivered secrets (an expiry is set exactly while some exist): read them only
                // for the clusters that have some
                let mut holding: Vec<i64> = configurations
                    .iter()
                    .filter(|c| c.secrets_expire_at.is_some())
                    .map(|c| c.cluster_id)
                    .collect();
                holding.dedup();
                let sealed = if holding.is_empty() {
                    Vec::new()
                } else {
                    let sql = concat!(
                        "SELECT s.configuration_id, s.version, s.change, s.base_version, s.recipient, \
                         s.encapsulated_key, s.ciphertext \
                         FROM sealed_secrets s JOIN flux_configurations c ON c.id = s.configuration_id \
                         WHERE c.cluster_id ",
                        $in_ids,
                        " ORDER BY s.configuration_id, s.version"
                    );
                    sqlx::query_as::<$db, $crate::model::SealedSecretsRecord>(sql)
                        .bind(Self::id_set(&holding))
                        .fetch_all(&self.pool)
                        .await?
                };
                let sql = concat!(
                    "SELECT ",
                    extension_columns!(),
                    " FROM extensions WHERE cluster_id ",
                    $in_ids,
                    " ORDER BY cluster_id, name"
                );
                let extensions = sqlx::query_as::<$db, $crate::model::ExtensionRecord>(sql)
                    .bind(Self::id_set(cluster_ids))
                    .fetch_all(&self.pool)
                    .await?;
                let cluster_of: std::collections::HashMap<i64, i64> =
                    configurations.iter().map(|c| (c.id, c.cluster_id)).collect();
                for c in configurations {
                    if let Some(state) = states.get_mut(&c.cluster_id) {
                        state.configurations.push(c);
                    }
                }
                for s in sealed {
                    if let Some(state) = cluster_of.get(&s.configuration_id).and_then(|id| states.get_mut(id)) {
                        state.sealed.push(s);
                    }
                }
                for e in extensions {
                    if let Some(state) = states.get_mut(&e.cluster_id) {
                        state.extensions.push(e);
                    }
                }
                Ok(states.into_iter().collect())
            }

            async fn expire(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                messages: &$crate::lifecycle::ExpiryMessages,
            ) -> $crate::store::StoreResult<Vec<$crate::model::Expired>> {
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                // every stored secret is undelivered (acknowledged ones are deleted at once): all fail
                let secrets = sqlx::query_as::<$db, (i64, i64, String, i64)>(
                    "UPDATE flux_configurations SET secrets_expire_at = NULL, generation_expires_at = NULL, \
                     provisioning_state = 'Failed', failure = $2 \
                     WHERE secrets_expire_at <= $1 \
                     RETURNING id, cluster_id, name, generation",
                )
                .bind(now)
                .bind(&messages.secrets)
                .fetch_all(&mut *tx)
                .await?;
                let pending = sqlx::query_as::<$db, (i64, i64, String, i64)>(
                    "UPDATE flux_configurations SET provisioning_state = 'Failed', failure = $2, \
                     generation_expires_at = NULL \
                     WHERE generation_expires_at <= $1 AND provisioning_state <> 'Deleting' \
                     RETURNING id, cluster_id, name, generation",
                )
                .bind(now)
                .bind(&messages.pending)
                .fetch_all(&mut *tx)
                .await?;
                let mut expired = Vec::with_capacity(secrets.len() + pending.len());
                for (id, cluster_id, name, generation) in secrets {
                    Self::delete_sealed_secrets(&mut tx, id).await?;
                    Self::fail_operation(&mut tx, cluster_id, &name, generation, ($crate::lifecycle::failure::EXPIRED, &messages.secrets), now).await?;
                    let e = $crate::model::Expired { cluster_id, name, generation, secrets: true };
                    Self::queue_expiry_alert(&mut tx, &e, &messages.secrets).await?;
                    expired.push(e);
                }
                for (_, cluster_id, name, generation) in pending {
                    Self::fail_operation(&mut tx, cluster_id, &name, generation, ($crate::lifecycle::failure::EXPIRED, &messages.pending), now).await?;
                    let e = $crate::model::Expired { cluster_id, name, generation, secrets: false };
                    Self::queue_expiry_alert(&mut tx, &e, &messages.pending).await?;
                    expired.push(e);
                }
                let extension_secrets = sqlx::query_as::<$db, (i64, String, i64)>(
                    "UPDATE extensions SET sealed = '[]', secrets_expire_at = NULL, generation_expires_at = NULL, \
                     provisioning_state = 'Failed', failure = $2 WHERE secrets_expire_at <= $1 \
                     RETURNING cluster_id, name, generation",
                )
                .bind(now)
                .bind(&messages.extension_secrets)
                .fetch_all(&mut *tx)
                .await?;
                let extension_pending = sqlx::query_as::<$db, (i64, String, i64)>(
                    "UPDATE extensions SET provisioning_state = 'Failed', failure = $2, generation_expires_at = NULL \
                     WHERE generation_expires_at <= $1 AND provisioning_state <> 'Deleting' \
                     RETURNING cluster_id, name, generation",
                )
                .bind(now)
                .bind(&messages.extension_pending)
                .fetch_all(&mut *tx)
                .await?;
                for ((cluster_id, name, generation), (message, secrets)) in extension_secrets
                    .into_iter()
                    .map(|e| (e, (&messages.extension_secrets, true)))
                    .chain(extension_pending.into_iter().map(|e| (e, (&messages.extension_pending, false))))
                {
                    let name = format!("extensions/{name}");
                    Self::fail_operation(&mut tx, cluster_id, &name, generation, ($crate::lifecycle::failure::EXPIRED, message), now).await?;
                    let e = $crate::model::Expired { cluster_id, name, generation, secrets };
                    Self::queue_expiry_alert(&mut tx, &e, message).await?;
                    expired.push(e);
                }
                self.commit(tx).await?;
                Ok(expired)
            }
        }

        $crate::store::fleet::fleet_helpers!($store, $db, $lock, $cluster_lock, $write);

        impl $store {
            /// Applies one configuration's report in `tx`, as `Store::apply_reports` says: the reports of a batch that
            /// are not applied set-based (`batch::set_based`).
            async fn apply_one_report(
                tx: &mut sqlx::Transaction<'static, $db>,
                report: &$crate::model::ConfigurationReportWrite,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::model::ReportOutcome, sqlx::Error> {
                let $crate::model::ConfigurationReportWrite {
                    cluster_id,
                    name,
                    generation,
                    resource_key,
                    write,
                    secrets_version,
                } = report;
                let (cluster_id, generation, secrets_version) = (*cluster_id, *generation, *secrets_version);
                if let Some(version) = secrets_version {
                    // the cluster holds the secrets: the control plane's copy goes, whatever became of the rest.
                    // The configuration's row is locked first, as a configuration write locks it before its sealed
                    // secrets: the other order deadlocked with a PUT on PostgreSQL.
                    let holding: Option<i64> = sqlx::query_scalar::<$db, i64>(concat!(
                        "SELECT id FROM flux_configurations WHERE cluster_id = $1 AND name = $2 AND EXISTS \
                         (SELECT 1 FROM sealed_secrets s WHERE s.configuration_id = flux_configurations.id \
                         AND s.version <= $3)",
                        $row_lock
                    ))
                    .bind(cluster_id)
                    .bind(name)
                    .bind(version)
                    .fetch_optional(&mut **tx)
                    .await?;
                    if let Some(configuration_id) = holding {
                        sqlx::query::<$db>("DELETE FROM sealed_secrets WHERE version <= $1 AND configuration_id = $2")
                            .bind(version)
                            .bind(configuration_id)
                            .execute(&mut **tx)
                            .await?;
                        sqlx::query::<$db>(
                            "UPDATE flux_configurations SET secrets_expire_at = NULL \
                             WHERE cluster_id = $1 AND name = $2 AND NOT EXISTS \
                             (SELECT 1 FROM sealed_secrets WHERE configuration_id = flux_configurations.id)",
                        )
                        .bind(cluster_id)
                        .bind(name)
                        .execute(&mut **tx)
                        .await?;
                    }
                }
                let (changed, operation_status, operation_error) = match write {
                    $crate::model::ReportWrite::Status {
                        provisioning_state,
                        compliance_state,
                        observed,
                        operation_status,
                        operation_error,
                        restored,
                    } => {
                        let done = sqlx::query::<$db>(
                            "UPDATE flux_configurations SET provisioning_state = $1, compliance_state = $2, \
                             observed = $3, reported_generation = $4, generation_expires_at = NULL \
                             WHERE cluster_id = $5 AND name = $6 AND generation = $4 \
                             AND provisioning_state <> 'Deleting' AND failure IS NULL",
                        )
                        .bind(provisioning_state.as_str())
                        .bind(compliance_state.as_str())
                        .bind(sqlx::types::Json(observed.as_ref()))
                        .bind(generation)
                        .bind(cluster_id)
                        .bind(name)
                        .execute(&mut **tx)
                        .await?;
                        if done.rows_affected() > 0 {
                            // what the agent restored is history the triggers cannot see: the status may not move
                            for message in restored {
                                sqlx::query::<$db>(concat!(
                                    "INSERT INTO status_history (at, configuration_id, cluster_id, subscription_key, \
                                     resource_group_key, cluster_path, name, policy_assignment, event, generation, \
                                     reported_generation, compliance_state, provisioning_state, commit_id, message) \
                                     SELECT ", $history_now, ", f.id, f.cluster_id, c.subscription_key, \
                                     c.resource_group_key, c.subscription || '/' || c.resource_group || '/' || c.name, \
                                     f.name, COALESCE(f.managed_by_id, ''), $1, f.generation, f.reported_generation, \
                                     f.compliance_state, f.provisioning_state, $2, $3 \
                                     FROM flux_configurations f JOIN clusters c ON c.id = f.cluster_id \
                                     WHERE f.cluster_id = $4 AND f.name = $5"
                                ))
                                .bind($crate::lifecycle::HistoryEvent::Restored.as_str())
                                .bind(observed.source_synced_commit_id.as_deref())
                                .bind(message)
                                .bind(cluster_id)
                                .bind(name)
                                .execute(&mut **tx)
                                .await?;
                            }
                        }
                        (done.rows_affected() > 0, *operation_status, operation_error.clone())
                    }
                    $crate::model::ReportWrite::Removed => {
                        let done = sqlx::query::<$db>(
                            "DELETE FROM flux_configurations WHERE cluster_id = $1 AND name = $2 \
                             AND generation = $3 AND provisioning_state = 'Deleting'",
                        )
                        .bind(cluster_id)
                        .bind(name)
                        .bind(generation)
                        .execute(&mut **tx)
                        .await?;
                        (done.rows_affected() > 0, $crate::lifecycle::OperationState::Succeeded, None)
                    }
                };
                if !changed {
                    let current = sqlx::query_scalar::<$db, i64>(
                        "SELECT generation FROM flux_configurations WHERE cluster_id = $1 AND name = $2",
                    )
                    .bind(cluster_id)
                    .bind(name)
                    .fetch_optional(&mut **tx)
                    .await?;
                    return Ok($crate::model::ReportOutcome {
                        disposition: $crate::lifecycle::unrecorded(current),
                        written_at: None,
                    });
                }
                // an operation that waits for reconciliation succeeds only on a Compliant report; a failure ends it
                let compliant = match write {
                    $crate::model::ReportWrite::Status { compliance_state, .. } => {
                        *compliance_state == fluxplane_agent_protocol::flux::ComplianceState::Compliant
                    }
                    $crate::model::ReportWrite::Removed => true,
                };
                let written_at = sqlx::query_scalar::<$db, chrono::DateTime<chrono::Utc>>(
                    "UPDATE operations SET status = $1, end_time = $2, error = $3 \
                     WHERE resource_key = $4 AND generation = $5 AND status = 'InProgress' \
                     AND (reconcile_by IS NULL OR $6 OR $1 <> 'Succeeded') RETURNING start_time",
                )
                .bind(operation_status.as_str())
                .bind(at)
                .bind(operation_error.as_ref().map(sqlx::types::Json))
                .bind(resource_key)
                .bind(generation)
                .bind(compliant)
                .fetch_optional(&mut **tx)
                .await?;
                Ok($crate::model::ReportOutcome {
                    disposition: $crate::model::ReportDisposition::Recorded,
                    written_at,
                })
            }

            async fn delete_sealed_secrets(
                tx: &mut sqlx::Transaction<'_, $db>,
                configuration_id: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query::<$db>("DELETE FROM sealed_secrets WHERE configuration_id = $1")
                    .bind(configuration_id)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Fails the cluster's configurations holding undelivered secrets sealed to any key but `keep` (to any
            /// key at all without it), deleting those secrets: their agent can no longer open them.
            async fn fail_undelivered_secrets(
                tx: &mut sqlx::Transaction<'_, $db>,
                cluster_id: i64,
                keep: Option<&str>,
                message: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::model::Expired>, sqlx::Error> {
                let failed = sqlx::query_as::<$db, (i64, String, i64)>(
                    "UPDATE flux_configurations SET provisioning_state = 'Failed', failure = $2, \
                     secrets_expire_at = NULL, generation_expires_at = NULL \
                     WHERE cluster_id = $1 AND EXISTS (SELECT 1 FROM sealed_secrets s \
                         WHERE s.configuration_id = flux_configurations.id AND ($3 IS NULL OR s.recipient <> $3)) \
                     RETURNING id, name, generation",
                )
                .bind(cluster_id)
                .bind(message)
                .bind(keep)
                .fetch_all(&mut **tx)
                .await?;
                let mut expired = Vec::with_capacity(failed.len());
                for (id, name, generation) in failed {
                    Self::delete_sealed_secrets(tx, id).await?;
                    Self::fail_operation(tx, cluster_id, &name, generation, ($crate::lifecycle::failure::AGENT_KEY_CHANGED, message), now).await?;
                    expired.push($crate::model::Expired { cluster_id, name, generation, secrets: true });
                }
                // an extension's sealed settings are a JSON column: which recipient they name is read here
                let sql = concat!(
                    "SELECT ",
                    extension_columns!(),
                    " FROM extensions WHERE cluster_id = $1 AND secrets_expire_at IS NOT NULL"
                );
                let holding = sqlx::query_as::<$db, $crate::model::ExtensionRecord>(sql)
                    .bind(cluster_id)
                    .fetch_all(&mut **tx)
                    .await?;
                for e in holding {
                    if e.sealed.iter().all(|s| keep.is_some_and(|key| s.recipient == key)) {
                        continue;
                    }
                    sqlx::query::<$db>(
                        "UPDATE extensions SET sealed = '[]', secrets_expire_at = NULL, generation_expires_at = NULL, \
                         provisioning_state = 'Failed', failure = $1 WHERE id = $2",
                    )
                    .bind(message)
                    .bind(e.id)
                    .execute(&mut **tx)
                    .await?;
                    let name = format!("extensions/{}", e.name);
                    Self::fail_operation(tx, cluster_id, &name, e.generation, ($crate::lifecycle::failure::AGENT_KEY_CHANGED, message), now).await?;
                    expired.push($crate::model::Expired { cluster_id, name, generation: e.generation, secrets: true });
                }
                Ok(expired)
            }

            /// Ends the running operation of the configuration's generation as failed with `message`.
            async fn fail_operation(
                tx: &mut sqlx::Transaction<'_, $db>,
                cluster_id: i64,
                name: &str,
                generation: i64,
                (code, message): (&str, &str),
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), sqlx::Error> {
                let error = $crate::error::ErrorDetail::new(code, message.to_owned());
                sqlx::query::<$db>(
                    "UPDATE operations SET status = 'Failed', end_time = $1, error = $2 \
                     WHERE resource_key = (SELECT key FROM clusters WHERE id = $3) || '/' || $4 \
                     AND generation = $5 AND status = 'InProgress'",
                )
                .bind(now)
                .bind(sqlx::types::Json(&error))
                .bind(cluster_id)
                .bind(name)
                .bind(generation)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            /// Records `op`, running.
            async fn start_extension_operation(
                tx: &mut sqlx::Transaction<'_, $db>,
                op: &$crate::model::OperationRecord,
            ) -> Result<(), sqlx::Error> {
                sqlx::query::<$db>(
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

            /// Marks the operations still running on the resource as superseded by a newer write.
            async fn supersede_operations(
                tx: &mut sqlx::Transaction<'_, $db>,
                resource_key: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), sqlx::Error> {
                sqlx::query::<$db>(
                    "UPDATE operations SET status = 'Canceled', end_time = $1 \
                     WHERE resource_key = $2 AND status = 'InProgress'",
                )
                .bind(at)
                .bind(resource_key)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

        }
    };
}

pub(super) use {
    bind_configuration, cluster_columns, cluster_group_columns, configuration_columns, ensure_flux_extension,
    extension_columns, policy_assignment_columns, sql_store,
};
