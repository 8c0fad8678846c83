//! The properties the crawler's parsers must keep on any input, written
//! once. The coverage-guided fuzzer in `fuzz/` (cargo-afl, `just fuzz`) runs
//! them for millions of inputs; the property tests below run a few thousand
//! on every test run. Each function panics when a property breaks, which is
//! what both runners report.

use std::collections::{BTreeMap, HashSet};

use crawler_core::protocol::{ClientMessage, Limits, MAX_TOKEN_LEN, parse_client_message};
use crawler_core::urls::{MAX_URL_LEN, clean_href, parse_absolute, resolve_link};
use url::Url;
use worker::extract::LinkExtractor;

const LIMITS: Limits = Limits {
    max_depth: 5,
    max_pages: 10_000,
    default_pages: 1_000,
};

/// A websocket frame from anyone: the parser answers a message or a refusal
/// with a code, and what it accepts is within the limits.
pub fn client_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse_client_message(&text, &LIMITS) {
        Ok(ClientMessage::Submit(submit)) => {
            assert!(submit.depth <= LIMITS.max_depth, "{submit:?}");
            assert!(
                (1..=LIMITS.max_pages).contains(&submit.max_pages),
                "{submit:?}"
            );
            assert!(!submit.job_id.is_empty(), "{submit:?}");
        }
        Ok(ClientMessage::Status { job_id }) => assert!(!job_id.is_empty()),
        Ok(ClientMessage::Auth { token }) => {
            assert!(
                (1..=MAX_TOKEN_LEN).contains(&token.len()),
                "{}",
                token.len()
            )
        }
        Err(refusal) => assert!(!refusal.message.is_empty(), "{refusal:?}"),
    }
}

/// What every URL the crawler keeps looks like: http(s) with a host, no
/// fragment, no empty query, within the length cap, and already in the form
/// normalising it again gives.
fn assert_normal(url: &Url) {
    assert!(matches!(url.scheme(), "http" | "https"), "{url}");
    assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{url}");
    assert_eq!(url.fragment(), None, "{url}");
    assert_ne!(url.query(), Some(""), "{url}");
    assert!(url.as_str().len() <= MAX_URL_LEN, "{url}");
    assert_eq!(
        parse_absolute(url.as_str()).as_ref(),
        Ok(url),
        "normalising twice changes {url}"
    );
}

/// Two strings (a start URL and a link, split at the first newline): the
/// normaliser accepts only normal URLs, resolves links to normal URLs, and
/// cleans hrefs as the URL standard says.
pub fn url_normalizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (start, href) = text.split_once('\n').unwrap_or((&text, ""));
    let cleaned = clean_href(href);
    assert!(!cleaned.starts_with(|c: char| c <= ' '), "{cleaned:?}");
    assert!(!cleaned.ends_with(|c: char| c <= ' '), "{cleaned:?}");
    assert!(!cleaned.contains(['\t', '\n', '\r']), "{cleaned:?}");
    let base = match parse_absolute(start) {
        Ok(url) => {
            assert_normal(&url);
            url
        }
        Err(refusal) => {
            let _ = refusal.code();
            Url::parse("http://fuzz.test/dir/page.html").expect("a literal URL")
        }
    };
    if let Some(link) = resolve_link(&base, href) {
        assert_normal(&link);
    }
}

/// Any bytes as a page, fed in chunks whose size the first byte picks: the
/// extractor never fails, the chunking never changes what it finds, and
/// every link is a normal URL, listed once.
pub fn link_extractor(data: &[u8]) {
    let Some((&first, page)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let base = Url::parse("http://fuzz.test/dir/page.html").expect("a literal URL");
    let fields = BTreeMap::from([
        ("heading".to_string(), "h1".to_string()),
        ("marked".to_string(), ".x, b".to_string()),
    ]);
    let extract = |size: usize| {
        let mut extractor = LinkExtractor::with_fields(&fields);
        for piece in page.chunks(size) {
            extractor.feed(piece).expect("the parser takes any bytes");
        }
        extractor.finish(&base)
    };
    let chunked = extract(chunk);
    assert_eq!(
        chunked,
        extract(page.len().max(1)),
        "chunks of {chunk} differ"
    );
    let mut seen = HashSet::new();
    for link in &chunked.links {
        assert!(seen.insert(link), "{link} listed twice");
        assert_normal(&Url::parse(link).expect("links are URLs"));
    }
    if let Some(title) = &chunked.title {
        assert!(
            !title.is_empty() && title.chars().count() <= 512,
            "{title:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Inputs made of the characters these parsers treat specially, which
    /// random bytes rarely line up into anything interesting.
    const HTML_ISH: &str = r#"(<[/!]?[a-zA-Z]{0,6}( [a-zA-Z]{1,5}(=("[^"]{0,20}"|'[^']{0,20}'|[^ >]{0,10}))?){0,3} ?/?>|&[#xX]?[0-9a-zA-Z]{0,8};?|[ -~\t\n]|é|\u{a0}){0,80}"#;
    const URL_ISH: &str =
        r#"([a-zA-Z]{1,6}:)?(//[a-zA-Z0-9.:@\[\]-]{0,20})?[/a-zA-Z0-9.%?#&=;~ \t\n\r\\-]{0,40}"#;
    const JSON_ISH: &str = r#"\{("(type|jobId|url|depth|urlToCrawl|depthToCrawl|maxPages|spider|allowedHosts|includeSubdomains)":(-?[0-9]{1,12}(\.[0-9])?|"[^"]{0,30}"|true|null|\[("[a-z.]{0,10}",?){0,3}\]|\{\}),?){0,6}\}"#;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_frame_gets_a_message_or_a_refusal(data in prop::collection::vec(any::<u8>(), 0..300)) {
            client_message(&data);
        }

        #[test]
        fn frames_shaped_like_requests_respect_the_limits(text in JSON_ISH) {
            client_message(text.as_bytes());
        }

        #[test]
        fn any_bytes_normalise_to_normal_urls(data in prop::collection::vec(any::<u8>(), 0..200)) {
            url_normalizer(&data);
        }

        #[test]
        fn url_shaped_text_normalises_to_normal_urls(start in URL_ISH, href in URL_ISH) {
            url_normalizer(format!("{start}\n{href}").as_bytes());
        }

        #[test]
        fn any_bytes_extract_the_same_in_any_chunks(data in prop::collection::vec(any::<u8>(), 0..400)) {
            link_extractor(&data);
        }

        #[test]
        fn html_shaped_text_extracts_the_same_in_any_chunks(chunk in any::<u8>(), html in HTML_ISH) {
            let mut data = vec![chunk];
            data.extend_from_slice(html.as_bytes());
            link_extractor(&data);
        }
    }

    #[test]
    fn the_properties_hold_on_known_inputs_and_those_inputs_give_known_outputs() {
        let submit = br#"{"type":"submit","jobId":"J","url":"http://a.test/","depth":2}"#;
        client_message(submit);
        let parsed = parse_client_message(std::str::from_utf8(submit).unwrap(), &LIMITS);
        assert!(
            matches!(parsed, Ok(ClientMessage::Submit(ref s)) if s.job_id == "J" && s.depth == 2),
            "{parsed:?}"
        );

        url_normalizer(b"HTTP://A.test:80/x#f\n../y?");
        let base = parse_absolute("HTTP://A.test:80/x#f").unwrap();
        assert_eq!(base.as_str(), "http://a.test/x");
        assert_eq!(
            resolve_link(&base, "../y?").map(String::from).as_deref(),
            Some("http://a.test/y")
        );

        link_extractor(b"\x07<a href='/a&#45;b'>x</a><h1>T&amp;</h1>");
        let mut extractor = LinkExtractor::new();
        extractor.feed(b"<a href='/a&#45;b'>x</a>").unwrap();
        let found = extractor.finish(&Url::parse("http://fuzz.test/dir/page.html").unwrap());
        assert_eq!(found.links, ["http://fuzz.test/a-b"]);
    }
}
