//! The real service binaries as separate processes on RabbitMQ, Redis and
//! Postgres, each test in its own namespace and database.

use std::collections::HashMap;

use cluster_tests::processes::{Cluster, binary};
use cluster_tests::ws::WsClient;
use cluster_tests::{assert_sample_site_result, levels_of, sample_site_levels};
use crawlctl::sample_site::SampleSite;
use crawler_core::ports::JobQueue;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_crawl_the_sample_site_through_both_message_forms() {
    let cluster = Cluster::start(1, 2, &[], &[]).await;
    let modern = SampleSite::start().await.unwrap();
    let legacy = SampleSite::start().await.unwrap();
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    for depth in 0..=2 {
        let job = format!("modern-{depth}");
        client.submit(&job, &modern.start_url(), depth).await;
        let result = client.result(&job).await;
        assert_eq!(result["cached"], false);
        assert_sample_site_result(&result, &format!("http://{}", modern.addr), depth);

        let job = format!("legacy-{depth}");
        client
            .send_json(
                &json!({"jobId": job, "urlToCrawl": legacy.start_url(), "depthToCrawl": depth}),
            )
            .await;
        let result = client.result(&job).await;
        assert_eq!(result["cached"], false);
        assert_sample_site_result(&result, &format!("http://{}", legacy.addr), depth);
    }
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_jobs_published_total")
            .await,
        6
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_job_is_answered_from_the_cache_without_reaching_a_master() {
    let cluster = Cluster::start(1, 1, &[], &[]).await;
    let site = SampleSite::start().await.unwrap();
    let base = format!("http://{}", site.addr);
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("deep", &site.start_url(), 2).await;
    let deep = client.result("deep").await;
    let published = cluster
        .gateway_metric("crawler_gateway_jobs_published_total")
        .await;
    let started = cluster.masters[0].count_log("crawl started");
    assert_eq!((published, started), (1, 1));

    for (job, depth) in [("same", 2), ("shallower", 1)] {
        client.submit(job, &site.start_url(), depth).await;
        let cached = client.result(job).await;
        assert_eq!(cached["cached"], true, "{job}");
        assert_eq!(levels_of(&cached), sample_site_levels(&base, depth));
    }
    // Nothing more went to the queue, and the master started nothing more.
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_jobs_published_total")
            .await,
        1
    );
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_cache_hits_total")
            .await,
        2
    );
    assert_eq!(cluster.masters[0].count_log("crawl started"), 1);

    // After a reconnect, `status` answers from the store.
    let client_id = client.client_id.clone();
    drop(client);
    let mut back = WsClient::reconnect(&cluster.ws_url(), &client_id).await;
    back.send_json(&json!({"type": "status", "jobId": "deep"}))
        .await;
    let stored = back.result("deep").await;
    assert_eq!(stored["levels"], deep["levels"]);
    assert_eq!(stored["pages"], deep["pages"]);
    cluster.cleanup().await;
}

/// A deeper job of a cached crawl starts from its levels: only the levels
/// past them are fetched, and the result is the one a crawl from the start
/// gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeper_job_starts_from_the_levels_of_a_shallower_cached_crawl() {
    let cluster = Cluster::start(1, 1, &[], &[]).await;
    let site = SampleSite::start().await.unwrap();
    let base = format!("http://{}", site.addr);
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("shallow", &site.start_url(), 1).await;
    client.result("shallow").await;

    client.submit("deeper", &site.start_url(), 2).await;
    let deeper = client.result("deeper").await;
    assert_eq!(deeper["cached"], false);
    assert_sample_site_result(&deeper, &base, 2);
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_head_starts_total")
            .await,
        1
    );
    assert_eq!(cluster.masters[0].count_log("crawl resumed"), 1);

    // Both jobs together asked the site what one depth-2 crawl from the
    // start asks another: levels 0 and 1 were not fetched again.
    let fresh = SampleSite::start().await.unwrap();
    client.submit("fresh", &fresh.start_url(), 2).await;
    client.result("fresh").await;
    assert_eq!(site.requests(), fresh.requests());
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_connection_stays_usable() {
    let cluster = Cluster::start(1, 1, &[], &[]).await;
    let site = SampleSite::start().await.unwrap();
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    let url = site.start_url();
    let huge_url = format!("http://127.0.0.1/{}", "a".repeat(100 * 1024));
    let cases: Vec<(&str, String)> = vec![
        ("invalid_json", "{\"type\":\"submit\",".to_string()),
        ("invalid_message", "[1,2,3]".to_string()),
        (
            "unknown_type",
            json!({"type": "explode", "jobId": "x"}).to_string(),
        ),
        (
            "missing_field",
            json!({"type": "submit", "url": url, "depth": 1}).to_string(),
        ),
        (
            "missing_field",
            json!({"type": "submit", "jobId": "x", "depth": 1}).to_string(),
        ),
        (
            "missing_field",
            json!({"type": "submit", "jobId": "x", "url": url}).to_string(),
        ),
        (
            "invalid_field",
            json!({"type": "submit", "jobId": 12, "url": url, "depth": 1}).to_string(),
        ),
        (
            "invalid_field",
            json!({"type": "submit", "jobId": "x", "url": ["no"], "depth": 1}).to_string(),
        ),
        (
            "invalid_depth",
            json!({"type": "submit", "jobId": "x", "url": url, "depth": "2"}).to_string(),
        ),
        (
            "invalid_depth",
            json!({"type": "submit", "jobId": "x", "url": url, "depth": -1}).to_string(),
        ),
        (
            "invalid_depth",
            json!({"type": "submit", "jobId": "x", "url": url, "depth": 99}).to_string(),
        ),
        (
            "unsupported_scheme",
            json!({"type": "submit", "jobId": "x", "url": "ftp://127.0.0.1/file", "depth": 1})
                .to_string(),
        ),
        (
            "invalid_url",
            json!({"type": "submit", "jobId": "x", "url": "/relative/page.html", "depth": 1})
                .to_string(),
        ),
        (
            "url_too_long",
            json!({"type": "submit", "jobId": "x", "url": huge_url, "depth": 1}).to_string(),
        ),
        (
            "forbidden_address",
            json!({"type": "submit", "jobId": "x", "url": "http://[::1]/", "depth": 1}).to_string(),
        ),
        // The metadata address inside NAT64 and 6to4 forms.
        (
            "forbidden_address",
            json!({"type": "submit", "jobId": "x", "url": "http://[64:ff9b::a9fe:a9fe]/", "depth": 1})
                .to_string(),
        ),
        (
            "forbidden_address",
            json!({"type": "submit", "jobId": "x", "url": "http://[2002:a9fe:a9fe::1]/", "depth": 1})
                .to_string(),
        ),
        (
            "invalid_depth",
            json!({"jobId": "x", "urlToCrawl": url, "depthToCrawl": -1}).to_string(),
        ),
        (
            "unknown_job",
            json!({"type": "status", "jobId": "never-submitted"}).to_string(),
        ),
    ];
    for (code, frame) in &cases {
        client.send_text(frame.clone()).await;
        let error = client.error().await;
        assert_eq!(error["code"], *code, "for frame {:.120}", frame);
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    client.send_binary(vec![0, 159, 146, 150]).await;
    assert_eq!(client.error().await["code"], "invalid_message");
    let too_big = json!({"type": "submit", "jobId": "x", "url": url, "depth": 1, "pad": "p".repeat(300 * 1024)});
    client.send_json(&too_big).await;
    assert_eq!(client.error().await["code"], "message_too_large");

    // The same connection still runs a valid job. The same request again
    // attaches to it (a retry gets the result, not a second crawl); another
    // request reusing its id is refused clearly.
    client.submit("valid", &url, 1).await;
    assert_sample_site_result(
        &client.result("valid").await,
        &format!("http://{}", site.addr),
        1,
    );
    client.submit("valid", &url, 1).await;
    assert_sample_site_result(
        &client.result("valid").await,
        &format!("http://{}", site.addr),
        1,
    );
    client.submit("valid", &url, 2).await;
    assert_eq!(client.error().await["code"], "duplicate_job");
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_jobs_published_total")
            .await,
        1
    );
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_jobs_attached_total")
            .await,
        1
    );

    // A poison message on the queue is dead-lettered, and the cluster keeps working.
    let queue = cluster.queue().await;
    queue
        .publish_job(b"not a job".to_vec(), &Default::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while queue.dead_letter_count().await.unwrap() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison message was never dead-lettered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    queue.close_connection().await;
    client.submit("after-poison", &url, 0).await;
    assert_eq!(
        client.result("after-poison").await["pages"][0]["status"],
        200
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_lock_server_refuses_for_good_fails_with_the_reason() {
    use crawler_core::events::GatewayEvent;
    use crawler_core::model::{JobId, JobSpec, JobState};
    use futures::StreamExt;

    let cluster = Cluster::start(1, 0, &[], &[]).await;
    let queue = cluster.queue().await;
    let mut events = queue.consume_events("refusal-probe").await.unwrap();
    // No job id: the lock server can never store it, so a retry cannot help.
    let spec = JobSpec {
        job_id: JobId(String::new()),
        client_id: "client".into(),
        client_job_id: "J".into(),
        url: "http://127.0.0.1:9/".into(),
        depth: 0,
        options: Default::default(),
        gateway_key: "refusal-probe".into(),
        accepted_at_ms: 0,
        trace: Default::default(),
    };
    queue
        .publish_job(serde_json::to_vec(&spec).unwrap(), &Default::default())
        .await
        .unwrap();

    let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
        .await
        .expect("the refusal reached the job's gateway")
        .expect("the event stream is open")
        .unwrap();
    let GatewayEvent::Finished { record, .. } =
        GatewayEvent::from_bytes(&delivery.payload).unwrap()
    else {
        panic!("expected the job's end, not progress");
    };
    assert_eq!(record.state, JobState::Failed);
    let failure = record.failure.expect("a failure says why");
    assert_eq!(failure.code.as_str(), "crawl_failed");
    assert!(
        failure.message.contains("the lock server refused the job"),
        "{}",
        failure.message
    );
    delivery.ack().await.unwrap();
    // Parked for an operator too, not retried.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while queue.dead_letter_count().await.unwrap() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refused job was never dead-lettered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.locks[0].count_log("lease granted"), 0);
    queue.close_connection().await;
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_and_three_workers_share_twenty_concurrent_jobs() {
    let cluster = Cluster::start(2, 3, &["--max-jobs", "3"], &[]).await;
    let site = SampleSite::start().await.unwrap();
    let base = format!("http://{}", site.addr);
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(WsClient::connect(&cluster.ws_url()).await);
    }
    // A distinct page cap per job makes each a distinct crawl, not a cache hit.
    for i in 0..20 {
        let job = json!({"type": "submit", "jobId": format!("job-{i}"), "url": site.start_url(), "depth": 2, "maxPages": 100 + i});
        clients[i % 4].send_json(&job).await;
    }
    let runs = futures::future::join_all(clients.iter_mut().enumerate().map(
        |(c, client)| async move {
            let mut results = HashMap::new();
            for i in (c..20).step_by(4) {
                let job = format!("job-{i}");
                results.insert(job.clone(), client.result(&job).await);
            }
            // A status round trip orders after any duplicate result already sent.
            client
                .send_json(&json!({"type": "status", "jobId": format!("job-{c}")}))
                .await;
            client.result(&format!("job-{c}")).await;
            let duplicates: Vec<&Value> = client
                .backlog()
                .iter()
                .filter(|m| m["type"] == "result")
                .collect();
            assert!(duplicates.is_empty(), "duplicate results: {duplicates:?}");
            results
        },
    ))
    .await;
    let results: HashMap<String, Value> = runs.into_iter().flatten().collect();
    assert_eq!(results.len(), 20);
    for result in results.values() {
        assert_eq!(result["cached"], false);
        assert_sample_site_result(result, &base, 2);
    }
    let per_master: Vec<usize> = cluster
        .masters
        .iter()
        .map(|m| m.count_log("crawl finished"))
        .collect();
    assert_eq!(
        per_master.iter().sum::<usize>(),
        20,
        "each job crawled once: {per_master:?}"
    );
    assert!(
        per_master.iter().all(|&n| n > 0),
        "both masters took jobs: {per_master:?}"
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_gives_the_same_levels_as_the_cluster() {
    let site = SampleSite::start().await.unwrap();
    let url = site.start_url();
    let output = tokio::process::Command::new(binary("crawlctl"))
        .args([
            "crawl",
            &url,
            "--depth",
            "2",
            "--allow-network",
            "127.0.0.0/8",
            "--json",
        ])
        .output()
        .await
        .expect("run crawlctl");
    assert!(
        output.status.success(),
        "crawlctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let embedded: Value =
        serde_json::from_slice(&output.stdout).expect("crawlctl --json prints one JSON object");
    assert_sample_site_result(&embedded, &format!("http://{}", site.addr), 2);

    let cluster = Cluster::start(1, 1, &[], &[]).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("cluster", &url, 2).await;
    let clustered = client.result("cluster").await;
    assert_eq!(levels_of(&embedded), levels_of(&clustered));
    cluster.cleanup().await;
}
