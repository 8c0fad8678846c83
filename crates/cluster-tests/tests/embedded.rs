//! The one-process embedded cluster: the same services, in process, on the
//! in-process queue and cache and SQLite.

use cluster_tests::ws::WsClient;
use cluster_tests::{assert_sample_site_result, levels_of, sample_site_levels};
use crawlctl::embedded::{EmbeddedCluster, EmbeddedOptions};
use crawlctl::sample_site::SampleSite;
use serde_json::json;

/// The sample site and an embedded cluster allowed to crawl loopback.
async fn site_and_cluster() -> (SampleSite, EmbeddedCluster) {
    let site = SampleSite::start().await.unwrap();
    let cluster = EmbeddedCluster::start(EmbeddedOptions {
        allow_network: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    (site, cluster)
}

#[tokio::test]
async fn the_embedded_cluster_crawls_the_sample_site_at_each_depth() {
    let (site, cluster) = site_and_cluster().await;
    let base = format!("http://{}", site.addr);
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    // Shallow first, so each depth is a real crawl and not a cache answer.
    for depth in 0..=3 {
        let job = format!("depth-{depth}");
        client.submit(&job, &site.start_url(), depth).await;
        let accepted = client
            .next_where(|m| m["type"] == "accepted" && m["jobId"] == job)
            .await;
        assert_eq!(accepted["url"], site.start_url());
        let result = client.result(&job).await;
        assert_eq!(result["cached"], false);
        assert_sample_site_result(&result, &base, depth);
    }
    assert_eq!(
        cluster
            .master_stats
            .jobs_completed
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_repeat_is_served_from_the_cache_and_status_survives_a_reconnect() {
    let (site, cluster) = site_and_cluster().await;
    let base = format!("http://{}", site.addr);
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("first", &site.start_url(), 2).await;
    let first = client.result("first").await;
    let started = cluster
        .master_stats
        .jobs_started
        .load(std::sync::atomic::Ordering::Relaxed);

    // Legacy form, shallower: trimmed from the cache, no master involved.
    client
        .send_json(&json!({"jobId": "again", "urlToCrawl": site.start_url(), "depthToCrawl": 1}))
        .await;
    let again = client.result("again").await;
    assert_eq!(again["cached"], true);
    assert_eq!(levels_of(&again), sample_site_levels(&base, 1));
    assert_eq!(
        cluster
            .master_stats
            .jobs_started
            .load(std::sync::atomic::Ordering::Relaxed),
        started
    );

    let client_id = client.client_id.clone();
    drop(client);
    let mut back = WsClient::reconnect(&cluster.ws_url(), &client_id).await;
    back.send_json(&json!({"type": "status", "jobId": "first"}))
        .await;
    let status = back.result("first").await;
    assert_eq!(status["levels"], first["levels"]);
    assert_eq!(status["pages"], first["pages"]);

    // Another client cannot read it.
    let mut stranger = WsClient::connect(&cluster.ws_url()).await;
    stranger
        .send_json(&json!({"type": "status", "jobId": "first"}))
        .await;
    assert_eq!(stranger.error().await["code"], "unknown_job");
    cluster.stop().await;
}

#[tokio::test]
async fn loopback_is_refused_without_the_allow_rule_and_the_connection_stays_usable() {
    let site = SampleSite::start().await.unwrap();
    let cluster = EmbeddedCluster::start(EmbeddedOptions::default())
        .await
        .unwrap();
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J1", &site.start_url(), 1).await;
    let error = client.error().await;
    assert_eq!(error["code"], "forbidden_address");
    assert_eq!(error["jobId"], "J1");
    assert!(
        error["message"].as_str().unwrap().contains("loopback"),
        "{error}"
    );
    client.submit("J2", "http://localhost/", 0).await;
    assert_eq!(client.error().await["code"], "forbidden_address");
    client
        .submit("J3", "http://169.254.169.254/latest/meta-data/", 0)
        .await;
    assert_eq!(client.error().await["code"], "forbidden_address");
    cluster.stop().await;
}
