//! The Postgres job store of a cluster. Every lease decision runs in one
//! transaction holding the job's row lock (`SELECT … FOR UPDATE`), so two
//! masters racing for a job see one grant and one refusal.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use crawler_core::model::{CrawlResult, JobId, JobRecord, JobSpec};
use crawler_core::ports::{
    AcquireOutcome, AdapterError, AdapterResult, InsertOutcome, JobOutcome, JobStore, StoreError,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection, PgExecutor};

use crate::job_row::{AcquireStep, StoredJob, count, expiry, job_columns, sql, to_db, unknown};
use crate::redact::redact_url;

const ENGINE: &str = "postgres";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// A [`JobStore`] on Postgres. Cloning shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn failure(what: &str, cause: impl std::fmt::Display) -> AdapterError {
    AdapterError::new(ENGINE, format!("{what}: {cause}"))
}

impl PgStore {
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
        let store = Self { pool };
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
        let store = Self { pool };
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

    /// Closes the pool; calls made afterwards fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> AdapterResult<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| failure("cannot migrate the job store", e))
    }

    async fn find(
        &self,
        executor: impl PgExecutor<'_>,
        job_id: &JobId,
        lock: bool,
    ) -> AdapterResult<Option<StoredJob>> {
        let sql = if lock {
            concat!(
                "SELECT ",
                job_columns!(),
                " FROM jobs WHERE job_id = $1 FOR UPDATE"
            )
        } else {
            sql::SELECT_BY_ID
        };
        let row = sqlx::query(sql)
            .bind(&job_id.0)
            .fetch_optional(executor)
            .await
            .map_err(|e| failure("cannot read a job", e))?;
        row.as_ref().map(StoredJob::from_row).transpose()
    }

    /// The record a repeated insert reports: the client's earlier job, or
    /// the job that already holds this id.
    async fn existing(&self, spec: &JobSpec) -> AdapterResult<InsertOutcome> {
        let found = match self
            .find_by_client(&spec.client_id, &spec.client_job_id)
            .await?
        {
            Some(record) => Some(record),
            None => self.get(&spec.job_id).await?,
        };
        found
            .map(|record| InsertOutcome::Exists(Box::new(record)))
            .ok_or_else(|| {
                failure(
                    "cannot insert a job",
                    "it conflicts with a job that vanished",
                )
            })
    }
}

async fn open_pool(options: PgConnectOptions) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(10)
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

#[async_trait]
impl JobStore for PgStore {
    async fn insert_job(&self, spec: &JobSpec) -> AdapterResult<InsertOutcome> {
        let inserted = sqlx::query(sql::INSERT_QUEUED)
            .bind(&spec.job_id.0)
            .bind(&spec.client_id)
            .bind(&spec.client_job_id)
            .bind(Json(spec))
            .bind(to_db(spec.accepted_at_ms))
            .execute(&self.pool)
            .await
            .map_err(|e| failure("cannot insert a job", e))?;
        if inserted.rows_affected() == 1 {
            return Ok(InsertOutcome::Created);
        }
        self.existing(spec).await
    }

    async fn insert_done(
        &self,
        spec: &JobSpec,
        result: &CrawlResult,
    ) -> AdapterResult<InsertOutcome> {
        let inserted = sqlx::query(sql::INSERT_DONE)
            .bind(&spec.job_id.0)
            .bind(&spec.client_id)
            .bind(&spec.client_job_id)
            .bind(Json(spec))
            .bind(to_db(spec.accepted_at_ms))
            .bind(Json(result))
            .bind(i64::from(count(result.page_count())))
            .bind(i64::from(result.depth))
            .execute(&self.pool)
            .await
            .map_err(|e| failure("cannot insert a done job", e))?;
        if inserted.rows_affected() == 1 {
            return Ok(InsertOutcome::Created);
        }
        self.existing(spec).await
    }

    async fn acquire(
        &self,
        spec: &JobSpec,
        master_id: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> AdapterResult<AcquireOutcome> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| failure("cannot begin a transaction", e))?;
        sqlx::query(sql::INSERT_QUEUED)
            .bind(&spec.job_id.0)
            .bind(&spec.client_id)
            .bind(&spec.client_job_id)
            .bind(Json(spec))
            .bind(to_db(spec.accepted_at_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure("cannot insert a job", e))?;
        let job = self
            .find(&mut *tx, &spec.job_id, true)
            .await?
            .ok_or_else(|| {
                failure(
                    &format!("cannot acquire job {}", spec.job_id),
                    "its client job id is taken by another job",
                )
            })?;
        let lease = match job.acquire(master_id, ttl, now_ms) {
            AcquireStep::Refuse(outcome) => return Ok(outcome),
            AcquireStep::Grant(lease) => lease,
        };
        sqlx::query(sql::GRANT)
            .bind(&spec.job_id.0)
            .bind(master_id)
            .bind(to_db(lease.fencing_token))
            .bind(to_db(lease.expires_at_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure("cannot grant a lease", e))?;
        tx.commit()
            .await
            .map_err(|e| failure("cannot commit a lease", e))?;
        Ok(AcquireOutcome::Granted(lease))
    }

    async fn heartbeat(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        pages_done: u32,
        current_depth: u32,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let expires_at_ms = expiry(now_ms, ttl);
        let renewed = sqlx::query(sql::RENEW)
            .bind(&job_id.0)
            .bind(to_db(fencing_token))
            .bind(to_db(expires_at_ms))
            .bind(i64::from(pages_done))
            .bind(i64::from(current_depth))
            .execute(&self.pool)
            .await
            .map_err(|e| failure("cannot renew a lease", e))?;
        if renewed.rows_affected() == 1 {
            return Ok(expires_at_ms);
        }
        match self.find(&self.pool, job_id, false).await? {
            None => Err(unknown(job_id)),
            Some(job) => job.heartbeat_refusal(fencing_token),
        }
    }

    async fn complete(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        outcome: &JobOutcome,
        now_ms: u64,
    ) -> Result<JobRecord, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| failure("cannot begin a transaction", e))?;
        let job = self
            .find(&mut *tx, job_id, true)
            .await?
            .ok_or_else(|| unknown(job_id))?;
        job.check_token(fencing_token)?;
        if job.state.is_final() {
            return Ok(job.record());
        }
        let done = job.completion(outcome, now_ms);
        sqlx::query(sql::COMPLETE)
            .bind(&job_id.0)
            .bind(done.state.as_str())
            .bind(done.result.as_ref().map(Json))
            .bind(done.failure.as_ref().map(Json))
            .bind(i64::from(done.pages_done))
            .bind(i64::from(done.current_depth))
            .bind(to_db(done.elapsed_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure("cannot complete a job", e))?;
        tx.commit()
            .await
            .map_err(|e| failure("cannot commit a completion", e))?;
        Ok(job.completed(done).record())
    }

    async fn get(&self, job_id: &JobId) -> AdapterResult<Option<JobRecord>> {
        Ok(self
            .find(&self.pool, job_id, false)
            .await?
            .map(|job| job.record()))
    }

    async fn find_by_client(
        &self,
        client_id: &str,
        client_job_id: &str,
    ) -> AdapterResult<Option<JobRecord>> {
        let row = sqlx::query(sql::SELECT_BY_CLIENT)
            .bind(client_id)
            .bind(client_job_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure("cannot read a job", e))?;
        Ok(row
            .as_ref()
            .map(StoredJob::from_row)
            .transpose()?
            .map(|job| job.record()))
    }
}
