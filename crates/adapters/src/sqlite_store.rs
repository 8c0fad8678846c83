//! The SQLite job store of the embedded default, with the Postgres store's
//! semantics. SQLite has no row locks; `BEGIN IMMEDIATE` takes the database
//! write lock up front instead, which makes each acquire and completion
//! atomic (a deferred transaction could read, then fail to upgrade).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use crawler_core::model::{CrawlResult, JobId, JobRecord, JobSpec};
use crawler_core::ports::{
    AcquireOutcome, AdapterError, AdapterResult, InsertOutcome, JobOutcome, JobStore, StoreError,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;
use sqlx::{Sqlite, SqliteExecutor, Transaction};

use crate::job_row::{AcquireStep, StoredJob, count, expiry, sql, to_db, unknown};

const ENGINE: &str = "sqlite";

static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// A [`JobStore`] on SQLite. Cloning shares the pool.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn failure(what: &str, cause: impl std::fmt::Display) -> AdapterError {
    AdapterError::new(ENGINE, format!("{what}: {cause}"))
}

impl SqliteStore {
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
        Ok(Self { pool })
    }

    /// Closes the pool; calls made afterwards fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_transaction(&self) -> AdapterResult<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| failure("cannot begin a transaction", e))
    }

    async fn find(
        &self,
        executor: impl SqliteExecutor<'_>,
        job_id: &JobId,
    ) -> AdapterResult<Option<StoredJob>> {
        let row = sqlx::query(sql::SELECT_BY_ID)
            .bind(&job_id.0)
            .fetch_optional(executor)
            .await
            .map_err(|e| failure("cannot read a job", e))?;
        row.as_ref().map(StoredJob::from_row).transpose()
    }

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

#[async_trait]
impl JobStore for SqliteStore {
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
        let mut tx = self.write_transaction().await?;
        sqlx::query(sql::INSERT_QUEUED)
            .bind(&spec.job_id.0)
            .bind(&spec.client_id)
            .bind(&spec.client_job_id)
            .bind(Json(spec))
            .bind(to_db(spec.accepted_at_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure("cannot insert a job", e))?;
        let job = self.find(&mut *tx, &spec.job_id).await?.ok_or_else(|| {
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
        match self.find(&self.pool, job_id).await? {
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
        let mut tx = self.write_transaction().await?;
        let job = self
            .find(&mut *tx, job_id)
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
        Ok(self.find(&self.pool, job_id).await?.map(|job| job.record()))
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
