//! Fetching one page safely: a pooled HTTP client whose resolver enforces
//! the network policy on resolved addresses (so DNS cannot smuggle a request
//! to 127.0.0.1), every redirect hop re-checked, timeouts, and a body cap
//! that also bounds what decompression may produce.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crawler_core::model::PageFacts;
use crawler_core::net_policy::{NetworkPolicy, literal_ip};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use crate::extract::LinkExtractor;
use crate::spider::SpiderRules;
use crate::warc::RawResponse;

#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_redirects: usize,
    pub max_body_bytes: u64,
    pub user_agent: String,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 5,
            max_body_bytes: 5 * 1024 * 1024,
            user_agent: concat!("crawler/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// robots.txt bodies are read up to this (RFC 9309 asks for at least 500 KiB).
const ROBOTS_BODY_CAP: usize = 512 * 1024;

/// What asking for robots.txt gave.
#[derive(Debug)]
pub enum RobotsAnswer {
    /// A 2xx answer's body, cut at [`ROBOTS_BODY_CAP`].
    Body(Vec<u8>),
    /// Any other status, after redirects.
    Status(u16),
    /// No answer: the reason.
    Failed(String),
}

/// A page's facts, and how long its host asked us to wait (a 429 or 503
/// with `Retry-After`).
#[derive(Debug)]
pub struct Fetched {
    pub facts: PageFacts,
    pub retry_after: Option<Duration>,
    /// The response as read, when it was asked to be kept and was read whole
    /// (up to the body cap).
    pub raw: Option<RawResponse>,
}

pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<NetworkPolicy>,
    max_body_bytes: u64,
    user_agent: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Fetcher {
    pub fn new(config: &FetchConfig, policy: NetworkPolicy) -> Result<Self, FetcherError> {
        // reqwest is built without a default crypto provider.
        crawler_core::tls::install_crypto_provider();
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            // No cap on idle connections per host (they close after 90 s
            // idle): a cap below the fetches in flight to one host closed
            // the extra connections at every lull between batches, and one
            // fetch in four opened a new connection.
            .no_proxy()
            .redirect(redirect_policy(config.max_redirects, policy.clone()))
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .build()?;
        Ok(Self {
            client,
            policy,
            max_body_bytes: config.max_body_bytes,
            user_agent: config.user_agent.clone(),
        })
    }

    /// The User-Agent sent when a spider sets none.
    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    /// Fetches `url` and reports what happened; failures are facts, not errors.
    /// A spider sets the user agent, the fields to extract and which links count.
    pub async fn fetch(&self, url: &Url, depth: u32, spider: Option<&SpiderRules>) -> PageFacts {
        self.fetch_page(url, depth, spider, false).await.facts
    }

    /// [`Fetcher::fetch`], with the host's `Retry-After` when it sent one,
    /// and the response itself when `keep` asks for it (for WARC records).
    pub async fn fetch_page(
        &self,
        url: &Url,
        depth: u32,
        spider: Option<&SpiderRules>,
        keep: bool,
    ) -> Fetched {
        let started = Instant::now();
        let mut facts = PageFacts {
            url: url.to_string(),
            depth,
            ..Default::default()
        };
        if let Err(reason) = check_literal_host(url, &self.policy) {
            facts.error = Some(reason);
            return Fetched {
                facts,
                retry_after: None,
                raw: None,
            };
        }
        let mut retry_after = None;
        let raw = match self
            .fetch_into(url, &mut facts, &mut retry_after, spider, keep)
            .await
        {
            Ok(raw) => raw,
            Err(e) => {
                facts.error = Some(describe(&e));
                None
            }
        };
        if let Some(rules) = spider {
            facts.links.retain(|link| rules.follows(link));
        }
        let took = started.elapsed();
        facts.fetch_ms = took.as_millis() as u64;
        crate::metrics::page_fetched(facts.status, took);
        Fetched {
            facts,
            retry_after,
            raw,
        }
    }

    /// Asks for robots.txt at `url` as `agent`, through the same network
    /// policy and redirect rules as any page.
    pub async fn fetch_robots(&self, url: &Url, agent: &str) -> RobotsAnswer {
        if let Err(reason) = check_literal_host(url, &self.policy) {
            return RobotsAnswer::Failed(reason);
        }
        let request = self
            .client
            .get(url.clone())
            .header(reqwest::header::USER_AGENT, agent);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return RobotsAnswer::Failed(describe(&e)),
        };
        let status = response.status();
        if !status.is_success() {
            return RobotsAnswer::Status(status.as_u16());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let take = chunk.len().min(ROBOTS_BODY_CAP - body.len());
                    body.extend_from_slice(&chunk[..take]);
                    if body.len() == ROBOTS_BODY_CAP {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return RobotsAnswer::Failed(describe(&e)),
            }
        }
        RobotsAnswer::Body(body)
    }

    async fn fetch_into(
        &self,
        url: &Url,
        facts: &mut PageFacts,
        retry_after: &mut Option<Duration>,
        spider: Option<&SpiderRules>,
        keep: bool,
    ) -> Result<Option<RawResponse>, reqwest::Error> {
        let mut request = self.client.get(url.clone());
        if let Some(agent) = spider.and_then(|s| s.user_agent.as_deref()) {
            request = request.header(reqwest::header::USER_AGENT, agent);
        }
        let mut response = request.send().await?;
        let final_url = response.url().clone();
        facts.status = Some(response.status().as_u16());
        if matches!(response.status().as_u16(), 429 | 503) {
            *retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
        }
        if final_url != *url {
            facts.final_url = Some(final_url.to_string());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_html = content_type.as_deref().is_some_and(is_html_type);
        facts.content_type = content_type;
        let no_fields = Default::default();
        let fields = spider.map_or(&no_fields, |rules| &rules.fields);
        let mut extractor =
            is_html.then(|| LinkExtractor::for_page(fields, facts.content_type.as_deref()));
        let mut raw = keep.then(|| kept_head(&final_url, &response));
        while let Some(chunk) = response.chunk().await? {
            let room = self.max_body_bytes.saturating_sub(facts.bytes) as usize;
            let take = chunk.len().min(room);
            facts.bytes += take as u64;
            if let Some(raw) = raw.as_mut() {
                raw.body.extend_from_slice(&chunk[..take]);
            }
            if let Some(ex) = extractor.as_mut()
                && ex.feed(&chunk[..take]).is_err()
            {
                extractor = None;
            }
            if take < chunk.len() {
                // The body cap also bounds decompression: we stop reading here.
                break;
            }
        }
        if let Some(ex) = extractor {
            let found = ex.finish(&final_url);
            facts.title = found.title;
            facts.links = found.links;
            facts.fields = found.fields;
        }
        Ok(raw)
    }
}

/// A response's status line and headers, to which its body is added as read.
fn kept_head(url: &Url, response: &reqwest::Response) -> RawResponse {
    let status = response.status();
    RawResponse {
        url: url.to_string(),
        // The block is written in HTTP/1.x form whatever the wire spoke.
        version: if response.version() <= reqwest::Version::HTTP_10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        },
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or_default().to_string(),
        headers: response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
            .collect(),
        body: Vec::new(),
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110, 10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn is_html_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("text/html") || mime.eq_ignore_ascii_case("application/xhtml+xml")
}

/// An IP written in the URL never reaches the resolver, so it is checked here.
fn check_literal_host(url: &Url, policy: &NetworkPolicy) -> Result<(), String> {
    match literal_ip(url) {
        Some(ip) => policy
            .check(ip)
            .map_err(|e| format!("forbidden address: {e}")),
        None => Ok(()),
    }
}

fn redirect_policy(max: usize, policy: Arc<NetworkPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max {
            return attempt.error(format!("more than {max} redirects"));
        }
        let next = attempt.url();
        if !matches!(next.scheme(), "http" | "https") {
            let scheme = next.scheme().to_string();
            return attempt.error(format!("redirect to unsupported scheme `{scheme}`"));
        }
        if let Err(reason) = check_literal_host(next, &policy) {
            return attempt.error(reason);
        }
        attempt.follow()
    })
}

/// Resolves names and keeps only the addresses the policy allows; a name
/// with none left fails, so the client never connects to a refused address.
struct PolicyResolver {
    policy: Arc<NetworkPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let reason = refused
                    .map(|e| format!("forbidden address: {host} resolves to {e}"))
                    .unwrap_or_else(|| format!("{host} has no addresses"));
                return Err(reason.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The innermost useful cause, so a page's error says what really went wrong.
fn describe(error: &reqwest::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if error.is_timeout() {
        parts.insert(0, "timeout".into());
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let waited = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(waited > Duration::from_secs(100) && waited <= Duration::from_secs(120));
        let past = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(1));
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
