//! robots.txt as RFC 9309 says: fetched once per origin and user agent,
//! kept for a while, and asked before every fetch on that origin.
//!
//! - A 2xx answer gives the rules of our user agent's group (or of `*`):
//!   Allow and Disallow with `*` and `$`, and `Crawl-delay`.
//! - A 4xx answer ("unavailable") allows everything.
//! - A 5xx or 429 answer, or none at all ("unreachable"), disallows
//!   everything; robots.txt is asked again after `retry_unreachable`.
//!
//! A refused page is not fetched: it appears in the result with the reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use texting_robots::Robot;
use url::Url;

use crate::fetch::{Fetcher, RobotsAnswer};

/// How long answers are kept, and how many origins.
#[derive(Debug, Clone)]
pub struct RobotsSettings {
    /// How long a fetched robots.txt (or a 4xx) is trusted; RFC 9309 asks
    /// for at most 24 hours.
    pub ttl: Duration,
    /// How long an unreachable robots.txt keeps its origin closed before it
    /// is asked again.
    pub retry_unreachable: Duration,
    /// The longest `Crawl-delay` honoured; a longer one is cut to this, so a
    /// batch of one host still ends before its deadline.
    pub max_crawl_delay: Duration,
}

/// Origins (per user agent) remembered at once; the least used go first.
const ORIGINS_KEPT: u64 = 10_000;

/// What robots.txt says about one URL.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fetch it, no sooner than `crawl_delay` after the host's last fetch.
    Allowed { crawl_delay: Option<Duration> },
    /// Do not fetch it, for this reason.
    Refused(String),
}

/// One origin's robots.txt, as understood.
#[derive(Debug)]
enum Rules {
    AllowAll,
    Parsed(Box<Robot>),
    Unreachable(String),
}

/// The robots.txt answers of every origin this worker crawls.
pub struct RobotsCache {
    cache: Cache<String, Arc<Rules>>,
    settings: RobotsSettings,
}

impl RobotsCache {
    pub fn new(settings: RobotsSettings) -> Self {
        let cache = Cache::builder()
            .max_capacity(ORIGINS_KEPT)
            .expire_after(Lifetimes {
                ttl: settings.ttl,
                retry_unreachable: settings.retry_unreachable,
            })
            .build();
        Self { cache, settings }
    }

    /// Whether `url` may be fetched by `agent` (the User-Agent header sent).
    /// Concurrent asks for one origin share a single robots.txt fetch.
    pub async fn judge(&self, fetcher: &Fetcher, url: &Url, agent: &str) -> Verdict {
        let Some(robots_url) = robots_url(url) else {
            return Verdict::Allowed { crawl_delay: None };
        };
        let token = product_token(agent);
        let key = format!("{token} {robots_url}");
        let rules = self
            .cache
            .get_with(key, async {
                let answer = fetcher.fetch_robots(&robots_url, agent).await;
                Arc::new(understand(answer, &token))
            })
            .await;
        match &*rules {
            Rules::AllowAll => Verdict::Allowed { crawl_delay: None },
            Rules::Unreachable(why) => Verdict::Refused(format!(
                "robots.txt unreachable ({why}); the site is not crawled until it answers"
            )),
            Rules::Parsed(robot) if robot.allowed(url.as_str()) => Verdict::Allowed {
                crawl_delay: robot
                    .delay
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .map(|d| Duration::from_secs_f32(d).min(self.settings.max_crawl_delay)),
            },
            Rules::Parsed(_) => Verdict::Refused(format!(
                "robots.txt disallows this page for user agent `{token}`"
            )),
        }
    }
}

/// `scheme://host:port/robots.txt` of a crawlable URL.
fn robots_url(url: &Url) -> Option<Url> {
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    let mut robots = url.clone();
    robots.set_path("/robots.txt");
    robots.set_query(None);
    robots.set_fragment(None);
    let _ = robots.set_username("");
    let _ = robots.set_password(None);
    Some(robots)
}

/// The product token a group's `User-agent` line is matched against:
/// `crawler` of `crawler/0.1 (+https://…)`, lowercased.
fn product_token(agent: &str) -> String {
    let token: String = agent
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if token.is_empty() {
        "*".into()
    } else {
        token.to_ascii_lowercase()
    }
}

fn understand(answer: RobotsAnswer, token: &str) -> Rules {
    match answer {
        RobotsAnswer::Body(body) => match Robot::new(token, &body) {
            Ok(robot) => Rules::Parsed(Box::new(robot)),
            // The parser is forgiving; what it still cannot read says nothing.
            Err(_) => Rules::AllowAll,
        },
        RobotsAnswer::Status(status) if status == 429 || status >= 500 => {
            Rules::Unreachable(format!("status {status}"))
        }
        RobotsAnswer::Status(_) => Rules::AllowAll,
        RobotsAnswer::Failed(why) => Rules::Unreachable(why),
    }
}

/// A fetched robots.txt lives `ttl`; an unreachable one `retry_unreachable`.
struct Lifetimes {
    ttl: Duration,
    retry_unreachable: Duration,
}

impl Expiry<String, Arc<Rules>> for Lifetimes {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Rules>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match **value {
            Rules::Unreachable(_) => self.retry_unreachable,
            _ => self.ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_token_is_the_agent_name_lowercased() {
        assert_eq!(product_token("crawler/0.1.0"), "crawler");
        assert_eq!(product_token("Docs-Bot (+https://x)"), "docs-bot");
        assert_eq!(product_token("/weird"), "*");
    }

    #[test]
    fn robots_url_keeps_only_the_origin() {
        let url = Url::parse("http://u:p@Example.com:8080/a/b?q=1#f").unwrap();
        assert_eq!(
            robots_url(&url).unwrap().as_str(),
            "http://example.com:8080/robots.txt"
        );
        assert!(robots_url(&Url::parse("mailto:a@b.c").unwrap()).is_none());
    }

    #[test]
    fn answers_are_understood_as_rfc_9309_says() {
        let body = b"User-agent: crawler\nDisallow: /private\nAllow: /private/open$\nDisallow: /*.pdf$\nCrawl-delay: 2\n\nUser-agent: *\nDisallow: /\n";
        let Rules::Parsed(robot) = understand(RobotsAnswer::Body(body.to_vec()), "crawler") else {
            panic!("a body is parsed");
        };
        assert!(!robot.allowed("http://h/private/x"));
        assert!(robot.allowed("http://h/private/open"));
        assert!(!robot.allowed("http://h/private/open/more"));
        assert!(!robot.allowed("http://h/docs/a.pdf"));
        assert!(robot.allowed("http://h/docs/a.pdf?page=2"));
        assert!(robot.allowed("http://h/public"));
        assert_eq!(robot.delay, Some(2.0));
        // Another agent falls in the `*` group.
        let Rules::Parsed(other) = understand(RobotsAnswer::Body(body.to_vec()), "other") else {
            panic!("a body is parsed");
        };
        assert!(!other.allowed("http://h/public"));

        assert!(matches!(
            understand(RobotsAnswer::Status(404), "crawler"),
            Rules::AllowAll
        ));
        assert!(matches!(
            understand(RobotsAnswer::Status(403), "crawler"),
            Rules::AllowAll
        ));
        for status in [500, 503, 429] {
            assert!(matches!(
                understand(RobotsAnswer::Status(status), "crawler"),
                Rules::Unreachable(_)
            ));
        }
        assert!(matches!(
            understand(RobotsAnswer::Failed("connection refused".into()), "crawler"),
            Rules::Unreachable(_)
        ));
    }
}
