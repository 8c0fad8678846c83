//! Politeness benchmark: one crawl over many hosts, each asking for a
//! crawl delay in its robots.txt, through the real services on the real
//! engines (two workers sharing the Redis host gate). Each host takes at
//! most one page per delay, so the crawl cannot beat hosts / delay pages a
//! second; the benchmark prints the aggregate rate against that bound.
//!
//! The hosts are 127.0.0.3 … on one port (loopback answers the whole
//! 127.0.0.0/8), and a portal on 127.0.0.2 links every host's `/`; each
//! host's `/` links its own `pages` pages. Levels: the portal, one root per
//! host, then hosts × pages pages spread evenly over the hosts.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p cluster-tests --bench polite_hosts                   # 200 hosts, 100 ms, 49 pages each
//! cargo bench -p cluster-tests --bench polite_hosts -- --hosts 50 --delay-ms 200 --pages 20
//! ```

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use cluster_tests::bench_flag;
use cluster_tests::processes::ClusterSpec;
use cluster_tests::ws::WsClient;

struct Host {
    port: u16,
    /// The portal links the hosts and has no pages.
    portal_of: Option<Arc<Vec<Ipv4Addr>>>,
    pages: usize,
    delay: Duration,
}

async fn root(State(host): State<Arc<Host>>) -> Html<String> {
    let mut links = String::new();
    match &host.portal_of {
        Some(hosts) => {
            for ip in hosts.iter() {
                links.push_str(&format!(
                    "<a href=\"http://{ip}:{}/\">host</a>\n",
                    host.port
                ));
            }
        }
        None => {
            for i in 0..host.pages {
                links.push_str(&format!("<a href=\"/p/{i}\">page {i}</a>\n"));
            }
        }
    }
    Html(format!("<title>root</title>{links}"))
}

async fn page(Path(i): Path<usize>) -> Html<String> {
    Html(format!("<title>Page {i}</title><a href=\"/\">home</a>"))
}

async fn robots(State(host): State<Arc<Host>>) -> String {
    format!("User-agent: *\nCrawl-delay: {}\n", host.delay.as_secs_f64())
}

/// Serves the portal and every host on the same port, one listener per
/// address; returns the portal's address, the hosts' and the port.
async fn serve_hosts(n: usize, pages: usize, delay: Duration) -> (Vec<Ipv4Addr>, u16) {
    let ips: Arc<Vec<Ipv4Addr>> = Arc::new(
        (0..=n)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i as u32))
            .collect(),
    );
    let hosts = Arc::new(ips[1..].to_vec());
    let first = tokio::net::TcpListener::bind((ips[0], 0))
        .await
        .expect("bind the first host");
    let port = first.local_addr().expect("bound").port();
    let mut listeners = vec![first];
    for ip in &ips[1..] {
        listeners.push(
            tokio::net::TcpListener::bind((*ip, port))
                .await
                .unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}")),
        );
    }
    for (i, listener) in listeners.into_iter().enumerate() {
        let host = Arc::new(Host {
            port,
            portal_of: (i == 0).then(|| hosts.clone()),
            pages,
            delay,
        });
        let app = Router::new()
            .route("/", get(root))
            .route("/robots.txt", get(robots))
            .route("/p/{i}", get(page))
            .with_state(host);
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    (ips.to_vec(), port)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hosts = bench_flag("--hosts", 200) as usize;
    let pages = bench_flag("--pages", 49) as usize;
    let delay = Duration::from_millis(bench_flag("--delay-ms", 100));
    let total = 1 + hosts * (1 + pages);
    let (ips, port) = serve_hosts(hosts, pages, delay).await;
    let cap = (total + 10).to_string();
    // Enough batches in flight for every host to have one waiting on its delay.
    let in_flight = (hosts / 2 + 8).to_string();
    let cluster = ClusterSpec::new(1, 2)
        .gateway_args(&["--max-pages", &cap])
        .worker_args(&["--batches-in-flight", &in_flight])
        .start()
        .await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    let allowed: Vec<String> = ips[1..].iter().map(|ip| ip.to_string()).collect();
    let started = Instant::now();
    client
        .send_json(&serde_json::json!({
            "type": "submit", "jobId": "polite", "url": format!("http://{}:{port}/", ips[0]),
            "depth": 2, "maxPages": total + 10, "allowedHosts": allowed,
        }))
        .await;
    let result = client.result("polite").await;
    let took = started.elapsed();
    let fetched = result["pages"]
        .as_array()
        .map_or(0, |p| p.iter().filter(|p| p["status"] == 200).count());
    let listed: usize = result["levels"].as_array().map_or(0, |l| {
        l.iter().map(|l| l.as_array().map_or(0, Vec::len)).sum()
    });
    assert_eq!(listed, total, "every page of every host in the levels");
    let rate = listed as f64 / took.as_secs_f64();
    let bound = hosts as f64 / delay.as_secs_f64();
    println!(
        "{hosts} hosts x {pages} pages, Crawl-delay {} ms: {listed} pages ({fetched} fetched with 200 in the inline result) in {:.2} s",
        delay.as_millis(),
        took.as_secs_f64()
    );
    println!(
        "aggregate {rate:.0} pages/s; politeness bound {bound:.0} pages/s ({hosts} x 1 / {:.1} s); {:.0}% of the bound",
        delay.as_secs_f64(),
        100.0 * rate / bound
    );
    cluster.cleanup().await;
}
