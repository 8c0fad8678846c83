//! The ports each engine adapter implements: a job queue, a result cache and
//! a job store. The cluster runs them on RabbitMQ, Redis and Postgres; the
//! embedded default runs them in process (and on SQLite). Services only ever
//! see these traits, so both sets run the same service code.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::auth::{ApiToken, Tenant, TenantUsage, TokenDigest};
use crate::lease::Leadership;
use crate::model::{
    CachedCrawl, Checkpoint, HeadStart, JobFailure, JobId, JobRecord, JobSpec, LevelDone,
    PageFacts, ResultSummary,
};

/// Any adapter failure: the engine is unreachable, refused the request, or
/// returned something unreadable. Callers treat it as retryable unless a
/// more specific error says otherwise.
#[derive(Debug, thiserror::Error)]
#[error("{engine}: {message}")]
pub struct AdapterError {
    pub engine: &'static str,
    pub message: String,
}

impl AdapterError {
    pub fn new(engine: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            engine,
            message: message.to_string(),
        }
    }
}

pub type AdapterResult<T> = Result<T, AdapterError>;

// ---------------------------------------------------------------- queue

/// What a gateway receives on its own routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A final result: persistent, confirmed, kept until its TTL.
    Result,
    /// A progress update: transient and short-lived; losing one is harmless.
    Progress,
}

/// Text headers a message carries beside its payload (a job's trace context).
pub type Headers = std::collections::BTreeMap<String, String>;

/// A message taken from a queue and not yet settled. Dropping it without
/// settling gives it back at once: the queue redelivers it, marked
/// `redelivered`, to any consumer.
pub struct Delivery {
    pub payload: Vec<u8>,
    pub headers: Headers,
    /// True when an earlier consumer received this message and did not ack it.
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl Delivery {
    pub fn new(
        payload: Vec<u8>,
        headers: Headers,
        redelivered: bool,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            payload,
            headers,
            redelivered,
            acker,
        }
    }

    /// Done with it: the queue forgets the message.
    pub async fn ack(self) -> AdapterResult<()> {
        self.acker.settle(Settle::Ack).await
    }

    /// Give it back for another consumer.
    pub async fn requeue(self) -> AdapterResult<()> {
        self.acker.settle(Settle::Requeue).await
    }

    /// It can never be processed: move it to the dead-letter queue.
    pub async fn dead_letter(self) -> AdapterResult<()> {
        self.acker.settle(Settle::DeadLetter).await
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.payload.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Requeue,
    DeadLetter,
}

#[async_trait]
pub trait Acker: Send + Sync {
    async fn settle(self: Box<Self>, how: Settle) -> AdapterResult<()>;
}

pub type DeliveryStream = Pin<Box<dyn Stream<Item = AdapterResult<Delivery>> + Send>>;

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Publishes a job to `assigned` with `headers`; returns once the queue
    /// holds it durably.
    async fn publish_job(&self, payload: Vec<u8>, headers: &Headers) -> AdapterResult<()>;
    /// Consumes `assigned` with at most `prefetch` unsettled deliveries.
    async fn consume_jobs(&self, prefetch: u16) -> AdapterResult<DeliveryStream>;
    /// Publishes a result or progress event to one gateway.
    async fn publish_event(
        &self,
        gateway_key: &str,
        kind: EventKind,
        payload: Vec<u8>,
    ) -> AdapterResult<()>;
    /// Consumes the events addressed to one gateway.
    async fn consume_events(&self, gateway_key: &str) -> AdapterResult<DeliveryStream>;
    /// Messages waiting in the dead-letter queue (for operators and tests).
    async fn dead_letter_count(&self) -> AdapterResult<u64>;
    /// Whether the broker answers now (readiness).
    async fn ping(&self) -> AdapterResult<()>;
}

// ---------------------------------------------------------------- politeness

/// The limits a host is crawled within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Fetches on the host at once, across the cluster.
    pub concurrency: u32,
    /// Least time between the starts of two fetches on the host.
    pub delay: Duration,
    /// How long a slot is held at most: a worker that dies holding one
    /// frees it after this.
    pub lease: Duration,
}

/// Per-host politeness shared by every worker that uses the same gate: at
/// most `concurrency` fetches at once on one host, starting at least
/// `delay` apart, and nothing while the host asked us to pause.
#[async_trait]
pub trait HostGate: Send + Sync + 'static {
    /// Takes a slot on `host` for `ticket` (unique per fetch) if one is free
    /// now; otherwise says how long to wait before asking again.
    async fn try_enter(
        &self,
        host: &str,
        ticket: &str,
        limits: HostLimits,
    ) -> AdapterResult<Option<Duration>>;
    /// Gives `ticket`'s slot back.
    async fn leave(&self, host: &str, ticket: &str) -> AdapterResult<()>;
    /// The host asked for a pause (429 or 503 with `Retry-After`): nothing
    /// starts on it for `pause`.
    async fn pause(&self, host: &str, pause: Duration) -> AdapterResult<()>;
}

// ---------------------------------------------------------------- cache

#[async_trait]
pub trait ResultCache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> AdapterResult<Option<CachedCrawl>>;
    /// Stores `crawl` unless a deeper crawl is already cached under `key`.
    async fn put(&self, key: &str, crawl: &CachedCrawl, ttl: Duration) -> AdapterResult<()>;
    /// Whether the cache answers now (readiness).
    async fn ping(&self) -> AdapterResult<()>;
}

// ---------------------------------------------------------------- store

/// A renewed lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub expires_at_ms: u64,
    /// Where the job's events go now, when a client reconnected to another
    /// gateway than the one that accepted the job.
    pub gateway_key: Option<String>,
}

/// Which stored pages to read: those of depth `max_depth` or less that come
/// after `after` (a depth and a URL) in (depth, URL) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub max_depth: u32,
    pub after: Option<(u32, String)>,
    pub limit: u32,
}

/// A stored page as JSON text (a [`PageFacts`] as serde writes it), with
/// the depth and URL it is ordered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageText {
    pub depth: u32,
    pub url: String,
    pub json: String,
}

/// A grant of the right to run a job until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub fencing_token: u64,
    pub expires_at_ms: u64,
}

/// A lease granted, with the progress earlier holders made durable.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub lease: Lease,
    /// Set when an earlier holder completed at least one level.
    pub checkpoint: Option<Checkpoint>,
}

/// An orphan handed to a new master: a running job whose lease expired.
#[derive(Debug, Clone, PartialEq)]
pub struct Takeover {
    pub spec: JobSpec,
    pub grant: Grant,
    /// The master whose lease expired.
    pub previous_master: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AcquireOutcome {
    Granted(Grant),
    /// The job already ended; here is how.
    AlreadyDone(Box<JobRecord>),
    /// Another master holds a live lease.
    HeldElsewhere {
        master_id: String,
        expires_at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    Created,
    /// The client already has a job with this client job id.
    Exists(Box<JobRecord>),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} is not in the store")]
    UnknownJob(JobId),
    #[error("fencing token {presented} is stale; the current one is {current}")]
    StaleToken { presented: u64, current: u64 },
    #[error("the job has ended; it takes no more writes")]
    Ended,
    #[error("level {got} cannot be saved before level {expected}")]
    LevelOutOfOrder { expected: u32, got: u32 },
    #[error("{what}: {saved} pages are saved, not {said}")]
    PagesMissing { what: String, said: u64, saved: u64 },
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// What the crawl's pages add up to. `last_pages` are the pages not
    /// saved before (the end of the last level), stored with the outcome.
    Done {
        summary: ResultSummary,
        last_pages: Vec<PageFacts>,
    },
    Failed(JobFailure),
}

#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Records a new job as queued; idempotent on `(client_id, client_job_id)`.
    async fn insert_job(&self, spec: &JobSpec) -> AdapterResult<InsertOutcome>;
    /// Records a new job as queued, as [`JobStore::insert_job`] does, that
    /// starts from the completed levels of an earlier crawl: their pages are
    /// copied under the new job and its checkpoint marks them done, so the
    /// master that takes it fetches only the levels past them. `None` when
    /// the earlier crawl's pages are not all in the store any more (nothing
    /// is recorded then; the job can be inserted to crawl from the start).
    async fn insert_head_start(
        &self,
        spec: &JobSpec,
        head: &HeadStart,
    ) -> AdapterResult<Option<InsertOutcome>>;
    /// Records a job that was answered from the cache, already done and
    /// delivered: its result is `cached`, whose pages another job holds.
    async fn insert_done(
        &self,
        spec: &JobSpec,
        cached: &CachedCrawl,
    ) -> AdapterResult<InsertOutcome>;
    /// Persists the job if new, then leases it to `master_id` unless it is done
    /// or another master's lease is still live. Every grant raises the token.
    async fn acquire(
        &self,
        spec: &JobSpec,
        master_id: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> AdapterResult<AcquireOutcome>;
    /// Renews a lease and records progress. Returns the lease's new expiry
    /// and the gateway the job's events go to now (its client may have
    /// reconnected elsewhere).
    async fn heartbeat(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        pages_done: u32,
        current_depth: u32,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Renewal, StoreError>;
    /// Ends a job; refused for a stale token. A done job's pages must all be
    /// saved by then, or come with it: the store refuses a summary its pages
    /// do not add up to ([`StoreError::PagesMissing`]). Completing twice with the current
    /// token is idempotent and keeps the first outcome.
    async fn complete(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        outcome: &JobOutcome,
        now_ms: u64,
    ) -> Result<JobRecord, StoreError>;
    async fn get(&self, job_id: &JobId) -> AdapterResult<Option<JobRecord>>;
    async fn find_by_client(
        &self,
        client_id: &str,
        client_job_id: &str,
    ) -> AdapterResult<Option<JobRecord>>;

    /// Hands the longest-orphaned job (a running job whose lease expired) to
    /// `master_id` with the next token, skipping the jobs in `exclude` (the
    /// ones the caller runs already). `None` when there is no orphan.
    async fn claim_orphan(
        &self,
        master_id: &str,
        exclude: &[JobId],
        ttl: Duration,
        now_ms: u64,
    ) -> AdapterResult<Option<Takeover>>;
    /// Ends a lease early so another master takes the job at once; refused
    /// for a stale token.
    async fn release(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// Stores pages of level `depth` as they arrive; refused for a stale
    /// token. Saving a page again replaces it, so a retried save is harmless.
    async fn save_pages(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        depth: u32,
        pages: &[PageFacts],
    ) -> Result<(), StoreError>;
    /// Marks a level complete, once all its pages are saved; refused for a
    /// stale token, and for a level whose saved pages are fewer than it
    /// says. Marking the same level again is a no-op.
    async fn save_level(
        &self,
        job_id: &JobId,
        fencing_token: u64,
        level: &LevelDone,
    ) -> Result<(), StoreError>;
    /// Up to `query.limit` stored pages of a job, ordered by depth, then URL.
    async fn read_pages(&self, job_id: &JobId, query: &PageQuery) -> AdapterResult<Vec<PageFacts>>;
    /// The same pages as [`JobStore::read_pages`], as the JSON text they
    /// are stored in: for sending them on without parsing them.
    async fn read_page_texts(
        &self,
        job_id: &JobId,
        query: &PageQuery,
    ) -> AdapterResult<Vec<PageText>>;

    /// Takes the duty of sending a finished job's outcome to its client:
    /// true for the one caller that takes it, false when it was taken
    /// already (another gateway or connection sends it, or sent it).
    async fn claim_delivery(&self, job_id: &JobId) -> AdapterResult<bool>;
    /// Gives the duty back: the connection it was to go to broke first.
    async fn unclaim_delivery(&self, job_id: &JobId) -> AdapterResult<()>;
    /// A client's jobs that still owe it something: finished but not
    /// delivered, or still running (their progress), oldest first.
    async fn open_jobs(&self, client_id: &str, limit: u32) -> AdapterResult<Vec<JobRecord>>;
    /// How many of a client's jobs are queued or running.
    async fn unfinished_jobs(&self, client_id: &str) -> AdapterResult<u32>;
    /// What a tenant's jobs (those whose client keys start with its
    /// [`Tenant::key_prefix`]) use: running now, accepted since
    /// `hour_ago_ms`, and pages of jobs accepted since `day_ago_ms`.
    async fn tenant_usage(
        &self,
        tenant: &Tenant,
        hour_ago_ms: u64,
        day_ago_ms: u64,
    ) -> AdapterResult<TenantUsage>;
    /// Whether the database answers now (readiness).
    async fn ping(&self) -> AdapterResult<()>;

    /// Notes that the job's message reached the queue: the outbox relay
    /// leaves it alone from now on.
    async fn mark_published(&self, job_id: &JobId) -> AdapterResult<()>;
    /// The outbox: queued jobs not known to be published and waiting since
    /// before `pending_before_ms`. Each one returned is marked as waiting
    /// since `now_ms`, so one relay takes it and the next try comes a grace
    /// period later if the publish fails again.
    async fn claim_unpublished(
        &self,
        pending_before_ms: u64,
        now_ms: u64,
        limit: u32,
    ) -> AdapterResult<Vec<JobSpec>>;
    /// Points the job's events at another gateway (its client reconnected
    /// there); the master reads it back when the job completes.
    async fn reroute(&self, job_id: &JobId, gateway_key: &str) -> AdapterResult<()>;
}

/// A new token's name is taken already.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token named `{0}` exists already; revoke it or choose another name")]
    NameTaken(String),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

/// The gateway's API tokens, kept as digests (see [`crate::auth`]).
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Records a token under a unique name.
    async fn create_token(&self, token: &ApiToken, digest: &TokenDigest) -> Result<(), TokenError>;
    /// The token with this digest, revoked or not.
    async fn token_by_digest(&self, digest: &TokenDigest) -> AdapterResult<Option<ApiToken>>;
    /// Every token, oldest first.
    async fn list_tokens(&self) -> AdapterResult<Vec<ApiToken>>;
    /// Revokes the named token; false when no live token has that name.
    async fn revoke_token(&self, name: &str, now_ms: u64) -> AdapterResult<bool>;
}

/// Leader election among lock-server replicas, through the store they share.
#[async_trait]
pub trait Election: Send + Sync + 'static {
    /// Leads, or renews the lead, unless another replica's leadership is
    /// live. Returns the leadership as it stands after the call.
    async fn try_lead(
        &self,
        candidate: &str,
        address: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> AdapterResult<Leadership>;
    /// Gives the lead up at once (a graceful stop), if `candidate` holds it.
    async fn resign(&self, candidate: &str) -> AdapterResult<()>;
}

/// The ports a service may need, shared.
#[derive(Clone)]
pub struct Engines {
    pub queue: Arc<dyn JobQueue>,
    pub cache: Arc<dyn ResultCache>,
    pub store: Arc<dyn JobStore>,
    /// The lock-server replicas' election, on the same database as `store`.
    pub election: Arc<dyn Election>,
    /// The gateway's API tokens, on the same database as `store`.
    pub tokens: Arc<dyn TokenStore>,
}
