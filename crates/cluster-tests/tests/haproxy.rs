//! The real `haproxy`, with the repository's `haproxy/haproxy.cfg`, in front
//! of two gateway processes: clients are spread over both, and when one
//! gateway dies its clients reconnect through HAProxy to the other and get
//! their results there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cluster_tests::levels_of;
use cluster_tests::processes::{ClusterSpec, Service, http_get};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use serde_json::json;

const CLIENTS: usize = 100;

fn config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../haproxy/haproxy.cfg")
}

fn haproxy() -> Command {
    let found = Command::new("haproxy").arg("-v").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "haproxy is not installed (scripts/test installs it; Debian: apt-get install haproxy)"
    );
    Command::new("haproxy")
}

/// A free loopback port (the small race with another taker is harmless here).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn the_configuration_is_valid() {
    let output = haproxy()
        .args(["-c", "-f"])
        .arg(config())
        .env("GATEWAY_1", "127.0.0.1:1")
        .env("GATEWAY_2", "127.0.0.1:2")
        .output()
        .expect("run haproxy -c");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_two_gateways_and_survive_one_of_them_dying() {
    let mut cluster = ClusterSpec::new(2, 2)
        .master_args(&["--max-jobs", "50"])
        .gateways(2)
        .start()
        .await;
    let (listen, stats) = (free_port(), free_port());
    let mut command = haproxy();
    command
        .arg("-db")
        .arg("-f")
        .arg(config())
        .env("HAPROXY_LISTEN", format!("127.0.0.1:{listen}"))
        .env("HAPROXY_STATS", format!("127.0.0.1:{stats}"))
        // This machine allows 20,000 open files; HAProxy wants two per connection.
        .env("HAPROXY_MAXCONN", "5000")
        .env("GATEWAY_1", cluster.gateway.addr())
        .env("GATEWAY_2", cluster.other_gateways[0].addr());
    let _haproxy = Service::spawn("haproxy", command, false).await;
    let stats_addr = format!("127.0.0.1:{stats}");
    wait_until_both_up(&stats_addr).await;

    // Every job is held at the site's gate until the test opens it.
    let site = TestSite::serve(SitePlan::tree(&[]).gate_depth(0)).await;
    let front = format!("ws://127.0.0.1:{listen}/ws");
    let job_url = |i: usize| site.url(&format!("/?client={i}"));
    let mut clients = Vec::new();
    let mut per_gateway: HashMap<String, usize> = HashMap::new();
    for i in 0..CLIENTS {
        let mut client = WsClient::connect(&front).await;
        *per_gateway.entry(client.gateway.clone()).or_default() += 1;
        client.submit("J", &job_url(i), 0).await;
        let accepted = client.next_where(|m| m["jobId"] == "J").await;
        assert_eq!(accepted["type"], "accepted", "{accepted}");
        clients.push(client);
    }
    println!("clients per gateway: {per_gateway:?}");
    assert_eq!(per_gateway.len(), 2, "round robin uses both gateways");
    assert!(
        per_gateway.values().all(|&n| n >= CLIENTS / 3),
        "{per_gateway:?}"
    );

    // Gateway 1 dies; its clients see their connection end, come back through
    // HAProxy with their client id, and submit the same job again (attach).
    let dead_id = cluster
        .gateway
        .logged_value("gateway")
        .expect("a gateway logs its id");
    cluster.gateway.kill();
    let mut moved = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        if client.gateway != dead_id {
            continue;
        }
        client.wait_closed().await;
        let mut back = WsClient::reconnect(&front, &client.client_id).await;
        assert_ne!(back.gateway, dead_id, "HAProxy sent it to the dead gateway");
        // Unasked, it hears where its job stands, and its events follow it.
        let progress = back.next_where(|m| m["jobId"] == "J").await;
        assert_eq!(progress["type"], "progress", "{progress}");
        back.send_json(&json!({"type": "submit", "jobId": "J", "url": job_url(i), "depth": 0}))
            .await;
        let attached = back.next_where(|m| m["jobId"] == "J").await;
        assert_eq!(attached["type"], "accepted", "{attached}");
        *client = back;
        moved += 1;
    }
    assert!(moved >= CLIENTS / 3, "{moved} clients moved");

    site.open_gate();
    for (i, client) in clients.iter_mut().enumerate() {
        let result = client.result("J").await;
        assert_eq!(levels_of(&result).concat().len(), 1, "client {i}: {result}");
    }
    cluster.cleanup().await;
}

/// Waits (with a deadline) until HAProxy's Prometheus endpoint reports both
/// gateways up.
async fn wait_until_both_up(stats: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (_, metrics) = http_get(stats, "/metrics").await;
        let up = metrics
            .lines()
            .filter(|l| l.starts_with("haproxy_server_status{") && l.contains("state=\"UP\""))
            .filter(|l| l.trim_end().ends_with(" 1"))
            .count();
        if up == 2 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy never saw both gateways up:\n{metrics}"
        );
        tick.tick().await;
    }
}
