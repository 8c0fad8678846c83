//! Helpers for the end-to-end tests: a websocket client that waits on
//! messages with deadlines, service processes whose bound address is read
//! from their logs, a cluster of them on the real engines, a TCP proxy that
//! injects network faults, and a test site whose levels the test knows.

pub mod chaos;
pub mod engines;
pub mod processes;
pub mod proxy;
pub mod site;
pub mod ws;

use serde_json::Value;

/// The levels a crawl of the sample site must give at `depth`, for the site
/// at `base` (e.g. `http://127.0.0.1:PORT`).
pub fn sample_site_levels(base: &str, depth: u32) -> Vec<Vec<String>> {
    let all = [
        vec!["/"],
        vec![
            "/about.html",
            "/blog/",
            "/contact",
            "/files/report.pdf",
            "/missing",
            "/old",
        ],
        vec!["/archive/post1.html", "/deep", "/team.html"],
        vec!["/archive/post2.html"],
    ];
    all.iter()
        .take(depth as usize + 1)
        .map(|level| level.iter().map(|p| format!("{base}{p}")).collect())
        .collect()
}

/// `levels` of a result message as plain strings.
pub fn levels_of(result: &Value) -> Vec<Vec<String>> {
    serde_json::from_value(result["levels"].clone()).expect("a result has levels")
}

/// The page facts of one URL in a result message.
pub fn page<'a>(result: &'a Value, url: &str) -> &'a Value {
    result["pages"]
        .as_array()
        .expect("a result has pages")
        .iter()
        .find(|p| p["url"] == url)
        .unwrap_or_else(|| panic!("no page facts for {url}"))
}

/// Checks a result of crawling the sample site at `base` to `depth`: the
/// exact levels, one page entry per URL, and the facts of the special pages.
pub fn assert_sample_site_result(result: &Value, base: &str, depth: u32) {
    let expected = sample_site_levels(base, depth);
    assert_eq!(levels_of(result), expected, "levels at depth {depth}");
    assert_eq!(result["depth"], depth);
    let mut fetched: Vec<String> = result["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| p["url"].as_str().expect("url").to_string())
        .collect();
    fetched.sort();
    let mut listed: Vec<String> = expected.concat();
    listed.sort();
    assert_eq!(
        fetched, listed,
        "every URL of every level is fetched exactly once"
    );
    for url in &listed {
        let facts = page(result, url);
        let level = expected
            .iter()
            .position(|l| l.contains(url))
            .expect("listed");
        assert_eq!(facts["depth"], level, "depth of {url}");
        assert!(facts["fetchMs"].is_u64(), "fetchMs of {url}");
    }

    let home = page(result, &format!("{base}/"));
    assert_eq!(home["status"], 200);
    assert_eq!(home["title"], "Home");
    assert_eq!(home["contentType"], "text/html; charset=utf-8");
    assert!(home["bytes"].as_u64().unwrap() > 200);
    let links: Vec<&str> = home["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        links.contains(&format!("{base}/contact").as_str()),
        "fragment dropped: {links:?}"
    );
    assert!(
        links.iter().any(|l| l.starts_with("http://localhost:")),
        "the other host is a link, just not crawled"
    );
    assert!(!links.iter().any(|l| l.starts_with("mailto:")));

    if depth >= 1 {
        let missing = page(result, &format!("{base}/missing"));
        assert_eq!(missing["status"], 404);
        assert_eq!(missing["title"], "Not found");
        let pdf = page(result, &format!("{base}/files/report.pdf"));
        assert_eq!(pdf["status"], 200);
        assert_eq!(pdf["contentType"], "application/pdf");
        assert_eq!(pdf["bytes"], crawlctl::sample_site::REPORT_PDF.len());
        assert_eq!(pdf["links"], serde_json::json!([]));
        let moved = page(result, &format!("{base}/old"));
        assert_eq!(moved["status"], 200);
        assert_eq!(moved["finalUrl"], format!("{base}/new"));
        assert_eq!(moved["title"], "New");
        let blog = page(result, &format!("{base}/blog/"));
        let blog_links: Vec<&str> = blog["links"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            blog_links,
            [format!("{base}/archive/post1.html"), format!("{base}/")],
            "<base href> applies"
        );
    }
    // The other host is never fetched.
    assert!(
        !result["pages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["url"].as_str().unwrap().contains("localhost"))
    );
}

/// A benchmark's `--name value` argument, or `default` when not given.
pub fn bench_flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} {v}: not a number"))
        })
        .unwrap_or(default)
}
