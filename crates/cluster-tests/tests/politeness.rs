//! Polite crawling across the cluster: robots.txt asked and obeyed, its
//! `Crawl-delay` held by two workers together, a batch that the delay makes
//! outlast its deadline kept by its worker while it progresses, and a host
//! that answers 429 with `Retry-After` left alone for as long as it asked.

use std::time::Duration;

use cluster_tests::processes::ClusterSpec;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use cluster_tests::{levels_of, page};
use serde_json::json;

/// The gaps between the starts of consecutive page requests (robots.txt
/// left out), as the site saw them arrive.
fn page_gaps(site: &TestSite) -> Vec<Duration> {
    let starts: Vec<_> = site
        .arrivals()
        .into_iter()
        .filter(|(_, path)| path != "/robots.txt")
        .map(|(at, _)| at)
        .collect();
    starts.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robots_txt_rules_are_obeyed_and_each_refusal_is_reported() {
    // The worker's agent is `crawler/<version>`: its own group applies, not `*`.
    let robots = "User-agent: *\nDisallow: /\n\n\
                  User-agent: crawler\nDisallow: /p1\nDisallow: /*/p1$\nAllow: /p2/p1$\n";
    let site = TestSite::serve(SitePlan::tree(&[4, 2]).robots(robots)).await;
    let cluster = ClusterSpec::new(1, 1).start().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("polite", &site.url("/"), 2).await;
    let result = client.result("polite").await;

    // The levels are what a crawl finds: a refused page is listed, but
    // never fetched, so its links are not found.
    let url = |p: &str| site.url(p);
    let expected: Vec<Vec<String>> = vec![
        vec![url("/")],
        ["/p0", "/p1", "/p2", "/p3"].map(url).to_vec(),
        ["/p0/p0", "/p0/p1", "/p2/p0", "/p2/p1", "/p3/p0", "/p3/p1"]
            .map(url)
            .to_vec(),
    ];
    assert_eq!(levels_of(&result), expected);
    for refused in ["/p1", "/p0/p1", "/p3/p1"] {
        let facts = page(&result, &url(refused));
        let reason = facts["refused"]
            .as_str()
            .unwrap_or_else(|| panic!("{refused}: {facts}"));
        assert!(reason.contains("robots.txt disallows"), "{reason}");
        assert!(facts.get("status").is_none(), "{refused} was not fetched");
        assert_eq!(site.hits(refused), 0, "{refused} was requested");
    }
    for fetched in ["/", "/p0", "/p2", "/p2/p1", "/p3/p0"] {
        let facts = page(&result, &url(fetched));
        assert_eq!(facts["status"], 200, "{fetched}: {facts}");
        assert!(facts.get("refused").is_none());
    }
    assert_eq!(
        site.hits("/robots.txt"),
        1,
        "robots.txt is asked once per host"
    );

    // A job that chooses to ignore robots.txt fetches everything.
    client
        .send_json(&json!({"type": "submit", "jobId": "impolite", "url": url("/"), "depth": 1, "respectRobots": false}))
        .await;
    let result = client.result("impolite").await;
    assert_eq!(
        result["cached"], false,
        "not the polite crawl's cached result"
    );
    assert_eq!(page(&result, &url("/p1"))["status"], 200);
    assert_eq!(site.hits("/p1"), 1);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_robots_txt_closes_the_site_and_a_missing_one_opens_it() {
    let down = TestSite::serve(SitePlan::tree(&[2]).robots_status(503)).await;
    let missing = TestSite::serve(SitePlan::tree(&[2]).robots_status(404)).await;
    let cluster = ClusterSpec::new(1, 1).start().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;

    client.submit("down", &down.url("/"), 1).await;
    let result = client.result("down").await;
    let start = page(&result, &down.url("/"));
    assert!(
        start["refused"]
            .as_str()
            .is_some_and(|r| r.contains("robots.txt unreachable (status 503)")),
        "{start}"
    );
    assert_eq!(down.hits("/"), 0);

    client.submit("missing", &missing.url("/"), 1).await;
    let result = client.result("missing").await;
    assert_eq!(levels_of(&result), missing.levels(1));
    assert_eq!(page(&result, &missing.url("/p1"))["status"], 200);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawl_delay_holds_across_two_workers() {
    let delay = Duration::from_millis(250);
    let site =
        TestSite::serve(SitePlan::tree(&[11]).robots("User-agent: *\nCrawl-delay: 0.25\n")).await;
    // Batches of two, so the level's eleven pages go to both workers at once.
    let cluster = ClusterSpec::new(1, 2)
        .master_args(&["--batch-size", "2"])
        .worker_args(&["--admin-listen", "127.0.0.1:0"])
        .start()
        .await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("paced", &site.url("/"), 1).await;
    let result = client.result("paced").await;
    assert_eq!(levels_of(&result), site.levels(1));

    let gaps = page_gaps(&site);
    assert_eq!(gaps.len(), 11);
    // Starts are paced on Redis's clock; a request reaches the site a
    // little after its start, so a gap may look shorter by that jitter.
    let jitter = Duration::from_millis(15);
    assert!(
        gaps.iter().all(|gap| *gap + jitter >= delay),
        "requests closer than the crawl delay: {gaps:?}"
    );
    for worker in &cluster.workers {
        let (_, metrics) =
            cluster_tests::processes::http_get(&worker.admin_addr().await, "/metrics").await;
        let fetched = cluster_tests::processes::metric_value(
            &metrics,
            "crawler_worker_pages_fetched_total{status=\"2xx\"}",
        );
        assert!(
            fetched.is_some_and(|n| n > 0.0),
            "a worker fetched nothing: both must share the host"
        );
    }
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_paced_past_its_deadline_by_a_crawl_delay_is_not_sent_again() {
    // Eight pages 0.5 s apart: level 1 takes 3.5 s or more, past the
    // master's 2 s batch deadline, while its worker reports progress.
    let site =
        TestSite::serve(SitePlan::tree(&[8]).robots("User-agent: *\nCrawl-delay: 0.5\n")).await;
    let cluster = ClusterSpec::new(1, 1)
        .master_args(&["--batch-deadline-secs", "2"])
        .worker_args(&["--batch-progress-ms", "200"])
        .start()
        .await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("slow", &site.url("/"), 1).await;
    let result = client.result("slow").await;
    assert_eq!(levels_of(&result), site.levels(1));

    let gaps = page_gaps(&site);
    let level_1: Duration = gaps.iter().skip(1).sum();
    assert!(
        level_1 > Duration::from_secs(2),
        "level 1 took {level_1:?}, within the deadline: the test shows nothing"
    );
    let master = &cluster.masters[0];
    assert_eq!(master.count_log("a batch passed its deadline"), 0);
    for path in site.levels(1).concat() {
        let path = url::Url::parse(&path).unwrap().path().to_string();
        assert_eq!(site.hits(&path), 1, "{path} fetched once");
    }
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_pauses_the_host_then_the_page_is_fetched() {
    let site = TestSite::serve(SitePlan::tree(&[6]).throttle("/p2", 1)).await;
    // One fetch at a time on the host, so no request was already on its
    // way when the 429 came back.
    let cluster = ClusterSpec::new(1, 1)
        .worker_args(&["--host-concurrency", "1"])
        .start()
        .await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("throttled", &site.url("/"), 1).await;
    let result = client.result("throttled").await;
    assert_eq!(levels_of(&result), site.levels(1));
    assert_eq!(
        page(&result, &site.url("/p2"))["status"],
        200,
        "asked again after the pause"
    );
    assert_eq!(site.hits("/p2"), 2);

    // Nothing reached the host during the second it asked for.
    let arrivals = site.arrivals();
    let throttled_at = arrivals
        .iter()
        .find(|(_, path)| path == "/p2")
        .map(|(at, _)| *at)
        .expect("the first /p2");
    let next = arrivals
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| *at > throttled_at)
        .min()
        .expect("/p2 was asked again");
    assert!(
        next - throttled_at >= Duration::from_millis(990),
        "a request {:?} after the 429",
        next - throttled_at
    );
    cluster.cleanup().await;
}
