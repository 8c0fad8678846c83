//! URL rules: normalisation, scope and the cache key of a crawl.
//!
//! Two spellings of one page must dedup to one URL, so every URL a job sees
//! passes through [`normalize`]: the fragment is dropped, the host lowercased,
//! default ports removed, an empty query dropped.

use sha2::{Digest, Sha256};
use url::Url;

use crate::model::CrawlOptions;

/// Longest URL accepted anywhere; longer ones are traps or abuse.
pub const MAX_URL_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is {len} bytes long; the limit is {MAX_URL_LEN}")]
    TooLong { len: usize },
    #[error("not an absolute URL: {0}")]
    Invalid(String),
    #[error("scheme `{0}` is not supported; use http or https")]
    UnsupportedScheme(String),
    #[error("the URL has no host")]
    NoHost,
}

impl UrlError {
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            Self::TooLong { .. } => ErrorCode::UrlTooLong,
            Self::Invalid(_) | Self::NoHost => ErrorCode::InvalidUrl,
            Self::UnsupportedScheme(_) => ErrorCode::UnsupportedScheme,
        }
    }
}

/// Parses an absolute http(s) URL and normalises it.
pub fn parse_absolute(raw: &str) -> Result<Url, UrlError> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlError::TooLong { len: raw.len() });
    }
    let url = Url::parse(raw.trim()).map_err(|e| UrlError::Invalid(format!("{raw:.80}: {e}")))?;
    check_and_normalize(url)
}

/// An `href` as the URL standard reads it: leading and trailing C0 controls
/// and spaces stripped, tabs and newlines removed wherever they are. Other
/// white space (a no-break space, say) is part of the URL.
pub fn clean_href(href: &str) -> String {
    href.trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// Resolves a link found on a page against the page's base URL; `None` for
/// links a crawler does not follow (mailto:, javascript:, unparsable, too
/// long). An empty link is the base itself, as in a browser.
pub fn resolve_link(base: &Url, href: &str) -> Option<Url> {
    let href = clean_href(href);
    if href.len() > MAX_URL_LEN {
        return None;
    }
    let url = base.join(&href).ok()?;
    check_and_normalize(url).ok()
}

fn check_and_normalize(mut url: Url) -> Result<Url, UrlError> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(UrlError::UnsupportedScheme(other.to_string())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost);
    }
    url.set_fragment(None);
    if url.query() == Some("") {
        url.set_query(None);
    }
    // `url` already lowercases hosts and drops default ports when parsing.
    if url.as_str().len() > MAX_URL_LEN {
        return Err(UrlError::TooLong {
            len: url.as_str().len(),
        });
    }
    Ok(url)
}

/// Which hosts a job may fetch from.
#[derive(Debug, Clone)]
pub struct Scope {
    hosts: Vec<String>,
    include_subdomains: bool,
}

impl Scope {
    pub fn new(start: &Url, options: &CrawlOptions) -> Self {
        let mut hosts = vec![start.host_str().unwrap_or_default().to_ascii_lowercase()];
        hosts.extend(options.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Self {
            hosts,
            include_subdomains: options.include_subdomains,
        }
    }

    pub fn contains(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        self.hosts.iter().any(|h| {
            host == h
                || (self.include_subdomains
                    && host.len() > h.len()
                    && host.ends_with(h.as_str())
                    && host.as_bytes()[host.len() - h.len() - 1] == b'.')
        })
    }
}

/// The cache key of a crawl: the same normalised start URL with the same
/// options is the same crawl, whatever the depth (depth is stored in the value).
pub fn cache_key(url: &str, options: &CrawlOptions) -> String {
    let mut hosts = options.allowed_hosts.clone();
    hosts.sort();
    hosts.dedup();
    let mut hasher = Sha256::new();
    hasher.update(b"crawl-v1\n");
    hasher.update(url.as_bytes());
    hasher.update(b"\n");
    hasher.update(hosts.join(",").as_bytes());
    hasher.update(if options.include_subdomains {
        b"\n1\n"
    } else {
        b"\n0\n"
    });
    hasher.update(options.max_pages.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(options.spider.as_deref().unwrap_or("").as_bytes());
    // A new version of the spider makes a new key: its old crawls are stale.
    if let Some(version) = &options.spider_version {
        hasher.update(b"\nspider version ");
        hasher.update(version.as_bytes());
    }
    // A crawl that ignored robots.txt may hold pages a polite one refused.
    if !options.respect_robots {
        hasher.update(b"\nrobots ignored");
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("crawl:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_drops_fragment_default_port_and_empty_query() {
        let url = parse_absolute("HTTP://Example.COM:80/a/b?#frag").unwrap();
        assert_eq!(url.as_str(), "http://example.com/a/b");
        let url = parse_absolute("https://example.com:443").unwrap();
        assert_eq!(url.as_str(), "https://example.com/");
        let url = parse_absolute("http://example.com:8080/x?q=1#y").unwrap();
        assert_eq!(url.as_str(), "http://example.com:8080/x?q=1");
    }

    #[test]
    fn unsupported_and_relative_urls_are_refused_with_their_reason() {
        assert!(matches!(
            parse_absolute("ftp://example.com/file"),
            Err(UrlError::UnsupportedScheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            parse_absolute("/relative/path"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            parse_absolute("http://"),
            Err(UrlError::Invalid(_) | UrlError::NoHost)
        ));
        let long = format!("http://example.com/{}", "a".repeat(100_000));
        assert_eq!(
            parse_absolute(&long).unwrap_err().code(),
            crate::ErrorCode::UrlTooLong
        );
    }

    #[test]
    fn links_resolve_against_the_base_and_skip_non_http() {
        let base = Url::parse("http://example.com/dir/page.html").unwrap();
        assert_eq!(
            resolve_link(&base, "other.html#x").unwrap().as_str(),
            "http://example.com/dir/other.html"
        );
        assert_eq!(
            resolve_link(&base, "/root").unwrap().as_str(),
            "http://example.com/root"
        );
        assert_eq!(
            resolve_link(&base, "//Other.Example/").unwrap().as_str(),
            "http://other.example/"
        );
        assert!(resolve_link(&base, "mailto:a@b.c").is_none());
        assert!(resolve_link(&base, "javascript:void(0)").is_none());
        assert_eq!(
            resolve_link(&base, " \t ").unwrap().as_str(),
            "http://example.com/dir/page.html",
            "an empty link is the page itself"
        );
    }

    #[test]
    fn hrefs_are_cleaned_of_c0_and_space_at_the_ends_and_tabs_and_newlines_inside() {
        assert_eq!(clean_href("\u{0} \x0b/a\tb\nc\rd \x1f"), "/abcd");
        assert_eq!(clean_href("\u{a0}/a\u{a0}"), "\u{a0}/a\u{a0}");
        assert_eq!(clean_href(" a b "), "a b");
    }

    #[test]
    fn scope_is_the_start_host_unless_widened() {
        let start = Url::parse("http://example.com/").unwrap();
        let narrow = Scope::new(&start, &CrawlOptions::default());
        assert!(narrow.contains(&Url::parse("http://example.com/x").unwrap()));
        assert!(!narrow.contains(&Url::parse("http://sub.example.com/").unwrap()));
        assert!(!narrow.contains(&Url::parse("http://other.org/").unwrap()));

        let wide = Scope::new(
            &start,
            &CrawlOptions {
                allowed_hosts: vec!["other.org".into()],
                include_subdomains: true,
                ..Default::default()
            },
        );
        assert!(wide.contains(&Url::parse("http://sub.example.com/").unwrap()));
        assert!(wide.contains(&Url::parse("http://other.org/").unwrap()));
        assert!(!wide.contains(&Url::parse("http://notexample.com/").unwrap()));
    }

    #[test]
    fn cache_key_depends_on_url_and_options_not_host_order() {
        let a = CrawlOptions {
            allowed_hosts: vec!["b.org".into(), "a.org".into()],
            max_pages: 10,
            ..Default::default()
        };
        let b = CrawlOptions {
            allowed_hosts: vec!["a.org".into(), "b.org".into()],
            max_pages: 10,
            ..Default::default()
        };
        assert_eq!(cache_key("http://x/", &a), cache_key("http://x/", &b));
        assert_ne!(cache_key("http://x/", &a), cache_key("http://y/", &a));
        let c = CrawlOptions {
            max_pages: 11,
            ..b.clone()
        };
        assert_ne!(cache_key("http://x/", &a), cache_key("http://x/", &c));
        let impolite = CrawlOptions {
            respect_robots: false,
            ..b.clone()
        };
        assert_ne!(
            cache_key("http://x/", &a),
            cache_key("http://x/", &impolite)
        );
        let spider = |version: &str| CrawlOptions {
            spider: Some("docs".into()),
            spider_version: Some(version.into()),
            ..b.clone()
        };
        assert_ne!(
            cache_key("http://x/", &spider("v1")),
            cache_key("http://x/", &spider("v2"))
        );
        assert_eq!(
            cache_key("http://x/", &spider("v1")),
            cache_key("http://x/", &spider("v1"))
        );
    }
}
