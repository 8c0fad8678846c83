//! Workers cut off without a TCP reset: a frozen worker process (SIGSTOP)
//! and a worker whose network is black-holed. The master finds the silent
//! worker by its keepalive pings and sends its batches to others; when the
//! network heals the worker reconnects by itself, proves it is registered,
//! and takes work at once, however often it happens.
//!
//! The two bugs Crawlab's workers had here cannot happen: a worker whose
//! network failed during registration gives that try up and registers anew
//! (it never stays connected but unable to get work), and a worker tries
//! again actively after each backoff (it never waits for a connection
//! event that may not come).

use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::processes::{ClusterSpec, start_worker};
use cluster_tests::proxy::{Fault, FaultProxy};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use crawler_core::tls::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_s_batches_go_to_another_within_twenty_seconds() {
    let cluster = ClusterSpec::new(1, 2)
        .master_args(&["--batch-size", "1"])
        .start()
        .await;
    // Level 1 has four pages, held at the gate: each worker holds batches.
    let site = TestSite::serve(SitePlan::tree(&[4]).gate_depth(1)).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 1).await;
    site.gated_requests(4).await;

    let frozen = Instant::now();
    cluster.workers[0].freeze();
    site.open_gate();
    cluster.masters[0]
        .wait_for_log("worker disconnected worker_id=worker-0", 1)
        .await;
    let took = frozen.elapsed();
    println!(
        "a frozen worker's batches re-dispatched {:.1} s after it froze",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let result = client.result("J").await;
    assert_eq!(levels_of(&result), site.levels(1));
    cluster.workers[0].thaw();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_worker_is_back_at_work_within_seconds_of_the_heal_every_time() {
    const RUNS: usize = 10;
    let keepalive = ["--worker-keepalive-secs", "1"];
    let cluster = ClusterSpec::new(1, 0).master_args(&keepalive).start().await;
    let proxy = FaultProxy::start(cluster.masters[0].addr().parse().unwrap()).await;
    let mut args = vec!["--keepalive-secs", "1", "--register-timeout-secs", "1"];
    let tls = cluster.tls_args(Role::Worker);
    args.extend(tls.iter().map(String::as_str));
    let worker = start_worker(0, &[format!("http://{}", proxy.addr())], &args).await;
    cluster.masters[0].wait_for_log("worker connected", 1).await;
    let site = TestSite::serve(SitePlan::tree(&[])).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;

    let mut back_after = Vec::new();
    for run in 0..RUNS {
        // The network goes silent; the master notices the silent worker.
        let failed_tries = worker.count_log("cannot reach master; retrying");
        proxy.set(Fault::BlackHole);
        cluster.masters[0]
            .wait_for_log("worker disconnected", run + 1)
            .await;
        // A job arrives while the only worker is away, and waits for it.
        let job = format!("J{run}");
        let page = format!("/?run={run}");
        client.submit(&job, &site.url(&page), 0).await;
        client.next_where(|m| m["jobId"] == job.as_str()).await;
        // The worker tries again and fails at least once, then the network heals.
        worker
            .wait_for_log("cannot reach master; retrying", failed_tries + 1)
            .await;
        let registrations = worker.count_log("registered with master");
        let healed = Instant::now();
        proxy.set(Fault::Pass);
        let result = client.result(&job).await;
        let took = healed.elapsed();
        assert!(
            worker.count_log("registered with master") > registrations,
            "run {run}: the worker took work without registering again"
        );
        assert_eq!(result["pages"][0]["status"], 200);
        assert_eq!(site.hits("/"), run + 1, "each run's page fetched once");
        println!(
            "run {}: first batch done {:.0} ms after the heal",
            run + 1,
            took.as_secs_f64() * 1000.0
        );
        back_after.push(took);
    }
    back_after.sort();
    let median = back_after[RUNS / 2];
    let worst = back_after[RUNS - 1];
    println!(
        "back at work after the heal: median {:.0} ms, worst {:.0} ms, over {RUNS} runs",
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    assert!(worst <= Duration::from_secs(5), "worst {worst:?}");
    assert!(median <= Duration::from_secs(1), "median {median:?}");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_its_deadline_is_sent_again_and_the_first_answer_counts() {
    let cluster = ClusterSpec::new(1, 2)
        .master_args(&["--batch-deadline-secs", "1"])
        .worker_args(&["--request-timeout-ms", "60000"])
        .start()
        .await;
    // The worker that gets the page waits at the gate far past the
    // deadline, while answering pings: only the deadline notices.
    let site = TestSite::serve(SitePlan::tree(&[]).gate_depth(0)).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 0).await;
    cluster.masters[0]
        .wait_for_log("a batch passed its deadline", 1)
        .await;
    site.gated_requests(2).await;
    site.open_gate();
    let result = client.result("J").await;
    assert_eq!(
        result["pages"].as_array().unwrap().len(),
        1,
        "one page, once"
    );
    assert_eq!(site.hits("/"), 2, "fetched twice; one answer kept");
    cluster.cleanup().await;
}
