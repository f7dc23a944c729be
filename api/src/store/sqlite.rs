//! The embedded SQLite store: the default, so that fluxplane runs on a fresh machine with no database server.
//! WAL mode lets readers proceed beside the single writer; the busy timeout makes concurrent writers queue instead
//! of failing.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::StoreResult;
use super::dashboards::{
    current_clusters, current_instances, dashboards_store, in_scope, status_columns, write_columns,
};
use super::sql::{cluster_columns, cluster_group_columns, configuration_columns, policy_assignment_columns, sql_store};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }
}

// SQLite lets one transaction write at a time and every fleet transaction writes first, so fleet writes are
// serialised already: the lock statement does nothing.
sql_store!(SqliteStore, sqlx::Sqlite, fleet_lock = "SELECT $1", {
    /// One process owns the embedded store, and its writers wake their polls themselves: nothing to follow.
    async fn follow_changes(&self, _notifier: std::sync::Arc<crate::notify::Notifier>) -> StoreResult<()> {
        Ok(())
    }
});

// A transaction in WAL mode reads one snapshot from its first read on: a plain BEGIN. SQLite joins by nested loops:
// the clusters not connected (their partial index, migration 0010), then their configurations by index.
pub(super) const UNHEARD: &str = "SELECT f.cluster_id, \
    c.connectivity_status, c.last_connectivity_time, COALESCE(f.managed_by_id, '') AS policy_assignment, \
    f.compliance_state, f.provisioning_state, COALESCE(f.reported_generation = f.generation, FALSE) AS reported, \
    COUNT(*) AS count FROM clusters c JOIN flux_configurations f ON f.cluster_id = c.id \
    WHERE c.subscription_key = $1 AND ($2 = '' OR c.resource_group_key = $2) \
    AND c.connectivity_status <> 'Connected' \
    GROUP BY f.cluster_id, c.connectivity_status, c.last_connectivity_time, 4, 5, 6, 7";

dashboards_store!(SqliteStore, sqlx::Sqlite, begin = "BEGIN", unheard = UNHEARD, {
    /// Moves the pending deltas into the rollups and the history, in one transaction (the only writer).
    async fn compact_rollups(&self) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let mut folded = 0;
        for sql in [
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
});
