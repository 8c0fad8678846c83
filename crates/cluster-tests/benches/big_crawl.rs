//! Big-crawl benchmark: one crawl of a generated site of about a million
//! pages on loopback, politeness off, through the real services on the
//! real engines, its result read part by part from the store. Prints the
//! wall time, the pages/s, and the peak RSS (VmHWM) of the master and of
//! each worker; and, measured in the same run, a 20,000-page crawl of the
//! same shape, whose pages/s the big one is compared with.
//!
//! The site is a tree: `/` links `fanout` pages, each of which links
//! `fanout` more: 1 + fanout + fanout² pages at depth 2.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p cluster-tests --bench big_crawl                   # fanout 1000: 1,001,001 pages
//! cargo bench -p cluster-tests --bench big_crawl -- --fanout 300   # 90,301 pages
//! ```

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::response::Html;
use axum::routing::get;
use cluster_tests::bench_flag;
use cluster_tests::processes::{Cluster, ClusterSpec};
use cluster_tests::ws::WsClient;
use serde_json::json;

/// Serves a tree of `fanout` × `fanout` pages below `/`; returns its base URL.
async fn serve_tree(fanout: usize) -> String {
    let links = move |prefix: String| -> String {
        (0..fanout)
            .map(|i| format!("<a href=\"{prefix}{i}\">{i}</a>\n"))
            .collect()
    };
    let app = Router::new()
        .route(
            "/",
            get(move || async move { Html(format!("<title>root</title>{}", links("/a/".into()))) }),
        )
        .route(
            "/a/{i}",
            get(move |Path(i): Path<usize>| async move {
                Html(format!("<title>a{i}</title>{}", links(format!("/b/{i}/"))))
            }),
        )
        .route(
            "/b/{i}/{j}",
            get(|Path((i, j)): Path<(usize, usize)>| async move {
                Html(format!("<title>b{i}.{j}</title><a href=\"/\">home</a>"))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the site");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Crawls `url` to depth 2 and reads the result part by part, counting
/// pages without keeping them. Returns (pages, wall time).
async fn crawl(client: &mut WsClient, job: &str, url: &str, pages: usize) -> (u64, Duration) {
    let started = Instant::now();
    client
        .send_json(
            &json!({"type": "submit", "jobId": job, "url": url, "depth": 2, "maxPages": pages}),
        )
        .await;
    let head = client
        .next_where_within(Duration::from_secs(1800), |m| {
            m["jobId"] == job
                && (m["type"] == "resultHead" || m["type"] == "result" || m["type"] == "error")
        })
        .await;
    assert_eq!(head["type"], "resultHead", "{head:.300}");
    let mut counted = 0;
    loop {
        let part = client
            .next_where(|m| m["jobId"] == job && m["type"] == "resultPart")
            .await;
        counted += part["pages"].as_array().map_or(0, Vec::len) as u64;
        if part["last"] == true {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(counted, head["pageCount"].as_u64().expect("pageCount"));
    (counted, took)
}

fn peaks(cluster: &Cluster) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut line = format!("master {:.0} MiB", mib(cluster.masters[0].peak_rss_bytes()));
    for worker in &cluster.workers {
        line.push_str(&format!(
            ", {} {:.0} MiB",
            worker.name,
            mib(worker.peak_rss_bytes())
        ));
    }
    line
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fanout = bench_flag("--fanout", 1000) as usize;
    let pages = 1 + fanout + fanout * fanout;
    let cap = pages.to_string();
    let cluster = ClusterSpec::new(1, 2)
        .gateway_args(&["--max-pages", &cap])
        .worker_args(&["--host-concurrency", "0"])
        .start()
        .await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;

    // The reference: the same shape at about 20,000 pages (fanout 141).
    let small = serve_tree(141).await;
    let (small_pages, small_time) = crawl(&mut client, "small", &format!("{small}/"), 20_163).await;
    let small_rate = small_pages as f64 / small_time.as_secs_f64();
    println!(
        "reference: {small_pages} pages in {:.2} s, {small_rate:.0} pages/s",
        small_time.as_secs_f64()
    );

    let big = serve_tree(fanout).await;
    let (big_pages, big_time) = crawl(&mut client, "big", &format!("{big}/"), pages).await;
    let big_rate = big_pages as f64 / big_time.as_secs_f64();
    println!(
        "big crawl: {big_pages} pages in {:.1} s, {big_rate:.0} pages/s ({:.0}% of the reference)",
        big_time.as_secs_f64(),
        100.0 * big_rate / small_rate
    );
    println!("peak RSS: {}", peaks(&cluster));
    cluster.cleanup().await;
}
