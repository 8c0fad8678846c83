//! Sending a job's outcome to its client: once, whole or in parts.
//!
//! The store holds every finished job's pages and whether its outcome was
//! delivered. A connection sends an outcome only after it *claims* the
//! delivery in the store (the claim succeeds for one caller), and gives
//! the claim back if the connection breaks before the outcome is written,
//! so the client is sent it when it reconnects, to any gateway. A result
//! whose message would be larger than `part_bytes` goes as a `resultHead`
//! and then `resultPart`s of at most that size, read from the store a few
//! hundred pages at a time, so neither the gateway nor any message holds a
//! large crawl whole.

use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::model::{CrawlResult, JobId, JobRecord, JobState, PageFacts};
use crawler_core::ports::{AdapterError, PageQuery, PageText};
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

    /// Writes a whole `result` already made into JSON (made to learn its
    /// size); false once the connection is broken.
    fn write_result(&mut self, json: String) -> impl Future<Output = bool> + Send;

    /// Writes a `resultPart` already made into JSON; false once the
    /// connection is broken.
    fn write_part(&mut self, json: String) -> impl Future<Output = bool> + Send;
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
    let pages = match pages {
        Some(pages) => Some(pages),
        None if page_count <= u64::from(READ_PAGES) => match read(state, &record, None).await {
            Ok(pages) => Some(pages),
            Err(message) => return unreadable(out.write(message).await),
        },
        None => None,
    };
    if let Some(pages) = pages {
        let result = CrawlResult::assemble(&summary, pages);
        let message = ServerMessage::result(
            client_job_id.clone(),
            record.spec.url.clone(),
            result,
            cached,
            record.elapsed_ms,
        );
        let json = message.to_json();
        if json.len() <= state.part_bytes {
            return sent(out.write_result(json).await);
        }
        // Too large for one message after all: in parts, from the store.
    }
    let head = ServerMessage::ResultHead {
        job_id: client_job_id.clone(),
        url: record.spec.url.clone(),
        depth: summary.depth,
        level_sizes: summary.level_sizes.clone(),
        page_count,
        truncated: summary.truncated,
        cached,
        elapsed_ms: record.elapsed_ms,
    };
    if !out.write(head).await {
        return Sent::Broken;
    }
    let mut parts = Parts::new(&client_job_id, state.part_bytes);
    let mut after = None;
    loop {
        let pages = match read_texts(state, &record, after.take()).await {
            Ok(pages) => pages,
            // The head went out; the client learns the rest failed.
            Err(message) => return unreadable(out.write(message).await),
        };
        let read_all = pages.len() < READ_PAGES as usize;
        after = pages.last().map(|p| (p.depth, p.url.clone()));
        for page in pages {
            if let Some(full) = parts.add(&page.json)
                && !out.write_part(full).await
            {
                return Sent::Broken;
            }
        }
        if read_all {
            break;
        }
    }
    sent(out.write_part(parts.finish()).await)
}

/// Pages read from the store at a time.
const READ_PAGES: u32 = 500;

/// Packs pages, in order, into `resultPart` messages of at most `bytes`
/// of JSON. The pages are the JSON text the store holds, put into each
/// message as they are: they are neither parsed nor written again.
struct Parts {
    /// The job id as a JSON string.
    job_id: String,
    bytes: usize,
    /// The pages of the part being filled, comma-separated.
    pages: String,
    part: u32,
}

impl Parts {
    fn new(job_id: &str, bytes: usize) -> Self {
        Self {
            job_id: serde_json::to_string(job_id).expect("a string is JSON"),
            bytes,
            pages: String::new(),
            part: 1,
        }
    }

    /// Adds a page's JSON; returns the part it filled, when it did.
    fn add(&mut self, page: &str) -> Option<String> {
        let page_size = page.len() + 1; // and its comma
        let full = (!self.pages.is_empty()
            && self.envelope() + self.pages.len() + page_size > self.bytes)
            .then(|| self.take(false));
        if !self.pages.is_empty() {
            self.pages.push(',');
        }
        self.pages.push_str(page);
        full
    }

    /// The last part.
    fn finish(mut self) -> String {
        self.take(true)
    }

    /// The part filled so far, as [`ServerMessage::ResultPart`] writes it.
    fn take(&mut self, last: bool) -> String {
        let json = format!(
            r#"{{"type":"resultPart","jobId":{},"part":{},"last":{last},"pages":[{}]}}"#,
            self.job_id, self.part, self.pages
        );
        self.pages.clear();
        self.part += 1;
        json
    }

    /// The JSON of a part around its pages: type, job id, part number and
    /// `last`, at their longest.
    fn envelope(&self) -> usize {
        r#"{"type":"resultPart","jobId":,"part":4294967295,"last":false,"pages":[]}"#.len()
            + self.job_id.len()
    }
}

/// The result's next pages from the store, or the error to send instead.
async fn read(
    state: &AppState,
    record: &JobRecord,
    after: Option<(u32, String)>,
) -> Result<Vec<PageFacts>, ServerMessage> {
    let store = &state.engines.store;
    let query = next_pages(record, after);
    let pages = store.read_pages(record.pages_job(), &query).await;
    pages.map_err(|e| unreadable_result(record, &e))
}

/// [`read`], as the JSON text the pages are stored in.
async fn read_texts(
    state: &AppState,
    record: &JobRecord,
    after: Option<(u32, String)>,
) -> Result<Vec<PageText>, ServerMessage> {
    let store = &state.engines.store;
    let query = next_pages(record, after);
    let pages = store.read_page_texts(record.pages_job(), &query).await;
    pages.map_err(|e| unreadable_result(record, &e))
}

/// The [`READ_PAGES`] pages of the result after `after`.
fn next_pages(record: &JobRecord, after: Option<(u32, String)>) -> PageQuery {
    PageQuery {
        max_depth: record.summary.as_ref().map_or(0, |s| s.depth),
        after,
        limit: READ_PAGES,
    }
}

fn unreadable_result(record: &JobRecord, e: &AdapterError) -> ServerMessage {
    ServerMessage::error(
        Some(record.spec.client_job_id.clone()),
        ErrorCode::Unavailable,
        format!("the result is stored but cannot be read now ({e}); ask again with `status`"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(i: usize, links: usize) -> PageFacts {
        PageFacts {
            url: format!("http://a.test/page-{i}"),
            depth: 1,
            status: Some(200),
            links: (0..links)
                .map(|l| format!("http://a.test/{i}/{l}"))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn parts_hold_every_page_in_order_and_stay_under_the_bound() {
        const BYTES: usize = 2_000;
        // Pages of 0 to 60 links, and one of 200 links, alone over the bound.
        let pages: Vec<PageFacts> = (0..300)
            .map(|i| page(i, if i == 150 { 200 } else { i % 61 }))
            .collect();
        let texts: Vec<String> = pages
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        let mut parts = Parts::new("job \"7\"", BYTES);
        let mut sent: Vec<String> = texts.iter().filter_map(|p| parts.add(p)).collect();
        sent.push(parts.finish());

        let mut again = Vec::new();
        for (at, json) in sent.iter().enumerate() {
            let message: ServerMessage = serde_json::from_str(json).expect("a message");
            let ServerMessage::ResultPart {
                job_id,
                part,
                last,
                pages,
            } = message
            else {
                panic!("a part: {json}");
            };
            assert_eq!((job_id.as_str(), part), ("job \"7\"", at as u32 + 1));
            assert_eq!(last, at + 1 == sent.len(), "only the final part is last");
            assert!(
                json.len() <= BYTES || pages.len() == 1,
                "part {part}: {} bytes in {} pages",
                json.len(),
                pages.len()
            );
            again.extend(pages);
        }
        assert_eq!(again, pages);
        assert!(sent.len() > 10, "{} parts", sent.len());
    }
}
