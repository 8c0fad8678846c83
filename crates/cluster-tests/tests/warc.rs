//! WARC output: `crawlctl crawl --warc FILE` and the `warc` job option keep
//! every fetched response as a WARC 1.1 record that a standard tool
//! (warcio, from the Python environment `scripts/test` prepares) reads back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use std::time::Duration;

use cluster_tests::processes::{ClusterSpec, run_crawlctl};
use cluster_tests::ws::WsClient;
use crawlctl::sample_site::SampleSite;
use serde_json::{Value, json};

fn warcio() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/warcio");
    assert!(
        path.exists(),
        "warcio is missing: run scripts/test, which installs it into target/py"
    );
    path
}

/// (type, target URI, HTTP status) of every record of `files`, as warcio reads them.
fn records(files: &[PathBuf]) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for file in files {
        let output = std::process::Command::new(warcio())
            .args(["index", "-f", "warc-type,warc-target-uri,http:status"])
            .arg(file)
            .output()
            .expect("run warcio");
        assert!(
            output.status.success(),
            "warcio cannot read {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            let record: Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| record[name].as_str().unwrap_or_default().to_string();
            all.push((
                field("warc-type"),
                field("warc-target-uri"),
                field("http:status"),
            ));
        }
    }
    all
}

/// (final URL, status) of every page of a result that got an answer.
fn answered(result: &Value) -> BTreeSet<(String, String)> {
    result["pages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|page| page["status"].is_u64())
        .map(|page| {
            let url = page["finalUrl"].as_str().or(page["url"].as_str()).unwrap();
            (url.to_string(), page["status"].to_string())
        })
        .collect()
}

fn responses(records: &[(String, String, String)]) -> BTreeSet<(String, String)> {
    records
        .iter()
        .filter(|(kind, _, _)| kind == "response")
        .map(|(_, url, status)| (url.clone(), status.clone()))
        .collect()
}

fn warc_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "warc"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crawlctl_writes_a_response_record_for_every_page_it_fetched() {
    let site = SampleSite::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crawl.warc");
    let url = site.start_url();
    let args = ["crawl", &url, "--depth", "1", "--json"];
    let warc = [
        "--allow-network",
        "127.0.0.0/8",
        "--warc",
        file.to_str().unwrap(),
    ];
    let output = run_crawlctl(&[&args[..], &warc[..]].concat(), Duration::from_secs(120)).await;
    let result: Value = serde_json::from_str(&output).unwrap();
    let records = records(std::slice::from_ref(&file));
    let fetched = answered(&result);
    assert!(fetched.len() >= 5, "{result}");
    assert_eq!(responses(&records), fetched);
    let responses = records.iter().filter(|r| r.0 == "response").count();
    assert_eq!(responses, fetched.len(), "one record per page");
    assert_eq!(records[0].0, "warcinfo", "a file starts with its warcinfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warc_job_is_fetched_into_the_workers_folder_and_refused_where_none_is_kept() {
    let folder = tempfile::tempdir().unwrap();
    let dir = folder.path().display().to_string();
    let keeping = ClusterSpec::new(1, 1)
        .worker_args(&["--warc-dir", &dir])
        .start()
        .await;
    let site = SampleSite::start().await.unwrap();
    let mut client = WsClient::connect(&keeping.ws_url()).await;
    client.submit("plain", &site.start_url(), 1).await;
    client.result("plain").await;
    assert!(
        warc_files(folder.path()).is_empty(),
        "only a warc job is kept"
    );

    let warc = |job: &str| json!({"type": "submit", "jobId": job, "url": site.start_url(), "depth": 1, "warc": true});
    client.send_json(&warc("archived")).await;
    let result = client.result("archived").await;
    assert_eq!(
        result["cached"], false,
        "a warc job is fetched, not answered from the cache"
    );
    assert_eq!(
        responses(&records(&warc_files(folder.path()))),
        answered(&result)
    );
    keeping.cleanup().await;

    let bare = ClusterSpec::new(1, 1).start().await;
    let mut client = WsClient::connect(&bare.ws_url()).await;
    client.send_json(&warc("nowhere")).await;
    let error = client.outcome("nowhere").await;
    assert_eq!(error["code"], "crawl_failed", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("--warc-dir"),
        "{error}"
    );
    bare.cleanup().await;
}
