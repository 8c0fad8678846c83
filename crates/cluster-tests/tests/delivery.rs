//! How results reach clients: a large result in parts read from the store;
//! the outcome of a job that finished while its client was away, pushed
//! when it comes back, to any gateway, once; and a client whose gateway
//! died, followed to the gateway it reconnects to.

use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::processes::ClusterSpec;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use serde_json::Value;

/// Waits until the job's outcome is in the store, with no connection of
/// its client open to take it.
async fn finished(cluster: &cluster_tests::processes::Cluster) {
    let master = cluster.master_that_logged("crawl finished").await;
    cluster.masters[master]
        .wait_for_log("crawl finished", 1)
        .await;
}

/// Proves nothing more came for `job` on `client`: asks about an unknown
/// job and waits for that answer, which the gateway sends after anything
/// it pushed when the connection opened.
async fn assert_nothing_pushed(client: &mut WsClient, job: &str) {
    client
        .send_text(r#"{"type":"status","jobId":"nothing-here"}"#)
        .await;
    let answer = client.next_where(|m| m["jobId"] == "nothing-here").await;
    assert_eq!(answer["code"], "unknown_job");
    let pushed: Vec<&Value> = client
        .backlog()
        .iter()
        .filter(|m| m["jobId"] == job)
        .collect();
    assert!(pushed.is_empty(), "pushed again: {pushed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_larger_than_a_part_arrives_in_parts_read_from_the_store() {
    const PART_BYTES: usize = 1024;
    let cluster = ClusterSpec::new(1, 2)
        .gateway_args(&["--result-part-bytes", &PART_BYTES.to_string()])
        .start()
        .await;
    // 1 + 3 + 12 = 16 pages, over 2 KB of JSON: a head and parts of at
    // most 1 KB each.
    let site = TestSite::serve(SitePlan::tree(&[3, 4])).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 2).await;

    let head = client
        .next_where(|m| m["jobId"] == "J" && m["type"] == "resultHead")
        .await;
    assert_eq!(head["pageCount"], 16);
    assert_eq!(head["levelSizes"], serde_json::json!([1, 3, 12]));
    let mut pages = Vec::new();
    let mut part = 0;
    loop {
        part += 1;
        let message = client
            .next_where(|m| m["jobId"] == "J" && m["type"] == "resultPart")
            .await;
        assert_eq!(message["part"], part);
        let bytes = message.to_string().len();
        assert!(bytes <= PART_BYTES, "part {part} is {bytes} bytes");
        pages.extend(message["pages"].as_array().unwrap().clone());
        if message["last"] == true {
            break;
        }
        assert!(pages.len() < 16, "parts past the last page");
    }
    assert!(
        part >= 3,
        "over 2 KB of pages in parts of 1 KB: {part} parts"
    );
    let urls: Vec<&str> = pages.iter().map(|p| p["url"].as_str().unwrap()).collect();
    let expected: Vec<String> = site.levels(2).concat();
    assert_eq!(urls, expected, "in level order, each level sorted");

    // A client library puts the parts back together into the usual result.
    client.submit("again", &site.url("/"), 2).await;
    let cached = client.result("again").await;
    assert_eq!(cached["cached"], true);
    assert_eq!(levels_of(&cached), site.levels(2));
    assert_eq!(cached["pages"].as_array().unwrap().len(), 16);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_comes_back_is_sent_what_finished_while_it_was_away_once() {
    let cluster = ClusterSpec::new(1, 1).start().await;
    let site = TestSite::serve(SitePlan::tree(&[2]).gate_depth(1)).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 1).await;
    site.gated_requests(1).await;
    let client_id = client.client_id.clone();
    drop(client);

    site.open_gate();
    finished(&cluster).await;
    let back_at = Instant::now();
    let mut back = WsClient::reconnect(&cluster.ws_url(), &client_id).await;
    let result = back.result("J").await;
    let took = back_at.elapsed();
    println!(
        "result pushed {:.0} ms after the reconnect",
        took.as_secs_f64() * 1000.0
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(levels_of(&result), site.levels(1));

    // Delivered once: the next connection of the client is not sent it again,
    // but `status` still answers with it.
    drop(back);
    let mut again = WsClient::reconnect(&cluster.ws_url(), &client_id).await;
    assert_nothing_pushed(&mut again, "J").await;
    again.send_text(r#"{"type":"status","jobId":"J"}"#).await;
    assert_eq!(levels_of(&again.result("J").await), site.levels(1));
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_gateway_died_gets_its_results_from_another() {
    let mut cluster = ClusterSpec::new(1, 2).gateways(2).start().await;
    let site = TestSite::serve(SitePlan::tree(&[2, 2]).gate_depth(2)).await;
    let doomed = cluster.ws_url();
    let survivor = format!("ws://{}/ws", cluster.other_gateways[0].addr());
    let mut client = WsClient::connect(&doomed).await;
    // "early" finishes while no gateway holds the client; "late" is still
    // running when the client reaches the other gateway.
    client.submit("early", &site.url("/?early"), 1).await;
    client.submit("late", &site.url("/?late"), 2).await;
    client.result("early").await;
    site.gated_requests(1).await;
    let client_id = client.client_id.clone();

    cluster.gateway.kill();
    client.wait_closed().await;
    let mut back = WsClient::reconnect(&survivor, &client_id).await;
    let progress = back.next_where(|m| m["jobId"] == "late").await;
    assert_eq!(progress["type"], "progress", "{progress}");

    // The job's events now follow the client to the surviving gateway.
    let opened = Instant::now();
    site.open_gate();
    let result = back.result("late").await;
    println!(
        "result on the other gateway {:.0} ms after the crawl could finish",
        opened.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(result["pages"].as_array().unwrap().len(), 1 + 2 + 4);
    assert_nothing_pushed(&mut back, "early").await;
    cluster.cleanup().await;
}
