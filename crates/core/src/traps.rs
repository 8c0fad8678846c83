//! Crawler traps: link shapes that make pages without end (calendars,
//! relative links that nest a path inside itself, session ids in every
//! link, filters that stack query parameters). A link that trips a guard
//! stays among its page's links but is not followed. The guards look at the
//! URL alone, so a crawl taken over after a master died follows exactly the
//! links the first run would have.

use std::borrow::Cow;
use std::collections::HashMap;

use url::Url;

/// Longest URL followed (a start URL may be longer, up to
/// [`crate::urls::MAX_URL_LEN`]).
pub const MAX_FOLLOWED_URL_LEN: usize = 2048;
/// Most path segments in a followed URL.
pub const MAX_PATH_DEPTH: usize = 32;
/// Most times one path segment may appear in a followed URL's path
/// (`/a/b/a/b/a/b/a` is a relative link resolved against itself).
pub const MAX_SEGMENT_REPEATS: usize = 3;
/// Most query parameters in a followed URL.
pub const MAX_QUERY_PARAMS: usize = 12;
/// Most times one query parameter may appear in a followed URL.
pub const MAX_PARAM_REPEATS: usize = 2;

/// Query parameters (and `;name=` path parameters) that carry a session:
/// every visit makes new URLs of the same pages. Matched without case.
const SESSION_PARAMS: &[&str] = &[
    "jsessionid",
    "phpsessid",
    "aspsessionid",
    "sessionid",
    "session_id",
    "sid",
    "cfid",
    "cftoken",
];

/// Why a link is not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    TooLong,
    TooDeep,
    RepeatedSegment,
    TooManyParams,
    RepeatedParam,
}

/// The guard a URL trips, if any.
pub fn judge(url: &Url) -> Option<Trap> {
    if url.as_str().len() > MAX_FOLLOWED_URL_LEN {
        return Some(Trap::TooLong);
    }
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    if segments.len() > MAX_PATH_DEPTH {
        return Some(Trap::TooDeep);
    }
    if most_repeats(segments.iter().copied()) > MAX_SEGMENT_REPEATS {
        return Some(Trap::RepeatedSegment);
    }
    if url.query().is_some() {
        let names: Vec<Cow<'_, str>> = url.query_pairs().map(|(name, _)| name).collect();
        if names.len() > MAX_QUERY_PARAMS {
            return Some(Trap::TooManyParams);
        }
        if most_repeats(names.iter().map(|n| n.as_ref())) > MAX_PARAM_REPEATS {
            return Some(Trap::RepeatedParam);
        }
    }
    None
}

fn most_repeats<'a>(items: impl Iterator<Item = &'a str>) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    items.fold(0, |most, item| {
        let n = counts.entry(item).or_default();
        *n += 1;
        most.max(*n)
    })
}

/// ASP names its session parameter `ASPSESSIONID` and a random suffix.
fn is_session_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("aspsessionid") || SESSION_PARAMS.contains(&name.as_str())
}

/// `link` without its session parameters (`?sid=…`, `;jsessionid=…`), or
/// `None` when it has none (the common case costs a scan, no allocation).
pub fn without_session_ids(link: &str) -> Option<String> {
    if !link.contains(['?', ';']) {
        return None;
    }
    let bytes = link.as_bytes();
    let mentions = |name: &str| {
        bytes
            .windows(name.len())
            .any(|w| w.eq_ignore_ascii_case(name.as_bytes()))
    };
    if !SESSION_PARAMS.iter().any(|p| mentions(p)) {
        return None;
    }
    let mut url = Url::parse(link).ok()?;
    let mut changed = false;
    // `;jsessionid=…` rides on the last path segment.
    if let Some(at) = url.path().to_ascii_lowercase().find(";jsessionid=") {
        let path = url.path()[..at].to_string();
        url.set_path(&path);
        changed = true;
    }
    if url.query().is_some() {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| !is_session_param(name))
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect();
        if kept.len() != url.query_pairs().count() {
            changed = true;
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
    }
    changed.then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trap(s: &str) -> Option<Trap> {
        judge(&Url::parse(s).unwrap())
    }

    #[test]
    fn each_guard_holds_and_ordinary_links_pass() {
        assert_eq!(trap("http://h/docs/a/b.html?page=2&sort=asc"), None);
        let long = format!("http://h/{}", "a".repeat(MAX_FOLLOWED_URL_LEN));
        assert_eq!(trap(&long), Some(Trap::TooLong));
        let deep_distinct: String = (0..=MAX_PATH_DEPTH).map(|i| format!("/s{i}")).collect();
        assert_eq!(
            trap(&format!("http://h{deep_distinct}")),
            Some(Trap::TooDeep)
        );
        assert_eq!(trap("http://h/a/b/a/b/a/b"), None, "three times is allowed");
        assert_eq!(trap("http://h/a/b/a/b/a/b/a/"), Some(Trap::RepeatedSegment));
        let many: String = (0..=MAX_QUERY_PARAMS).map(|i| format!("p{i}=1&")).collect();
        assert_eq!(
            trap(&format!("http://h/?{many}")),
            Some(Trap::TooManyParams)
        );
        assert_eq!(trap("http://h/?f=a&f=b"), None);
        assert_eq!(trap("http://h/?f=a&f=b&f=c"), Some(Trap::RepeatedParam));
    }

    #[test]
    fn session_ids_are_taken_out_of_links() {
        assert_eq!(without_session_ids("http://h/a?page=2"), None);
        assert_eq!(
            without_session_ids("http://h/a?PHPSESSID=abc&page=2").as_deref(),
            Some("http://h/a?page=2")
        );
        assert_eq!(
            without_session_ids("http://h/a;jsessionid=1F2E?sid=9").as_deref(),
            Some("http://h/a")
        );
        assert_eq!(
            without_session_ids("http://h/a?ASPSESSIONIDQQ=x").as_deref(),
            Some("http://h/a")
        );
        // A parameter that merely contains a session name is kept.
        assert_eq!(without_session_ids("http://h/a?side=1&sidebar=2"), None);
    }
}
