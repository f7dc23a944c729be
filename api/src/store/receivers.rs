//! The SQL of Git receivers and of requests to re-check a source at once, shared by both engines.
//!
//! A request sets `reconcile_requested_at` on the configurations it concerns and bumps their clusters' revisions
//! in one transaction, rows locked in id order (configurations, then clusters, as every writer locks them), so that
//! waiting polls answer at once: SQLite's revision trigger leaves the keys for its commit to wake (migration 0012);
//! on PostgreSQL no configurations' trigger fires for it (no generation moved), so the store announces the keys
//! after the commit, as it does for a configuration write (migration 0014).

/// Ids bound per statement.
pub(super) const CHUNK: usize = 1000;

/// The columns of `GitReceiverRecord`.
macro_rules! git_receiver_columns {
    () => {
        "id, key, subscription_key, resource_group_key, subscription, resource_group, name, spec, hook_id, \
         sealed_secret, etag, system_data, last_push"
    };
}

/// Implements `Receivers` for `$store` (see `sql_store!` for `$row_lock` and `$write`); the store's `revised`
/// announces the clusters whose revision a committed request moved, where its engine needs that.
macro_rules! receivers_store {
    ($store:ty, $db:ty, row_lock = $row_lock:literal, write_begin = $write:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::Receivers for $store {
            async fn get_git_receiver(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::GitReceiverRecord>> {
                let sql = concat!(
                    "SELECT ",
                    git_receiver_columns!(),
                    " FROM git_receivers WHERE key = $1"
                );
                Ok(sqlx::query_as::<$db, $crate::model::GitReceiverRecord>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn git_receiver_by_hook(
                &self,
                hook_id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::model::GitReceiverRecord>> {
                let sql = concat!(
                    "SELECT ",
                    git_receiver_columns!(),
                    " FROM git_receivers WHERE hook_id = $1"
                );
                Ok(sqlx::query_as::<$db, $crate::model::GitReceiverRecord>(sql)
                    .bind(hook_id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_git_receivers(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                page: &$crate::arm::paging::PageRequest,
            ) -> $crate::store::StoreResult<Vec<$crate::model::GitReceiverRecord>> {
                let (subscription_key, resource_group_key) = scope.keys();
                // an empty resource group key stands for "any": a subscription lists its groups' too
                let sql = concat!(
                    "SELECT ",
                    git_receiver_columns!(),
                    " FROM git_receivers WHERE subscription_key = $1 AND ($2 = '' OR resource_group_key = $2) \
                     AND key > $3 ORDER BY key LIMIT $4"
                );
                Ok(sqlx::query_as::<$db, $crate::model::GitReceiverRecord>(sql)
                    .bind(subscription_key)
                    .bind(resource_group_key)
                    .bind(page.after.clone().unwrap_or_default())
                    .bind(i64::from(page.limit) + 1)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn insert_git_receiver(
                &self,
                r: &$crate::model::GitReceiverRecord,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let done = sqlx::query::<$db>(
                    "INSERT INTO git_receivers (key, subscription_key, resource_group_key, subscription, \
                     resource_group, name, spec, hook_id, sealed_secret, etag, system_data) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                )
                .bind(&r.key)
                .bind(&r.subscription_key)
                .bind(&r.resource_group_key)
                .bind(&r.subscription)
                .bind(&r.resource_group)
                .bind(&r.name)
                .bind(sqlx::types::Json(&r.spec))
                .bind(&r.hook_id)
                .bind(&r.sealed_secret)
                .bind(&r.etag)
                .bind(sqlx::types::Json(&r.system_data))
                .execute(self.writer())
                .await?;
                Ok(if done.rows_affected() == 1 {
                    $crate::model::Write::Written
                } else {
                    $crate::model::Write::Conflict
                })
            }

            async fn update_git_receiver(
                &self,
                r: &$crate::model::GitReceiverRecord,
                expected_etag: &str,
            ) -> $crate::store::StoreResult<$crate::model::Write> {
                let done = sqlx::query::<$db>(
                    "UPDATE git_receivers SET spec = $1, sealed_secret = $2, etag = $3, system_data = $4 \
                     WHERE key = $5 AND etag = $6",
                )
                .bind(sqlx::types::Json(&r.spec))
                .bind(&r.sealed_secret)
                .bind(&r.etag)
                .bind(sqlx::types::Json(&r.system_data))
                .bind(&r.key)
                .bind(expected_etag)
                .execute(self.writer())
                .await?;
                Ok(if done.rows_affected() == 1 {
                    $crate::model::Write::Written
                } else {
                    $crate::model::Write::Conflict
                })
            }

            async fn delete_git_receiver(&self, key: &str) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query::<$db>("DELETE FROM git_receivers WHERE key = $1")
                    .bind(key)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn git_sources(
                &self,
                scope: &$crate::arm::scope::ClusterSet,
                repository_name: &str,
            ) -> $crate::store::StoreResult<Vec<$crate::model::GitSource>> {
                let (subscription_key, resource_group_key) = scope.keys();
                let escaped = repository_name
                    .to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                type Row = (
                    i64,
                    String,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                );
                let rows = sqlx::query_as::<$db, Row>(
                    "SELECT f.id, f.spec -> 'gitRepository' ->> 'url', \
                     f.spec -> 'gitRepository' -> 'repositoryRef' ->> 'branch', \
                     f.spec -> 'gitRepository' -> 'repositoryRef' ->> 'tag', \
                     f.spec -> 'gitRepository' -> 'repositoryRef' ->> 'semver', \
                     f.spec -> 'gitRepository' -> 'repositoryRef' ->> 'commit' \
                     FROM flux_configurations f JOIN clusters c ON c.id = f.cluster_id \
                     WHERE c.subscription_key = $1 AND ($2 = '' OR c.resource_group_key = $2) \
                     AND f.provisioning_state <> 'Deleting' \
                     AND COALESCE(f.spec ->> 'sourceKind', 'GitRepository') = 'GitRepository' \
                     AND LOWER(f.spec -> 'gitRepository' ->> 'url') LIKE $3 ESCAPE '\\' \
                     ORDER BY f.id",
                )
                .bind(subscription_key)
                .bind(resource_group_key)
                .bind(format!("%{escaped}%"))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(configuration_id, url, branch, tag, semver, commit)| $crate::model::GitSource {
                            configuration_id,
                            url,
                            reference: $crate::fleet::receivers::model::SourceRef {
                                branch,
                                tag,
                                semver,
                                commit,
                            },
                        },
                    )
                    .collect())
            }

            async fn request_reconcile(
                &self,
                target: $crate::model::ReconcileTarget<'_>,
                at: chrono::DateTime<chrono::Utc>,
                push: Option<(i64, &$crate::fleet::receivers::model::LastPush)>,
            ) -> $crate::store::StoreResult<u64> {
                use $crate::model::ReconcileTarget;
                let mut tx = $crate::store::begin(self.writer(), $write).await?;
                // the configurations first, locked in id order, as every writer of several locks them
                let mut rows: Vec<(i64, i64)> = Vec::new();
                match target {
                    ReconcileTarget::Configurations(ids) => {
                        let mut ids = ids.to_vec();
                        ids.sort_unstable();
                        ids.dedup();
                        for chunk in ids.chunks($crate::store::receivers::CHUNK) {
                            let mut q = sqlx::QueryBuilder::<$db>::new(
                                "SELECT id, cluster_id FROM flux_configurations \
                                 WHERE provisioning_state <> 'Deleting' AND id IN (",
                            );
                            let mut list = q.separated(", ");
                            for id in chunk {
                                list.push_bind(*id);
                            }
                            list.push_unseparated(") ORDER BY id");
                            q.push($row_lock);
                            rows.extend(q.build_query_as::<(i64, i64)>().fetch_all(&mut *tx).await?);
                        }
                    }
                    ReconcileTarget::ManagedBy(assignment) => {
                        let sql = concat!(
                            "SELECT id, cluster_id FROM flux_configurations \
                             WHERE managed_by = $1 AND provisioning_state <> 'Deleting' ORDER BY id",
                            $row_lock
                        );
                        rows = sqlx::query_as::<$db, (i64, i64)>(sql)
                            .bind(assignment)
                            .fetch_all(&mut *tx)
                            .await?;
                    }
                }
                for chunk in rows.chunks($crate::store::receivers::CHUNK) {
                    let mut q =
                        sqlx::QueryBuilder::<$db>::new("UPDATE flux_configurations SET reconcile_requested_at = ");
                    q.push_bind(at);
                    q.push(" WHERE id IN (");
                    let mut list = q.separated(", ");
                    for (id, _) in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(")");
                    q.build().execute(&mut *tx).await?;
                }
                let mut clusters: Vec<i64> = rows.iter().map(|(_, cluster)| *cluster).collect();
                clusters.sort_unstable();
                clusters.dedup();
                let mut revised = Vec::with_capacity(clusters.len());
                for chunk in clusters.chunks($crate::store::receivers::CHUNK) {
                    let mut lock = sqlx::QueryBuilder::<$db>::new("SELECT id FROM clusters WHERE id IN (");
                    let mut list = lock.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(") ORDER BY id");
                    lock.push($row_lock);
                    lock.build().execute(&mut *tx).await?;
                    let mut bump =
                        sqlx::QueryBuilder::<$db>::new("UPDATE clusters SET revision = revision + 1 WHERE id IN (");
                    let mut list = bump.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    list.push_unseparated(") RETURNING key");
                    revised.extend(bump.build_query_scalar::<String>().fetch_all(&mut *tx).await?);
                }
                if let Some((receiver, last)) = push {
                    let last = $crate::fleet::receivers::model::LastPush {
                        configurations: rows.len() as u64,
                        ..last.clone()
                    };
                    sqlx::query::<$db>("UPDATE git_receivers SET last_push = $1 WHERE id = $2")
                        .bind(sqlx::types::Json(&last))
                        .bind(receiver)
                        .execute(&mut *tx)
                        .await?;
                }
                self.commit(tx).await?;
                self.revised(revised);
                Ok(rows.len() as u64)
            }
        }
    };
}

pub(super) use {git_receiver_columns, receivers_store};
