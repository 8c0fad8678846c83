//! What every service shows an operator over HTTP: `/healthz` (the process
//! is alive; it depends on nothing else), `/readyz` (ready for traffic, as
//! the service judges it) and `/metrics` (the Prometheus text of the
//! process's metrics). The gRPC services serve it on `--admin-listen`; the
//! gateway serves the same routes on its own port.
//!
//! Metrics go through the `metrics` facade into one Prometheus recorder per
//! process, installed on first use, so the services of the one-process
//! embedded cluster share it. Metric names are `crawler_<service>_<what>`,
//! `_total` for counters and `_seconds` for histograms, declared with their
//! help in each service's `metrics.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bucket bounds of every `_seconds` histogram: 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bucket bounds of every `_bytes` histogram: 1 KiB to 64 MiB (RabbitMQ
/// refuses messages over 16 MiB by default).
const BYTES_BUCKETS: &[f64] = &[
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
            .expect("the bucket lists are not empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed already (a test harness's): keep
            // ours unregistered, so rendering still works but shows nothing.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// Renders the process's metrics as Prometheus text.
pub fn render() -> String {
    let handle = prometheus();
    handle.run_upkeep();
    handle.render()
}

/// Whether a service is ready for traffic: `Err` names what it waits for.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Called before each scrape, for services that keep counters of their own
/// (per instance, read by their tests) to publish them to the recorder.
pub type OnScrape = Arc<dyn Fn() + Send + Sync>;

/// The routes, for a service that serves them on a router of its own.
/// Installs the recorder, so what is counted from now on is kept.
pub fn routes(ready: Readiness, on_scrape: OnScrape) -> Router {
    prometheus();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state((ready, on_scrape))
}

async fn readyz(State((ready, _)): State<(Readiness, OnScrape)>) -> impl IntoResponse {
    match ready() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(waiting) => (StatusCode::SERVICE_UNAVAILABLE, waiting),
    }
}

async fn metrics(State((_, on_scrape)): State<(Readiness, OnScrape)>) -> impl IntoResponse {
    on_scrape();
    ([("content-type", "text/plain; version=0.0.4")], render())
}

/// The admin HTTP endpoint of a gRPC service, bound but not serving yet.
pub struct AdminServer {
    listener: TcpListener,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} for /healthz, /readyz and /metrics: {e}"),
            )
        })?;
        Ok(Self { listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`; logs its address as `admin=`.
    pub async fn serve(self, ready: Readiness, on_scrape: OnScrape, shutdown: CancellationToken) {
        let addr = self.local_addr();
        tracing::info!(admin = %addr, "serving /healthz, /readyz and /metrics");
        let served = axum::serve(self.listener, routes(ready, on_scrape))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the admin endpoint stopped");
        }
    }
}

/// Serves the admin endpoint at `addr`, when one is configured, until
/// `shutdown`. Binding fails at once, so a taken port stops the service.
pub async fn spawn(
    addr: Option<SocketAddr>,
    ready: Readiness,
    on_scrape: OnScrape,
    shutdown: CancellationToken,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    // The recorder is installed here, before the caller goes on, not in the
    // spawned server: what the service records from now on is kept, even
    // if it records before the server's task first runs.
    prometheus();
    let Some(addr) = addr else {
        return Ok(None);
    };
    let server = AdminServer::bind(addr).await?;
    Ok(Some(tokio::spawn(server.serve(ready, on_scrape, shutdown))))
}

/// A scrape hook that does nothing.
pub fn no_own_counters() -> OnScrape {
    Arc::new(|| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_readiness_and_metrics_are_served() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let readiness: Readiness = Arc::new(move || {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not subscribed yet".into())
            }
        });
        let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = scrapes.clone();
        let on_scrape: OnScrape = Arc::new(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            metrics::counter!("crawler_admin_test_scrapes_total").absolute(n);
        });
        let stop = CancellationToken::new();
        let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        tokio::spawn(server.serve(readiness, on_scrape, stop.clone()));

        let get = |path: &'static str| http_get(addr, path);
        assert_eq!(get("/healthz").await, (200, "ok".to_string()));
        assert_eq!(
            get("/readyz").await,
            (503, "not subscribed yet".to_string())
        );
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get("/readyz").await.0, 200);
        let (status, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("crawler_admin_test_scrapes_total 1"),
            "{body}"
        );
        stop.cancel();
    }

    /// A bare HTTP/1.1 GET, so the test needs no HTTP client crate.
    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap();
        (status, body)
    }
}

/// One engine's check: `Err` says what is wrong.
pub type Probe =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Whether a service's engines answer, checked in the background so that
/// `/readyz` answers at once: not ready while one of them is down.
#[derive(Clone)]
pub struct EngineHealth {
    /// What is down, when something is.
    down: Arc<std::sync::Mutex<Option<String>>>,
}

/// How often engines are checked, and how long one check may take.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl EngineHealth {
    /// Checks `probes` now and every second until `shutdown`.
    pub fn spawn(probes: Vec<(&'static str, Probe)>, shutdown: CancellationToken) -> Self {
        let health = Self {
            down: Arc::default(),
        };
        let down = health.down.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEALTH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                let checks = probes.iter().map(|(name, probe)| {
                    let check = probe();
                    async move {
                        match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(format!("{name} is down: {e}")),
                            Err(_) => {
                                Some(format!("{name} did not answer within {HEALTH_TIMEOUT:?}"))
                            }
                        }
                    }
                });
                let failures: Vec<String> = futures::future::join_all(checks)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                let now = (!failures.is_empty()).then(|| failures.join("; "));
                let mut state = down.lock().unwrap_or_else(|e| e.into_inner());
                if *state != now {
                    match &now {
                        Some(what) => tracing::warn!(%what, "not ready: an engine is down"),
                        None => tracing::info!("ready: every engine answers again"),
                    }
                }
                *state = now;
            }
        });
        health
    }

    /// `Err` naming what is down, when something is.
    pub fn check(&self) -> Result<(), String> {
        match &*self.down.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(what) => Err(what.clone()),
            None => Ok(()),
        }
    }
}
