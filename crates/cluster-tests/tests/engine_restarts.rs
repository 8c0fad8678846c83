//! The engines restart under a running cluster: Redis, Postgres, and
//! RabbitMQ (with a 30 s outage). Each test runs its own instance of the
//! engine it restarts (see `cluster_tests::engines`), so the tests beside
//! it keep theirs. Every service reconnects by itself, says it is not ready
//! while an engine it needs is down, and nothing accepted is lost.

use std::time::Duration;

use cluster_tests::engines::{PrivatePostgres, PrivateRabbit, PrivateRedis};
use cluster_tests::levels_of;
use cluster_tests::processes::{ClusterSpec, EngineUrls, Service, http_get};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;

const ADMIN: [&str; 2] = ["--admin-listen", "127.0.0.1:0"];

/// Waits (with a deadline) until `service` answers /readyz with `status`,
/// and returns what it said.
async fn readyz_becomes(service: &Service, addr: &str, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let (got, body) = http_get(addr, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never answered /readyz with {status} (last: {got} {body})",
            service.name
        );
        tick.tick().await;
    }
}

fn machine_engines() -> EngineUrls {
    EngineUrls::from_env()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_costs_only_cache_misses() {
    let mut redis = PrivateRedis::start().await;
    let engines = EngineUrls {
        redis: redis.url(),
        ..machine_engines()
    };
    let cluster = ClusterSpec::new(1, 1)
        .engines(engines)
        .master_args(&ADMIN)
        .start()
        .await;
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("before", &site.url("/"), 1).await;
    assert_eq!(client.result("before").await["cached"], false);
    client.submit("cached", &site.url("/"), 1).await;
    assert_eq!(client.result("cached").await["cached"], true);

    redis.down().await;
    let master_admin = cluster.masters[0].admin_addr().await;
    let why = readyz_becomes(&cluster.gateway, cluster.gateway.addr(), 503).await;
    assert!(why.contains("the cache"), "{why}");
    readyz_becomes(&cluster.masters[0], &master_admin, 503).await;
    // Without its cache the cluster still crawls.
    client.submit("during", &site.url("/"), 1).await;
    let during = client.result("during").await;
    assert_eq!(levels_of(&during), site.levels(1));
    assert_eq!(during["cached"], false);

    redis.up().await;
    readyz_becomes(&cluster.gateway, cluster.gateway.addr(), 200).await;
    readyz_becomes(&cluster.masters[0], &master_admin, 200).await;
    // The restarted cache is empty: a miss, a crawl, then a hit again.
    client.submit("after", &site.url("/"), 1).await;
    assert_eq!(client.result("after").await["cached"], false);
    client.submit("again", &site.url("/"), 1).await;
    assert_eq!(client.result("again").await["cached"], true);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_nothing_accepted() {
    let postgres = PrivatePostgres::start().await;
    let engines = EngineUrls {
        postgres_server: postgres.server_url(),
        ..machine_engines()
    };
    let cluster = ClusterSpec::new(1, 1)
        .engines(engines)
        .lock_args(&ADMIN)
        .start()
        .await;
    let site = TestSite::serve(SitePlan::tree(&[2, 2]).gate_depth(2)).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 2).await;
    site.gated_requests(1).await;

    postgres.down().await;
    let lock_admin = cluster.locks[0].admin_addr().await;
    let why = readyz_becomes(&cluster.gateway, cluster.gateway.addr(), 503).await;
    assert!(why.contains("the job store"), "{why}");
    readyz_becomes(&cluster.locks[0], &lock_admin, 503).await;
    // A job the gateway cannot record is refused, not accepted and lost.
    client.submit("refused", &site.url("/?other"), 1).await;
    let refused = client.next_where(|m| m["jobId"] == "refused").await;
    assert_eq!(refused["code"], "unavailable", "{refused}");

    postgres.up().await;
    readyz_becomes(&cluster.gateway, cluster.gateway.addr(), 200).await;
    readyz_becomes(&cluster.locks[0], &lock_admin, 200).await;
    site.open_gate();
    let result = client.result("J").await;
    assert_eq!(levels_of(&result), site.levels(2));
    client.submit("after", &site.url("/?after"), 1).await;
    client.result("after").await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_with_a_thirty_second_outage_loses_nothing_accepted() {
    let mut rabbit = PrivateRabbit::start().await;
    let engines = EngineUrls {
        amqp: rabbit.url(),
        ..machine_engines()
    };
    let cluster = ClusterSpec::new(1, 1)
        .engines(engines)
        .master_args(&ADMIN)
        .start()
        .await;
    let site = TestSite::serve(SitePlan::tree(&[2, 2]).gate_depth(2)).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("running", &site.url("/"), 2).await;
    site.gated_requests(1).await;

    rabbit.down().await;
    let master_admin = cluster.masters[0].admin_addr().await;
    let why = readyz_becomes(&cluster.gateway, cluster.gateway.addr(), 503).await;
    assert!(why.contains("the queue"), "{why}");
    readyz_becomes(&cluster.masters[0], &master_admin, 503).await;
    // Accepted while the broker is down: recorded, and published by the
    // outbox once it is back.
    client.submit("queued", &site.url("/?queued"), 1).await;
    let accepted = client.next_where(|m| m["jobId"] == "queued").await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");
    // The running crawl finishes during the outage; its result waits.
    site.open_gate();
    cluster.masters[0].wait_for_log("crawl finished", 1).await;
    let outage = Duration::from_secs(30);
    tokio::time::sleep(outage).await; // the outage itself, not a wait for an event

    rabbit.up().await;
    readyz_becomes(&cluster.gateway, cluster.gateway.addr(), 200).await;
    readyz_becomes(&cluster.masters[0], &master_admin, 200).await;
    let running = client.result("running").await;
    assert_eq!(levels_of(&running), site.levels(2));
    let queued = client.result("queued").await;
    assert_eq!(queued["pages"].as_array().unwrap().len(), 3);
    let results: Vec<_> = client
        .backlog()
        .iter()
        .filter(|m| m["type"] == "result")
        .collect();
    assert!(results.is_empty(), "no second result: {results:?}");
    cluster.cleanup().await;
}
