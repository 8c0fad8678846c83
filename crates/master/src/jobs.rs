//! One job from the queue to its result: lease it, ack it once durable,
//! crawl while heartbeating, then complete, cache and publish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crawler_core::ErrorCode;
use crawler_core::events::GatewayEvent;
use crawler_core::model::{JobFailure, JobRecord, JobSpec};
use crawler_core::ports::{Delivery, EventKind, JobQueue, ResultCache};
use crawler_core::retry::{RetryError, RetryPolicy};
use crawler_proto::v1::{self, acquire_response, lock_service_client::LockServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::crawl::{Crawl, CrawlError, Progress};
use crate::pool::WorkerPool;

/// What every job of this master shares.
pub struct JobContext {
    pub master_id: String,
    pub lock: LockServiceClient<Channel>,
    pub queue: Arc<dyn JobQueue>,
    pub cache: Arc<dyn ResultCache>,
    pub pool: Arc<WorkerPool>,
    pub batch_size: usize,
    pub lease_ttl: Duration,
    pub cache_ttl: Duration,
    pub stats: crate::Stats,
    pub shutdown: CancellationToken,
}

const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Calls to the lock server that must eventually get an answer.
const LOCK_CALLS: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(3));

/// A result is published a few times, then left to `status`.
const PUBLISH_RESULT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2)).with_retries(4);

pub async fn handle_delivery(ctx: Arc<JobContext>, delivery: Delivery) {
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
    let request = v1::AcquireRequest {
        job: Some((&spec).into()),
        master_id: ctx.master_id.clone(),
        ttl_ms: ctx.lease_ttl.as_millis() as u32,
    };
    let outcome = match acquire_with_retry(&ctx, &job_id, request).await {
        Acquired::Answer(outcome) => *outcome,
        Acquired::ShuttingDown => {
            // Shutting down before the job was durable: hand it back untouched.
            if let Err(e) = delivery.requeue().await {
                tracing::warn!(%job_id, error = %e, "cannot requeue job");
            }
            return;
        }
        Acquired::Refused(status) => {
            // Another try would be refused the same way: park it for an operator.
            tracing::error!(%job_id, error = %status.message(), "lock server refused the job; dead-lettering it");
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
        Some(acquire_response::Outcome::Granted(lease)) => {
            run_leased(&ctx, spec, lease.fencing_token).await
        }
        Some(acquire_response::Outcome::Done(done)) => {
            // Finished before (a redelivery after a crash): tell the gateway again; it delivers once.
            if let Some(record) = done.record.and_then(|r| JobRecord::try_from(r).ok()) {
                publish_finished(&ctx, record).await;
            }
        }
        Some(acquire_response::Outcome::Held(held)) => {
            tracing::info!(%job_id, holder = %held.master_id, "job is leased to another master");
        }
        None => tracing::warn!(%job_id, "lock server answered without an outcome"),
    }
}

async fn run_leased(ctx: &Arc<JobContext>, spec: JobSpec, token: u64) {
    let job_id = spec.job_id.clone();
    ctx.stats.jobs_started.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%job_id, url = %spec.url, depth = spec.depth, "crawl started");
    let progress = Arc::new(Progress::default());
    let lease_lost = ctx.shutdown.child_token();
    let heartbeat = tokio::spawn(heartbeat_loop(
        ctx.clone(),
        spec.job_id.0.clone(),
        token,
        progress.clone(),
        lease_lost.clone(),
    ));

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
        let (queue, key) = (ctx.queue.clone(), spec.gateway_key.clone());
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
        cancel: &lease_lost,
    };
    let result = crawl.run().await;
    heartbeat.abort();
    let outcome = match result {
        Ok(result) => v1::complete_request::Outcome::Result((&result).into()),
        Err(CrawlError::Cancelled) => {
            tracing::warn!(%job_id, "crawl stopped: lease lost or shutting down; another master may take it over");
            return;
        }
        Err(e @ (CrawlError::BadStartUrl(_) | CrawlError::Refused(_))) => {
            v1::complete_request::Outcome::Failure(
                (&JobFailure {
                    code: ErrorCode::CrawlFailed,
                    message: e.to_string(),
                })
                    .into(),
            )
        }
    };
    let mut lock = ctx.lock.clone();
    let completed = lock
        .complete(v1::CompleteRequest {
            job_id: job_id.0.clone(),
            fencing_token: token,
            outcome: Some(outcome),
        })
        .await;
    let record = match completed {
        Ok(_) => match lock
            .get_job(v1::GetJobRequest {
                job_id: job_id.0.clone(),
            })
            .await
        {
            Ok(r) => match JobRecord::try_from(r.into_inner()) {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(%job_id, error = %e, "lock server returned an unreadable record");
                    return;
                }
            },
            Err(status) => {
                tracing::error!(%job_id, error = %status.message(), "cannot read back the completed job");
                return;
            }
        },
        Err(status) => {
            // A stale token means another master owns the job now: we must not publish.
            tracing::warn!(%job_id, error = %status.message(), "complete refused; dropping this result");
            return;
        }
    };
    if let Some(result) = &record.result
        && let Err(e) = ctx
            .cache
            .put(
                &crawler_core::urls::cache_key(&spec.url, &spec.options),
                result,
                ctx.cache_ttl,
            )
            .await
    {
        tracing::warn!(%job_id, error = %e, "cannot cache the result; continuing");
    }
    ctx.stats.jobs_completed.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%job_id, pages = record.result.as_ref().map_or(0, |r| r.pages.len()), "crawl finished");
    publish_finished(ctx, record).await;
}

/// Asks the lock server for the job until it answers. The delivery stays
/// unsettled meanwhile: requeueing on every failure would spend the queue's
/// delivery limit, and an outage of a few seconds would dead-letter good jobs.
async fn acquire_with_retry(
    ctx: &JobContext,
    job_id: &crawler_core::model::JobId,
    request: v1::AcquireRequest,
) -> Acquired {
    let lock = ctx.lock.clone();
    let acquired = LOCK_CALLS
        .retry(
            &ctx.shutdown,
            || {
                let (mut lock, request) = (lock.clone(), request.clone());
                async move { lock.acquire(request).await }
            },
            |status, delay| {
                tracing::warn!(%job_id, error = %status.message(), retry_in_ms = delay.as_millis() as u64, "lock server refused or unreachable; retrying acquire");
            },
        )
        .await;
    match acquired {
        Ok(response) => Acquired::Answer(Box::new(response.into_inner().outcome)),
        Err(RetryError::Cancelled) => Acquired::ShuttingDown,
        Err(RetryError::Permanent(status) | RetryError::Exhausted(status)) => {
            Acquired::Refused(status)
        }
    }
}

enum Acquired {
    Answer(Box<Option<acquire_response::Outcome>>),
    Refused(tonic::Status),
    ShuttingDown,
}

async fn publish_finished(ctx: &JobContext, record: JobRecord) {
    let key = record.spec.gateway_key.clone();
    let job_id = record.spec.job_id.clone();
    let event = GatewayEvent::Finished {
        record: Box::new(record),
    }
    .to_bytes();
    let published = PUBLISH_RESULT
        .retry(
            &CancellationToken::new(),
            || {
                ctx.queue
                    .publish_event(&key, EventKind::Result, event.clone())
            },
            |e, _| tracing::warn!(%job_id, error = %e, "cannot publish result; retrying"),
        )
        .await;
    if published.is_err() {
        tracing::error!(%job_id, "result not published; the client can still ask for it with `status`");
    }
}

async fn heartbeat_loop(
    ctx: Arc<JobContext>,
    job_id: String,
    token: u64,
    progress: Arc<Progress>,
    lease_lost: CancellationToken,
) {
    let every = ctx.lease_ttl / 3;
    let mut lock = ctx.lock.clone();
    loop {
        tokio::time::sleep(every).await;
        let request = v1::HeartbeatRequest {
            job_id: job_id.clone(),
            fencing_token: token,
            pages_done: progress.pages_done.load(Ordering::Relaxed),
            current_depth: progress.current_depth.load(Ordering::Relaxed),
            ttl_ms: ctx.lease_ttl.as_millis() as u32,
        };
        match lock.heartbeat(request).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::warn!(%job_id, error = %status.message(), "lease lost");
                lease_lost.cancel();
                return;
            }
            // A missed heartbeat is retried at the next tick; the lease has slack for two.
            Err(status) => tracing::warn!(%job_id, error = %status.message(), "heartbeat failed"),
        }
    }
}
