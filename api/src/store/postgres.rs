//! The PostgreSQL store: the production backend, safe for several `serve` replicas sharing one database.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::StoreResult;
use super::sql::{cluster_columns, configuration_columns, sql_store};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }
}

sql_store!(PgStore, sqlx::Postgres);
