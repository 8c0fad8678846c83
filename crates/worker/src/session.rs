//! One worker's stream to one master: register, grant credit, run batches,
//! and reconnect with backoff and jitter when the stream drops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use crawler_proto::v1::{
    self, BatchProgress, BatchResult, Credit, Draining, MasterMessage, Register, WorkerMessage,
    master_message, master_service_client::MasterServiceClient, worker_message,
};
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;
use url::Url;

use crawler_core::retry::RetryPolicy;
use crawler_core::tls::GrpcSecurity;

use crate::fetch::Fetcher;
use crate::polite::{Admission, Politeness};
use crate::spider::SpiderCache;
use crate::warc::{RawResponse, WarcArchive};

/// How long a stopping worker waits for batches in flight before leaving.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping worker waits for its master to read the last results.
const STREAM_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SessionConfig {
    /// The URL of one master's address.
    pub master: String,
    /// The name that address was resolved from: the master's certificate
    /// must carry it.
    pub master_name: String,
    pub security: GrpcSecurity,
    pub worker_id: String,
    /// Batches this worker runs at once for this master: its credit.
    pub credit: u32,
    /// Pages fetched at once within a batch.
    pub fetch_concurrency: usize,
    pub reconnect: RetryPolicy,
    /// HTTP/2 ping interval, and how long an unanswered ping is waited for.
    pub keepalive: Duration,
    /// How often a running batch that fetched more pages says so.
    pub batch_progress: Duration,
    /// How long registering may take before this try is given up.
    pub register_timeout: Duration,
    /// How many of this worker's sessions are registered now (readiness).
    pub registered: Arc<AtomicUsize>,
    /// Told when a registered stream ends: the master may have moved.
    pub lost: Arc<Notify>,
}

/// Keeps a session with one master alive until `shutdown`.
pub async fn run(config: SessionConfig, crawling: Crawling, shutdown: CancellationToken) {
    let mut backoff = config.reconnect.backoff();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match run_once(&config, &crawling, &shutdown).await {
            Ok(()) => return,
            Err(SessionEnd::Registered(reason)) => {
                // A session that got as far as registering was healthy: start over gently.
                tracing::warn!(master = %config.master, %reason, "stream to master ended; reconnecting");
                config.lost.notify_one();
                backoff.reset();
            }
            Err(SessionEnd::NotRegistered(reason)) => {
                tracing::warn!(master = %config.master, %reason, "cannot reach master; retrying");
            }
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

enum SessionEnd {
    NotRegistered(String),
    Registered(String),
}

/// What a worker crawls with, shared by its sessions.
#[derive(Clone)]
pub struct Crawling {
    pub fetcher: Arc<Fetcher>,
    pub spiders: Arc<SpiderCache>,
    pub politeness: Arc<Politeness>,
    /// Where WARC records go, when this worker keeps them.
    pub warc: Option<Arc<WarcArchive>>,
}

async fn run_once(
    config: &SessionConfig,
    crawling: &Crawling,
    shutdown: &CancellationToken,
) -> Result<(), SessionEnd> {
    let (tx, rx) = mpsc::channel::<WorkerMessage>(64);
    // Readiness is proven by the master's answer, not by the connection
    // alone; a try that does not get that answer in time is given up and
    // made again, never waited on for ever.
    let mut inbound = tokio::time::timeout(config.register_timeout, register(config, &tx, rx))
        .await
        .map_err(|_| {
            SessionEnd::NotRegistered(format!(
                "no registration within {:?}",
                config.register_timeout
            ))
        })??;
    let _registration = Registration::enter(&config.registered);
    send(
        &tx,
        worker_message::Msg::Credit(Credit {
            amount: config.credit,
        }),
    )
    .await;

    let batches = TaskTracker::new();
    let running = Arc::new(Running::default());
    // Stopped when dropped, so every way out of this session stops it.
    let reporter = AbortOnDropHandle::new(tokio::spawn(report_progress(
        running.clone(),
        config.batch_progress,
        tx.clone(),
    )));
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            message = inbound.next() => match message {
                Some(Ok(MasterMessage { msg: Some(master_message::Msg::Batch(batch)) })) => {
                    let (tx, crawling, per_batch) = (tx.clone(), crawling.clone(), config.fetch_concurrency);
                    let started = Running::start(&running, batch.batch_id);
                    crate::metrics::batch_run();
                    batches.spawn(async move {
                        let result = run_batch(batch, &crawling, per_batch, &started.done).await;
                        drop(started);
                        send(&tx, worker_message::Msg::Result(result)).await;
                        send(&tx, worker_message::Msg::Credit(Credit { amount: 1 })).await;
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(status)) => break Err(SessionEnd::Registered(status.message().to_string())),
                None => break Err(SessionEnd::Registered("master closed the stream".into())),
            }
        }
    };
    if outcome.is_ok() {
        // Graceful stop: tell the master to send nothing more, finish what we hold.
        send(&tx, worker_message::Msg::Draining(Draining {})).await;
        batches.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, batches.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "batches still running after the drain timeout; the master will re-dispatch them"
            );
        }
        // End our half of the stream only now, and wait for the master to end
        // its half: dropping the call at once could lose results still queued.
        drop(reporter); // it holds a sender too
        drop(tx);
        let master_done = async { while inbound.next().await.is_some() {} };
        if tokio::time::timeout(STREAM_CLOSE_TIMEOUT, master_done)
            .await
            .is_err()
        {
            tracing::warn!("master did not close the stream; leaving anyway");
        }
    }
    outcome
}

/// Connects and registers: the master's `Registered` answer proves this
/// worker can be given batches.
async fn register(
    config: &SessionConfig,
    tx: &mpsc::Sender<WorkerMessage>,
    rx: mpsc::Receiver<WorkerMessage>,
) -> Result<tonic::Streaming<MasterMessage>, SessionEnd> {
    let endpoint = config
        .security
        .endpoint_named(&config.master, Some(&config.master_name))
        .map_err(|e| SessionEnd::NotRegistered(format!("bad master address: {e}")))?
        .connect_timeout(config.register_timeout)
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_timeout(config.keepalive)
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| SessionEnd::NotRegistered(e.to_string()))?;
    let mut client = MasterServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    send(
        tx,
        worker_message::Msg::Register(Register {
            worker_id: config.worker_id.clone(),
            protocol_version: crawler_proto::WORK_PROTOCOL_VERSION,
        }),
    )
    .await;
    let mut inbound = client
        .work(ReceiverStream::new(rx))
        .await
        .map_err(|e| SessionEnd::NotRegistered(e.message().to_string()))?
        .into_inner();
    match inbound.next().await {
        Some(Ok(MasterMessage {
            msg: Some(master_message::Msg::Registered(r)),
        })) => {
            tracing::info!(master = %config.master, master_id = %r.master_id, "registered with master");
            Ok(inbound)
        }
        Some(Ok(_)) => Err(SessionEnd::NotRegistered(
            "master did not confirm registration".into(),
        )),
        Some(Err(status)) => Err(SessionEnd::NotRegistered(status.message().to_string())),
        None => Err(SessionEnd::NotRegistered("master closed the stream".into())),
    }
}

/// Counts this session among the registered ones while it lives.
struct Registration<'a>(&'a AtomicUsize);

impl<'a> Registration<'a> {
    fn enter(registered: &'a AtomicUsize) -> Self {
        let now = registered.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::masters_registered(now);
        Self(registered)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::masters_registered(now);
    }
}

async fn send(tx: &mpsc::Sender<WorkerMessage>, msg: worker_message::Msg) {
    // A closed channel means the stream is gone; the session loop notices that itself.
    let _ = tx.send(WorkerMessage { msg: Some(msg) }).await;
}

/// The batches running on one stream, and the pages each has fetched.
#[derive(Default)]
struct Running {
    batches: std::sync::Mutex<HashMap<u64, Arc<AtomicU32>>>,
}

/// A batch counted as running until it is dropped.
struct Started {
    running: Arc<Running>,
    batch_id: u64,
    done: Arc<AtomicU32>,
}

impl Running {
    fn start(running: &Arc<Self>, batch_id: u64) -> Started {
        let done = Arc::new(AtomicU32::new(0));
        running.lock().insert(batch_id, done.clone());
        Started {
            running: running.clone(),
            batch_id,
            done,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU32>>> {
        self.batches.lock().expect("running batches lock poisoned")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.running.lock().remove(&self.batch_id);
    }
}

/// Every `every`, tells the master of each running batch that fetched more
/// pages since it last said so; a batch that fetched nothing says nothing,
/// so a stuck one still passes its deadline. One ticker per stream, so a
/// batch costs no timer of its own.
async fn report_progress(running: Arc<Running>, every: Duration, tx: mpsc::Sender<WorkerMessage>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is at once
    let mut reported: HashMap<u64, u32> = HashMap::new();
    loop {
        ticks.tick().await;
        let advanced: Vec<BatchProgress> = {
            let batches = running.lock();
            reported.retain(|batch_id, _| batches.contains_key(batch_id));
            batches
                .iter()
                .filter_map(|(&batch_id, done)| {
                    let pages_done = done.load(Ordering::Relaxed);
                    let last = reported.entry(batch_id).or_insert(0);
                    (pages_done > *last).then(|| {
                        *last = pages_done;
                        BatchProgress {
                            batch_id,
                            pages_done,
                        }
                    })
                })
                .collect()
        };
        for progress in advanced {
            send(&tx, worker_message::Msg::Progress(progress)).await;
        }
    }
}

/// Runs a batch in a span of its job's trace (the master sends the context).
async fn run_batch(
    batch: v1::Batch,
    crawling: &Crawling,
    concurrency: usize,
    done: &AtomicU32,
) -> BatchResult {
    let span = tracing::info_span!(
        "batch",
        job_id = %batch.job_id,
        depth = batch.depth,
        urls = batch.urls.len()
    );
    let parent: crawler_core::trace::TraceContext = batch.trace.clone().into_iter().collect();
    crawler_core::trace::set_parent(&span, &parent);
    fetch_batch(batch, crawling, concurrency, done)
        .instrument(span)
        .await
}

async fn fetch_batch(
    batch: v1::Batch,
    crawling: &Crawling,
    concurrency: usize,
    done: &AtomicU32,
) -> BatchResult {
    let Crawling {
        fetcher,
        spiders,
        politeness,
        warc,
    } = crawling;
    let depth = batch.depth;
    let respect_robots = !batch.options.as_ref().is_some_and(|o| o.ignore_robots);
    let refuse = |reason: String| {
        tracing::warn!(job_id = %batch.job_id, error = %reason, "batch refused");
        BatchResult {
            batch_id: batch.batch_id,
            pages: Vec::new(),
            failure: Some(reason),
            page_cap: None,
        }
    };
    // A job that asked for WARC records must not run without them.
    let archive = match (batch.options.as_ref().is_some_and(|o| o.warc), warc) {
        (false, _) => None,
        (true, Some(archive)) => Some(archive),
        (true, None) => {
            return refuse(
                "the job asks for WARC records, and this worker keeps none (start it with --warc-dir)"
                    .into(),
            );
        }
    };
    let spider_name = batch
        .options
        .as_ref()
        .map(|o| o.spider.as_str())
        .unwrap_or_default();
    let rules = if spider_name.is_empty() {
        None
    } else {
        match spiders.rules_for(&batch.job_id, spider_name).await {
            Ok(rules) => Some(rules),
            // Without its spider the job must not run at all: fetch nothing.
            Err(e) => return refuse(e.to_string()),
        }
    };
    let rules = rules.as_deref();
    // A spider's delay makes its fetches sequential, paced by that delay.
    let delay = rules.map(|r| r.delay).unwrap_or_default();
    let concurrency = if delay.is_zero() {
        concurrency.max(1)
    } else {
        1
    };
    let keep = archive.is_some();
    let fetched: Vec<(v1::PageFacts, Option<RawResponse>)> =
        futures::stream::iter(batch.urls.into_iter().enumerate())
            .map(|(i, raw)| async move {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match Url::parse(&raw) {
                    Ok(url) => {
                        let (facts, kept) = polite_fetch(
                            fetcher,
                            politeness,
                            &url,
                            depth,
                            rules,
                            respect_robots,
                            keep,
                        )
                        .await;
                        (v1::PageFacts::from(&facts), kept)
                    }
                    Err(e) => {
                        let facts = crawler_core::model::PageFacts {
                            url: raw,
                            depth,
                            error: Some(format!("invalid URL: {e}")),
                            ..Default::default()
                        };
                        (v1::PageFacts::from(&facts), None)
                    }
                }
            })
            .buffered(concurrency)
            .inspect(|_| {
                done.fetch_add(1, Ordering::Relaxed);
            })
            .collect()
            .await;
    let (pages, kept): (Vec<_>, Vec<_>) = fetched.into_iter().unzip();
    if let Some(archive) = archive {
        // Written before the result is sent: the records are on disk once
        // the job is complete.
        let responses: Vec<RawResponse> = kept.into_iter().flatten().collect();
        let (archive, job_id) = (archive.clone(), batch.job_id.clone());
        let written = tokio::task::spawn_blocking(move || archive.append(&job_id, &responses))
            .await
            .map_err(|e| e.to_string())
            .and_then(|appended| appended.map_err(|e| e.to_string()));
        if let Err(e) = written {
            return refuse(format!("cannot write the WARC records: {e}"));
        }
    }
    BatchResult {
        batch_id: batch.batch_id,
        pages,
        failure: None,
        page_cap: rules.and_then(|r| r.max_pages),
    }
}

/// Fetches one page within its host's limits: not at all when robots.txt
/// refuses it, and once more after the pause a 429 or 503 asked for.
async fn polite_fetch(
    fetcher: &Fetcher,
    politeness: &Politeness,
    url: &Url,
    depth: u32,
    rules: Option<&crate::spider::SpiderRules>,
    respect_robots: bool,
    keep: bool,
) -> (crawler_core::model::PageFacts, Option<RawResponse>) {
    let agent = rules
        .and_then(|r| r.user_agent.as_deref())
        .unwrap_or(fetcher.user_agent());
    let mut tries = 0;
    loop {
        tries += 1;
        let slot = match politeness.admit(fetcher, url, agent, respect_robots).await {
            Admission::Enter(slot) => slot,
            Admission::Refused(reason) => {
                crate::metrics::page_refused();
                let refused = crawler_core::model::PageFacts {
                    url: url.to_string(),
                    depth,
                    refused: Some(reason),
                    ..Default::default()
                };
                return (refused, None);
            }
        };
        let fetched = fetcher.fetch_page(url, depth, rules, keep).await;
        slot.leave().await;
        let Some(asked) = fetched.retry_after else {
            return (fetched.facts, fetched.raw);
        };
        crate::metrics::host_paused();
        let paused = politeness.pause(url, asked).await;
        tracing::info!(%url, ?paused, "the host asked for a pause");
        if tries > 1 || paused < asked {
            // Asked twice, or for longer than we wait: the answer stands.
            return (fetched.facts, fetched.raw);
        }
    }
}
