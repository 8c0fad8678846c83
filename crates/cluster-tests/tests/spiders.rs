//! Spiders end to end: published to a file-sync process, synced by the
//! workers before they run a job's batches, and applied to the crawl.

use std::sync::Arc;

use cluster_tests::processes::{
    Cluster, ClusterCerts, ClusterSpec, Service, http_get, metric_value,
};
use cluster_tests::ws::WsClient;
use cluster_tests::{levels_of, page};
use crawlctl::sample_site::SampleSite;
use crawler_core::tls::{GrpcSecurity, Role};
use file_sync::Remote;
use serde_json::json;

const SPIDER_TOML: &str = r#"
exclude = ['\.pdf$', '/missing$']
user_agent = "SampleBot/2.0"
max_pages = 50
[fields]
heading = "h1"
"#;

/// A file-sync process on mutual TLS with `certs`, holding spider `name`,
/// published as an operator does.
async fn file_sync_with_spider(
    certs: &ClusterCerts,
    root: &std::path::Path,
    name: &str,
    spider_toml: &str,
) -> Service {
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--root".into(),
        root.display().to_string(),
    ];
    args.extend(certs.args(Role::FileSync));
    let server = Service::start("file-sync", "file-sync", &args, true).await;
    let operator = Remote::new(
        format!("http://{}", server.addr()),
        certs.tls(Role::Operator),
    );
    let _published = push(&operator, name, spider_toml)
        .await
        .expect("push the spider");
    server
}

/// Publishes a spider folder holding `spider_toml` and a nested file.
async fn push(
    remote: &Remote,
    name: &str,
    spider_toml: &str,
) -> Result<file_sync::client::PushReport, file_sync::SyncError> {
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("spider.toml"), spider_toml).unwrap();
    std::fs::create_dir_all(folder.path().join("lib/helpers")).unwrap();
    std::fs::write(
        folder.path().join("lib/helpers/notes.txt"),
        "nested file, synced too",
    )
    .unwrap();
    file_sync::client::push_folder(remote, name, folder.path()).await
}

/// A cluster whose workers sync spiders from `file_sync` and whose gateway,
/// with its own certificate, asks `versions_from` for their versions.
async fn cluster_asking_versions(
    certs: &Arc<ClusterCerts>,
    file_sync: &str,
    versions_from: &str,
) -> Cluster {
    let mut gateway_args = vec!["--file-sync".to_string(), versions_from.to_string()];
    gateway_args.extend(certs.args(Role::Gateway));
    ClusterSpec::new(1, 1)
        .with_certs(certs.clone())
        .gateway_args(&gateway_args.iter().map(String::as_str).collect::<Vec<_>>())
        .worker_args(&["--file-sync", file_sync])
        .start()
        .await
}

fn submit(job: &str, url: &str, depth: u32, spider: &str) -> serde_json::Value {
    json!({"type": "submit", "jobId": job, "url": url, "depth": depth, "spider": spider})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_naming_a_spider_runs_under_its_rules_after_the_workers_synced_it() {
    let root = tempfile::tempdir().unwrap();
    let certs = Arc::new(ClusterCerts::make().await);
    let file_sync = file_sync_with_spider(&certs, root.path(), "sample", SPIDER_TOML).await;
    let spider_dir = tempfile::tempdir().unwrap();
    let fs_url = format!("http://{}", file_sync.addr());
    let dir = spider_dir.path().display().to_string();
    let cluster = ClusterSpec::new(1, 1)
        .with_certs(certs)
        .worker_args(&["--file-sync", &fs_url, "--spider-dir", &dir])
        .start()
        .await;
    let site = SampleSite::start().await.unwrap();
    let base = format!("http://{}", site.addr);

    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client
        .send_json(&submit("spider", &site.start_url(), 1, "sample"))
        .await;
    let result = client.result("spider").await;
    let expected: Vec<Vec<String>> = vec![
        vec![format!("{base}/")],
        ["/about.html", "/blog/", "/contact", "/old"]
            .iter()
            .map(|p| format!("{base}{p}"))
            .collect(),
    ];
    assert_eq!(
        levels_of(&result),
        expected,
        "exclude patterns drop the PDF and /missing"
    );
    assert_eq!(
        page(&result, &format!("{base}/"))["fields"],
        json!({"heading": ["Sample"]})
    );
    assert_eq!(
        page(&result, &format!("{base}/about.html"))["fields"],
        json!({"heading": []})
    );
    let agents = site.user_agents.lock().unwrap().clone();
    // robots.txt, then five pages, one of them a redirect: seven requests,
    // all with the spider's agent.
    assert_eq!(agents.len(), 7);
    assert!(agents.iter().all(|a| a == "SampleBot/2.0"), "{agents:?}");
    // The worker mirrored the whole spider folder, nested files included.
    assert_eq!(
        std::fs::read_to_string(spider_dir.path().join("sample/lib/helpers/notes.txt")).unwrap(),
        "nested file, synced too"
    );
    cluster.cleanup().await;
}

/// The cache key holds the spider's version: after an operator publishes a
/// new version, the same job is crawled again under the new rules rather
/// than answered with the old version's crawl, and that crawl is cached in
/// turn. A resubmit of a job accepted before the upload still attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_a_spider_is_never_answered_from_the_old_versions_cache() {
    let root = tempfile::tempdir().unwrap();
    let certs = Arc::new(ClusterCerts::make().await);
    let file_sync = file_sync_with_spider(&certs, root.path(), "sample", SPIDER_TOML).await;
    let fs_url = format!("http://{}", file_sync.addr());
    let cluster = cluster_asking_versions(&certs, &fs_url, &fs_url).await;
    let site = SampleSite::start().await.unwrap();
    let home = format!("http://{}/", site.addr);
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    let mut crawl = async |job: &str| {
        client
            .send_json(&submit(job, &site.start_url(), 1, "sample"))
            .await;
        let result = client.result(job).await;
        let cached = result["cached"] == true;
        (cached, page(&result, &home)["fields"].clone())
    };

    let v1_fields = json!({"heading": ["Sample"]});
    assert_eq!(crawl("v1-first").await, (false, v1_fields.clone()));
    assert_eq!(crawl("v1-again").await, (true, v1_fields.clone()));

    let operator = Remote::new(fs_url.clone(), certs.tls(Role::Operator));
    let v2 = SPIDER_TOML.replace(r#"heading = "h1""#, r#"heading = "title""#);
    let _published = push(&operator, "sample", &v2)
        .await
        .expect("publish version 2");
    let v2_fields = json!({"heading": ["Home"]});
    assert_eq!(
        crawl("v2-first").await,
        (false, v2_fields.clone()),
        "version 2 is crawled, not answered with version 1's crawl"
    );
    assert_eq!(crawl("v2-again").await, (true, v2_fields));

    // The same request under an id accepted before the upload attaches to
    // that job: the client does not choose the spider's version.
    client
        .send_json(&submit("v1-first", &site.start_url(), 1, "sample"))
        .await;
    let attached = client.result("v1-first").await;
    assert_eq!(page(&attached, &home)["fields"], v1_fields);
    cluster.cleanup().await;
}

/// When the gateway cannot learn a spider's version, the job is crawled,
/// never answered from the cache, and its crawl is not cached either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_spider_version_is_unknown_bypasses_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let certs = Arc::new(ClusterCerts::make().await);
    let file_sync = file_sync_with_spider(&certs, root.path(), "sample", SPIDER_TOML).await;
    let fs_url = format!("http://{}", file_sync.addr());
    // The gateway asks a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cluster = cluster_asking_versions(&certs, &fs_url, &nowhere).await;
    let site = SampleSite::start().await.unwrap();
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    for job in ["first", "second"] {
        client
            .send_json(&submit(job, &site.start_url(), 1, "sample"))
            .await;
        let result = client.result(job).await;
        assert_eq!(result["cached"], false, "{job}: {result}");
        assert_eq!(levels_of(&result)[1].len(), 4, "{job} ran under the spider");
    }
    assert_eq!(
        cluster
            .gateway_metric("crawler_gateway_cache_hits_total")
            .await,
        0
    );
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_spider_cannot_be_synced_fails_clearly_and_fetches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let certs = Arc::new(ClusterCerts::make().await);
    let file_sync = file_sync_with_spider(&certs, root.path(), "broken", "include = ['(']").await;
    let fs_url = format!("http://{}", file_sync.addr());
    let cluster = ClusterSpec::new(1, 1)
        .with_certs(certs)
        .worker_args(&["--file-sync", &fs_url])
        .start()
        .await;
    let site = SampleSite::start().await.unwrap();
    let mut client = WsClient::connect(&cluster.ws_url()).await;

    client
        .send_json(&submit("ghost", &site.start_url(), 1, "ghost"))
        .await;
    let error = client.outcome("ghost").await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "crawl_failed");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("spider `ghost` could not be synced"),
        "{error}"
    );

    client
        .send_json(&submit("broken", &site.start_url(), 1, "broken"))
        .await;
    let error = client.outcome("broken").await;
    assert_eq!(error["code"], "crawl_failed");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("spider.toml is invalid"),
        "{error}"
    );

    assert_eq!(
        site.requests(),
        0,
        "no page is fetched for a job whose spider failed"
    );
    // The same cluster still crawls a job without a spider.
    client.submit("plain", &site.start_url(), 0).await;
    assert_eq!(client.result("plain").await["pages"][0]["status"], 200);
    cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawlctl_pushes_lists_and_pulls_spiders() {
    let root = tempfile::tempdir().unwrap();
    let certs = ClusterCerts::make().await;
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--root".into(),
        root.path().display().to_string(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(certs.args(Role::FileSync));
    let server = Service::start("file-sync", "file-sync", &args, true).await;
    // crawlctl speaks to file-sync as an operator.
    let operator = certs.args(Role::Operator);
    let fs_url = format!("http://{}", server.addr());
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("spider.toml"), SPIDER_TOML).unwrap();
    std::fs::create_dir_all(source.path().join("crawlab_project/spiders")).unwrap();
    std::fs::write(
        source.path().join("crawlab_project/spiders/quotes.py"),
        "print('quotes')\n",
    )
    .unwrap();
    let crawlctl = |args: &[&str]| {
        let mut command = std::process::Command::new(cluster_tests::processes::binary("crawlctl"));
        command
            .args(["spider", "--file-sync", &fs_url])
            .args(&operator)
            .args(args);
        let output = command.output().expect("run crawlctl");
        assert!(
            output.status.success(),
            "crawlctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let source_dir = source.path().display().to_string();
    assert!(
        crawlctl(&["push", &source_dir, "--name", "quotes"]).contains("pushed spider `quotes`")
    );
    assert_eq!(crawlctl(&["list"]).trim(), "quotes");
    let target = tempfile::tempdir().unwrap();
    let target_dir = target.path().join("copy");
    crawlctl(&["pull", "quotes", &target_dir.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(target_dir.join("crawlab_project/spiders/quotes.py")).unwrap(),
        "print('quotes')\n"
    );
    assert_eq!(
        std::fs::read_to_string(target_dir.join("spider.toml")).unwrap(),
        SPIDER_TOML
    );
    // Its /metrics counted the upload and the bytes the pull moved.
    let admin = server.admin_addr().await;
    assert_eq!(http_get(&admin, "/readyz").await.0, 200);
    let (_, metrics) = http_get(&admin, "/metrics").await;
    for name in [
        "crawler_file_sync_uploads_total",
        "crawler_file_sync_download_requests_total",
        "crawler_file_sync_bytes_sent_total",
    ] {
        assert!(
            metric_value(&metrics, name).is_some_and(|v| v > 0.0),
            "{name} in {metrics}"
        );
    }

    // A bad name is refused with a clear message and a failing exit status.
    let output = std::process::Command::new(cluster_tests::processes::binary("crawlctl"))
        .args(["spider", "--file-sync", &fs_url])
        .args(&operator)
        .args(["push", &source_dir, "--name", "../escape"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("escape"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_of_the_cluster_ca_may_publish_a_spider() {
    let root = tempfile::tempdir().unwrap();
    let certs = ClusterCerts::make().await;
    let file_sync = file_sync_with_spider(&certs, root.path(), "sample", SPIDER_TOML).await;
    let url = format!("http://{}", file_sync.addr());
    let operator = Remote::new(url.clone(), certs.tls(Role::Operator));
    let before = file_sync::client::list_spiders(&operator).await.unwrap();
    let elsewhere = ClusterCerts::make().await;
    let forged = "exclude = ['.*']";

    // No certificate, another CA's operator: the handshake refuses them.
    for (who, security) in [
        ("no certificate", GrpcSecurity::Plaintext),
        ("another CA", elsewhere.tls(Role::Operator)),
    ] {
        let refused = push(&Remote::new(url.clone(), security), "sample", forged).await;
        assert!(refused.is_err(), "{who}: {refused:?}");
    }
    // A worker of the cluster may download spiders, not publish them.
    let worker = Remote::new(url.clone(), certs.tls(Role::Worker));
    match push(&worker, "sample", forged).await {
        Err(file_sync::SyncError::Server { code, message }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains("operator"), "{message}");
        }
        other => panic!("a worker published a spider: {other:?}"),
    }

    // The spider is the one the operator published.
    assert_eq!(
        file_sync::client::list_spiders(&worker).await.unwrap(),
        before
    );
    let copy = tempfile::tempdir().unwrap();
    let _copied = file_sync::client::mirror(&worker, "sample", copy.path(), &Default::default())
        .await
        .expect("a worker downloads the spider");
    assert_eq!(
        std::fs::read_to_string(copy.path().join("spider.toml")).unwrap(),
        SPIDER_TOML
    );
}
