//! A gateway holds many clients safely: each kind of abuse gets its own
//! answer (close 1009, `message_too_large`, `rate_limited`, a refused
//! upgrade, a closed slow reader), idle connections are closed, a stopping
//! gateway says goodbye with 1001, and meanwhile a well-behaved client on
//! the same gateway gets its results. A 20,000-page result reaches its
//! client in parts, and no message on the queue carries it whole.

use std::time::{Duration, Instant};

use cluster_tests::levels_of;
use cluster_tests::processes::{ClusterSpec, http_get, metric_value};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use serde_json::json;

/// A well-behaved client's crawl of a small site, timed: what abuse on the
/// same gateway must not disturb.
async fn well_behaved_crawl(ws_url: &str, site: &TestSite, job: &str) -> Duration {
    let mut client = WsClient::connect(ws_url).await;
    let started = Instant::now();
    client.submit(job, &site.url("/"), 1).await;
    let result = client.result(job).await;
    assert_eq!(levels_of(&result), site.levels(1));
    let took = started.elapsed();
    println!(
        "well-behaved client's crawl: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_get_1009_or_message_too_large_by_their_size() {
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&["--max-frame-bytes", "65536"])
        .start()
        .await;
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    // Over the application limit, under the transport limit (4 x 64 KiB).
    let padded = json!({"type": "submit", "pad": "x".repeat(100 * 1024)});
    client.send_json(&padded).await;
    assert_eq!(client.error().await["code"], "message_too_large");
    client.submit("J", &site.url("/"), 1).await;
    assert_eq!(
        levels_of(&client.result("J").await),
        site.levels(1),
        "the connection stays"
    );

    // Over the transport limit: the connection is closed with 1009.
    let mut flood = WsClient::connect(&cluster.ws_url()).await;
    // The write may be cut by the gateway's close; the close frame came first.
    flood.try_send_text("x".repeat(2 * 1024 * 1024)).await;
    let (code, reason) = flood.close_frame().await.expect("a close frame");
    assert_eq!(code, 1009, "{reason}");
    well_behaved_crawl(&cluster.ws_url(), &site, "after").await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_submits_and_too_many_running_jobs_are_rate_limited() {
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&["--submits-per-sec", "5", "--max-running-jobs", "3"])
        .start()
        .await;
    let gated = TestSite::serve(SitePlan::tree(&[1]).gate_depth(1)).await;
    let mut flood = WsClient::connect(&cluster.ws_url()).await;
    for i in 0..40 {
        let url = gated.url(&format!("/?n={i}"));
        flood.submit(&format!("F{i}"), &url, 1).await;
    }
    let mut accepted = 0;
    let mut limited = Vec::new();
    for i in 0..40 {
        let answer = flood.next_where(|m| m["jobId"] == format!("F{i}")).await;
        match answer["type"].as_str() {
            Some("accepted") => accepted += 1,
            Some("error") if answer["code"] == "rate_limited" => {
                limited.push(answer["message"].as_str().unwrap().to_string())
            }
            _ => panic!("{answer}"),
        }
    }
    println!(
        "40 submits at once: {accepted} accepted, {} rate limited",
        limited.len()
    );
    assert_eq!(
        accepted, 3,
        "at most 3 unfinished jobs, within a burst of 5"
    );
    assert!(
        limited.iter().any(|m| m.contains("submits a second")),
        "{limited:?}"
    );
    assert!(
        limited.iter().any(|m| m.contains("unfinished jobs")),
        "{limited:?}"
    );

    // Another client on the same gateway is not held back.
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    well_behaved_crawl(&cluster.ws_url(), &site, "W").await;
    gated.open_gate();
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_connection_cap_a_gateway_refuses_upgrades_clearly() {
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&["--max-connections", "3"])
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(WsClient::connect(&cluster.ws_url()).await);
    }
    let refused = tokio_tungstenite::connect_async(cluster.ws_url()).await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("the fourth connection was not refused: {refused:?}");
    };
    assert_eq!(response.status(), 503);
    let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("maximum of 3 connections"), "{body}");
    // One leaves; a new client gets in.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tokio_tungstenite::connect_async(cluster.ws_url())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cluster
            .gateway_metric("crawler_gateway_connections_refused_total")
            .await
            >= 1
    );
    cluster.cleanup().await;
}

/// The websocket frames a server sent on a raw connection: (opcode, payload).
/// Server frames are not masked.
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_pinged_then_closed_and_a_live_one_stays() {
    use tokio::io::AsyncReadExt;
    let cluster = ClusterSpec::new(1, 1)
        .gateway_args(&["--ping-interval-secs", "1", "--idle-timeout-secs", "3"])
        .start()
        .await;
    // A peer that has gone silent: after the handshake it never answers,
    // pongs included, so the test reads its socket raw.
    let started = Instant::now();
    let (ws, _) = tokio_tungstenite::connect_async(cluster.ws_url())
        .await
        .unwrap();
    let tokio_tungstenite::MaybeTlsStream::Plain(mut silent) = ws.into_inner() else {
        unreachable!("ws:// is plain TCP");
    };
    let mut live = WsClient::connect(&cluster.ws_url()).await;
    let site = TestSite::serve(SitePlan::tree(&[1]).gate_depth(1)).await;
    live.submit("J", &site.url("/"), 1).await;
    live.next_where(|m| m["type"] == "accepted").await;
    // The live client reads all along, answering pings (four, a second
    // apart after each silence): it stays past the idle timeout.
    let live = tokio::spawn(async move {
        live.wait_for_pings(4).await;
        live
    });

    let mut sent = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut sent))
        .await
        .expect("the gateway closed the silent connection")
        .unwrap();
    let closed_after = started.elapsed();
    let control: Vec<(u8, Vec<u8>)> = frames(&sent)
        .into_iter()
        .filter(|(opcode, _)| *opcode >= 8)
        .collect();
    assert_eq!(control.len(), 2, "{control:?}");
    assert_eq!(control[0].0, 0x9, "a ping first");
    assert_eq!(control[1].0, 0x8, "then a close");
    assert_eq!(&control[1].1[..2], &1000u16.to_be_bytes());
    assert_eq!(&control[1].1[2..], b"idle for 3 s");
    assert!(closed_after >= Duration::from_secs(3), "{closed_after:?}");

    let mut live = live.await.unwrap();
    assert!(started.elapsed() > Duration::from_secs(4));
    site.open_gate();
    let result = live.result("J").await;
    assert_eq!(levels_of(&result), site.levels(1));
    assert!(
        cluster
            .gateway_metric("crawler_gateway_connections_closed_idle_total")
            .await
            >= 1
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_sends_every_client_1001_and_exits() {
    let mut cluster = ClusterSpec::new(1, 1).start().await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(WsClient::connect(&cluster.ws_url()).await);
    }
    cluster.gateway.terminate();
    for client in &mut clients {
        let (code, _) = client.close_frame().await.expect("a close frame");
        assert_eq!(code, 1001);
    }
    let status = cluster.gateway.wait_for_exit().await;
    assert!(status.success(), "{status}");
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_holds_up_nobody() {
    let cluster = ClusterSpec::new(1, 2)
        .gateway_args(&["--write-timeout-secs", "2", "--max-pages", "20001"])
        .master_args(&["--admin-listen", "127.0.0.1:0"])
        .start()
        .await;
    // 20,000 pages of 20 links each: about 20 MB of JSON, more than the
    // loopback connection's buffers hold.
    let big = TestSite::serve(SitePlan::flat(20_000, 20)).await;
    let mut slow = WsClient::connect(&cluster.ws_url()).await;
    slow.send_json(&json!({"type": "submit", "jobId": "big", "url": big.url("/"), "depth": 1, "maxPages": 20001}))
        .await;
    // It never reads again; meanwhile another client crawls.
    let site = TestSite::serve(SitePlan::tree(&[2])).await;
    let took = well_behaved_crawl(&cluster.ws_url(), &site, "W").await;
    assert!(took < Duration::from_secs(30), "held up for {took:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while cluster
        .gateway_metric("crawler_gateway_connections_closed_slow_total")
        .await
        < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow reader was never closed"
        );
        tick.tick().await;
    }

    // The same 20,000-page result reaches a client that reads, in parts;
    // the result message on the queue carried a summary, not the pages.
    let mut reader = WsClient::reconnect(&cluster.ws_url(), &slow.client_id).await;
    let result = reader.result("big").await;
    assert_eq!(result["pages"].as_array().unwrap().len(), 20_001);
    assert_eq!(levels_of(&result), big.levels(1));
    let (_, metrics) = http_get(&cluster.masters[0].admin_addr().await, "/metrics").await;
    let published = metric_value(&metrics, "crawler_master_result_event_bytes_count").unwrap();
    let under_a_mib = metric_value(
        &metrics,
        "crawler_master_result_event_bytes_bucket{le=\"1048576\"}",
    )
    .unwrap();
    assert_eq!(
        under_a_mib, published,
        "every result message is under 1 MiB:\n{metrics}"
    );
    cluster.cleanup().await;
}
