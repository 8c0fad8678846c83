//! The chaos suite: the whole cluster under one fault at a time, with a
//! workload running. Each scenario first runs the workload fault-free (the
//! latency reference), then again while the fault strikes in its middle,
//! and checks that nothing accepted was lost, duplicated or failed. The
//! soak (`cargo run -p cluster-tests --release --bin chaos-soak`, see
//! docs/chaos.md) does the same with a thousand jobs and a fault every 5 s.

use std::time::Duration;

use cluster_tests::chaos::{self, Report, Workload};
use cluster_tests::engines::{PrivatePostgres, PrivateRabbit, PrivateRedis};
use cluster_tests::processes::{Cluster, ClusterSpec, EngineUrls, Service, start_worker};
use cluster_tests::proxy::{Fault, FaultProxy};
use cluster_tests::site::{SitePlan, TestSite};
use crawler_core::tls::Role;

/// Small crawls (4 pages, each answering after 40 ms) from a few clients.
fn workload(site: &TestSite, clients: usize, jobs: usize) -> Workload {
    Workload {
        clients,
        jobs_per_client: jobs,
        pace: Duration::from_millis(250),
        url: site.url("/"),
        depth: 1,
        patience: Duration::from_secs(90),
        spread: false,
    }
}

async fn site() -> TestSite {
    TestSite::serve(SitePlan::tree(&[3]).slow(Duration::from_millis(40))).await
}

fn gateways(cluster: &Cluster) -> Vec<String> {
    std::iter::once(&cluster.gateway)
        .chain(&cluster.other_gateways)
        .map(|g| format!("ws://{}/ws", g.addr()))
        .collect()
}

/// The fault-free reference run of `workload`.
async fn reference(workload: &Workload, gateways: &[String], label: &str) -> Report {
    let (histories, reconnects) = chaos::run(workload, gateways, &format!("{label}-ref")).await;
    let report = Report::of(&histories, reconnects);
    report.assert_clean(&format!("{label}, fault-free"));
    report
}

/// Prints the two rows and checks the faulted one.
fn verdict(label: &str, reference: &Report, faulted: &Report) {
    println!("{}", Report::header());
    println!("{}", reference.row(&format!("{label}, fault-free")));
    println!("{}", faulted.row(label));
    faulted.assert_clean(label);
}

/// The first master to start crawls of the faulted run (two each).
async fn busy_master(cluster: &Cluster, before: &[usize]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for (i, master) in cluster.masters.iter().enumerate() {
            if master.count_log("crawl started") >= before[i] + 2 {
                return i;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no master started crawling"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the workload in the background.
fn start(
    workload: &Workload,
    gateways: Vec<String>,
    label: &str,
) -> tokio::task::JoinHandle<(Vec<chaos::JobHistory>, usize)> {
    let (workload, tag) = (workload.clone(), label.to_string());
    tokio::spawn(async move { chaos::run(&workload, &gateways, &tag).await })
}

/// Waits until `service` logged `needle` `more` times beyond what it had
/// logged when `from` was read: the faulted run's events, not the reference's.
async fn logged_more(service: &Service, needle: &str, from: usize, more: usize) {
    service.wait_for_log(needle, from + more).await;
}

async fn finish(run: tokio::task::JoinHandle<(Vec<chaos::JobHistory>, usize)>) -> Report {
    let (histories, reconnects) = run.await.expect("the workload ran");
    Report::of(&histories, reconnects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_master_killed() {
    let mut cluster = ClusterSpec::new(2, 2).start().await;
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "master -9").await;
    let before: Vec<usize> = cluster
        .masters
        .iter()
        .map(|m| m.count_log("crawl started"))
        .collect();
    let run = start(&work, gws, "master-kill");
    let busy = busy_master(&cluster, &before).await;
    cluster.masters[busy].kill();
    verdict("a master killed (-9)", &reference, &finish(run).await);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_master_stopped() {
    let cluster = ClusterSpec::new(2, 2).start().await;
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "master TERM").await;
    let before: Vec<usize> = cluster
        .masters
        .iter()
        .map(|m| m.count_log("crawl started"))
        .collect();
    let run = start(&work, gws, "master-term");
    let busy = busy_master(&cluster, &before).await;
    cluster.masters[busy].terminate();
    verdict("a master stopped (SIGTERM)", &reference, &finish(run).await);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_worker_killed() {
    let mut cluster = ClusterSpec::new(1, 2).start().await;
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "worker -9").await;
    let from = cluster.masters[0].count_log("crawl started");
    let run = start(&work, gws, "worker-kill");
    logged_more(&cluster.masters[0], "crawl started", from, 6).await;
    cluster.workers[0].kill();
    verdict("a worker killed (-9)", &reference, &finish(run).await);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_worker_black_holed_and_healed() {
    let keepalive = ["--worker-keepalive-secs", "1"];
    let cluster = ClusterSpec::new(1, 1).master_args(&keepalive).start().await;
    let proxy = FaultProxy::start(cluster.masters[0].addr().parse().unwrap()).await;
    let mut args = vec!["--keepalive-secs", "1", "--register-timeout-secs", "1"];
    let tls = cluster.tls_args(Role::Worker);
    args.extend(tls.iter().map(String::as_str));
    let cut_off = start_worker(7, &[format!("http://{}", proxy.addr())], &args).await;
    cluster.masters[0].wait_for_log("worker connected", 2).await;
    let site = site().await;
    // Long enough for ten cycles of cut, detection and heal.
    let work = workload(&site, 4, 130);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "worker black hole").await;
    let run = start(&work, gws, "worker-blackhole");
    let master = &cluster.masters[0];
    for _ in 0..10 {
        // Strike while the worker is connected and the run is crawling.
        let (started, gone) = (
            master.count_log("crawl started"),
            master.count_log("worker disconnected worker_id=worker-7"),
        );
        logged_more(master, "crawl started", started, 4).await;
        proxy.set(Fault::BlackHole);
        logged_more(master, "worker disconnected worker_id=worker-7", gone, 1).await;
        // Healed once the worker has its master's answer: a stream the
        // master accepted may still lose that answer to the next cut, and
        // the worker then registers again on a new one.
        let registered = cut_off.count_log("registered with master");
        proxy.set(Fault::Pass);
        logged_more(&cut_off, "registered with master", registered, 1).await;
    }
    verdict(
        "a worker black-holed and healed, 10 times",
        &reference,
        &finish(run).await,
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_gateway_killed_while_fifty_clients_wait() {
    let mut cluster = ClusterSpec::new(1, 2).gateways(2).start().await;
    let site = site().await;
    let work = Workload {
        pace: Duration::from_millis(400),
        ..workload(&site, 50, 3)
    };
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "gateway -9").await;
    let from = cluster.masters[0].count_log("crawl started");
    let run = start(&work, gws, "gateway-kill");
    logged_more(&cluster.masters[0], "crawl started", from, 60).await;
    cluster.gateway.kill();
    let faulted = finish(run).await;
    verdict(
        "a gateway killed (-9), 50 clients waiting",
        &reference,
        &faulted,
    );
    assert!(faulted.reconnects >= 50, "every client moved: {faulted:?}");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_the_lock_server_leader_killed() {
    let mut cluster = ClusterSpec::new(2, 2).lock_servers(2).start().await;
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "lock leader -9").await;
    let from = cluster.locks[0].count_log("lease granted");
    let run = start(&work, gws, "lock-kill");
    logged_more(&cluster.locks[0], "lease granted", from, 6).await;
    cluster.locks[0].kill();
    verdict(
        "the lock-server leader killed (-9)",
        &reference,
        &finish(run).await,
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rabbitmq_restarted() {
    let mut rabbit = PrivateRabbit::start().await;
    let engines = EngineUrls {
        amqp: rabbit.url(),
        ..EngineUrls::from_env()
    };
    let cluster = ClusterSpec::new(1, 2).engines(engines).start().await;
    let site = site().await;
    let work = workload(&site, 4, 8);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "rabbitmq restart").await;
    let from = cluster.masters[0].count_log("crawl started");
    let run = start(&work, gws, "rabbit-restart");
    logged_more(&cluster.masters[0], "crawl started", from, 6).await;
    rabbit.down().await;
    rabbit.up().await;
    verdict("RabbitMQ restarted", &reference, &finish(run).await);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_restarted() {
    let mut redis = PrivateRedis::start().await;
    let engines = EngineUrls {
        redis: redis.url(),
        ..EngineUrls::from_env()
    };
    let cluster = ClusterSpec::new(1, 2).engines(engines).start().await;
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "redis restart").await;
    let from = cluster.masters[0].count_log("crawl started");
    let run = start(&work, gws, "redis-restart");
    logged_more(&cluster.masters[0], "crawl started", from, 6).await;
    redis.down().await;
    redis.up().await;
    verdict("Redis restarted", &reference, &finish(run).await);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_postgres_restarted() {
    let postgres = PrivatePostgres::start().await;
    let engines = EngineUrls {
        postgres_server: postgres.server_url(),
        ..EngineUrls::from_env()
    };
    let cluster = ClusterSpec::new(1, 2).engines(engines).start().await;
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "postgres restart").await;
    let from = cluster.masters[0].count_log("crawl started");
    let run = start(&work, gws, "postgres-restart");
    logged_more(&cluster.masters[0], "crawl started", from, 6).await;
    postgres.down().await;
    postgres.up().await;
    verdict("Postgres restarted", &reference, &finish(run).await);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_publishes_cut_after_the_insert() {
    let cluster = ClusterSpec::new(1, 2).gateway_amqp_proxy().start().await;
    let proxy = cluster.gateway_amqp_proxy.as_ref().unwrap();
    let site = site().await;
    let work = workload(&site, 4, 6);
    let gws = gateways(&cluster);
    let reference = reference(&work, &gws, "publish cut").await;
    let from = cluster.masters[0].count_log("crawl started");
    let run = start(&work, gws, "publish-cut");
    logged_more(&cluster.masters[0], "crawl started", from, 6).await;
    proxy.set(Fault::Reset);
    cluster
        .gateway
        .wait_for_log("cannot publish the job now; the outbox will", 1)
        .await;
    proxy.set(Fault::Pass);
    verdict(
        "the gateway's publishes cut after the insert",
        &reference,
        &finish(run).await,
    );
    cluster.cleanup().await;
}
