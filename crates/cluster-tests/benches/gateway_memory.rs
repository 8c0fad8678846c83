//! Gateway memory per idle websocket: the gateway's resident memory grows
//! by how much for each client that connected, made one round trip (a
//! `status` request and its answer) and then stays idle? Measured at 5,000
//! and 19,000 connections (this machine allows 20,000 open files a process)
//! on the gateway as configured by default, and, as the reference in the
//! same run, on the same gateway with axum's default websocket buffers
//! (128 KiB to read, 128 KiB before a write). The gateway must still answer
//! a new job with all of them open.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p cluster-tests --bench gateway_memory
//! cargo bench -p cluster-tests --bench gateway_memory -- --connections 2000,5000
//! ```

use std::time::{Duration, Instant};

use cluster_tests::processes::{Cluster, ClusterSpec, Service};
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long the connections stay idle before the gateway's memory is read.
const SETTLE: Duration = Duration::from_secs(15);

/// How many clients connect at once.
const CONNECTING_AT_ONCE: usize = 256;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn arg(name: &str) -> Option<Vec<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    Some(
        args.get(at + 1)?
            .split(',')
            .map(|v| v.parse().expect("a number"))
            .collect(),
    )
}

/// A gateway of its own on the cluster's engines, with `extra` flags.
async fn gateway(cluster: &Cluster, name: &str, extra: &[&str]) -> Service {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--amqp-url",
        &cluster.engines.amqp,
        "--redis-url",
        &cluster.engines.redis,
        "--database-url",
        &cluster.database_url(),
        "--namespace",
        &cluster.namespace,
        "--allow-network",
        "127.0.0.0/8",
        "--max-connections",
        "100000",
        "--auth",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Service::start(name, "ws-gateway", &args, true).await
}

/// One client: connects, reads its welcome, asks about a job it never
/// submitted and reads the answer. Its own buffers are small, so the
/// benchmark process itself holds 19,000 of them easily.
async fn connect_one(url: String, i: usize) -> Client {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .expect("connect");
    let read_text = async |socket: &mut Client| loop {
        match socket.next().await.expect("open").expect("a frame") {
            Message::Text(_) => return,
            _ => continue,
        }
    };
    read_text(&mut socket).await; // welcome
    let status = format!(r#"{{"type":"status","jobId":"idle-{i}"}}"#);
    socket.send(Message::text(status)).await.expect("send");
    read_text(&mut socket).await; // unknown_job
    socket
}

async fn connect_many(url: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    let mut started = 0;
    while started < n {
        let batch = CONNECTING_AT_ONCE.min(n - started);
        let connecting: Vec<_> = (started..started + batch)
            .map(|i| tokio::spawn(connect_one(url.to_string(), i)))
            .collect();
        for c in connecting {
            clients.push(c.await.expect("a client"));
        }
        started += batch;
    }
    clients
}

/// RSS growth per connection at `n` idle connections, and the time a new
/// job took to be answered meanwhile.
async fn measure(gateway: &Service, n: usize, site: &TestSite) -> (f64, Duration) {
    let url = format!("ws://{}/ws", gateway.addr());
    // A first connection and round trip warm the allocator and the pools.
    let warm = connect_many(&url, 10).await;
    let before = gateway.rss_bytes();
    let clients = connect_many(&url, n).await;
    // Idle means idle for a while: memory freed after the handshakes (an
    // HTTP read buffer each) is given back by the allocator within seconds.
    tokio::time::sleep(SETTLE).await;
    let after = gateway.rss_bytes();
    let per_connection = (after.saturating_sub(before)) as f64 / n as f64;

    let mut client = WsClient::connect(&url).await;
    let started = Instant::now();
    client
        .submit(&format!("J{n}"), &site.url(&format!("/?n={n}")), 1)
        .await;
    client.result(&format!("J{n}")).await;
    let answered = started.elapsed();
    drop((clients, warm));
    (per_connection, answered)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let counts = arg("--connections").unwrap_or_else(|| vec![5_000, 19_000]);
    let cluster = ClusterSpec::new(1, 1).start().await;
    let site = TestSite::serve(SitePlan::tree(&[3])).await;
    let configs: [(&str, &[&str]); 2] = [
        ("this gateway's defaults", &[]),
        (
            "axum's defaults (128 KiB buffers)",
            &[
                "--ws-read-buffer-bytes",
                "131072",
                "--ws-write-buffer-bytes",
                "131072",
            ],
        ),
    ];
    let mut rows = Vec::new();
    for &n in &counts {
        for (label, extra) in configs {
            // A fresh gateway (and so a fresh port) for every measurement.
            let gateway = gateway(&cluster, "gateway", extra).await;
            let (bytes, answered) = measure(&gateway, n, &site).await;
            println!(
                "{n:>6} idle connections, {label}: {:.0} bytes each ({:.2} KiB); a new job answered in {:.0} ms",
                bytes,
                bytes / 1024.0,
                answered.as_secs_f64() * 1000.0
            );
            rows.push((n, label, bytes));
            drop(gateway);
        }
    }
    println!();
    println!("gateway RSS per idle websocket, after one round trip each");
    for n in counts {
        let ours = rows
            .iter()
            .find(|r| r.0 == n && r.1 == configs[0].0)
            .unwrap()
            .2;
        let axum = rows
            .iter()
            .find(|r| r.0 == n && r.1 == configs[1].0)
            .unwrap()
            .2;
        println!(
            "{n:>6} connections: {:>7.0} B (goal: at most 4096)   axum defaults: {:>8.0} B   {:.1}x less",
            ours,
            axum,
            axum / ours.max(1.0)
        );
    }
    cluster.cleanup().await;
}
