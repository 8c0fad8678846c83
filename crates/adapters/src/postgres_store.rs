//! The Postgres job store of a cluster: how it connects, creates its
//! database and migrates it. The store itself is [`SqlStore`].

use std::str::FromStr;
use std::time::Duration;

use crawler_core::ports::{AdapterError, AdapterResult};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Postgres};

use crate::sql_store::SqlStore;
use crawler_core::config::redact_url;

const ENGINE: &str = "postgres";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The job store and leader election on Postgres.
pub type PgStore = SqlStore<Postgres>;

fn failure(what: &str, cause: impl std::fmt::Display) -> AdapterError {
    AdapterError::new(ENGINE, format!("{what}: {cause}"))
}

impl SqlStore<Postgres> {
    /// Connects to `database_url`, creating the database if the server does
    /// not have it yet, and brings its schema up to date.
    pub async fn connect(database_url: &str) -> AdapterResult<Self> {
        let shown = redact_url(database_url);
        let options = PgConnectOptions::from_str(database_url)
            .map_err(|e| failure(&format!("invalid database url {shown}"), e))?;
        // One plain connection first: a pool keeps retrying a refused
        // connection until its acquire timeout, while this fails at once.
        match PgConnection::connect_with(&options).await {
            Ok(probe) => {
                let _ = probe.close().await;
            }
            Err(e) if is_missing_database(&e) => {
                let name = options.get_database().unwrap_or_default().to_string();
                create_database(&options, &name, &shown).await?;
            }
            Err(e) => return Err(failure(&format!("cannot reach Postgres at {shown}"), e)),
        }
        let pool = open_pool(options)
            .await
            .map_err(|e| failure(&format!("cannot reach Postgres at {shown}"), e))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// For tests: creates a database with a fresh UUID name on the server at
    /// `server_url` and connects to it. Returns the name, for
    /// [`Self::drop_database`].
    pub async fn connect_fresh(server_url: &str) -> AdapterResult<(Self, String)> {
        let shown = redact_url(server_url);
        let name = format!("crawler_test_{}", uuid::Uuid::new_v4().simple());
        let options = PgConnectOptions::from_str(server_url)
            .map_err(|e| failure(&format!("invalid database url {shown}"), e))?
            .database(&name);
        create_database(&options, &name, &shown).await?;
        let pool = open_pool(options)
            .await
            .map_err(|e| failure(&format!("cannot reach Postgres at {shown}"), e))?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok((store, name))
    }

    /// For tests: drops database `name` on the server at `server_url`, even
    /// while connections to it are open.
    pub async fn drop_database(server_url: &str, name: &str) -> AdapterResult<()> {
        let shown = redact_url(server_url);
        let options = PgConnectOptions::from_str(server_url)
            .map_err(|e| failure(&format!("invalid database url {shown}"), e))?;
        let mut admin = admin_connection(&options, &shown).await?;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .map_err(|e| failure(&format!("cannot drop database {name}"), e))?;
        Ok(())
    }

    async fn migrate(&self) -> AdapterResult<()> {
        MIGRATOR
            .run(self.pool())
            .await
            .map_err(|e| failure("cannot migrate the job store", e))
    }
}

async fn open_pool(options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(10)
        // No ping before each use: it costs a round trip on every query,
        // and a connection Postgres dropped fails its query anyway, which
        // every caller already handles as a store outage (retried, or
        // answered `unavailable` for the client to ask again).
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

fn is_missing_database(error: &sqlx::Error) -> bool {
    // 3D000: invalid_catalog_name, "database … does not exist".
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "3D000")
}

/// A connection to the server's `postgres` database, which always exists.
async fn admin_connection(options: &PgConnectOptions, shown: &str) -> AdapterResult<PgConnection> {
    PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(|e| failure(&format!("cannot reach Postgres at {shown}"), e))
}

async fn create_database(options: &PgConnectOptions, name: &str, shown: &str) -> AdapterResult<()> {
    if name.is_empty() {
        return Err(failure(
            &format!("cannot create the database of {shown}"),
            "the url names no database",
        ));
    }
    let mut admin = admin_connection(options, shown).await?;
    let sql = format!("CREATE DATABASE {}", quote_ident(name));
    match sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
        Ok(_) => {
            tracing::info!(database = name, "created the job store database");
            Ok(())
        }
        // Another process created it first: 42P04 (duplicate_database), or
        // 23505 (unique_violation on pg_database) when both ran at once.
        Err(e)
            if e.as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505") =>
        {
            Ok(())
        }
        Err(e) => Err(failure(&format!("cannot create database {name}"), e)),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
