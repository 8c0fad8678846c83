//! What the gateway does with each client request: validate, answer from
//! the cache or queue, and answer `status` from the store.

use std::time::Instant;

use crawler_core::ErrorCode;
use crawler_core::model::{CrawlOptions, JobId, JobRecord, JobSpec, JobState};
use crawler_core::ports::InsertOutcome;
use crawler_core::protocol::{ServerMessage, Submit};
use crawler_core::urls;
use url::Url;

use crate::AppState;
use crate::metrics::Metrics;
use crate::routes::ClientTx;

type Refusal = (ErrorCode, String);

pub async fn submit(
    state: &AppState,
    client_id: &str,
    request: Submit,
    tx: &ClientTx,
) -> Vec<ServerMessage> {
    let started = Instant::now();
    let job_id = request.job_id.clone();
    let refuse =
        |(code, message): Refusal| vec![ServerMessage::error(Some(job_id.clone()), code, message)];

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
            spider: request.spider,
        },
        gateway_key: state.gateway_key.clone(),
        accepted_at_ms: crawler_core::now_ms(),
    };
    let accepted = ServerMessage::Accepted {
        job_id: request.job_id.clone(),
        url: spec.url.clone(),
        depth: spec.depth,
    };

    // The cache first: a crawl as deep or deeper answers at once, no master involved.
    let key = urls::cache_key(&spec.url, &spec.options);
    match state.engines.cache.get(&key).await {
        Ok(Some(cached)) if cached.depth >= spec.depth => {
            let result = cached.trimmed_to(spec.depth);
            return match state.engines.store.insert_done(&spec, &result).await {
                Ok(InsertOutcome::Created) => {
                    Metrics::inc(&state.metrics.cache_hits);
                    Metrics::inc(&state.metrics.jobs_accepted);
                    let elapsed = started.elapsed().as_millis() as u64;
                    vec![
                        accepted,
                        ServerMessage::result(request.job_id, spec.url, result, true, elapsed),
                    ]
                }
                Ok(InsertOutcome::Exists(_)) => refuse(duplicate(&request.job_id)),
                Err(e) => refuse((
                    ErrorCode::Unavailable,
                    format!("job store unavailable: {e}"),
                )),
            };
        }
        Ok(_) => {}
        // A cache outage costs a crawl, not the job.
        Err(e) => tracing::warn!(error = %e, "cache unavailable; crawling instead"),
    }

    // Route before publishing, so even an instant result finds its connection.
    state
        .routes
        .insert(spec.job_id.clone(), client_id.to_string(), tx.clone());
    match state.engines.store.insert_job(&spec).await {
        Ok(InsertOutcome::Created) => {}
        Ok(InsertOutcome::Exists(_)) => {
            state.routes.take(&spec.job_id);
            return refuse(duplicate(&request.job_id));
        }
        Err(e) => {
            state.routes.take(&spec.job_id);
            return refuse((
                ErrorCode::Unavailable,
                format!("job store unavailable: {e}"),
            ));
        }
    }
    let payload = serde_json::to_vec(&spec).expect("job specs serialise");
    if let Err(e) = state.engines.queue.publish_job(payload).await {
        state.routes.take(&spec.job_id);
        return refuse((
            ErrorCode::Unavailable,
            format!("job queue unavailable: {e}"),
        ));
    }
    Metrics::inc(&state.metrics.jobs_published);
    Metrics::inc(&state.metrics.jobs_accepted);
    tracing::info!(job_id = %spec.job_id, client_job_id = %request.job_id, url = %spec.url, depth = spec.depth, "job queued");
    vec![accepted]
}

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
    tx: &ClientTx,
) -> ServerMessage {
    match state
        .engines
        .store
        .find_by_client(client_id, &client_job_id)
        .await
    {
        Ok(Some(record)) => {
            if !record.state.is_final() {
                // The client may be on a new connection: send the result there.
                state.routes.reattach(&record.spec.job_id, client_id, tx);
            }
            record_message(record)
        }
        Ok(None) => ServerMessage::error(
            Some(client_job_id.clone()),
            ErrorCode::UnknownJob,
            format!(
                "no job `{client_job_id}` was submitted by this client (reconnect with the same ?clientId= to see earlier jobs)"
            ),
        ),
        Err(e) => ServerMessage::error(
            Some(client_job_id),
            ErrorCode::Unavailable,
            format!("job store unavailable: {e}"),
        ),
    }
}

/// How a stored job looks to its client.
pub fn record_message(record: JobRecord) -> ServerMessage {
    let client_job_id = record.spec.client_job_id.clone();
    match (record.state, record.result, record.failure) {
        (JobState::Done, Some(result), _) => ServerMessage::result(
            client_job_id,
            record.spec.url,
            result,
            false,
            record.elapsed_ms,
        ),
        (JobState::Failed, _, Some(failure)) => {
            ServerMessage::error(Some(client_job_id), failure.code, failure.message)
        }
        (state, _, _) => ServerMessage::Status {
            job_id: client_job_id,
            state: state.as_str().to_string(),
            pages_done: record.pages_done,
            current_depth: record.current_depth,
        },
    }
}
