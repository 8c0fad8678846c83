//! A worker dies holding a batch: the master sends the batch again to
//! another worker and the job still ends with one correct result.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use cluster_tests::levels_of;
use cluster_tests::processes::{Cluster, http_get, metric_value};
use cluster_tests::ws::WsClient;
use crawler_core::ports::JobQueue;
use tokio::sync::{Notify, watch};

/// `/` links to `/slow`, which answers only once the test opens the gate.
struct GatedSite {
    base: String,
    slow_hits: Arc<AtomicUsize>,
    slow_requested: Arc<Notify>,
    open: watch::Sender<bool>,
}

async fn gated_site() -> GatedSite {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let slow_requested = Arc::new(Notify::new());
    let (open, gate) = watch::channel(false);
    let (hits, requested) = (slow_hits.clone(), slow_requested.clone());
    let app = Router::new()
        .route(
            "/",
            get(|| async { Html(r#"<title>Start</title><a href="/slow">slow</a>"#) }),
        )
        .route(
            "/slow",
            get(move || {
                let (hits, requested, mut gate) = (hits.clone(), requested.clone(), gate.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    requested.notify_one();
                    let _ = gate.wait_for(|open| *open).await;
                    Html("<title>Slow</title>done")
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    GatedSite {
        base,
        slow_hits,
        slow_requested,
        open,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_by_a_killed_worker_is_sent_to_another_and_the_job_completes() {
    let mut cluster = Cluster::start(1, 1, &["--admin-listen", "127.0.0.1:0"], &[]).await;
    let site = gated_site().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &format!("{}/", site.base), 1).await;

    // Level 0 is done and reported; the only worker now holds the /slow batch.
    let progress = client
        .next_where(|m| m["type"] == "progress" && m["jobId"] == "J")
        .await;
    assert!(progress["pagesDone"].as_u64().unwrap() >= 1, "{progress}");
    site.slow_requested.notified().await;
    drop(cluster.workers.remove(0)); // kill -9 while it holds the batch
    cluster.masters[0]
        .wait_for_log("requeued_batches=1", 1)
        .await;

    site.open.send_replace(true);
    cluster.add_worker(&[]).await;
    let result = client.result("J").await;
    assert_eq!(
        levels_of(&result),
        vec![
            vec![format!("{}/", site.base)],
            vec![format!("{}/slow", site.base)]
        ]
    );
    assert_eq!(result["pages"][1]["title"], "Slow");
    assert_eq!(
        site.slow_hits.load(Ordering::SeqCst),
        2,
        "fetched by the dead worker, then again by the new one"
    );
    let (_, metrics) = http_get(&cluster.masters[0].admin_addr().await, "/metrics").await;
    assert_eq!(
        metric_value(&metrics, "crawler_master_batches_redispatched_total"),
        Some(1.0)
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_record_progress_that_status_reports_while_the_job_runs() {
    let cluster = Cluster::start(1, 1, &["--lease-ttl-ms", "300"], &[]).await;
    let site = gated_site().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &format!("{}/", site.base), 1).await;
    site.slow_requested.notified().await;

    // The store learns a running job's progress only from its master's
    // heartbeats (every third of the 300 ms lease), and `status` reads the store.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        client
            .send_json(&serde_json::json!({"type": "status", "jobId": "J"}))
            .await;
        let status = client
            .next_where(|m| m["type"] == "status" && m["jobId"] == "J")
            .await;
        assert_eq!(status["state"], "running");
        if status["pagesDone"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat recorded progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cluster.locks[0].wait_for_log("lease granted", 1).await;
    site.open.send_replace(true);
    let result = client.result("J").await;
    assert_eq!(levels_of(&result).concat().len(), 2);
    assert_eq!(
        cluster.locks[0].count_log("lease granted"),
        1,
        "the lease never lapsed to another grant"
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_gracefully_finishes_its_batch_before_leaving() {
    let cluster = Cluster::start(1, 1, &[], &[]).await;
    let site = gated_site().await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &format!("{}/", site.base), 1).await;
    site.slow_requested.notified().await;

    // SIGTERM while the worker holds the /slow batch: it drains instead of dropping it.
    cluster.workers[0].terminate();
    cluster.workers[0]
        .wait_for_log("shutdown requested", 1)
        .await;
    site.open.send_replace(true);
    let result = client.result("J").await;
    assert_eq!(result["pages"][1]["title"], "Slow");
    cluster.workers[0].wait_for_log("worker stopped", 1).await;
    assert_eq!(
        site.slow_hits.load(Ordering::SeqCst),
        1,
        "fetched once, by the draining worker"
    );
    assert_eq!(
        cluster.masters[0].count_log("requeued_batches=0"),
        1,
        "nothing was requeued"
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_server_outage_delays_jobs_without_losing_them() {
    let mut cluster = Cluster::start(1, 1, &[], &[]).await;
    let site = gated_site().await;
    site.open.send_replace(true);
    cluster.locks[0].kill();

    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &format!("{}/", site.base), 1).await;
    // More failed attempts than the queue's delivery limit (5): the job must
    // still not be dead-lettered, because the master holds it instead of requeueing.
    cluster.masters[0].wait_for_log("call=acquire", 6).await;
    cluster.restart_lock(0).await;
    let result = client.result("J").await;
    assert_eq!(levels_of(&result).concat().len(), 2);
    assert_eq!(cluster.queue().await.dead_letter_count().await.unwrap(), 0);
    cluster.cleanup().await;
}
