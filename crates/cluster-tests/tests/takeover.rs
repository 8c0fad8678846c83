//! A master that dies (SIGKILL) or stops (SIGTERM) in the middle of a crawl:
//! another master takes the job over and continues from the last completed
//! level, and the client gets exactly one result, the one an undisturbed
//! crawl gives.

use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::processes::{Cluster, ClusterSpec, http_get, metric_value};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use crawler_core::ports::JobQueue;

/// `/` links 3 pages, each links 2: a depth-2 crawl has levels of 1, 3 and 6
/// pages. Level 2 waits for the gate, so the test can act in its middle.
async fn site() -> TestSite {
    TestSite::serve(SitePlan::tree(&[3, 2]).gate_depth(2)).await
}

/// The job is in level 2, and levels 0 and 1 are durable in the store.
async fn crawl_in_level_two(cluster: &Cluster, site: &TestSite, client: &mut WsClient) -> usize {
    client.submit("J", &site.url("/"), 2).await;
    site.gated_requests(1).await;
    cluster.locks[0].wait_for_log("level saved", 2).await;
    cluster.master_that_logged("crawl started").await
}

/// Exactly the undisturbed result; levels 0 and 1 fetched once each.
async fn assert_resumed_result(cluster: &Cluster, site: &TestSite, client: &mut WsClient) {
    let result = client.result("J").await;
    assert_eq!(levels_of(&result), site.levels(2));
    assert_eq!(result["pages"].as_array().unwrap().len(), 1 + 3 + 6);
    for depth in 0..=1 {
        for path in site.plan().paths_at(depth) {
            assert_eq!(
                site.hits(&path),
                1,
                "{path} of a completed level was fetched again"
            );
        }
    }
    assert_eq!(
        cluster
            .masters
            .iter()
            .map(|m| m.count_log("crawl finished"))
            .sum::<usize>(),
        1,
        "one completion"
    );
    assert_eq!(cluster.queue().await.dead_letter_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_level_is_taken_over_from_its_last_level() {
    let mut cluster = ClusterSpec::new(2, 2)
        .master_args(&["--admin-listen", "127.0.0.1:0"])
        .lock_args(&["--admin-listen", "127.0.0.1:0"])
        .start()
        .await;
    let site = site().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    let holder = crawl_in_level_two(&cluster, &site, &mut client).await;
    let heir = 1 - holder;

    let killed = Instant::now();
    cluster.masters[holder].kill();
    cluster.masters[heir]
        .wait_for_log("took over an orphaned job", 1)
        .await;
    let takeover = killed.elapsed();
    println!(
        "takeover after SIGKILL: {:.2} s (kill to new grant)",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(5),
        "took {takeover:?}; the defaults promise 5 s"
    );
    // It continues from level 2 with the 4 pages of levels 0 and 1.
    cluster.masters[heir]
        .wait_for_log("levels_done=2 pages_kept=4", 1)
        .await;

    site.open_gate();
    assert_resumed_result(&cluster, &site, &mut client).await;
    let (_, metrics) = http_get(&cluster.masters[heir].admin_addr().await, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "crawler_master_pages_resumed_total"),
        Some(4.0),
        "the heir counts the 4 pages of levels 0 and 1 as resumed, not fetched"
    );
    assert_eq!(
        metric_value(&metrics, "crawler_master_jobs_taken_over_total"),
        Some(1.0)
    );
    let (_, metrics) = http_get(&cluster.locks[0].admin_addr().await, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "crawler_lock_server_takeovers_total"),
        Some(1.0)
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_stopped_with_sigterm_hands_its_job_over_at_once() {
    let mut cluster = ClusterSpec::new(2, 2).start().await;
    let site = site().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    let holder = crawl_in_level_two(&cluster, &site, &mut client).await;
    let heir = 1 - holder;

    let stopped = Instant::now();
    cluster.masters[holder].terminate();
    cluster.masters[heir]
        .wait_for_log("took over an orphaned job", 1)
        .await;
    let handover = stopped.elapsed();
    println!("handover after SIGTERM: {:.2} s", handover.as_secs_f64());
    assert!(
        handover < Duration::from_secs(2),
        "took {handover:?}; a graceful stop promises 2 s"
    );
    let status = cluster.masters[holder].wait_for_exit().await;
    assert!(status.success(), "a graceful stop exits cleanly: {status}");
    assert_eq!(
        cluster.masters[holder].count_log("lease released for handover"),
        1
    );

    site.open_gate();
    assert_resumed_result(&cluster, &site, &mut client).await;
    cluster.cleanup().await;
}

#[tokio::test]
async fn a_lease_the_lock_server_would_refuse_is_refused_at_start() {
    // Engines nobody listens on: the refusal must come before any connection.
    let master = tokio::process::Command::new(cluster_tests::processes::binary("master"))
        .args(["--listen", "127.0.0.1:0", "--lease-ttl-ms", "700000"])
        .args(["--amqp-url", "amqp://guest:guest@127.0.0.1:9/%2f"])
        .args(["--redis-url", "redis://127.0.0.1:9/"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(10), master)
        .await
        .expect("the master refused its configuration without waiting for engines")
        .expect("run the master");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--lease-ttl-ms") && stderr.contains("300 to 600000 ms"),
        "{stderr}"
    );
}
