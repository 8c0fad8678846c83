//! crawlctl against a real cluster: each way a crawl can fail has its own
//! exit code, and a connection that drops in the middle of a job is opened
//! again as the same client, and the result still arrives.

use std::process::Output;

use cluster_tests::processes::{ClusterSpec, binary};
use cluster_tests::proxy::{Fault, FaultProxy};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;

async fn crawlctl(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(binary("crawlctl"))
        .arg("crawl")
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("crawlctl ended")
        .expect("run crawlctl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_failure_has_its_exit_code() {
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&["--max-connections", "2"])
        .start()
        .await;
    let gateway = cluster.ws_url();

    // Bad input: the gateway refuses the request as it is.
    let bad = crawlctl(&["ftp://files.example/", "--gateway", &gateway]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("unsupported_scheme"),
        "{}",
        stderr(&bad)
    );

    // The crawl fails: the spider it names does not exist.
    let site = TestSite::serve(SitePlan::tree(&[1])).await;
    let failed = crawlctl(&[&site.url("/"), "--gateway", &gateway, "--spider", "nowhere"]).await;
    assert_eq!(failed.status.code(), Some(4), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("crawl_failed"),
        "{}",
        stderr(&failed)
    );

    // Refused: the gateway holds its maximum of connections.
    let _holding = [
        WsClient::connect(&gateway).await,
        WsClient::connect(&gateway).await,
    ];
    let refused = crawlctl(&[&site.url("/"), "--gateway", &gateway]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("maximum of 2 connections"),
        "{}",
        stderr(&refused)
    );

    // Connection lost: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("ws://127.0.0.1:{port}/ws");
    let lost = crawlctl(&[&site.url("/"), "--gateway", &nowhere]).await;
    assert_eq!(lost.status.code(), Some(5), "{}", stderr(&lost));
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_job_is_reopened_and_the_result_arrives() {
    let cluster = ClusterSpec::new(1, 1).start().await;
    let proxy = FaultProxy::start(cluster.gateway.addr().parse().unwrap()).await;
    let site = TestSite::serve(SitePlan::tree(&[2]).gate_depth(1)).await;
    let through_proxy = format!("ws://{}/ws", proxy.addr());
    let url = site.url("/");
    let run = tokio::spawn(async move {
        crawlctl(&[&url, "--depth", "1", "--gateway", &through_proxy, "--json"]).await
    });

    // The job waits at the gate; the connection is cut, refused a while,
    // then the network comes back and the gate opens.
    site.gated_requests(1).await;
    proxy.set(Fault::Reset);
    let cut = proxy.connections();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while proxy.connections() < cut + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "crawlctl never tried again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    proxy.set(Fault::Pass);
    site.open_gate();

    let output = run.await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(cluster_tests::levels_of(&result), site.levels(1));
    assert!(
        stderr(&output).contains("reconnecting as the same client"),
        "{}",
        stderr(&output)
    );
    cluster.cleanup().await;
}
