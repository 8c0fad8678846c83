//! What a master does with a job's lease while it runs the job: renew it
//! with progress, save the crawl's pages as they arrive and mark each level
//! complete after its pages, all in order, and in the end complete the job
//! or release it for another master.
//!
//! The lock server's word on the token is final: once it calls the token
//! stale (another master took the job over), the holder stops the crawl and
//! never completes, so the job can only ever get the newer holder's result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use crawler_core::ErrorCode;
use crawler_core::model::{JobId, JobRecord, LevelDone, PageFacts};
use crawler_core::retry::{RetryError, RetryPolicy};
use crawler_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use crate::crawl::{CrawlError, CrawlSink, Progress};
use crate::jobs::JobContext;

/// Saving pages or a level, or completing: retried on silence until the
/// token is refused. The cap is short so a holder is back soon after an
/// outage, before another master might take its expired lease over.
const DURABLE_WRITES: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
/// A deadline for calls that carry pages (at most [`PAGES_PER_SAVE`] of
/// them, a few hundred KB): a replica that does not answer within it is
/// left for the next.
const LARGE_CALL_DEADLINE: Duration = Duration::from_secs(10);
/// A deadline for a release; it is tried twice, then the lease just expires.
const RELEASE_DEADLINE: Duration = Duration::from_secs(1);
/// Pages sent to the store in one call: large enough that a level of
/// thousands of pages is a handful of calls, small enough to stay far from
/// any message limit.
const PAGES_PER_SAVE: usize = 500;
/// Saves queued behind the one in flight before the crawl waits: the most
/// pages a master holds for one job while its store is slow.
const SAVES_QUEUED: usize = 8;

/// What the saver writes, in the order it was queued.
enum Save {
    Pages(u32, Vec<PageFacts>),
    Level(LevelDone),
    /// Answers once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

pub struct LeaseHolder {
    ctx: Arc<JobContext>,
    job_id: JobId,
    token: u64,
    lost: Arc<AtomicBool>,
    /// Why the saver stopped for good, when it did (not for a lost lease).
    save_failed: Arc<Mutex<Option<String>>>,
    heartbeat: JoinHandle<()>,
    saves: mpsc::Sender<Save>,
    /// Pages not sent yet: the level they belong to, and the pages.
    buffered: tokio::sync::Mutex<(u32, Vec<PageFacts>)>,
    saver: JoinHandle<()>,
    /// The gateway the job's events go to; the heartbeat keeps it current.
    route: Arc<Mutex<String>>,
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
        route: String,
        stop: CancellationToken,
    ) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let route = Arc::new(Mutex::new(route));
        // Both tasks stay in the job's span, so their calls join its trace.
        let heartbeat = tokio::spawn(
            heartbeat_loop(
                ctx.clone(),
                job_id.clone(),
                token,
                progress,
                route.clone(),
                lost.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        let (saves, pending) = mpsc::channel(SAVES_QUEUED);
        let save_failed = Arc::new(Mutex::new(None));
        let saver = tokio::spawn(
            save_in_order(
                ctx.clone(),
                job_id.clone(),
                token,
                pending,
                lost.clone(),
                save_failed.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        Self {
            ctx,
            job_id,
            token,
            lost,
            save_failed,
            heartbeat,
            saves,
            buffered: tokio::sync::Mutex::new((0, Vec::new())),
            saver,
            route,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// The gateway the job's events go to now.
    pub fn route(&self) -> String {
        self.route.lock().expect("route lock").clone()
    }

    /// Queues a save; refused once the saver has stopped (the lease was
    /// lost, or saving failed for good).
    async fn queue(&self, save: Save) -> Result<(), CrawlError> {
        self.saves
            .send(save)
            .await
            .map_err(|_| match self.save_failed() {
                Some(reason) => CrawlError::Refused(reason),
                None => CrawlError::Cancelled,
            })
    }

    /// Sends the buffered pages, if any.
    async fn send_buffered(&self) -> Result<(), CrawlError> {
        let (depth, pages) = {
            let mut buffered = self.buffered.lock().await;
            let depth = buffered.0;
            (depth, std::mem::take(&mut buffered.1))
        };
        if pages.is_empty() {
            return Ok(());
        }
        self.queue(Save::Pages(depth, pages)).await
    }

    /// Why saving failed for good, when it did: the job must fail with it.
    pub fn save_failed(&self) -> Option<String> {
        self.save_failed.lock().expect("save failure lock").clone()
    }

    /// Waits until everything queued is written, and takes the pages still
    /// buffered (they go with the completion). `None` when the saver
    /// stopped first.
    async fn drain(&self) -> Option<Vec<PageFacts>> {
        let (done, written) = oneshot::channel();
        if self.saves.send(Save::Flush(done)).await.is_err() || written.await.is_err() {
            return None;
        }
        Some(std::mem::take(&mut self.buffered.lock().await.1))
    }

    /// Stores the job's outcome, with the result's last pages, once every
    /// page queued before is saved; retries while the lock service is
    /// unreachable; only a refused token, or the end of the shutdown grace,
    /// makes it give up.
    pub async fn complete(self, outcome: v1::complete_request::Outcome) -> Completed {
        let (outcome, last_pages) = match outcome {
            done @ v1::complete_request::Outcome::Result(_) => match self.drain().await {
                Some(last_pages) => (done, last_pages),
                None if self.is_lost() => return Completed::Stale,
                None => match self.save_failed() {
                    Some(reason) => (
                        v1::complete_request::Outcome::Failure(v1::JobFailure {
                            code: ErrorCode::Internal.as_str().to_string(),
                            message: format!("the crawl's pages could not be saved: {reason}"),
                        }),
                        Vec::new(),
                    ),
                    None => return Completed::Abandoned,
                },
            },
            failure => (failure, Vec::new()),
        };
        tracing::info!(job_id = %self.job_id, token = self.token, "completing the job");
        let stored = self.store(outcome, &last_pages).await;
        match stored {
            Err(RetryError::Permanent(status))
                if ErrorCode::of(&status) != Some(ErrorCode::StaleLease) =>
            {
                // The lock server refuses this outcome for good (its pages do
                // not add up, it is malformed): the job fails with the reason
                // rather than running for ever.
                tracing::error!(job_id = %self.job_id, error = %status.message(), "the lock server refused the result; failing the job");
                let failure = v1::JobFailure {
                    code: ErrorCode::Internal.as_str().to_string(),
                    message: format!("the result could not be stored: {}", status.message()),
                };
                let failed = self
                    .store(v1::complete_request::Outcome::Failure(failure), &[])
                    .await;
                self.settle(failed)
            }
            other => self.settle(other),
        }
    }

    async fn store(
        &self,
        outcome: v1::complete_request::Outcome,
        last_pages: &[PageFacts],
    ) -> Result<JobRecord, RetryError<Status>> {
        let request = v1::CompleteRequest {
            job_id: self.job_id.0.clone(),
            fencing_token: self.token,
            outcome: Some(outcome),
            last_pages: last_pages.iter().map(Into::into).collect(),
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

#[async_trait]
impl CrawlSink for LeaseHolder {
    async fn pages(&self, depth: u32, pages: Vec<PageFacts>) -> Result<(), CrawlError> {
        let full = {
            let mut buffered = self.buffered.lock().await;
            if buffered.0 != depth && !buffered.1.is_empty() {
                let earlier = (buffered.0, std::mem::take(&mut buffered.1));
                drop(buffered);
                self.queue(Save::Pages(earlier.0, earlier.1)).await?;
                buffered = self.buffered.lock().await;
            }
            buffered.0 = depth;
            buffered.1.extend(pages);
            (buffered.1.len() >= PAGES_PER_SAVE).then(|| std::mem::take(&mut buffered.1))
        };
        match full {
            Some(chunk) => self.queue(Save::Pages(depth, chunk)).await,
            None => Ok(()),
        }
    }

    async fn level_done(&self, level: LevelDone) -> Result<(), CrawlError> {
        // The level's last pages go before the mark that it is complete.
        self.send_buffered().await?;
        self.queue(Save::Level(level)).await
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
    route: Arc<Mutex<String>>,
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
            Ok(renewed) => {
                if !renewed.gateway_key.is_empty() {
                    let mut route = route.lock().expect("route lock");
                    if *route != renewed.gateway_key {
                        tracing::info!(%job_id, gateway = %renewed.gateway_key, "the client moved; its events follow it");
                        *route = renewed.gateway_key;
                    }
                }
            }
            Err(status) if ErrorCode::of(&status) == Some(ErrorCode::StaleLease) => {
                mark_lost(&job_id, &lost, &stop, &status);
                return;
            }
            Err(status) => tracing::warn!(%job_id, error = %status.message(), "heartbeat failed"),
        }
    }
}

/// Writes the crawl's pages and level marks one at a time, in order: a
/// level is marked complete only after its pages are written, and only once
/// the level before it is, so the checkpoint never has a gap.
async fn save_in_order(
    ctx: Arc<JobContext>,
    job_id: JobId,
    token: u64,
    mut pending: mpsc::Receiver<Save>,
    lost: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
) {
    while let Some(save) = pending.recv().await {
        let (what, saved) = match save {
            Save::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Save::Pages(depth, pages) => {
                let request = v1::SavePagesRequest {
                    job_id: job_id.0.clone(),
                    fencing_token: token,
                    depth,
                    pages: pages.iter().map(Into::into).collect(),
                };
                let saved = ctx
                    .lock
                    .call(
                        &DURABLE_WRITES,
                        LARGE_CALL_DEADLINE,
                        &stop,
                        "save pages",
                        |mut lock| {
                            let request = request.clone();
                            async move { lock.save_pages(request).await }
                        },
                    )
                    .await
                    .map(drop);
                ("pages", saved)
            }
            Save::Level(level) => {
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
                    .await
                    .map(drop);
                if saved.is_ok() {
                    ctx.stats.levels_saved.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%job_id, depth = level.depth, "level saved");
                }
                ("a level", saved)
            }
        };
        match saved {
            Ok(()) => {}
            Err(RetryError::Cancelled) => return,
            Err(RetryError::Permanent(status))
                if ErrorCode::of(&status) == Some(ErrorCode::StaleLease) =>
            {
                mark_lost(&job_id, &lost, &stop, &status);
                return;
            }
            Err(RetryError::Permanent(status) | RetryError::Exhausted(status)) => {
                // Nothing after this save can be written in order; the job
                // fails with the reason rather than completing without it.
                tracing::error!(%job_id, error = %status.message(), "cannot save {what}; the crawl stops");
                *failed.lock().expect("save failure lock") =
                    Some(format!("saving {what}: {}", status.message()));
                stop.cancel();
                return;
            }
        }
    }
}
