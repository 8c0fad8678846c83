//! What the gateway does with each client request: validate, answer from
//! the cache or queue, and answer `status` from the store; and what it owes
//! a client that comes back.

use std::time::Instant;

use crawler_core::ErrorCode;
use crawler_core::auth::Tenant;
use crawler_core::model::{
    CachedCrawl, CrawlOptions, HeadStart, JobId, JobRecord, JobSpec, JobState,
};
use crawler_core::ports::{AdapterResult, InsertOutcome};
use crawler_core::protocol::{ServerMessage, Submit};
use crawler_core::urls;
use tracing::Instrument;
use url::Url;

use crate::AppState;
use crate::delivery::{Duty, Outcome, Outgoing};
use crate::metrics::Metrics;
use crate::outbox;
use crate::quotas;
use crate::routes::Reach;

type Refusal = (ErrorCode, String);

/// Whose request it is: the key its jobs are stored under, and the tenant
/// whose quotas it counts against (none with `--auth none`).
pub struct Owner {
    pub key: String,
    pub tenant: Option<Tenant>,
}

/// Handles a submit in the span that starts the job's trace; every other
/// service's work on the job is a child of it.
pub async fn submit(
    state: &AppState,
    owner: &Owner,
    request: Submit,
    client: &mut dyn Reach,
) -> Vec<Outgoing> {
    let span = tracing::info_span!(
        "job.accept",
        client_job_id = %request.job_id,
        job_id = tracing::field::Empty
    );
    accept(state, owner, request, client).instrument(span).await
}

async fn accept(
    state: &AppState,
    owner: &Owner,
    request: Submit,
    client: &mut dyn Reach,
) -> Vec<Outgoing> {
    let started = Instant::now();
    let job_id = request.job_id.clone();
    let refuse = |(code, message): Refusal| {
        vec![Outgoing::message(ServerMessage::error(
            Some(job_id.clone()),
            code,
            message,
        ))]
    };

    let url = match urls::parse_absolute(&request.url) {
        Ok(url) => url,
        Err(e) => return refuse((e.code(), e.to_string())),
    };
    if let Err(refusal) = check_network(state, &url).await {
        return refuse(refusal);
    }
    let mut allowed_hosts = request.allowed_hosts;
    allowed_hosts.sort();
    allowed_hosts.dedup();
    let client_id = owner.key.as_str();
    let usage = match &owner.tenant {
        Some(tenant) => match tenant_usage(state, tenant).await {
            Ok(usage) => Some(usage),
            Err(refusal) => return refuse(refusal),
        },
        None => None,
    };
    let over_quota = |crawls: bool| {
        usage
            .as_ref()
            .and_then(|usage| state.quotas.refusal(usage, crawls))
            .map(|message| {
                Metrics::inc(&state.metrics.quota_exceeded);
                (ErrorCode::QuotaExceeded, message)
            })
    };
    if let Some(refusal) = over_quota(false) {
        return refuse(refusal);
    }
    let spec = JobSpec {
        job_id: JobId::new_random(),
        client_id: client_id.to_string(),
        client_job_id: request.job_id.clone(),
        url: url.to_string(),
        depth: request.depth,
        options: CrawlOptions {
            allowed_hosts,
            include_subdomains: request.include_subdomains,
            max_pages: request.max_pages,
            spider_version: spider_version(state, request.spider.as_deref()).await,
            spider: request.spider,
            respect_robots: request.respect_robots,
            warc: request.warc,
        },
        gateway_key: state.gateway_key.clone(),
        accepted_at_ms: crawler_core::now_ms(),
        trace: crawler_core::trace::current(),
    };
    tracing::Span::current().record("job_id", tracing::field::display(&spec.job_id));
    let accepted = ServerMessage::Accepted {
        job_id: request.job_id.clone(),
        url: spec.url.clone(),
        depth: spec.depth,
    };

    // The cache first: a crawl as deep or deeper answers at once, no master involved.
    let key = urls::cache_key(&spec.url, &spec.options);
    let cached = if spec.options.cacheable() {
        state.engines.cache.get(&key).await
    } else {
        Ok(None)
    };
    let mut head_start = None;
    match cached {
        Ok(Some(cached)) if cached.summary.depth >= spec.depth => {
            let cached = cached.trimmed_to(spec.depth);
            return match state.engines.store.insert_done(&spec, &cached).await {
                Ok(InsertOutcome::Created) => {
                    Metrics::inc(&state.metrics.cache_hits);
                    Metrics::inc(&state.metrics.jobs_accepted);
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    let (record, pages) = answered_from_cache(spec, cached, elapsed_ms);
                    vec![
                        Outgoing::message(accepted),
                        Outgoing::outcome(Outcome {
                            record,
                            pages,
                            cached: true,
                            // Recorded as delivered when it was inserted.
                            duty: Duty::Claimed,
                        }),
                    ]
                }
                Ok(InsertOutcome::Exists(existing)) => {
                    attach(state, &spec, *existing, client).await
                }
                Err(e) => refuse((
                    ErrorCode::Unavailable,
                    format!("job store unavailable: {e}"),
                )),
            };
        }
        // A shallower crawl: its levels are a head start.
        Ok(Some(cached)) => head_start = HeadStart::of(&cached, &spec),
        Ok(None) => {}
        // A cache outage costs a crawl, not the job.
        Err(e) => tracing::warn!(error = %e, "cache unavailable; crawling instead"),
    }

    if let Some(refusal) = over_quota(true) {
        return refuse(refusal);
    }
    // A crawl is work for the cluster: one client may have only so many.
    match state.engines.store.unfinished_jobs(client_id).await {
        Ok(running) if running >= state.conn.max_running_jobs => {
            Metrics::inc(&state.metrics.rate_limited);
            return refuse((
                ErrorCode::RateLimited,
                format!(
                    "you have {running} unfinished jobs, the most one client may have; submit again when one ends"
                ),
            ));
        }
        Ok(_) => {}
        Err(e) => {
            return refuse((
                ErrorCode::Unavailable,
                format!("job store unavailable: {e}"),
            ));
        }
    }
    // Route before publishing, so even an instant result finds its connection.
    state.routes.insert(spec.job_id.clone(), client.handle());
    match record_job(state, &spec, head_start.as_ref()).await {
        Ok(InsertOutcome::Created) => {}
        Ok(InsertOutcome::Exists(existing)) => {
            state.routes.take(&spec.job_id);
            return attach(state, &spec, *existing, client).await;
        }
        Err(e) => {
            state.routes.take(&spec.job_id);
            return refuse((
                ErrorCode::Unavailable,
                format!("job store unavailable: {e}"),
            ));
        }
    }
    // The job is durable from here, so it is accepted whatever the queue
    // says: if this publish fails, the outbox publishes it later.
    let published = match outbox::publish(state, &spec).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(job_id = %spec.job_id, error = %e, "cannot publish the job now; the outbox will");
            false
        }
    };
    Metrics::inc(&state.metrics.jobs_accepted);
    tracing::info!(job_id = %spec.job_id, client_job_id = %request.job_id, url = %spec.url, depth = spec.depth, published, "job accepted");
    vec![Outgoing::message(accepted)]
}

/// Records a job to crawl: from a head start when it has one whose pages
/// are all still stored, from the start otherwise.
async fn record_job(
    state: &AppState,
    spec: &JobSpec,
    head_start: Option<&HeadStart>,
) -> AdapterResult<InsertOutcome> {
    let store = &state.engines.store;
    if let Some(head) = head_start {
        if let Some(outcome) = store.insert_head_start(spec, head).await? {
            if matches!(outcome, InsertOutcome::Created) {
                Metrics::inc(&state.metrics.head_starts);
                tracing::info!(job_id = %spec.job_id, from = %head.from, levels_done = head.levels_done, "job starts from a shallower cached crawl");
            }
            return Ok(outcome);
        }
        tracing::info!(job_id = %spec.job_id, from = %head.from, "the cached crawl's pages are gone; crawling from the start");
    }
    store.insert_job(spec).await
}

/// The version of the spider a job names, as file-sync has it now; `None`
/// when the job names none, or when it cannot be learned (no file-sync
/// configured, or it did not answer), so the job bypasses the cache.
async fn spider_version(state: &AppState, spider: Option<&str>) -> Option<String> {
    let (spider, versions) = (spider?, state.spider_versions.as_ref()?);
    match versions.current(spider).await {
        Ok(version) => Some(version),
        Err(e) => {
            tracing::warn!(spider, error = %e, "cannot learn the spider's version; crawling without the cache");
            None
        }
    }
}

/// What the tenant's jobs use now, as its quotas count it.
async fn tenant_usage(
    state: &AppState,
    tenant: &Tenant,
) -> Result<crawler_core::auth::TenantUsage, Refusal> {
    let now = crawler_core::now_ms();
    state
        .engines
        .store
        .tenant_usage(
            tenant,
            now.saturating_sub(quotas::HOUR_MS),
            now.saturating_sub(quotas::DAY_MS),
        )
        .await
        .map_err(|e| {
            (
                ErrorCode::Unavailable,
                format!("job store unavailable: {e}"),
            )
        })
}

/// The record of a job answered from the cache, as it was inserted, and
/// the cached pages when the cache kept them.
fn answered_from_cache(
    spec: JobSpec,
    cached: CachedCrawl,
    elapsed_ms: u64,
) -> (JobRecord, Option<Vec<crawler_core::model::PageFacts>>) {
    let record = JobRecord {
        pages_done: u32::try_from(cached.summary.page_count()).unwrap_or(u32::MAX),
        current_depth: cached.summary.depth,
        state: JobState::Done,
        summary: Some(cached.summary),
        failure: None,
        elapsed_ms,
        pages_of: Some(cached.job_id),
        delivered: true,
        spec,
    };
    (record, cached.pages)
}

/// A submit with a job id this client used before. The same request again
/// (a retry after a lost answer or a reconnect) attaches to the job: the
/// client gets `accepted`, then the result, here. A different request with
/// that id is a mistake, refused as `duplicate_job`.
async fn attach(
    state: &AppState,
    asked: &JobSpec,
    existing: JobRecord,
    client: &mut dyn Reach,
) -> Vec<Outgoing> {
    let same_request = existing.spec.url == asked.url
        && existing.spec.depth == asked.depth
        && existing.spec.options.asks_same_as(&asked.options);
    if !same_request {
        return vec![Outgoing::message(ServerMessage::error(
            Some(asked.client_job_id.clone()),
            ErrorCode::DuplicateJob,
            duplicate(&asked.client_job_id).1,
        ))];
    }
    Metrics::inc(&state.metrics.jobs_attached);
    let accepted = Outgoing::message(ServerMessage::Accepted {
        job_id: existing.spec.client_job_id.clone(),
        url: existing.spec.url.clone(),
        depth: existing.spec.depth,
    });
    if existing.state.is_final() {
        return vec![accepted, answer(existing)];
    }
    match follow(state, &existing, client).await {
        Some(finished) => vec![accepted, answer(finished)],
        None => vec![accepted],
    }
}

/// A finished job's outcome, asked for.
fn answer(record: JobRecord) -> Outgoing {
    Outgoing::outcome(Outcome {
        record,
        pages: None,
        cached: false,
        duty: Duty::Answer,
    })
}

/// Sends a running job's events to this connection: through this gateway's
/// routes, and, when another gateway accepted the job, by pointing the job
/// at this gateway in the store, where its master reads where to publish.
/// The job may have finished meanwhile, its end published to the gateway
/// it pointed at before: then its finished record is returned, for the
/// caller to send here as a push or as an answer.
async fn follow(state: &AppState, record: &JobRecord, client: &mut dyn Reach) -> Option<JobRecord> {
    let job_id = &record.spec.job_id;
    state.routes.insert(job_id.clone(), client.handle());
    if record.spec.gateway_key == state.gateway_key {
        return None;
    }
    if let Err(e) = state
        .engines
        .store
        .reroute(job_id, &state.gateway_key)
        .await
    {
        tracing::warn!(%job_id, error = %e, "cannot point the job at this gateway; `status` still answers");
        return None;
    }
    match state.engines.store.get(job_id).await {
        Ok(Some(now)) if now.state.is_final() => {
            state.routes.take(job_id);
            Some(now)
        }
        _ => None,
    }
}

/// What a client that comes back is owed: the outcomes of its jobs that
/// finished while it was away, and the progress of those still running
/// (whose events now come here).
pub async fn owed_to(state: &AppState, client_id: &str, client: &mut dyn Reach) -> Vec<Outgoing> {
    let open = match state.engines.store.open_jobs(client_id, OWED_AT_ONCE).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(client_id, error = %e, "cannot read a returning client's jobs; it can ask `status`");
            return Vec::new();
        }
    };
    let mut owed = Vec::with_capacity(open.len());
    for record in open {
        if record.state.is_final() {
            owed.push(push(record));
            continue;
        }
        owed.push(Outgoing::message(ServerMessage::Progress {
            job_id: record.spec.client_job_id.clone(),
            pages_done: record.pages_done,
            current_depth: record.current_depth,
        }));
        owed.extend(follow(state, &record, client).await.map(push));
    }
    owed
}

/// A finished job's outcome, sent unasked.
fn push(record: JobRecord) -> Outgoing {
    Outgoing::outcome(Outcome {
        record,
        pages: None,
        cached: false,
        duty: Duty::Push,
    })
}

/// A returning client's open jobs handled at its connection; more (a client
/// with thousands of jobs in flight) are answered by `status`.
const OWED_AT_ONCE: u32 = 1_000;

fn duplicate(job_id: &str) -> Refusal {
    (
        ErrorCode::DuplicateJob,
        format!(
            "you already submitted job `{job_id}`; ask for it with {{\"type\":\"status\",\"jobId\":\"{job_id}\"}} or use a new id"
        ),
    )
}

/// The gateway refuses what no worker would fetch, before queueing it.
async fn check_network(state: &AppState, url: &Url) -> Result<(), Refusal> {
    let forbidden = |e: crawler_core::net_policy::ForbiddenAddress| {
        (ErrorCode::ForbiddenAddress, format!("{url}: {e}"))
    };
    if let Some(ip) = crawler_core::net_policy::literal_ip(url) {
        return state.policy.check(ip).map_err(forbidden);
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let lookup = tokio::time::timeout(
        state.resolve_timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await;
    let addrs: Vec<_> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            return Err((
                ErrorCode::UnresolvableHost,
                format!("cannot resolve `{host}`: {e}"),
            ));
        }
        Err(_) => {
            return Err((
                ErrorCode::UnresolvableHost,
                format!("resolving `{host}` timed out"),
            ));
        }
    };
    if addrs.is_empty() {
        return Err((
            ErrorCode::UnresolvableHost,
            format!("`{host}` has no addresses"),
        ));
    }
    for addr in addrs {
        state.policy.check(addr.ip()).map_err(forbidden)?;
    }
    Ok(())
}

pub async fn status(
    state: &AppState,
    client_id: &str,
    client_job_id: String,
    client: &mut dyn Reach,
) -> Outgoing {
    match state
        .engines
        .store
        .find_by_client(client_id, &client_job_id)
        .await
    {
        Ok(Some(record)) if record.state.is_final() => answer(record),
        Ok(Some(record)) => {
            // The client may be on a new connection: send the result there.
            match follow(state, &record, client).await {
                Some(finished) => answer(finished),
                None => Outgoing::message(status_message(&record)),
            }
        }
        Ok(None) => Outgoing::message(ServerMessage::error(
            Some(client_job_id.clone()),
            ErrorCode::UnknownJob,
            format!(
                "no job `{client_job_id}` was submitted by this client (reconnect with the same ?clientId= to see earlier jobs)"
            ),
        )),
        Err(e) => Outgoing::message(ServerMessage::error(
            Some(client_job_id),
            ErrorCode::Unavailable,
            format!("job store unavailable: {e}"),
        )),
    }
}

/// Where an unfinished job stands, as its client sees it.
fn status_message(record: &JobRecord) -> ServerMessage {
    ServerMessage::Status {
        job_id: record.spec.client_job_id.clone(),
        state: record.state.as_str().to_string(),
        pages_done: record.pages_done,
        current_depth: record.current_depth,
    }
}
