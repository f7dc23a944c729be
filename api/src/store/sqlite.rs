//! The embedded SQLite store: the default, so that fluxplane runs on a fresh machine with no database server.
//! WAL mode lets readers proceed beside the single writer; the busy timeout makes concurrent writers queue instead
//! of failing.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::StoreResult;
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
