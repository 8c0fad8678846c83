//! Sending a job's outcome to its client: once, whole or in parts.
//!
//! The store holds every finished job's pages and whether its outcome was
//! delivered. A connection sends an outcome only after it *claims* the
//! delivery in the store (the claim succeeds for one caller), and gives
//! the claim back if the connection breaks before the outcome is written,
//! so the client is sent it when it reconnects, to any gateway. A result
//! of more pages than `part_pages` goes as a `resultHead` and then
//! `resultPart`s read from the store one part at a time, so neither the
//! gateway nor any message holds a large crawl whole.

use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::model::{CrawlResult, JobId, JobRecord, JobState, PageFacts};
use crawler_core::ports::{AdapterError, PageQuery};
use crawler_core::protocol::ServerMessage;
use crawler_core::retry::RetryPolicy;

use crate::AppState;

/// Something a connection is to send.
#[derive(Debug)]
/// Both kinds boxed: a connection's queue holds pointers, so an idle
/// connection's queue costs little.
pub enum Outgoing {
    Message(Box<ServerMessage>),
    Outcome(Box<Outcome>),
}

impl Outgoing {
    pub fn message(message: ServerMessage) -> Self {
        Self::Message(Box::new(message))
    }

    pub fn outcome(outcome: Outcome) -> Self {
        Self::Outcome(Box::new(outcome))
    }
}

/// A finished job's outcome, and what the connection owes about it.
#[derive(Debug)]
pub struct Outcome {
    pub record: JobRecord,
    /// The result's pages, when they came along (a small result).
    pub pages: Option<Vec<PageFacts>>,
    /// Answered from the cache.
    pub cached: bool,
    pub duty: Duty,
}

/// Who may send an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Sent unasked (a result event, a reconnect): only by whoever claims
    /// the delivery, so never twice.
    Push,
    /// Asked for (`status`, a resubmit): always answered; claimed too, so
    /// a reconnect does not push it again.
    Answer,
    /// Claimed already (a cache answer, recorded as delivered).
    Claimed,
}

/// Writes messages to one client.
pub trait Writer {
    /// False once the connection is broken.
    fn write(&mut self, message: ServerMessage) -> impl Future<Output = bool> + Send;
}

/// How sending an outcome went.
enum Sent {
    Whole,
    /// The connection broke.
    Broken,
    /// The store could not be read; the client was told to ask again.
    Unreadable,
}

/// How a delivery's claim, or its return, is retried: a store restart
/// leaves dead connections in the pool, each failing once, and a push not
/// claimed is not sent (the client would have to ask for it).
const STORE_CALL: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(20), Duration::from_millis(500)).with_retries(20);

/// Sends `outcome` if this connection's duty says so. False once the
/// connection is broken.
pub async fn deliver<W: Writer>(state: &AppState, out: &mut W, outcome: Box<Outcome>) -> bool {
    let job_id = outcome.record.spec.job_id.clone();
    let claimed = match outcome.duty {
        Duty::Claimed => true,
        Duty::Push | Duty::Answer => match claim(state, &job_id).await {
            Some(claimed) => claimed,
            // Not sent now; the client can ask `status`, or reconnect.
            None => return true,
        },
    };
    if !claimed && outcome.duty == Duty::Push {
        return true; // delivered elsewhere
    }
    let sent = send_outcome(state, out, *outcome).await;
    if !matches!(sent, Sent::Whole) && claimed {
        unclaim(state, &job_id).await;
    }
    !matches!(sent, Sent::Broken)
}

/// Claims the delivery of `job_id`: whether this caller won it, or `None`
/// when the store could not say.
async fn claim(state: &AppState, job_id: &JobId) -> Option<bool> {
    let call = || state.engines.store.claim_delivery(job_id);
    let retrying = |e: &AdapterError, _| {
        tracing::warn!(%job_id, error = %e, "cannot claim a delivery; retrying");
    };
    match STORE_CALL.retry(&state.closing, call, retrying).await {
        Ok(claimed) => Some(claimed),
        Err(e) => {
            tracing::warn!(%job_id, error = ?e.into_inner(), "cannot claim a delivery");
            None
        }
    }
}

/// Gives a claimed delivery back, so a reconnect pushes it again.
async fn unclaim(state: &AppState, job_id: &JobId) {
    let call = || state.engines.store.unclaim_delivery(job_id);
    if let Err(e) = STORE_CALL.retry(&state.closing, call, |_, _| {}).await {
        tracing::warn!(%job_id, error = ?e.into_inner(), "cannot give a delivery back; the client can still ask `status`");
    }
}

async fn send_outcome<W: Writer>(state: &AppState, out: &mut W, outcome: Outcome) -> Sent {
    let sent = |ok: bool| if ok { Sent::Whole } else { Sent::Broken };
    let unreadable = |ok: bool| if ok { Sent::Unreadable } else { Sent::Broken };
    let Outcome {
        record,
        pages,
        cached,
        ..
    } = outcome;
    let client_job_id = record.spec.client_job_id.clone();
    let summary = match (record.state, &record.summary, &record.failure) {
        (JobState::Done, Some(summary), _) => summary.clone(),
        (JobState::Failed, _, Some(failure)) => {
            let message =
                ServerMessage::error(Some(client_job_id), failure.code, failure.message.clone());
            return sent(out.write(message).await);
        }
        (state, _, _) => {
            let message = ServerMessage::error(
                Some(client_job_id),
                ErrorCode::Internal,
                format!("the job is {} without an outcome", state.as_str()),
            );
            return sent(out.write(message).await);
        }
    };
    let page_count = summary.page_count();
    let part_pages = state.part_pages;
    if page_count <= u64::from(part_pages) {
        let pages = match pages {
            Some(pages) => pages,
            None => match read(state, &record, None, part_pages).await {
                Ok(pages) => pages,
                Err(message) => return unreadable(out.write(message).await),
            },
        };
        let result = CrawlResult::assemble(&summary, pages);
        let message = ServerMessage::result(
            client_job_id,
            record.spec.url,
            result,
            cached,
            record.elapsed_ms,
        );
        return sent(out.write(message).await);
    }
    let parts = page_count.div_ceil(u64::from(part_pages)) as u32;
    let head = ServerMessage::ResultHead {
        job_id: client_job_id.clone(),
        url: record.spec.url.clone(),
        depth: summary.depth,
        level_sizes: summary.level_sizes.clone(),
        page_count,
        parts,
        truncated: summary.truncated,
        cached,
        elapsed_ms: record.elapsed_ms,
    };
    if !out.write(head).await {
        return Sent::Broken;
    }
    let mut after = None;
    for part in 1..=parts {
        let pages = match read(state, &record, after.take(), part_pages).await {
            Ok(pages) => pages,
            // The head went out; the client learns the rest failed.
            Err(message) => return unreadable(out.write(message).await),
        };
        after = pages.last().map(|p| (p.depth, p.url.clone()));
        let message = ServerMessage::ResultPart {
            job_id: client_job_id.clone(),
            part,
            parts,
            pages,
        };
        if !out.write(message).await {
            return Sent::Broken;
        }
    }
    Sent::Whole
}

/// The result's next pages from the store, or the error to send instead.
async fn read(
    state: &AppState,
    record: &JobRecord,
    after: Option<(u32, String)>,
    limit: u32,
) -> Result<Vec<PageFacts>, ServerMessage> {
    let query = PageQuery {
        max_depth: record.summary.as_ref().map_or(0, |s| s.depth),
        after,
        limit,
    };
    state
        .engines
        .store
        .read_pages(record.pages_job(), &query)
        .await
        .map_err(|e| {
            ServerMessage::error(
                Some(record.spec.client_job_id.clone()),
                ErrorCode::Unavailable,
                format!(
                    "the result is stored but cannot be read now ({e}); ask again with `status`"
                ),
            )
        })
}
