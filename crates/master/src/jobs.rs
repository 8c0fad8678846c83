//! One job from its lease to its result: a job comes from the queue (lease
//! it with `Acquire`, ack it once durable) or is an orphan taken over
//! (`ClaimOrphan`); either way it is crawled from its checkpoint while the
//! lease is held, then completed, cached and published.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crawler_core::ErrorCode;
use crawler_core::events::GatewayEvent;
use crawler_core::model::{
    CachedCrawl, Checkpoint, JobFailure, JobId, JobRecord, JobSpec, PageFacts,
};
use crawler_core::ports::{Delivery, EventKind, JobQueue, PageQuery, ResultCache};
use crawler_core::retry::{RetryError, RetryPolicy};
use crawler_proto::v1::{self, acquire_response};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::crawl::{Crawl, CrawlError, Progress, Resume};
use crate::holder::{Completed, LeaseHolder};
use crate::lock_client::LockClient;
use crate::metrics;
use crate::pool::WorkerPool;

/// What every job of this master shares.
pub struct JobContext {
    pub master_id: String,
    pub lock: LockClient,
    pub queue: Arc<dyn JobQueue>,
    pub cache: Arc<dyn ResultCache>,
    pub pool: Arc<WorkerPool>,
    pub batch_size: usize,
    pub lease_ttl: Duration,
    pub cache_ttl: Duration,
    pub stats: crate::Stats,
    /// Stop taking and crawling jobs; running ones release their leases.
    pub shutdown: CancellationToken,
    /// The shutdown grace ran out: stop even completing.
    pub hard_stop: CancellationToken,
    /// The jobs this master holds a lease on.
    pub running: Mutex<HashSet<JobId>>,
}

const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// `Acquire` is retried until it is answered: the job is not durable yet.
const ACQUIRE: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
const ACQUIRE_DEADLINE: Duration = Duration::from_secs(5);

/// One look for an orphan per tick; a failed look waits for the next tick.
const CLAIM_DEADLINE: Duration = Duration::from_secs(1);

/// Reading a checkpoint's pages: retried a little, then the lease lapses.
const RESUME_READS: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1)).with_retries(5);
const RESUME_DEADLINE: Duration = Duration::from_secs(10);

/// A result is published until the broker takes it (a broker restart, or
/// an outage of minutes, delays it rather than losing the push), in the
/// background: the job's slot is free meanwhile. If the master stops first,
/// its client gets the outcome when it reconnects (the store says it was not
/// delivered) or asks.
const PUBLISH_RESULT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// Runs a job from the queue in its own span, a child of the gateway's
/// (its context comes in the message's headers).
pub async fn handle_delivery(ctx: Arc<JobContext>, delivery: Delivery) {
    let span = tracing::info_span!("job.run", job_id = tracing::field::Empty);
    crawler_core::trace::set_parent(&span, &delivery.headers);
    take_delivery(ctx, delivery).instrument(span).await;
}

async fn take_delivery(ctx: Arc<JobContext>, delivery: Delivery) {
    let spec: JobSpec = match serde_json::from_slice(&delivery.payload) {
        Ok(spec) => spec,
        Err(e) => {
            tracing::error!(error = %e, "unreadable job message; dead-lettering it");
            if let Err(e) = delivery.dead_letter().await {
                tracing::warn!(error = %e, "cannot dead-letter message");
            }
            return;
        }
    };
    let job_id = spec.job_id.clone();
    tracing::Span::current().record("job_id", tracing::field::display(&job_id));
    if ctx.lock_running().contains(&job_id) {
        // A second copy (the outbox published it again): acquiring it would
        // fence out this master's own run of it and start it over.
        tracing::info!(%job_id, "job already running here; dropping the second copy");
        if let Err(e) = delivery.ack().await {
            tracing::warn!(%job_id, error = %e, "cannot ack job message");
        }
        return;
    }
    tracing::info!(%job_id, redelivered = delivery.redelivered, "job received; acquiring its lease");
    let request = v1::AcquireRequest {
        job: Some((&spec).into()),
        master_id: ctx.master_id.clone(),
        ttl_ms: ctx.lease_ttl.as_millis() as u32,
    };
    // The delivery stays unsettled while Acquire is retried: requeueing on
    // every failure would spend the queue's delivery limit, and an outage of
    // a few seconds would dead-letter good jobs.
    let acquired = ctx
        .lock
        .call(
            &ACQUIRE,
            ACQUIRE_DEADLINE,
            &ctx.shutdown,
            "acquire",
            |mut lock| {
                let request = request.clone();
                async move { lock.acquire(request).await }
            },
        )
        .await;
    let outcome = match acquired {
        Ok(response) => response.outcome,
        Err(RetryError::Cancelled) => {
            // Shutting down before the job was durable: hand it back untouched.
            if let Err(e) = delivery.requeue().await {
                tracing::warn!(%job_id, error = %e, "cannot requeue job");
            }
            return;
        }
        Err(RetryError::Permanent(status) | RetryError::Exhausted(status)) => {
            // Another try would be refused the same way: the client hears why,
            // and the message is parked for an operator.
            tracing::error!(%job_id, error = %status.message(), "lock server refused the job; failing it and dead-lettering it");
            let failure = JobFailure {
                code: ErrorCode::CrawlFailed,
                message: format!("the lock server refused the job: {}", status.message()),
            };
            publish_finished(&ctx, JobRecord::failed(spec, failure), None).await;
            if let Err(e) = delivery.dead_letter().await {
                tracing::warn!(%job_id, error = %e, "cannot dead-letter message");
            }
            return;
        }
    };
    // From here the job is in the store: the queue message may go.
    if let Err(e) = delivery.ack().await {
        tracing::warn!(%job_id, error = %e, "cannot ack job message; it may be redelivered, which the lease makes harmless");
    }
    match outcome {
        Some(acquire_response::Outcome::Granted(lease)) => run_job(&ctx, spec, lease).await,
        Some(acquire_response::Outcome::Done(done)) => {
            // Finished before (a redelivery after a crash): tell the gateway again; it delivers once.
            if let Some(record) = done.record.and_then(|r| JobRecord::try_from(r).ok()) {
                publish_finished(&ctx, record, None).await;
            }
        }
        Some(acquire_response::Outcome::Held(held)) => {
            // Its holder finishes it, or dies and the job is taken over as an orphan.
            tracing::info!(%job_id, holder = %held.master_id, "job is leased to another master");
        }
        None => tracing::warn!(%job_id, "lock server answered without an outcome"),
    }
}

/// Asks once for an orphan to take over. `None` when there is none, or the
/// lock server did not answer (the next tick asks again).
pub async fn claim_orphan(ctx: &JobContext) -> Option<(JobSpec, v1::Lease, String)> {
    let request = v1::ClaimOrphanRequest {
        master_id: ctx.master_id.clone(),
        ttl_ms: ctx.lease_ttl.as_millis() as u32,
        running_job_ids: ctx.lock_running().iter().map(|id| id.0.clone()).collect(),
    };
    let claimed = ctx
        .lock
        .once(CLAIM_DEADLINE, |mut lock| async move {
            lock.claim_orphan(request).await
        })
        .await;
    match claimed {
        Ok(response) => {
            let orphan = response.orphan?;
            Some((orphan.job?.into(), orphan.lease?, orphan.previous_master))
        }
        Err(status) => {
            tracing::debug!(error = %status.message(), "cannot look for orphans");
            None
        }
    }
}

/// Runs a job this master has just taken over from `previous_master`, in
/// the job's own trace (its context is kept in the spec).
pub async fn run_orphan(
    ctx: &Arc<JobContext>,
    spec: JobSpec,
    lease: v1::Lease,
    previous_master: String,
) {
    let span = tracing::info_span!("job.takeover", job_id = %spec.job_id, %previous_master);
    crawler_core::trace::set_parent(&span, &spec.trace);
    async {
        ctx.stats.jobs_taken_over.fetch_add(1, Ordering::Relaxed);
        tracing::info!(job_id = %spec.job_id, %previous_master, token = lease.fencing_token, "took over an orphaned job");
        run_job(ctx, spec, lease).await;
    }
    .instrument(span)
    .await;
}

/// Pages read per call when a crawl resumes from a checkpoint.
const RESUME_READ: u32 = 1_000;

async fn run_job(ctx: &Arc<JobContext>, spec: JobSpec, lease: v1::Lease) {
    let job_id = spec.job_id.clone();
    let _running = Running::enter(ctx, &job_id);
    let checkpoint: Option<Checkpoint> = lease.checkpoint.map(Into::into);
    ctx.stats.jobs_started.fetch_add(1, Ordering::Relaxed);
    let progress = Arc::new(Progress::default());
    let stop = ctx.shutdown.child_token();
    let holder = LeaseHolder::start(
        ctx.clone(),
        job_id.clone(),
        lease.fencing_token,
        progress.clone(),
        spec.gateway_key.clone(),
        stop.clone(),
    );
    let resumed = match &checkpoint {
        None => {
            tracing::info!(%job_id, url = %spec.url, depth = spec.depth, "crawl started");
            None
        }
        Some(checkpoint) => match resume(ctx, &spec, checkpoint, &stop).await {
            Some(state) => Some(state),
            // Stopping, or the lock service is gone: the lease lapses and
            // another master resumes it.
            None => return metrics::job_ended("abandoned", None),
        },
    };

    let last_progress = std::sync::Mutex::new(Instant::now() - PROGRESS_INTERVAL);
    let on_progress = || {
        let mut last = last_progress.lock().expect("progress clock");
        if last.elapsed() < PROGRESS_INTERVAL {
            return;
        }
        *last = Instant::now();
        let event = GatewayEvent::Progress {
            job_id: spec.job_id.clone(),
            client_id: spec.client_id.clone(),
            client_job_id: spec.client_job_id.clone(),
            pages_done: progress.pages_done.load(Ordering::Relaxed),
            current_depth: progress.current_depth.load(Ordering::Relaxed),
        };
        let (queue, key) = (ctx.queue.clone(), holder.route());
        tokio::spawn(async move {
            // Progress is best effort: a lost update is replaced by the next.
            let _ = queue
                .publish_event(&key, EventKind::Progress, event.to_bytes())
                .await;
        });
    };
    let crawl = Crawl {
        spec: &spec,
        pool: &ctx.pool,
        batch_size: ctx.batch_size,
        progress: &progress,
        on_progress: &on_progress,
        sink: &holder,
        cancel: &stop,
    };
    let crawled = crawl.run(resumed).await;
    let mut inline_pages = None;
    let outcome = match (crawled, holder.save_failed()) {
        (_, Some(reason)) => failed(
            ErrorCode::Internal,
            format!("the crawl's pages could not be saved: {reason}"),
        ),
        (Ok(crawled), None) => {
            inline_pages = crawled.pages;
            v1::complete_request::Outcome::Result((&crawled.summary).into())
        }
        (Err(CrawlError::Cancelled), None) => {
            if holder.is_lost() {
                metrics::job_ended("stale", None);
            } else {
                // Shutting down: hand the job over now, not when the lease lapses.
                holder.release().await;
                metrics::job_ended("released", None);
            }
            return;
        }
        (Err(e @ (CrawlError::BadStartUrl(_) | CrawlError::Refused(_))), None) => {
            failed(ErrorCode::CrawlFailed, e.to_string())
        }
    };
    let record = match holder.complete(outcome).await {
        Completed::Stored(record) => *record,
        Completed::Stale => return metrics::job_ended("stale", None),
        Completed::Abandoned => return metrics::job_ended("abandoned", None),
    };
    let took = Duration::from_millis(record.elapsed_ms);
    metrics::job_ended(record.state.as_str(), Some(took));
    if let Some(summary) = record.summary.as_ref().filter(|_| spec.options.cacheable()) {
        let cached = CachedCrawl {
            summary: summary.clone(),
            job_id: job_id.clone(),
            pages: inline_pages.clone(),
        };
        let key = crawler_core::urls::cache_key(&spec.url, &spec.options);
        if let Err(e) = ctx.cache.put(&key, &cached, ctx.cache_ttl).await {
            tracing::warn!(%job_id, error = %e, "cannot cache the result; continuing");
        }
    }
    ctx.stats.jobs_completed.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%job_id, pages = record.pages_done, "crawl finished");
    publish_finished(ctx, record, inline_pages).await;
}

fn failed(code: ErrorCode, message: String) -> v1::complete_request::Outcome {
    v1::complete_request::Outcome::Failure((&JobFailure { code, message }).into())
}

/// Rebuilds a crawl's state from its checkpoint and the pages of its
/// completed levels, read from the store a chunk at a time. `None` when
/// stopping, or when the lock service did not answer (then the lease
/// lapses and a master resumes the job later).
async fn resume(
    ctx: &JobContext,
    spec: &JobSpec,
    checkpoint: &Checkpoint,
    stop: &CancellationToken,
) -> Option<crate::crawl::State> {
    let start = url::Url::parse(&spec.url).ok()?;
    let scope = crawler_core::urls::Scope::new(&start, &spec.options);
    let mut resume = Resume::new(checkpoint);
    let mut after: Option<(u32, String)> = None;
    loop {
        let query = PageQuery {
            max_depth: checkpoint.levels_done.saturating_sub(1),
            after: after.clone(),
            limit: RESUME_READ,
        };
        let request = v1::ReadPagesRequest::new(&spec.job_id, &query);
        let read = ctx
            .lock
            .call(
                &RESUME_READS,
                RESUME_DEADLINE,
                stop,
                "read pages",
                |mut lock| {
                    let request = request.clone();
                    async move { lock.read_pages(request).await }
                },
            )
            .await;
        let pages: Vec<PageFacts> = match read {
            Ok(response) => response.pages.into_iter().map(Into::into).collect(),
            Err(e) => {
                tracing::warn!(job_id = %spec.job_id, error = %e, "cannot read the checkpoint's pages; the lease will lapse");
                return None;
            }
        };
        let Some(last) = pages.last() else { break };
        after = Some((last.depth, last.url.clone()));
        resume.absorb(pages);
    }
    let kept = resume.pages_kept();
    ctx.stats
        .pages_resumed
        .fetch_add(kept as u64, Ordering::Relaxed);
    tracing::info!(job_id = %spec.job_id, url = %spec.url, depth = spec.depth, levels_done = checkpoint.levels_done, pages_kept = kept, "crawl resumed");
    Some(resume.finish(&scope))
}

/// Publishes to the gateway the stored record names: the one that holds the
/// client now, which may not be the one that accepted the job. Returns once
/// the first try is made; further tries go on in the background.
async fn publish_finished(ctx: &Arc<JobContext>, record: JobRecord, pages: Option<Vec<PageFacts>>) {
    let key = record.spec.gateway_key.clone();
    let job_id = record.spec.job_id.clone();
    let event = GatewayEvent::Finished {
        record: Box::new(record),
        pages,
    }
    .to_bytes();
    if ctx
        .queue
        .publish_event(&key, EventKind::Result, event.clone())
        .await
        .is_ok()
    {
        return metrics::result_published(event.len());
    }
    let ctx = ctx.clone();
    tokio::spawn(
        async move {
            let published = PUBLISH_RESULT
                .retry(
                    &ctx.hard_stop,
                    || {
                        ctx.queue
                            .publish_event(&key, EventKind::Result, event.clone())
                    },
                    |e, _| tracing::warn!(%job_id, error = %e, "cannot publish result; retrying"),
                )
                .await;
            match published {
                Ok(()) => metrics::result_published(event.len()),
                Err(_) => {
                    tracing::error!(%job_id, "result not published; the client gets it when it reconnects or asks with `status`")
                }
            }
        }
        .in_current_span(),
    );
}

impl JobContext {
    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashSet<JobId>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks a job as held by this master for as long as it lives, so the
/// master never claims its own job as an orphan.
struct Running<'a> {
    ctx: &'a JobContext,
    job_id: JobId,
}

impl<'a> Running<'a> {
    fn enter(ctx: &'a JobContext, job_id: &JobId) -> Self {
        ctx.lock_running().insert(job_id.clone());
        Self {
            ctx,
            job_id: job_id.clone(),
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.ctx.lock_running().remove(&self.job_id);
    }
}
