//! The server in-process: single flight, cache invalidation, atomic
//! publication, health.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{InProcess, snapshot, write_file, write_spider_v1};
use crawler_core::retry::RetryPolicy;
use file_sync::client::{self, MirrorOptions};
use file_sync::proto::ScanRequest;
use file_sync::proto::file_sync_client::FileSyncClient;

async fn scan_count(ep: &str, spider: &str) -> (u64, String) {
    let mut c = FileSyncClient::connect(ep.to_owned()).await.unwrap();
    let mut s = c
        .stream_file_scan(ScanRequest {
            spider: spider.into(),
            path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(chunk) = s.message().await.unwrap() {
        assert!(chunk.entries.len() <= 100, "chunks are bounded");
        n += chunk.entries.len() as u64;
        if let Some(summary) = chunk.summary {
            assert_eq!(summary.total_entries, n);
            return (n, summary.scan_id);
        }
    }
    panic!("no summary")
}

#[tokio::test]
async fn twenty_concurrent_scans_share_one_walk_and_one_hash_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for i in 0..250 {
        write_file(
            &root.join("many"),
            &format!("d{}/f{i}.txt", i % 7),
            format!("{i}").as_bytes(),
            0o644,
        );
    }
    let server = InProcess::start(&root).await;
    let ep = server.url();
    let scans: Vec<_> = (0..20)
        .map(|_| {
            let ep = ep.clone();
            tokio::spawn(async move { scan_count(&ep, "many").await })
        })
        .collect();
    let mut ids = Vec::new();
    for s in scans {
        let (n, id) = s.await.unwrap();
        assert_eq!(n, 257);
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller saw the same scan");
    let m = &server.metrics;
    assert_eq!(m.scans.load(Ordering::Relaxed), 1);
    assert_eq!(m.hash_passes.load(Ordering::Relaxed), 1);
    assert_eq!(m.files_hashed.load(Ordering::Relaxed), 250);
    assert_eq!(m.scan_cache_hits.load(Ordering::Relaxed), 19);
}

#[tokio::test]
async fn a_change_on_disk_is_seen_and_only_changed_files_are_rehashed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    write_spider_v1(&root.join("quotes"));
    // TTL 0: every request checks the folder's stat fingerprint, so a hand
    // edit is seen at once (with the default TTL, within 2 s).
    let server = InProcess::start_with(file_sync::Config {
        scan_ttl_ms: 0,
        ..file_sync::Config::for_root(&root)
    })
    .await;
    let ep = server.endpoint();
    let target = tmp.path().join("t");
    let _ = client::mirror(&ep, "quotes", &target, &MirrorOptions::default())
        .await
        .unwrap();

    // Edited by hand on the server, inside the cache TTL: the download
    // notices the file is not the one scanned, and the scan is redone.
    write_file(
        &root.join("quotes"),
        "spider.toml",
        b"page_cap = 10\n# edited\n",
        0o644,
    );
    let report = client::mirror(&ep, "quotes", &target, &MirrorOptions::default())
        .await
        .unwrap();
    assert_eq!(snapshot(&target), snapshot(&root.join("quotes")));
    assert_eq!(report.files_downloaded, 1, "{report:?}");
    let m = &server.metrics;
    assert_eq!(m.scans.load(Ordering::Relaxed), 2);
    assert_eq!(
        m.files_hashed.load(Ordering::Relaxed),
        7 + 1,
        "only the edited file was rehashed"
    );
}

#[tokio::test]
async fn readers_see_the_old_or_the_new_version_never_a_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let server = InProcess::start(&root).await;
    let ep = server.endpoint();
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    write_spider_v1(&v1);
    for i in 0..30 {
        write_file(
            &v2,
            &format!("pages/{i}.html"),
            &common::noise(30_000, i),
            0o644,
        );
    }
    let _ = client::push_folder(&ep, "flip", &v1).await.unwrap();
    let (s1, s2) = (snapshot(&v1), snapshot(&v2));

    let pusher = {
        let (ep, v1, v2) = (ep.clone(), v1.clone(), v2.clone());
        tokio::spawn(async move {
            for i in 0..6 {
                let dir = if i % 2 == 0 { &v2 } else { &v1 };
                let _ = client::push_folder(&ep, "flip", dir).await.unwrap();
            }
        })
    };
    let mut seen = 0;
    while !pusher.is_finished() || seen == 0 {
        let target = tmp.path().join(format!("reader{seen}"));
        let options = MirrorOptions {
            retry: RetryPolicy::new(Duration::from_millis(5), Duration::from_secs(5))
                .with_retries(19),
            ..MirrorOptions::default()
        };
        let _ = client::mirror(&ep, "flip", &target, &options)
            .await
            .unwrap();
        let got = snapshot(&target);
        assert!(got == s1 || got == s2, "a mirror mixed versions");
        seen += 1;
    }
    pusher.await.unwrap();
}

#[tokio::test]
async fn health_says_serving_and_unknown_spiders_are_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let server = InProcess::start(&tmp.path().join("root")).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "crawler.filesync.v1.FileSync".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let r = client::mirror(
        &server.endpoint(),
        "nope",
        &tmp.path().join("t"),
        &MirrorOptions::default(),
    )
    .await;
    assert!(
        matches!(r, Err(client::SyncError::SpiderNotFound(_))),
        "{r:?}"
    );
    assert!(
        client::list_spiders(&server.endpoint())
            .await
            .unwrap()
            .is_empty()
    );
}
