//! The job store on SQL, written once for Postgres (clusters) and SQLite (the
//! embedded default). Each lease decision reads the job's row under a write
//! lock (see [`Dialect`]), applies the rules of [`crawler_core::lease`], and
//! writes in the same transaction, so two callers racing for a job see one
//! grant and one refusal.
//!
//! `QueryResult` has no generic row count in sqlx, so statements that must
//! report whether they changed a row say so with `RETURNING`.

mod dialect;
mod row;
mod tokens;

use std::time::Duration;

use async_trait::async_trait;
use crawler_core::auth::{Tenant, TenantUsage};
use crawler_core::lease::{AcquireRule, Leadership, expiry};
use crawler_core::model::{
    CachedCrawl, Checkpoint, HeadStart, JobId, JobRecord, JobSpec, LevelDone, PageFacts,
};
use crawler_core::ports::{
    AcquireOutcome, AdapterError, AdapterResult, Election, Grant, InsertOutcome, JobOutcome,
    JobStore, Lease, PageQuery, PageText, Renewal, StoreError, Takeover,
};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Transaction, Type};

pub use dialect::Dialect;
use dialect::{Bound, PageRow};
use row::{CheckpointHead, Doc, StoredJob, doc, engine, from_db, parse, to_db};

/// The statements both databases run alike. Both speak `$n` parameters
/// (SQLite reads them as numbered).
mod sql {
    use super::row::job_columns;

    pub const INSERT_QUEUED: &str = "INSERT INTO jobs
            (job_id, client_id, client_job_id, spec, state, accepted_at_ms, publish_pending_since_ms)
        VALUES ($1, $2, $3, $4, 'queued', $5, $5)
        ON CONFLICT DO NOTHING
        RETURNING job_id";

    /// A job that reached a master without a gateway recording it first was
    /// published already: the outbox has nothing to do for it.
    pub const INSERT_FROM_QUEUE: &str = "INSERT INTO jobs
            (job_id, client_id, client_job_id, spec, state, accepted_at_ms)
        VALUES ($1, $2, $3, $4, 'queued', $5)
        ON CONFLICT DO NOTHING";

    pub const SELECT_BY_ID: &str =
        concat!("SELECT ", job_columns!(), " FROM jobs WHERE job_id = $1");

    pub const SELECT_BY_CLIENT: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE client_id = $1 AND client_job_id = $2"
    );

    /// A grant also ends the outbox's duty: the job reached a master.
    pub const GRANT: &str = "UPDATE jobs
        SET state = 'running', master_id = $2, fencing_token = $3, lease_expires_at_ms = $4,
            publish_pending_since_ms = NULL
        WHERE job_id = $1";

    /// The token check and the renewal in one statement, so a takeover
    /// cannot slip between them.
    pub const RENEW: &str = "UPDATE jobs
        SET lease_expires_at_ms = $3, pages_done = $4, current_depth = $5
        WHERE job_id = $1 AND fencing_token = $2 AND state = 'running'
        RETURNING job_id, gateway_key";

    pub const RELEASE: &str = "UPDATE jobs
        SET lease_expires_at_ms = $3
        WHERE job_id = $1 AND fencing_token = $2 AND state = 'running'
        RETURNING job_id";

    pub const COMPLETE: &str = "UPDATE jobs
        SET state = $2, summary = $3, failure = $4, pages_done = $5, current_depth = $6,
            elapsed_ms = $7, checkpoint = NULL, publish_pending_since_ms = NULL
        WHERE job_id = $1";

    pub const SET_CHECKPOINT: &str = "UPDATE jobs SET checkpoint = $2 WHERE job_id = $1";
    /// A head start: the pages of levels below $3 of job $2, as job $1's.
    pub const COPY_LEVELS: &str = "INSERT INTO job_pages (job_id, depth, url, page)
        SELECT $1, depth, url, page FROM job_pages WHERE job_id = $2 AND depth < $3";
    pub const COUNT_PAGES: &str = "SELECT COUNT(*) AS n FROM job_pages WHERE job_id = $1";
    /// The pages of a level no holder completed: a new holder fetches it again.
    pub const DROP_UNFINISHED_LEVELS: &str =
        "DELETE FROM job_pages WHERE job_id = $1 AND depth >= $2";
    pub const COUNT_LEVEL: &str =
        "SELECT COUNT(*) AS n FROM job_pages WHERE job_id = $1 AND depth = $2";
    pub const COUNT_LEVELS: &str = "SELECT depth, COUNT(*) AS n FROM job_pages
        WHERE job_id = $1 GROUP BY depth ORDER BY depth";
    /// Keyset paging: the pages after ($3, $4) in (depth, URL) order; $3 = -1
    /// reads from the start. The row comparison is what lets the primary
    /// key's index start right there: spelt as `depth > $3 OR (…)` it
    /// scanned the rest of the level for every part (0.6 s a part of a
    /// million-page result, against 0.2 ms).
    pub const READ_PAGES: &str = "SELECT depth, url, page FROM job_pages
        WHERE job_id = $1 AND depth <= $2 AND (depth, url) > ($3, $4)
        ORDER BY depth, url
        LIMIT $5";

    pub const CLAIM_DELIVERY: &str = "UPDATE jobs SET delivered = true
        WHERE job_id = $1 AND NOT delivered AND state IN ('done', 'failed')
        RETURNING job_id";
    pub const UNCLAIM_DELIVERY: &str = "UPDATE jobs SET delivered = false WHERE job_id = $1";
    /// Unfinished jobs are never delivered, so the open-jobs index serves this.
    pub const UNFINISHED_JOBS: &str = "SELECT COUNT(*) AS n FROM jobs
        WHERE client_id = $1 AND NOT delivered AND state IN ('queued', 'running')";
    /// A tenant's quotas, counted over the jobs whose client keys start
    /// with `$1` (its prefix and `%`): running now, accepted since `$2`,
    /// and the pages of those accepted since `$3`.
    pub const TENANT_USAGE: &str = "SELECT
            CAST(COALESCE(SUM(CASE WHEN state IN ('queued', 'running') THEN 1 ELSE 0 END), 0) AS BIGINT) AS running,
            CAST(COALESCE(SUM(CASE WHEN accepted_at_ms >= $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS last_hour,
            CAST(COALESCE(SUM(CASE WHEN accepted_at_ms >= $3 THEN pages_done ELSE 0 END), 0) AS BIGINT) AS pages
        FROM jobs
        WHERE client_id LIKE $1 AND (accepted_at_ms >= $3 OR state IN ('queued', 'running'))";
    pub const OPEN_JOBS: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE client_id = $1 AND NOT delivered ORDER BY accepted_at_ms LIMIT $2"
    );

    pub const MARK_PUBLISHED: &str =
        "UPDATE jobs SET publish_pending_since_ms = NULL WHERE job_id = $1";
    pub const REROUTE: &str = "UPDATE jobs SET gateway_key = $2 WHERE job_id = $1";

    pub const SET_LEADER: &str = "UPDATE lock_leader
        SET holder = $1, address = $2, epoch = $3, expires_at_ms = $4
        WHERE id = 1";
    pub const RESIGN: &str =
        "UPDATE lock_leader SET expires_at_ms = 0 WHERE id = 1 AND holder = $1";
}

/// A [`JobStore`] and an [`Election`] on a SQL database. Cloning shares the pool.
pub struct SqlStore<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: sqlx::Database> SqlStore<DB> {
    pub(crate) fn from_pool(pool: Pool<DB>) -> Self {
        Self { pool }
    }

    pub(crate) fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Closes the pool; calls made afterwards fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn failure<DB: sqlx::Database>(what: &str, cause: impl std::fmt::Display) -> AdapterError {
    AdapterError::new(engine::<DB>(), format!("{what}: {cause}"))
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> Doc: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Doc>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> Doc: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
{
    async fn begin_write(&self) -> AdapterResult<Transaction<'static, DB>> {
        self.pool
            .begin_with(DB::BEGIN_WRITE)
            .await
            .map_err(|e| failure::<DB>("cannot begin a transaction", e))
    }

    async fn commit(tx: Transaction<'static, DB>, what: &str) -> AdapterResult<()> {
        tx.commit()
            .await
            .map_err(|e| failure::<DB>(&format!("cannot commit {what}"), e))
    }

    /// The statement that saves `pages` as level `depth` of `job_id`.
    fn upsert_pages<'q>(job_id: &JobId, depth: u32, pages: &[PageFacts]) -> Bound<'q, DB> {
        let rows: Vec<PageRow<'_>> = pages
            .iter()
            .map(|page| PageRow {
                url: &page.url,
                json: serde_json::to_string(page).expect("pages always serialise"),
            })
            .collect();
        let query = sqlx::query(DB::UPSERT_PAGES)
            .bind(job_id.0.clone())
            .bind(i64::from(depth));
        DB::bind_pages(query, &rows)
    }

    /// The rows (depth, URL and page) that `query` selects.
    async fn page_rows(&self, job_id: &JobId, query: &PageQuery) -> AdapterResult<Vec<DB::Row>> {
        let (after_depth, after_url) = match &query.after {
            Some((depth, url)) => (i64::from(*depth), url.as_str()),
            None => (-1, ""),
        };
        sqlx::query(sql::READ_PAGES)
            .bind(job_id.0.as_str())
            .bind(i64::from(query.max_depth))
            .bind(after_depth)
            .bind(after_url)
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot read pages", e))
    }

    fn decode(row: &DB::Row) -> AdapterResult<StoredJob> {
        StoredJob::from_row(engine::<DB>(), row)
    }

    /// A statement whose first five parameters are a new job's columns: its
    /// id, client, client job id, spec and acceptance time.
    fn with_job<'q>(
        statement: &'static str,
        spec: &'q JobSpec,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments> {
        sqlx::query(statement)
            .bind(spec.job_id.0.as_str())
            .bind(spec.client_id.as_str())
            .bind(spec.client_job_id.as_str())
            .bind(doc(spec))
            .bind(to_db(spec.accepted_at_ms))
    }

    async fn find_locked(
        tx: &mut Transaction<'static, DB>,
        job_id: &JobId,
    ) -> AdapterResult<Option<StoredJob>> {
        let row = sqlx::query(DB::SELECT_JOB_FOR_UPDATE)
            .bind(job_id.0.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| failure::<DB>("cannot read a job", e))?;
        row.as_ref().map(Self::decode).transpose()
    }

    async fn find_unlocked(&self, job_id: &JobId) -> AdapterResult<Option<StoredJob>> {
        let row = sqlx::query(sql::SELECT_BY_ID)
            .bind(job_id.0.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot read a job", e))?;
        row.as_ref().map(Self::decode).transpose()
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
                failure::<DB>(
                    "cannot insert a job",
                    "it conflicts with a job that vanished",
                )
            })
    }

    /// Writes `lease` to the locked row, drops the pages of any level no
    /// holder completed, and reports what earlier holders made durable, for
    /// the new holder to continue from.
    async fn grant(
        tx: &mut Transaction<'static, DB>,
        job: &StoredJob,
        master_id: &str,
        lease: Lease,
    ) -> AdapterResult<Grant> {
        sqlx::query(sql::GRANT)
            .bind(lease.job_id.0.as_str())
            .bind(master_id)
            .bind(to_db(lease.fencing_token))
            .bind(to_db(lease.expires_at_ms))
            .execute(&mut **tx)
            .await
            .map_err(|e| failure::<DB>("cannot grant a lease", e))?;
        let levels_done = job.checkpoint.as_ref().map_or(0, |head| head.levels_done);
        sqlx::query(sql::DROP_UNFINISHED_LEVELS)
            .bind(lease.job_id.0.as_str())
            .bind(i64::from(levels_done))
            .execute(&mut **tx)
            .await
            .map_err(|e| failure::<DB>("cannot drop an unfinished level", e))?;
        let checkpoint = job
            .checkpoint
            .as_ref()
            .filter(|head| head.levels_done > 0)
            .map(|head| Checkpoint {
                levels_done: head.levels_done,
                truncated: head.truncated,
                max_pages: head.max_pages,
            });
        Ok(Grant { lease, checkpoint })
    }

    /// How many pages of level `depth` are saved.
    async fn level_count(
        tx: &mut Transaction<'static, DB>,
        job_id: &JobId,
        depth: u32,
    ) -> AdapterResult<u64> {
        let row = sqlx::query(sql::COUNT_LEVEL)
            .bind(job_id.0.as_str())
            .bind(i64::from(depth))
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| failure::<DB>("cannot count a level's pages", e))?;
        let n: i64 = row
            .try_get("n")
            .map_err(|e| failure::<DB>("a page count is unreadable", e))?;
        Ok(from_db(n))
    }

    /// Pages saved per level, level 0 first.
    async fn level_sizes(
        tx: &mut Transaction<'static, DB>,
        job_id: &JobId,
    ) -> AdapterResult<Vec<u32>> {
        let rows = sqlx::query(sql::COUNT_LEVELS)
            .bind(job_id.0.as_str())
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| failure::<DB>("cannot count a job's pages", e))?;
        let mut sizes = Vec::with_capacity(rows.len());
        for row in &rows {
            let unreadable = |e: sqlx::Error| failure::<DB>("a page count is unreadable", e);
            let depth: u32 = from_db(row.try_get::<i64, _>("depth").map_err(unreadable)?);
            let n: u32 = from_db(row.try_get::<i64, _>("n").map_err(unreadable)?);
            // A gap would be a level with no pages, which no crawl saves.
            sizes.resize(depth as usize, 0);
            sizes.push(n);
        }
        Ok(sizes)
    }

    /// Why a conditional update guarded by the token matched no row.
    async fn refusal(&self, job_id: &JobId, presented: u64) -> StoreError {
        match self.find_unlocked(job_id).await {
            Ok(None) => StoreError::UnknownJob(job_id.clone()),
            Ok(Some(job)) => match job.lease.check_writer(presented) {
                Err(e) => e,
                // The row changed between the update and this read.
                Ok(()) => StoreError::StaleToken {
                    presented,
                    current: job.lease.fencing_token,
                },
            },
            Err(e) => e.into(),
        }
    }

    async fn leadership(tx: &mut Transaction<'static, DB>) -> AdapterResult<Leadership> {
        let row = sqlx::query(DB::SELECT_LEADER_FOR_UPDATE)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| failure::<DB>("cannot read the leadership", e))?;
        let unreadable = |e: sqlx::Error| failure::<DB>("the leadership row is unreadable", e);
        Ok(Leadership {
            holder: row.try_get("holder").map_err(unreadable)?,
            address: row.try_get("address").map_err(unreadable)?,
            epoch: from_db(row.try_get::<i64, _>("epoch").map_err(unreadable)?),
            expires_at_ms: from_db(row.try_get::<i64, _>("expires_at_ms").map_err(unreadable)?),
        })
    }
}

#[async_trait]
impl<DB> JobStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> Doc: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Doc>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> Doc: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
{
    async fn insert_job(&self, spec: &JobSpec) -> AdapterResult<InsertOutcome> {
        let inserted = Self::with_job(sql::INSERT_QUEUED, spec)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot insert a job", e))?;
        if inserted.is_some() {
            return Ok(InsertOutcome::Created);
        }
        self.existing(spec).await
    }

    async fn insert_head_start(
        &self,
        spec: &JobSpec,
        head: &HeadStart,
    ) -> AdapterResult<Option<InsertOutcome>> {
        let mut tx = self.begin_write().await?;
        let inserted = Self::with_job(sql::INSERT_QUEUED, spec)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot insert a job", e))?;
        if inserted.is_none() {
            drop(tx); // nothing written: the id is taken
            return self.existing(spec).await.map(Some);
        }
        sqlx::query(sql::COPY_LEVELS)
            .bind(spec.job_id.0.as_str())
            .bind(head.from.0.as_str())
            .bind(i64::from(head.levels_done))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot copy a head start's pages", e))?;
        let row = sqlx::query(sql::COUNT_PAGES)
            .bind(spec.job_id.0.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot count a head start's pages", e))?;
        let copied: i64 = row
            .try_get("n")
            .map_err(|e| failure::<DB>("a page count is unreadable", e))?;
        if from_db::<u64>(copied) != head.pages {
            return Ok(None); // rolled back as `tx` drops
        }
        let checkpoint = CheckpointHead {
            levels_done: head.levels_done,
            truncated: false,
            max_pages: spec.options.max_pages,
        };
        sqlx::query(sql::SET_CHECKPOINT)
            .bind(spec.job_id.0.as_str())
            .bind(doc(&checkpoint))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot save a head start's checkpoint", e))?;
        Self::commit(tx, "a head start").await?;
        Ok(Some(InsertOutcome::Created))
    }

    /// The record of a cache answer is committed without waiting for the
    /// disk (see [`Dialect::INSERT_DONE`]): the answer is sent either way,
    /// and a crash that loses the record only makes a later `status` for it
    /// unknown (asking again answers from the cache again). Waiting for the
    /// flush was most of a cache hit's time.
    async fn insert_done(
        &self,
        spec: &JobSpec,
        cached: &CachedCrawl,
    ) -> AdapterResult<InsertOutcome> {
        let summary = &cached.summary;
        let inserted = Self::with_job(DB::INSERT_DONE, spec)
            .bind(doc(summary))
            .bind(to_db(summary.page_count()))
            .bind(i64::from(summary.depth))
            .bind(cached.job_id.0.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot insert a done job", e))?;
        if inserted.is_some() {
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
        let mut tx = self.begin_write().await?;
        Self::with_job(sql::INSERT_FROM_QUEUE, spec)
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot insert a job", e))?;
        let job = Self::find_locked(&mut tx, &spec.job_id)
            .await?
            .ok_or_else(|| {
                failure::<DB>(
                    &format!("cannot acquire job {}", spec.job_id),
                    "its client job id is taken by another job",
                )
            })?;
        let lease = match job.lease.acquire(&spec.job_id, master_id, ttl, now_ms) {
            AcquireRule::Grant(lease) => lease,
            AcquireRule::AlreadyDone => {
                return Ok(AcquireOutcome::AlreadyDone(Box::new(job.record())));
            }
            AcquireRule::HeldElsewhere {
                master_id,
                expires_at_ms,
            } => {
                return Ok(AcquireOutcome::HeldElsewhere {
                    master_id,
                    expires_at_ms,
                });
            }
        };
        let grant = Self::grant(&mut tx, &job, master_id, lease).await?;
        Self::commit(tx, "a lease").await?;
        Ok(AcquireOutcome::Granted(grant))
    }

    async fn heartbeat(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        pages_done: u32,
        current_depth: u32,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Renewal, StoreError> {
        let expires_at_ms = expiry(now_ms, ttl);
        let renewed = sqlx::query(sql::RENEW)
            .bind(job_id.0.as_str())
            .bind(to_db(fencing_token))
            .bind(to_db(expires_at_ms))
            .bind(i64::from(pages_done))
            .bind(i64::from(current_depth))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot renew a lease", e))?;
        if let Some(row) = renewed {
            let gateway_key: Option<String> = row
                .try_get("gateway_key")
                .map_err(|e| failure::<DB>("a renewed lease is unreadable", e))?;
            return Ok(Renewal {
                expires_at_ms,
                gateway_key,
            });
        }
        match self.find_unlocked(job_id).await? {
            None => Err(StoreError::UnknownJob(job_id.clone())),
            Some(job) => job
                .lease
                .heartbeat_refusal(fencing_token)
                .map(|expires_at_ms| Renewal {
                    expires_at_ms,
                    gateway_key: Some(job.spec.gateway_key),
                }),
        }
    }

    async fn complete(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        outcome: &JobOutcome,
        now_ms: u64,
    ) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let job = Self::find_locked(&mut tx, job_id)
            .await?
            .ok_or_else(|| StoreError::UnknownJob(job_id.clone()))?;
        job.lease.check_token(fencing_token)?;
        if job.state.is_final() {
            return Ok(job.record());
        }
        if let JobOutcome::Done {
            summary,
            last_pages,
        } = outcome
        {
            for level in last_pages.chunk_by(|a, b| a.depth == b.depth) {
                Self::upsert_pages(job_id, level[0].depth, level)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| failure::<DB>("cannot save a result's last pages", e))?;
            }
            let saved = Self::level_sizes(&mut tx, job_id).await?;
            if saved != summary.level_sizes {
                return Err(StoreError::PagesMissing {
                    what: format!("job {job_id} has levels of {:?} pages", summary.level_sizes),
                    said: summary.page_count(),
                    saved: saved.iter().map(|&n| u64::from(n)).sum(),
                });
            }
        }
        let done = job.completion(outcome, now_ms);
        sqlx::query(sql::COMPLETE)
            .bind(job_id.0.as_str())
            .bind(done.state.as_str())
            .bind(done.summary.as_ref().map(doc))
            .bind(done.failure.as_ref().map(doc))
            .bind(i64::from(done.pages_done))
            .bind(i64::from(done.current_depth))
            .bind(to_db(done.elapsed_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot complete a job", e))?;
        Self::commit(tx, "a completion").await?;
        Ok(job.completed(done).record())
    }

    async fn get(&self, job_id: &JobId) -> AdapterResult<Option<JobRecord>> {
        Ok(self.find_unlocked(job_id).await?.map(|job| job.record()))
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
            .map_err(|e| failure::<DB>("cannot read a job", e))?;
        Ok(row
            .as_ref()
            .map(Self::decode)
            .transpose()?
            .map(|job| job.record()))
    }

    async fn claim_orphan(
        &self,
        master_id: &str,
        exclude: &[JobId],
        ttl: Duration,
        now_ms: u64,
    ) -> AdapterResult<Option<Takeover>> {
        let mut tx = self.begin_write().await?;
        let excluded: Vec<&str> = exclude.iter().map(|id| id.0.as_str()).collect();
        let picked = sqlx::query(DB::PICK_ORPHAN)
            .bind(to_db(now_ms))
            .bind(doc(&excluded))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot look for orphans", e))?;
        let Some(picked) = picked else {
            return Ok(None);
        };
        let job_id = JobId(
            picked
                .try_get::<String, _>("job_id")
                .map_err(|e| failure::<DB>("an orphan's id is unreadable", e))?,
        );
        let Some(job) = Self::find_locked(&mut tx, &job_id).await? else {
            return Ok(None);
        };
        let Some(lease) = job.lease.takeover(&job_id, ttl, now_ms) else {
            return Ok(None);
        };
        let grant = Self::grant(&mut tx, &job, master_id, lease).await?;
        Self::commit(tx, "a takeover").await?;
        Ok(Some(Takeover {
            spec: job.spec,
            grant,
            previous_master: job.lease.master_id,
        }))
    }

    async fn release(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let released = sqlx::query(sql::RELEASE)
            .bind(job_id.0.as_str())
            .bind(to_db(fencing_token))
            .bind(to_db(now_ms))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot release a lease", e))?;
        match released {
            Some(_) => Ok(()),
            None => Err(self.refusal(job_id, fencing_token).await),
        }
    }

    async fn save_pages(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        depth: u32,
        pages: &[PageFacts],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let job = Self::find_locked(&mut tx, job_id)
            .await?
            .ok_or_else(|| StoreError::UnknownJob(job_id.clone()))?;
        job.lease.check_writer(fencing_token)?;
        if let Some(page) = pages.iter().find(|p| p.depth != depth) {
            return Err(StoreError::PagesMissing {
                what: format!("page {} is of depth {}, not {depth}", page.url, page.depth),
                said: pages.len() as u64,
                saved: 0,
            });
        }
        Self::upsert_pages(job_id, depth, pages)
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot save pages", e))?;
        Self::commit(tx, "pages").await?;
        Ok(())
    }

    async fn save_level(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        level: &LevelDone,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let job = Self::find_locked(&mut tx, job_id)
            .await?
            .ok_or_else(|| StoreError::UnknownJob(job_id.clone()))?;
        job.lease.check_writer(fencing_token)?;
        let expected = job.checkpoint.as_ref().map_or(0, |head| head.levels_done);
        if level.depth < expected {
            return Ok(()); // saved already: a retry of a save that committed
        }
        if level.depth > expected {
            return Err(StoreError::LevelOutOfOrder {
                expected,
                got: level.depth,
            });
        }
        let saved = Self::level_count(&mut tx, job_id, level.depth).await?;
        if saved != u64::from(level.page_count) {
            return Err(StoreError::PagesMissing {
                what: format!("level {} of job {job_id}", level.depth),
                said: u64::from(level.page_count),
                saved,
            });
        }
        let head = CheckpointHead {
            levels_done: level.depth + 1,
            truncated: level.truncated,
            max_pages: level.max_pages,
        };
        sqlx::query(sql::SET_CHECKPOINT)
            .bind(job_id.0.as_str())
            .bind(doc(&head))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot save a checkpoint", e))?;
        Self::commit(tx, "a level").await?;
        Ok(())
    }

    async fn read_pages(&self, job_id: &JobId, query: &PageQuery) -> AdapterResult<Vec<PageFacts>> {
        let rows = self.page_rows(job_id, query).await?;
        rows.iter()
            .map(|row| {
                let page: String = row
                    .try_get("page")
                    .map_err(|e| failure::<DB>("a stored page is unreadable", e))?;
                serde_json::from_str(&page).map_err(|e| {
                    AdapterError::new(engine::<DB>(), format!("a stored page is unreadable: {e}"))
                })
            })
            .collect()
    }

    async fn read_page_texts(
        &self,
        job_id: &JobId,
        query: &PageQuery,
    ) -> AdapterResult<Vec<PageText>> {
        let rows = self.page_rows(job_id, query).await?;
        rows.iter()
            .map(|row| {
                let (depth, url, json) = row
                    .try_get::<i64, _>("depth")
                    .and_then(|depth| Ok((depth, row.try_get("url")?, row.try_get("page")?)))
                    .map_err(|e| failure::<DB>("a stored page is unreadable", e))?;
                Ok(PageText {
                    depth: from_db(depth),
                    url,
                    json,
                })
            })
            .collect()
    }

    async fn claim_delivery(&self, job_id: &JobId) -> AdapterResult<bool> {
        let claimed = sqlx::query(sql::CLAIM_DELIVERY)
            .bind(job_id.0.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot claim a delivery", e))?;
        Ok(claimed.is_some())
    }

    async fn unclaim_delivery(&self, job_id: &JobId) -> AdapterResult<()> {
        sqlx::query(sql::UNCLAIM_DELIVERY)
            .bind(job_id.0.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot give a delivery back", e))?;
        Ok(())
    }

    async fn ping(&self) -> AdapterResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| failure::<DB>("the database does not answer", e))?;
        Ok(())
    }

    async fn unfinished_jobs(&self, client_id: &str) -> AdapterResult<u32> {
        let row = sqlx::query(sql::UNFINISHED_JOBS)
            .bind(client_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot count a client's jobs", e))?;
        let n: i64 = row
            .try_get("n")
            .map_err(|e| failure::<DB>("a job count is unreadable", e))?;
        Ok(from_db(n))
    }

    async fn tenant_usage(
        &self,
        tenant: &Tenant,
        hour_ago_ms: u64,
        day_ago_ms: u64,
    ) -> AdapterResult<TenantUsage> {
        let row = sqlx::query(sql::TENANT_USAGE)
            .bind(format!("{}%", tenant.key_prefix()))
            .bind(to_db(hour_ago_ms))
            .bind(to_db(day_ago_ms))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot count a tenant's jobs", e))?;
        let unreadable = |e: sqlx::Error| failure::<DB>("a tenant's usage is unreadable", e);
        Ok(TenantUsage {
            running_jobs: from_db(row.try_get::<i64, _>("running").map_err(unreadable)?),
            jobs_last_hour: from_db(row.try_get::<i64, _>("last_hour").map_err(unreadable)?),
            pages_last_day: from_db(row.try_get::<i64, _>("pages").map_err(unreadable)?),
        })
    }

    async fn open_jobs(&self, client_id: &str, limit: u32) -> AdapterResult<Vec<JobRecord>> {
        let rows = sqlx::query(sql::OPEN_JOBS)
            .bind(client_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot read a client's jobs", e))?;
        rows.iter()
            .map(|row| Ok(Self::decode(row)?.record()))
            .collect()
    }

    async fn mark_published(&self, job_id: &JobId) -> AdapterResult<()> {
        sqlx::query(sql::MARK_PUBLISHED)
            .bind(job_id.0.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot mark a job published", e))?;
        Ok(())
    }

    async fn claim_unpublished(
        &self,
        pending_before_ms: u64,
        now_ms: u64,
        limit: u32,
    ) -> AdapterResult<Vec<JobSpec>> {
        let rows = sqlx::query(DB::CLAIM_UNPUBLISHED)
            .bind(to_db(pending_before_ms))
            .bind(to_db(now_ms))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot read the outbox", e))?;
        rows.iter()
            .map(|row| {
                let unreadable = |e: sqlx::Error| failure::<DB>("an outbox row is unreadable", e);
                let spec_doc: Doc = row.try_get("spec").map_err(unreadable)?;
                let mut spec: JobSpec = parse(engine::<DB>(), &spec_doc)?;
                if let Some(key) = row
                    .try_get::<Option<String>, _>("gateway_key")
                    .map_err(unreadable)?
                {
                    spec.gateway_key = key;
                }
                Ok(spec)
            })
            .collect()
    }

    async fn reroute(&self, job_id: &JobId, gateway_key: &str) -> AdapterResult<()> {
        sqlx::query(sql::REROUTE)
            .bind(job_id.0.as_str())
            .bind(gateway_key)
            .execute(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot reroute a job", e))?;
        Ok(())
    }
}

#[async_trait]
impl<DB> Election for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> Doc: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Doc>: Encode<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> Doc: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
{
    async fn try_lead(
        &self,
        candidate: &str,
        address: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> AdapterResult<Leadership> {
        let mut tx = self.begin_write().await?;
        let current = Self::leadership(&mut tx).await?;
        let Some(next) = Leadership::claim(&current, candidate, address, ttl, now_ms) else {
            return Ok(current);
        };
        sqlx::query(sql::SET_LEADER)
            .bind(next.holder.as_str())
            .bind(next.address.as_str())
            .bind(to_db(next.epoch))
            .bind(to_db(next.expires_at_ms))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure::<DB>("cannot write the leadership", e))?;
        Self::commit(tx, "the leadership").await?;
        Ok(next)
    }

    async fn resign(&self, candidate: &str) -> AdapterResult<()> {
        sqlx::query(sql::RESIGN)
            .bind(candidate)
            .execute(&self.pool)
            .await
            .map_err(|e| failure::<DB>("cannot resign the leadership", e))?;
        Ok(())
    }
}
