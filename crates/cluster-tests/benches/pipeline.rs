//! Pipeline benchmark: pages per second of a whole crawl of one loopback
//! host, politeness off, through the real services (gateway, queue, lock
//! server, master, two workers unless `--workers` says) on the real
//! engines, measured from the submit to the result at a websocket client;
//! against the `spider` crate crawling the same site in its own process,
//! measured in the same run, in two builds: with the default features its
//! documentation installs (load balancing, throttling, browser emulation,
//! visited links past 15,000 kept on disk), and with them off. The site
//! counts the pages it serves, so each crawler's pages are counted alike.
//!
//! The site is flat: `/` links N pages, each linking back to `/` and to its
//! next three siblings, so every page's links are read and deduplicated.
//! Each run starts from a new query on `/`, so no cached crawl answers it.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! (cd bench/spider-peer && cargo build --release)
//! (cd bench/spider-peer-lean && cargo build --release)
//! cargo bench -p cluster-tests --bench pipeline                       # 2,000 and 20,000 pages, 3 runs
//! cargo bench -p cluster-tests --bench pipeline -- --pages 2000 --runs 5
//! cargo bench -p cluster-tests --bench pipeline -- --no-peers --workers 1 --master-args "--batch-size 32"
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use cluster_tests::processes::ClusterSpec;
use cluster_tests::ws::WsClient;

struct Site {
    base: String,
    /// Pages served so far: what each crawler really fetched, whatever it
    /// reports of itself.
    served: Arc<AtomicUsize>,
}

impl Site {
    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

async fn serve_site(pages: usize) -> Site {
    let served = Arc::new(AtomicUsize::new(0));
    let root: String = (0..pages)
        .map(|i| format!("<a href=\"/p/{i}\">page {i}</a>\n"))
        .collect();
    let root = Arc::new(format!(
        "<html><head><title>Root</title></head><body>{root}</body></html>"
    ));
    let app = Router::new()
        .route("/", get(|State(root): State<Arc<String>>| async move { Html(root.to_string()) }))
        .route(
            "/p/{i}",
            get(move |Path(i): Path<usize>| async move {
                let siblings: String = (1..=3)
                    .map(|d| format!("<a href=\"/p/{}\">next</a>", (i + d) % pages))
                    .collect();
                Html(format!(
                    "<html><head><title>Page {i}</title></head><body><a href=\"/\">home</a>{siblings}<p>{}</p></body></html>",
                    "text ".repeat(40)
                ))
            }),
        )
        .with_state(root)
        .layer(axum::middleware::from_fn_with_state(
            served.clone(),
            |State(served): State<Arc<AtomicUsize>>,
             request: axum::extract::Request,
             next: axum::middleware::Next| async move {
                let path = request.uri().path();
                if path == "/" || path.starts_with("/p/") {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                next.run(request).await
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the site");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Site { base, served }
}

fn arg<T: std::str::FromStr>(name: &str) -> Option<Vec<T>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    let values = args.get(at + 1)?;
    Some(
        values
            .split(',')
            .map(|v| v.parse().ok().unwrap_or_else(|| panic!("{name} {values}")))
            .collect(),
    )
}

/// The peers: spider as installed by default, and spider without its
/// default features.
const PEERS: [(&str, &str); 2] = [
    ("spider", "spider-peer"),
    ("spider, default features off", "spider-peer-lean"),
];

fn peer_binary(crate_dir: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../bench/{crate_dir}/target/release/{crate_dir}"
    ));
    assert!(
        path.exists(),
        "the peer is not built: (cd bench/{crate_dir} && cargo build --release)"
    );
    path
}

/// One crawl by a spider peer: (pages visited, crawl time, CPU time of its process).
fn spider_crawl(peer: &str, url: &str, pages: usize) -> (usize, Duration, Duration) {
    let output = Command::new(peer_binary(peer))
        .args([url, "1", &(pages + 1).to_string()])
        .output()
        .expect("run the spider peer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the peer prints JSON");
    let ms = |field: &str| Duration::from_millis(line[field].as_u64().expect(field));
    (
        line["pages"].as_u64().expect("pages") as usize,
        ms("elapsed_ms"),
        ms("cpu_ms"),
    )
}

/// CPU time so far of every service process of the cluster.
fn cpu_of(cluster: &cluster_tests::processes::Cluster) -> Vec<(String, Duration)> {
    let services = cluster
        .locks
        .iter()
        .chain(&cluster.masters)
        .chain(&cluster.workers)
        .chain(std::iter::once(&cluster.gateway));
    services.map(|s| (s.name.clone(), s.cpu_time())).collect()
}

/// How long a crawl's result is waited for.
const RESULT_PATIENCE: Duration = Duration::from_secs(120);

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn rate(pages: usize, time: Duration) -> f64 {
    pages as f64 / time.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = arg::<usize>("--pages").unwrap_or_else(|| vec![2_000, 20_000]);
    let runs = arg::<usize>("--runs").map_or(3, |r| r[0]);
    let largest = sizes.iter().max().copied().unwrap_or(0) + 1;
    let cap = largest.to_string();
    let master_args = arg::<String>("--master-args").unwrap_or_default();
    // Politeness off, as the benchmark is defined: no per-host limit.
    let worker_args =
        arg::<String>("--worker-args").unwrap_or_else(|| vec!["--host-concurrency 0".to_string()]);
    let as_strs = |v: &[String]| {
        v.iter()
            .flat_map(|a| a.split(' '))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (master_args, worker_args) = (as_strs(&master_args), as_strs(&worker_args));
    let workers = arg::<usize>("--workers").map_or(2, |w| w[0]);
    // `--no-peers`: the pipeline alone, for comparing builds or settings of it.
    let peers: &[(&str, &str)] = if std::env::args().any(|a| a == "--no-peers") {
        &[]
    } else {
        &PEERS
    };
    let cluster = ClusterSpec::new(1, workers)
        .gateway_args(&["--max-pages", &cap])
        .master_args(&master_args.iter().map(String::as_str).collect::<Vec<_>>())
        .worker_args(&worker_args.iter().map(String::as_str).collect::<Vec<_>>())
        .start()
        .await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    let mut rows = Vec::new();
    for &pages in &sizes {
        let site = serve_site(pages).await;
        let mut ours = Vec::new();
        let mut theirs: Vec<Vec<(usize, Duration)>> = vec![Vec::new(); peers.len()];
        for run in 0..runs {
            let job = format!("p{pages}-{run}");
            let url = format!("{}/?run={run}", site.base);
            let cpu_before = cpu_of(&cluster);
            let served_before = site.served();
            let started = Instant::now();
            client
                .send_json(&serde_json::json!({
                    "type": "submit", "jobId": job, "url": url, "depth": 1, "maxPages": pages + 1
                }))
                .await;
            let result = client.crawl_result(&job, RESULT_PATIENCE).await;
            let took = started.elapsed();
            ours.push(took);
            let fetched = result.pages.len();
            assert_eq!(fetched, pages + 1, "the pipeline fetched every page");
            let served = site.served() - served_before;
            let by_service: Vec<(String, Duration)> = cpu_of(&cluster)
                .into_iter()
                .zip(cpu_before)
                .map(|((name, after), (_, before))| (name, after.saturating_sub(before)))
                .collect();
            let cpu: Duration = by_service.iter().map(|(_, cpu)| *cpu).sum();
            let shares: Vec<String> = by_service
                .iter()
                .map(|(name, cpu)| format!("{name} {:.2}", cpu.as_secs_f64()))
                .collect();
            println!(
                "{pages:>6} pages, run {}: pipeline {:.3} s, {served} pages served ({:.2} CPU s in its services: {})",
                run + 1,
                took.as_secs_f64(),
                cpu.as_secs_f64(),
                shares.join(", ")
            );
            for (i, (name, binary)) in peers.iter().enumerate() {
                let start = format!("{}/?run={binary}-{run}", site.base);
                let before = site.served();
                let (reported, took, cpu) = spider_crawl(binary, &start, pages);
                let visited = site.served() - before;
                theirs[i].push((visited, took));
                println!(
                    "{name:>29}: {:.3} s, {visited} pages served ({reported} reported; {:.2} CPU s)",
                    took.as_secs_f64(),
                    cpu.as_secs_f64()
                );
            }
        }
        rows.push((pages + 1, median(ours), theirs));
    }
    println!();
    println!("medians of {runs} runs; a ratio over 1 means the pipeline is faster");
    for (pages, ours, theirs) in rows {
        println!(
            "{pages:>6} pages  pipeline {:>6.3} s {:>7.0} pages/s",
            ours.as_secs_f64(),
            rate(pages, ours)
        );
        for ((name, _), runs) in peers.iter().zip(theirs) {
            let visited = runs.iter().map(|(v, _)| *v).min().unwrap_or(0);
            let took = median(runs.into_iter().map(|(_, t)| t).collect());
            let short = if visited < pages {
                format!(" (it visited only {visited} pages)")
            } else {
                String::new()
            };
            println!(
                "{:13}{name:<29} {:>6.3} s {:>7.0} pages/s  pipeline is {:.2}x{short}",
                "",
                took.as_secs_f64(),
                rate(visited, took),
                rate(pages, ours) / rate(visited, took),
            );
        }
    }
    cluster.cleanup().await;
}
