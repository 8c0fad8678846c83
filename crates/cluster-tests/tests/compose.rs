//! The docker-compose cluster, for real. `scripts/compose-test` brings the
//! cluster up with podman and runs this test against it; the regular suite
//! skips it (no containers there). Through HAProxy, with the legacy message
//! form, it crawls a site served on this machine, kills the master container
//! running the job in the middle of a level, and checks that the job still
//! completes with the same levels.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use serde_json::json;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The container of a compose service, by the label compose sets.
fn container(service: &str) -> String {
    let output = Command::new("podman")
        .args([
            "ps",
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .expect("run podman ps");
    let name = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(!name.is_empty(), "no running container for {service}");
    name
}

fn logs(container: &str) -> String {
    let output = Command::new("podman")
        .args(["logs", container])
        .output()
        .expect("run podman logs");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// Waits (with a deadline) until one of the services' logs holds `needle`.
async fn service_that_logged(services: &[&str], needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        for service in services {
            if logs(&container(service)).contains(needle) {
                return service.to_string();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no service of {services:?} logged `{needle}`"
        );
        tick.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster; scripts/compose-test runs it"]
async fn the_compose_cluster_crawls_through_haproxy_and_survives_a_master_kill() {
    let ws = var("CRAWLER_COMPOSE_WS", "ws://127.0.0.1:8080/ws");
    let bind = var("CRAWLER_COMPOSE_SITE_BIND", "10.89.240.1:0");
    let site = TestSite::serve_on(&bind, SitePlan::tree(&[3, 2]).gate_depth(2)).await;
    // The cluster's gateways need an API token; scripts/compose-test makes one.
    let token = var("CRAWLER_COMPOSE_TOKEN", "");
    let started = Instant::now();
    let mut client = WsClient::connect(&format!("{ws}?token={token}")).await;
    client
        .send_json(&json!({"jobId": "compose", "urlToCrawl": site.url("/"), "depthToCrawl": 2}))
        .await;
    let accepted = client.next_where(|m| m["jobId"] == "compose").await;
    assert_eq!(accepted["type"], "accepted", "{accepted}");

    site.gated_requests(1).await;
    let masters = ["master-1", "master-2"];
    let holder = service_that_logged(&masters, "crawl started").await;
    let heir = masters.iter().find(|m| **m != holder).expect("two masters");
    let killed = Instant::now();
    let status = Command::new("podman")
        .args(["kill", "--signal", "KILL", &container(&holder)])
        .status()
        .expect("run podman kill");
    assert!(status.success());
    service_that_logged(&[heir], "took over an orphaned job").await;
    println!(
        "{holder} killed; {heir} took the job over after {:.2} s",
        killed.elapsed().as_secs_f64()
    );

    site.open_gate();
    let result = client.result("compose").await;
    assert_eq!(levels_of(&result), site.levels(2));
    for path in site.plan().paths_at(1) {
        assert_eq!(
            site.hits(&path),
            1,
            "{path} of a completed level fetched again"
        );
    }
    println!(
        "crawl of {} pages through HAProxy: {:.2} s from submit to result, the takeover included",
        result["pages"].as_array().expect("pages").len(),
        started.elapsed().as_secs_f64()
    );
}
