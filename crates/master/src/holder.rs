//! What a master does with a job's lease while it runs the job: renew it
//! with progress, make each completed level durable in order, and in the
//! end complete the job or release it for another master.
//!
//! The lock server's word on the token is final: once it calls the token
//! stale (another master took the job over), the holder stops the crawl and
//! never completes, so the job can only ever get the newer holder's result.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::model::{JobId, JobRecord, LevelDone};
use crawler_core::retry::{RetryError, RetryPolicy};
use crawler_proto::v1;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use crate::crawl::Progress;
use crate::jobs::JobContext;

/// Saving a level or completing: retried on silence until the token is
/// refused. The cap is short so a holder is back soon after an outage,
/// before another master might take its expired lease over.
const DURABLE_WRITES: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
/// A deadline for calls that may carry a whole level or result.
const LARGE_CALL_DEADLINE: Duration = Duration::from_secs(30);
/// A deadline for a release; it is tried twice, then the lease just expires.
const RELEASE_DEADLINE: Duration = Duration::from_secs(1);

pub struct LeaseHolder {
    ctx: Arc<JobContext>,
    job_id: JobId,
    token: u64,
    lost: Arc<AtomicBool>,
    heartbeat: JoinHandle<()>,
    levels: mpsc::UnboundedSender<LevelDone>,
    saver: JoinHandle<()>,
}

/// How a completion ended.
pub enum Completed {
    /// The store holds the outcome; here is the record it kept.
    Stored(Box<JobRecord>),
    /// Another master holds the job now; this result must be dropped.
    Stale,
    /// Shutting down before the lock server answered: the lease will lapse
    /// and another master continues from the last saved level.
    Abandoned,
}

impl LeaseHolder {
    /// Starts renewing the lease. `stop` is cancelled when the lease is lost.
    pub fn start(
        ctx: Arc<JobContext>,
        job_id: JobId,
        token: u64,
        progress: Arc<Progress>,
        stop: CancellationToken,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        // Both tasks stay in the job's span, so their calls join its trace.
        let heartbeat = tokio::spawn(
            heartbeat_loop(
                ctx.clone(),
                job_id.clone(),
                token,
                progress,
                lost.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        let (levels, pending) = mpsc::unbounded_channel();
        let saver = tokio::spawn(
            save_levels(
                ctx.clone(),
                job_id.clone(),
                token,
                pending,
                lost.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        Self {
            ctx,
            job_id,
            token,
            lost,
            heartbeat,
            levels,
            saver,
        }
    }

    /// Queues a completed level to be made durable, after the ones before it.
    pub fn save(&self, level: LevelDone) {
        // The saver only goes away once the lease is lost; then saving is moot.
        let _ = self.levels.send(level);
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Stores the job's outcome, retrying while the lock service is
    /// unreachable; only a refused token, or the end of the shutdown grace,
    /// makes it give up.
    pub async fn complete(self, outcome: v1::complete_request::Outcome) -> Completed {
        self.saver.abort(); // the result holds every level; the checkpoint is moot
        tracing::info!(job_id = %self.job_id, token = self.token, "completing the job");
        let stored = self.store(outcome).await;
        match stored {
            Err(RetryError::Permanent(status))
                if ErrorCode::of(&status) != Some(ErrorCode::StaleLease) =>
            {
                // The lock server refuses this outcome for good (too large, malformed):
                // the job fails with the reason rather than running for ever.
                tracing::error!(job_id = %self.job_id, error = %status.message(), "the lock server refused the result; failing the job");
                let failure = v1::JobFailure {
                    code: ErrorCode::Internal.as_str().to_string(),
                    message: format!("the result could not be stored: {}", status.message()),
                };
                let failed = self
                    .store(v1::complete_request::Outcome::Failure(failure))
                    .await;
                self.settle(failed)
            }
            other => self.settle(other),
        }
    }

    async fn store(
        &self,
        outcome: v1::complete_request::Outcome,
    ) -> Result<JobRecord, RetryError<Status>> {
        let request = v1::CompleteRequest {
            job_id: self.job_id.0.clone(),
            fencing_token: self.token,
            outcome: Some(outcome),
        };
        let record = self
            .ctx
            .lock
            .call(
                &DURABLE_WRITES,
                LARGE_CALL_DEADLINE,
                &self.ctx.hard_stop,
                "complete",
                |mut lock| {
                    let request = request.clone();
                    async move { lock.complete(request).await }
                },
            )
            .await?;
        JobRecord::try_from(record).map_err(RetryError::Permanent)
    }

    fn settle(&self, stored: Result<JobRecord, RetryError<Status>>) -> Completed {
        match stored {
            Ok(record) => Completed::Stored(Box::new(record)),
            Err(RetryError::Cancelled) => {
                tracing::warn!(job_id = %self.job_id, "stopping before the lock server took the result; another master continues from the last saved level");
                Completed::Abandoned
            }
            Err(RetryError::Permanent(status) | RetryError::Exhausted(status)) => {
                tracing::warn!(job_id = %self.job_id, error = %status.message(), "complete refused; dropping this result");
                Completed::Stale
            }
        }
    }

    /// Ends the lease at once so another master takes the job over now
    /// rather than when the lease would have run out.
    pub async fn release(self) {
        let request = v1::ReleaseRequest {
            job_id: self.job_id.0.clone(),
            fencing_token: self.token,
        };
        for _ in 0..2 {
            let released = self
                .ctx
                .lock
                .once(RELEASE_DEADLINE, |mut lock| {
                    let request = request.clone();
                    async move { lock.release(request).await }
                })
                .await;
            match released {
                Ok(_) => {
                    self.ctx
                        .stats
                        .leases_released
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(job_id = %self.job_id, "lease released for handover");
                    return;
                }
                Err(status) if ErrorCode::of(&status) == Some(ErrorCode::StaleLease) => return,
                Err(status) => {
                    tracing::warn!(job_id = %self.job_id, error = %status.message(), "cannot release the lease")
                }
            }
        }
        tracing::warn!(job_id = %self.job_id, "the lease will lapse by itself; another master takes the job then");
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.saver.abort();
    }
}

fn mark_lost(job_id: &JobId, lost: &AtomicBool, stop: &CancellationToken, status: &Status) {
    if !lost.swap(true, Ordering::Relaxed) {
        tracing::warn!(%job_id, error = %status.message(), "lease lost to another master; stopping this crawl");
    }
    stop.cancel();
}

async fn heartbeat_loop(
    ctx: Arc<JobContext>,
    job_id: JobId,
    token: u64,
    progress: Arc<Progress>,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let every = ctx.lease_ttl / 3;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the grant itself was the first renewal
    loop {
        ticks.tick().await;
        let request = v1::HeartbeatRequest {
            job_id: job_id.0.clone(),
            fencing_token: token,
            pages_done: progress.pages_done.load(Ordering::Relaxed),
            current_depth: progress.current_depth.load(Ordering::Relaxed),
            ttl_ms: ctx.lease_ttl.as_millis() as u32,
        };
        // One try per tick, answered within the tick: the lease has slack
        // for two missed beats, and a late answer is no use.
        let beat = ctx
            .lock
            .once(every, |mut lock| {
                let request = request.clone();
                async move { lock.heartbeat(request).await }
            })
            .await;
        match beat {
            Ok(_) => {}
            Err(status) if ErrorCode::of(&status) == Some(ErrorCode::StaleLease) => {
                mark_lost(&job_id, &lost, &stop, &status);
                return;
            }
            Err(status) => tracing::warn!(%job_id, error = %status.message(), "heartbeat failed"),
        }
    }
}

/// Saves levels one at a time, in order: a level is saved only once the
/// level before it is durable, so the checkpoint never has a gap.
async fn save_levels(
    ctx: Arc<JobContext>,
    job_id: JobId,
    token: u64,
    mut pending: mpsc::UnboundedReceiver<LevelDone>,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    while let Some(level) = pending.recv().await {
        let request = v1::SaveLevelRequest::new(&job_id, token, &level);
        let saved = ctx
            .lock
            .call(
                &DURABLE_WRITES,
                LARGE_CALL_DEADLINE,
                &stop,
                "save level",
                |mut lock| {
                    let request = request.clone();
                    async move { lock.save_level(request).await }
                },
            )
            .await;
        match saved {
            Ok(_) => {
                ctx.stats.levels_saved.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%job_id, depth = level.depth, "level saved");
            }
            Err(RetryError::Cancelled) => return,
            Err(RetryError::Permanent(status))
                if ErrorCode::of(&status) == Some(ErrorCode::StaleLease) =>
            {
                mark_lost(&job_id, &lost, &stop, &status);
                return;
            }
            Err(e) => {
                // Later levels could not follow this one; a takeover would
                // restart from the last level saved, which is still correct.
                tracing::error!(%job_id, depth = level.depth, error = %e, "cannot save a level; the checkpoint stays where it was");
                return;
            }
        }
    }
}
