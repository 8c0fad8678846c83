//! End-to-end tests against the real `file-sync` binary over gRPC.

mod common;

use std::time::Duration;

use common::{ServerProcess, noise, snapshot, write_file, write_spider_v1};
use crawler_core::retry::{RetryPolicy, Transient};
use file_sync::client::{self, MirrorOptions, Progress};
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn nested_tree_lands_at_exact_paths_with_modes_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, source, target) = (
        tmp.path().join("root"),
        tmp.path().join("src"),
        tmp.path().join("worker/quotes"),
    );
    write_spider_v1(&source);
    let server = ServerProcess::start(&root, &[]);

    let pushed = client::push_folder(&server.endpoint(), "quotes", &source)
        .await
        .expect("push");
    assert_eq!(pushed.entries, snapshot(&source).len() as u64);
    assert_eq!(
        client::list_spiders(&server.endpoint()).await.unwrap(),
        ["quotes"]
    );

    let report = client::mirror(
        &server.endpoint(),
        "quotes",
        &target,
        &MirrorOptions::default(),
    )
    .await
    .expect("mirror");

    assert_eq!(snapshot(&target), snapshot(&source));
    assert_eq!(report.scan_id, pushed.scan_id);
    let quotes = target
        .join("crawlab_project")
        .join("spiders")
        .join("quotes.py");
    assert!(
        std::fs::read_to_string(&quotes)
            .unwrap()
            .contains("QuotesSpider")
    );
    assert!(!target.join("crawlab_project/sp").exists());
    let mode = |p: &str| {
        std::fs::metadata(target.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("bin/run.sh"), 0o755, "the executable stays executable");
    assert_eq!(mode("crawlab_project/settings.py"), 0o600);
    assert_eq!(report.files_downloaded, 7);

    // A second sync finds everything in place.
    let again = client::mirror(
        &server.endpoint(),
        "quotes",
        &target,
        &MirrorOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((again.files_downloaded, again.files_skipped), (0, 7));
}

#[tokio::test]
async fn update_from_v1_to_v2_changes_adds_and_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, source, target) = (
        tmp.path().join("root"),
        tmp.path().join("src"),
        tmp.path().join("worker/quotes"),
    );
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write_spider_v1(&source);
    let server = ServerProcess::start(&root, &[]);
    let ep = server.endpoint();
    let _v1 = client::push_folder(&ep, "quotes", &source).await.unwrap();
    let _ = client::mirror(&ep, "quotes", &target, &MirrorOptions::default())
        .await
        .unwrap();

    // v2: one file changed, one added in a new nested folder, a file and a
    // whole folder deleted, a mode changed.
    write_file(
        &source,
        "crawlab_project/spiders/quotes.py",
        b"# v2\nimport scrapy\n",
        0o644,
    );
    write_file(
        &source,
        "crawlab_project/spiders/authors.py",
        b"# new\n",
        0o644,
    );
    write_file(
        &source,
        "crawlab_project/pipelines/store/db.py",
        b"# deep\n",
        0o644,
    );
    std::fs::remove_file(source.join("data/old.csv")).unwrap();
    std::fs::remove_dir_all(source.join("data/seeds")).unwrap();
    std::fs::set_permissions(
        source.join("crawlab_project/settings.py"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let _v2 = client::push_folder(&ep, "quotes", &source).await.unwrap();

    // Local debris the server never had: a stray file, and a link that points
    // outside the target (a sync must delete it, never write through it).
    write_file(&target, "stray.log", b"x", 0o644);
    std::os::unix::fs::symlink(&outside, target.join("crawlab_project/pipelines")).unwrap();

    let report = client::mirror(&ep, "quotes", &target, &MirrorOptions::default())
        .await
        .unwrap();

    assert_eq!(snapshot(&target), snapshot(&source));
    assert_eq!(report.files_downloaded, 3, "{report:?}");
    assert_eq!(report.files_skipped, 4, "{report:?}");
    assert!(report.entries_deleted >= 4, "{report:?}");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
    assert!(!target.join("data/old.csv").exists());
    assert!(!target.join("data/seeds").exists());
}

#[tokio::test]
async fn a_file_over_10_mb_arrives_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    // Half noise, half text: both encodings are exercised.
    let mut big = noise(6 << 20, 7);
    big.extend(b"GET /quotes/page/1 HTTP/1.1\r\n".repeat((6 << 20) / 29));
    write_file(&root.join("big"), "payload/blob.bin", &big, 0o644);
    let server = ServerProcess::start(&root, &[]);
    let target = tmp.path().join("t");

    let report = client::mirror(
        &server.endpoint(),
        "big",
        &target,
        &MirrorOptions::default(),
    )
    .await
    .unwrap();

    let got = std::fs::read(target.join("payload/blob.bin")).unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(blake3::hash(&got), blake3::hash(&big));
    assert_eq!(report.bytes_downloaded, big.len() as u64);
    assert!(
        report.wire_bytes < big.len() as u64,
        "text chunks were compressed"
    );
    let stats = client::stats(&server.endpoint()).await.unwrap();
    assert!(
        stats.chunks_compressed > 0 && stats.chunks_raw > 0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_interrupted_download_resumes_from_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let size = 24 << 20;
    let data = noise(size, 42);
    write_file(&root.join("heavy"), "model/weights.bin", &data, 0o644);
    let target = tmp.path().join("t");
    let mut first = ServerProcess::start(&root, &[]);

    // The progress channel holds one event: the sync cannot run ahead of
    // this test by more than a chunk or two once we stop reading.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Progress>(1);
    let options = MirrorOptions {
        retry: RetryPolicy::new(Duration::ZERO, Duration::ZERO).with_retries(0),
        parallel_downloads: 1,
        compression: false,
        progress: Some(tx),
        ..MirrorOptions::default()
    };
    let ep = first.endpoint();
    let target2 = target.clone();
    let sync = tokio::spawn(async move { client::mirror(&ep, "heavy", &target2, &options).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let p = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("progress within the deadline")
            .expect("the sync is running");
        if p.written >= 4 << 20 {
            break;
        }
    }
    first.kill(); // the server crashes mid-transfer
    drop(rx); // let the client see the broken stream
    let err = sync
        .await
        .unwrap()
        .expect_err("the sync cannot finish without its server");
    assert!(err.is_transient(), "{err}");
    assert!(
        !target.join("model/weights.bin").exists(),
        "no half file in place"
    );

    let second = ServerProcess::start(&root, &[]);
    let report = client::mirror(
        &second.endpoint(),
        "heavy",
        &target,
        &MirrorOptions::default(),
    )
    .await
    .unwrap();

    let got = std::fs::read(target.join("model/weights.bin")).unwrap();
    assert_eq!(blake3::hash(&got), blake3::hash(&data));
    assert!(report.bytes_resumed >= 4 << 20, "{report:?}");
    assert_eq!(report.bytes_resumed + report.bytes_downloaded, size as u64);
    let stats = client::stats(&second.endpoint()).await.unwrap();
    assert_eq!(stats.download_resumes, 1, "{stats:?}");
    assert_eq!(stats.download_bytes_skipped, report.bytes_resumed);
    assert_eq!(
        stats.raw_bytes_sent,
        size as u64 - report.bytes_resumed,
        "only the rest was sent"
    );
}

#[tokio::test]
async fn four_concurrent_syncs_into_two_targets_share_one_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    // Written straight into the root: nothing has scanned it yet.
    write_spider_v1(&root.join("quotes"));
    for i in 0..40 {
        write_file(
            &root.join("quotes"),
            &format!("pages/p{i:02}/index.html"),
            &noise(20_000 + i * 100, i as u64),
            0o644,
        );
    }
    let server = ServerProcess::start(&root, &[]);
    let targets = [tmp.path().join("a/quotes"), tmp.path().join("b/quotes")];

    let syncs: Vec<_> = (0..4)
        .map(|i| {
            let (ep, target) = (server.endpoint(), targets[i % 2].clone());
            tokio::spawn(async move {
                client::mirror(&ep, "quotes", &target, &MirrorOptions::default()).await
            })
        })
        .collect();
    for s in syncs {
        let report = s.await.unwrap().expect("every sync completes");
        assert_eq!(report.files_downloaded + report.files_skipped, 47);
    }

    let want = snapshot(&root.join("quotes"));
    assert_eq!(snapshot(&targets[0]), want);
    assert_eq!(snapshot(&targets[1]), want);
    let stats = client::stats(&server.endpoint()).await.unwrap();
    assert_eq!(stats.scans, 1, "{stats:?}");
    assert_eq!(stats.hash_passes, 1, "{stats:?}");
    assert_eq!(stats.files_hashed, 47, "{stats:?}");
}

#[test]
fn help_documents_flags_defaults_and_environment() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_file-sync"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "127.0.0.1:50053",
        "./spiders-root",
        "FILE_SYNC__ROOT",
        "FILE_SYNC__LISTEN",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}
