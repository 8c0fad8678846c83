//! Cache hits: a repeated job is answered from Redis without a master. At
//! 2,000 submits a second from 200 connections (10 each), how long from a
//! submit to its result, p50 and p99? As the reference, measured in the
//! same run at the same rate: a bare Redis round trip (GET of the cached
//! entry) from 200 tasks.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p cluster-tests --bench cache_hits                     # 10 s at 2,000/s
//! cargo bench -p cluster-tests --bench cache_hits -- --seconds 5 --connections 100
//! ```

use std::time::{Duration, Instant};

use cluster_tests::processes::ClusterSpec;
use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use redis::AsyncCommands;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|at| args.get(at + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// Each of `tasks` runs `op` every `period` for `seconds`; returns the
/// latencies of all the calls.
async fn paced<F, Fut>(tasks: u64, period: Duration, seconds: u64, op: F) -> Vec<Duration>
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Duration> + Send,
{
    let rounds = seconds * 1000 / period.as_millis() as u64;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                // Spread the tasks over the period, so the rate is even.
                let offset = period * task as u32 / tasks as u32;
                tokio::time::sleep(offset).await; // pacing, not synchronisation
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut latencies = Vec::with_capacity(rounds as usize);
                for round in 0..rounds {
                    tick.tick().await;
                    latencies.push(op(task, round).await);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.expect("a task"));
    }
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(label: &str, mut latencies: Vec<Duration>, seconds: u64) -> (Duration, Duration) {
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    println!(
        "{label:>28}: {} calls in {seconds} s ({:.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / seconds as f64,
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds = arg("--seconds", 10);
    let connections = arg("--connections", 200);
    let period = Duration::from_millis(100);
    let cluster = ClusterSpec::new(1, 1).start().await;
    let site = TestSite::serve(SitePlan::tree(&[3])).await;
    let url = site.url("/");

    // The first crawl fills the cache.
    let mut first = WsClient::connect(&cluster.ws_url()).await;
    first.submit("warm", &url, 1).await;
    first.result("warm").await;

    // The reference: Redis itself, at the same rate, on the cached entry.
    let key = format!(
        "{}:{}",
        cluster.namespace,
        crawler_core::urls::cache_key(
            url::Url::parse(&url).unwrap().as_str(),
            &crawler_core::model::CrawlOptions {
                max_pages: 1000,
                ..Default::default()
            }
        )
    );
    let redis = redis::Client::open(cluster.engines.redis.as_str()).expect("a Redis URL");
    let manager = redis::aio::ConnectionManager::new(redis)
        .await
        .expect("connect to Redis");
    let (get_manager, get_key) = (manager.clone(), key.clone());
    let redis_latencies = paced(connections, period, seconds, move |_, _| {
        let (mut manager, key) = (get_manager.clone(), get_key.clone());
        async move {
            let started = Instant::now();
            let crawl: Option<String> = manager.hget(&key, "crawl").await.expect("HGET");
            assert!(crawl.is_some(), "the crawl is cached under {key}");
            started.elapsed()
        }
    })
    .await;

    // The gateway: submits of the same crawl under new job ids.
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(std::sync::Arc::new(tokio::sync::Mutex::new(
            WsClient::connect(&cluster.ws_url()).await,
        )));
    }
    let (cache_url, shared) = (url.clone(), clients.clone());
    let hits = paced(connections, period, seconds, move |task, round| {
        let (client, url) = (shared[task as usize].clone(), cache_url.clone());
        async move {
            let mut client = client.lock().await;
            let job = format!("hit-{task}-{round}");
            let started = Instant::now();
            client.submit(&job, &url, 1).await;
            let result = client.result(&job).await;
            let took = started.elapsed();
            assert_eq!(result["cached"], true, "{result}");
            took
        }
    })
    .await;

    println!();
    let (_, redis_p99) = report("Redis HGET (the reference)", redis_latencies, seconds);
    let (_, hit_p99) = report("cache hit, submit to result", hits, seconds);
    println!(
        "p99 of a cache hit: {:.2} ms (goal: at most 2 ms), {:.1}x a Redis round trip's",
        hit_p99.as_secs_f64() * 1000.0,
        hit_p99.as_secs_f64() / redis_p99.as_secs_f64()
    );
    cluster.cleanup().await;
}
