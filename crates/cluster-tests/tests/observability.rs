//! Every service answers /healthz and /readyz, and its /metrics carries the
//! named metrics, which move when the cluster crawls.

use std::time::Duration;

use cluster_tests::processes::{ClusterSpec, Service, http_get, metric_value};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;

const ADMIN: [&str; 2] = ["--admin-listen", "127.0.0.1:0"];

/// The service's probes answer 200, each named counter has grown since
/// `before` (some grow a moment after the client has its result, such as a
/// publish counted once its confirm arrives: they are given a deadline),
/// and each named gauge is above zero.
async fn assert_probed_and_moved(
    service: &Service,
    addr: &str,
    before: &str,
    counters: &[&str],
    gauges: &[&str],
) {
    for probe in ["/healthz", "/readyz"] {
        let (status, body) = http_get(addr, probe).await;
        assert_eq!(status, 200, "{} {probe}: {body}", service.name);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        let (status, metrics) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{} /metrics", service.name);
        let grew = |name: &&str| {
            let was = metric_value(before, name).unwrap_or(0.0);
            metric_value(&metrics, name).is_some_and(|now| now > was)
        };
        let positive = |name: &&str| metric_value(&metrics, name).is_some_and(|v| v > 0.0);
        let still = counters
            .iter()
            .find(|name| !grew(name))
            .or_else(|| gauges.iter().find(|name| !positive(name)));
        let Some(still) = still else { return };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {still} did not move (before the crawl:\n{before}\nafter:\n{metrics})",
            service.name
        );
        tick.tick().await;
    }
}

async fn scrape(addr: &str) -> String {
    http_get(addr, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_probed_and_its_metrics_move_with_a_crawl() {
    let cluster = ClusterSpec::new(1, 1)
        .lock_args(&ADMIN)
        .master_args(&ADMIN)
        .worker_args(&ADMIN)
        .start()
        .await;
    let site = TestSite::serve(SitePlan::tree(&[3])).await;
    let gateway_admin = cluster.gateway.addr().to_string();
    let master_admin = cluster.masters[0].admin_addr().await;
    let lock_admin = cluster.locks[0].admin_addr().await;
    let worker_admin = cluster.workers[0].admin_addr().await;
    let before = [
        scrape(&gateway_admin).await,
        scrape(&master_admin).await,
        scrape(&lock_admin).await,
        scrape(&worker_admin).await,
    ];
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 1).await;
    client.result("J").await;

    assert_probed_and_moved(
        &cluster.gateway,
        &gateway_admin,
        &before[0],
        &[
            "crawler_gateway_jobs_accepted_total",
            "crawler_gateway_jobs_published_total",
            "crawler_gateway_events_consumed_total",
            "crawler_gateway_results_delivered_total",
        ],
        &["crawler_gateway_connections"],
    )
    .await;
    assert_probed_and_moved(
        &cluster.masters[0],
        &master_admin,
        &before[1],
        &[
            "crawler_master_jobs_consumed_total",
            "crawler_master_jobs_started_total",
            "crawler_master_jobs_completed_total",
            "crawler_master_jobs_ended_total{outcome=\"done\"}",
            "crawler_master_job_duration_seconds_count",
            "crawler_master_results_published_total",
        ],
        &["crawler_master_workers_connected"],
    )
    .await;
    assert_probed_and_moved(
        &cluster.locks[0],
        &lock_admin,
        &before[2],
        &[
            "crawler_lock_server_leases_granted_total",
            "crawler_lock_server_completions_total{outcome=\"done\"}",
        ],
        &["crawler_lock_server_leader"],
    )
    .await;
    assert_probed_and_moved(
        &cluster.workers[0],
        &worker_admin,
        &before[3],
        &[
            "crawler_worker_pages_fetched_total{status=\"2xx\"}",
            "crawler_worker_fetch_duration_seconds_count",
            "crawler_worker_batches_total",
        ],
        &["crawler_worker_masters_registered"],
    )
    .await;
    cluster.cleanup().await;
}
