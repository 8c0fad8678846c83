//! The SQLite job store of the embedded default: how it opens and migrates
//! its database. The store itself is [`SqlStore`], with the Postgres store's
//! semantics (see its [`Dialect`](crate::sql_store::Dialect) for the locking).

use std::str::FromStr;
use std::time::Duration;

use crawler_core::ports::{AdapterError, AdapterResult};
use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::sql_store::SqlStore;

const ENGINE: &str = "sqlite";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The job store and leader election on SQLite.
pub type SqliteStore = SqlStore<Sqlite>;

fn failure(what: &str, cause: impl std::fmt::Display) -> AdapterError {
    AdapterError::new(ENGINE, format!("{what}: {cause}"))
}

impl SqlStore<Sqlite> {
    /// Opens (creating if missing) the database at `url`, e.g.
    /// `sqlite://jobs.db`, and brings its schema up to date.
    pub async fn connect(url: &str) -> AdapterResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| failure(&format!("invalid SQLite url {url}"), e))?
            .create_if_missing(true)
            // WAL lets readers proceed while a writer holds the lock.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| failure(&format!("cannot open SQLite database {url}"), e))?;
        Self::migrated(pool).await
    }

    /// A private in-memory database. The pool holds exactly one connection
    /// and never retires it: each SQLite memory connection is its own
    /// database, so a second or replaced connection would see an empty one.
    pub async fn in_memory() -> AdapterResult<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| failure("invalid in-memory SQLite options", e))?;
        let pool = SqlitePoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| failure("cannot open an in-memory SQLite database", e))?;
        Self::migrated(pool).await
    }

    async fn migrated(pool: SqlitePool) -> AdapterResult<Self> {
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| failure("cannot migrate the job store", e))?;
        Ok(Self::from_pool(pool))
    }
}
