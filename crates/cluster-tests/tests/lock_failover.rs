//! The lock service survives its leader's death and its own unreachability:
//! the leader killed with SIGKILL during an Acquire, during heartbeats and
//! during a Complete, and the lock service cut off for 10 s while a master
//! completes. Every job ends with one result; nothing is dead-lettered,
//! taken over needlessly, or completed twice.

use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::processes::{Cluster, ClusterSpec};
use cluster_tests::proxy::Fault;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use crawler_core::ports::JobQueue;

/// Two lock-server replicas (lock-0 leads), two masters, one worker.
async fn replicated() -> Cluster {
    ClusterSpec::new(2, 1).lock_servers(2).start().await
}

/// `/` links 2 pages, each links 2; the gated depth waits for the test.
async fn site(gated_depth: u32) -> TestSite {
    TestSite::serve(SitePlan::tree(&[2, 2]).gate_depth(gated_depth)).await
}

/// Job `J` crawls the gated site and is held in the middle of level 2,
/// with levels 0 and 1 durable (lock-0 leads, and saved them).
async fn crawl_held_in_level_two(cluster: &Cluster) -> (TestSite, WsClient) {
    let site = site(2).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 2).await;
    site.gated_requests(1).await;
    cluster.locks[0].wait_for_log("level saved", 2).await;
    (site, client)
}

/// Waits until lock-1 leads, and returns how long that took since `silent`.
async fn new_leader_after(cluster: &Cluster, silent: Instant) -> Duration {
    cluster.locks[1]
        .wait_for_log("became the lock service leader", 1)
        .await;
    let took = silent.elapsed();
    println!("new lock service leader after {:.2} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}; the promise is 5 s"
    );
    took
}

/// One correct result, one completion, one grant, no takeover, nothing dead-lettered.
async fn assert_one_clean_result(cluster: &Cluster, site: &TestSite, client: &mut WsClient) {
    let result = client.result("J").await;
    assert_eq!(levels_of(&result), site.levels(2));
    let total = |needle: &str, services: &[cluster_tests::processes::Service]| -> usize {
        services.iter().map(|s| s.count_log(needle)).sum()
    };
    assert_eq!(
        total("crawl finished", &cluster.masters),
        1,
        "one completion"
    );
    assert_eq!(total("lease granted", &cluster.locks), 1, "one grant");
    assert_eq!(
        total("job taken over", &cluster.locks),
        0,
        "no needless takeover"
    );
    assert_eq!(cluster.queue().await.dead_letter_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_during_an_acquire() {
    let mut cluster = replicated().await;
    let site = site(9).await;
    site.open_gate();
    let mut client = WsClient::connect(&cluster.ws_url()).await;

    // The leader freezes, so the Acquire that follows hangs on it; then it dies.
    cluster.locks[0].freeze();
    let silent = Instant::now();
    client.submit("J", &site.url("/"), 2).await;
    let master = cluster.master_that_logged("job received").await;
    cluster.locks[0].kill();
    new_leader_after(&cluster, silent).await;
    assert!(
        cluster.masters[master].count_log("call=acquire") >= 1,
        "the first Acquire failed"
    );

    assert_one_clean_result(&cluster, &site, &mut client).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_during_heartbeats() {
    let mut cluster = replicated().await;
    let (site, mut client) = crawl_held_in_level_two(&cluster).await;

    // The job's lease runs out while no replica leads; the new leader's grace
    // lets its master renew it before the other master could take it over.
    cluster.locks[0].kill();
    let silent = Instant::now();
    new_leader_after(&cluster, silent).await;
    let master = cluster.master_that_logged("crawl started").await;
    cluster.masters[master]
        .wait_for_log("switching lock server replica", 1)
        .await;

    site.open_gate();
    assert_one_clean_result(&cluster, &site, &mut client).await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_during_a_complete() {
    let mut cluster = replicated().await;
    let (site, mut client) = crawl_held_in_level_two(&cluster).await;

    // Frozen, the leader holds the Complete that the open gate lets through.
    cluster.locks[0].freeze();
    let silent = Instant::now();
    site.open_gate();
    let master = cluster.master_that_logged("completing the job").await;
    cluster.locks[0].kill();
    new_leader_after(&cluster, silent).await;
    assert_eq!(cluster.masters[master].count_log("dropping this result"), 0);

    assert_one_clean_result(&cluster, &site, &mut client).await;
    assert_eq!(cluster.locks[1].count_log("job completed"), 1);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_outlives_ten_seconds_without_the_lock_service() {
    let cluster = ClusterSpec::new(1, 1).lock_proxies().start().await;
    let (site, mut client) = crawl_held_in_level_two(&cluster).await;

    // The network to the lock service goes silent (no reset), the crawl
    // ends, and the master keeps its result through the whole outage.
    cluster.lock_proxies[0].set(Fault::BlackHole);
    site.open_gate();
    cluster.masters[0]
        .wait_for_log("completing the job", 1)
        .await;
    let outage = Duration::from_secs(10);
    tokio::time::sleep(outage).await; // the fault itself, not a wait for an event
    assert_eq!(cluster.masters[0].count_log("crawl finished"), 0);
    cluster.lock_proxies[0].set(Fault::Pass);
    let healed = Instant::now();

    assert_one_clean_result(&cluster, &site, &mut client).await;
    println!(
        "result delivered {:.2} s after the lock service came back",
        healed.elapsed().as_secs_f64()
    );
    cluster.cleanup().await;
}
