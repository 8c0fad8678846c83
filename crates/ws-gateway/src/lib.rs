//! The websocket gateway: clients submit crawl jobs and receive results.
//! It validates each job, answers from the cache when it can, queues the
//! rest with its own routing key, and delivers each result once.

mod auth;
pub mod config;
mod connection;
mod delivery;
mod events;
mod metrics;
mod outbox;
mod quotas;
mod requests;
mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use crawler_core::admin::{EngineHealth, OnScrape, Probe, Readiness};
use crawler_core::net_policy::NetworkPolicy;
use crawler_core::ports::Engines;
use crawler_core::protocol::{Limits, ServerMessage};
use file_sync::SpiderVersions;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::AuthMode;
pub use config::{ConnectionLimits, GatewayConfig};
use metrics::Metrics;
use routes::Routes;

/// How long a submit waits for file-sync to name a spider's version; past
/// it the job is crawled without the cache.
const SPIDER_VERSION_DEADLINE: Duration = Duration::from_secs(2);

/// Shared by every connection of this gateway; cloning it copies a pointer,
/// so the many connections that hold it hold 8 bytes each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    engines: Engines,
    /// Where the versions of spiders are learned, when file-sync is known.
    spider_versions: Option<SpiderVersions>,
    auth: auth::Authenticator,
    quotas: quotas::Quotas,
    gateway_key: String,
    limits: Limits,
    policy: Arc<NetworkPolicy>,
    max_frame_bytes: usize,
    /// A result whose message is larger than this is sent in parts no larger.
    part_bytes: usize,
    resolve_timeout: Duration,
    /// How connections are held: buffers, liveness, limits.
    conn: Arc<ConnectionLimits>,
    /// Cancelled on SIGTERM: every connection says goodbye (1001) and ends.
    closing: CancellationToken,
    routes: Arc<Routes>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

pub struct Gateway {
    listener: TcpListener,
    state: AppState,
    outbox_grace: Duration,
    shutdown_grace: Duration,
}

impl Gateway {
    /// Binds first, so port 0 works and the address is known before serving.
    pub async fn build(config: GatewayConfig, engines: Engines) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        if config.auth == AuthMode::None {
            tracing::warn!(
                "--auth none: any client that reaches this gateway may submit crawls and read \
                 any client's jobs; for local development only"
            );
        }
        let spider_versions = match &config.file_sync {
            Some(url) => {
                let remote = file_sync::Remote::new(url.clone(), config.tls.load()?);
                Some(SpiderVersions::new(&remote, SPIDER_VERSION_DEADLINE)?)
            }
            None => {
                tracing::info!(
                    "no --file-sync: jobs that name a spider are neither answered from the cache nor cached"
                );
                None
            }
        };
        let state = AppState(Arc::new(Shared {
            spider_versions,
            auth: auth::Authenticator::new(config.auth, engines.tokens.clone()),
            quotas: config.quotas(),
            engines,
            gateway_key: config.gateway_id.clone(),
            limits: config.limits(),
            policy: Arc::new(NetworkPolicy::new(config.allow_network.clone())),
            max_frame_bytes: config.max_frame_bytes,
            part_bytes: config.result_part_bytes,
            resolve_timeout: config.resolve_timeout(),
            conn: Arc::new(config.connection_limits()),
            closing: CancellationToken::new(),
            routes: Arc::default(),
            metrics: Arc::default(),
            ready: Arc::default(),
        }));
        Ok(Self {
            listener,
            state,
            outbox_grace: config.outbox_grace(),
            shutdown_grace: config.shutdown_grace(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        Metrics::describe();
        let ready = self.state.ready.clone();
        let engines = engine_health(&self.state.engines, shutdown.clone());
        let readiness: Readiness = Arc::new(move || {
            engines.check()?;
            if ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not subscribed to results yet".to_string())
            }
        });
        let published = self.state.clone();
        let on_scrape: OnScrape =
            Arc::new(move || published.metrics.publish(published.routes.pending()));
        let router = Router::new()
            .route("/", get(index))
            .route("/ws", get(upgrade))
            .with_state(self.state.clone())
            .merge(crawler_core::admin::routes(readiness, on_scrape));
        let events = tokio::spawn(events::route_events(self.state.clone(), shutdown.clone()));
        let relay = tokio::spawn(outbox::relay(
            self.state.clone(),
            self.outbox_grace,
            shutdown.clone(),
        ));
        tracing::info!(%addr, gateway = %self.state.gateway_key, "gateway listening on ws://{addr}/ws");
        // Nagle's algorithm off: with it, the end of a result part written
        // right after another waits for the client's delayed ACK.
        let listener = self.listener.tap_io(|socket| {
            if let Err(e) = socket.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot turn Nagle's algorithm off");
            }
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await?;
        // No new connection is accepted from here. Websockets outlive the
        // HTTP server that upgraded them, so each is told to go elsewhere.
        let open = self.state.metrics.connections.load(Ordering::Relaxed);
        tracing::info!(
            connections = open,
            "stopping: sending every client close 1001"
        );
        self.state.closing.cancel();
        let drained = self.state.metrics.drained.clone();
        let all_gone = async {
            while self.state.metrics.connections.load(Ordering::Relaxed) > 0 {
                drained.notified().await;
            }
        };
        if tokio::time::timeout(self.shutdown_grace, all_gone)
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.state.metrics.connections.load(Ordering::Relaxed),
                "connections still open after the grace; leaving them"
            );
        }
        shutdown.cancel();
        let _ = events.await;
        let _ = relay.await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// The gateway is ready only while its three engines answer: it records
/// jobs in the store, answers from the cache, and queues on the broker.
fn engine_health(engines: &Engines, shutdown: CancellationToken) -> EngineHealth {
    let (store, cache, queue) = (
        engines.store.clone(),
        engines.cache.clone(),
        engines.queue.clone(),
    );
    let store: Probe = Arc::new(move || {
        let store = store.clone();
        Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
    });
    let cache: Probe = Arc::new(move || {
        let cache = cache.clone();
        Box::pin(async move { cache.ping().await.map_err(|e| e.to_string()) })
    });
    let queue: Probe = Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move { queue.ping().await.map_err(|e| e.to_string()) })
    });
    EngineHealth::spawn(
        vec![
            ("the job store", store),
            ("the cache", cache),
            ("the queue", queue),
        ],
        shutdown,
    )
}

/// Client ids are chosen by clients to find their jobs again; keep them tame.
fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    State(state): State<AppState>,
) -> Response {
    let identity = match state
        .auth
        .at_upgrade(&headers, query.get("token").map(String::as_str))
        .await
    {
        Ok(identity) => identity,
        Err(refusal) => {
            Metrics::inc(&state.metrics.auth_refused);
            return refused(refusal);
        }
    };
    let client = match query.get("clientId") {
        Some(id) if valid_client_id(id) => connection::Client {
            id: id.clone(),
            returning: true,
            identity,
        },
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "clientId must be 1 to 128 letters, digits, `-`, `_` or `.`",
            )
                .into_response();
        }
        None => connection::Client {
            id: uuid::Uuid::new_v4().to_string(),
            returning: false,
            identity,
        },
    };
    let Some(slot) = connection::Slot::take(&state) else {
        let refusal = format!(
            "this gateway holds its maximum of {} connections; try again or another gateway",
            state.conn.max_connections
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            refusal,
        )
            .into_response();
    };
    let conn = &state.conn;
    // Frames over the protocol limit, up to the transport limit, still
    // arrive whole so the client gets a clear `message_too_large` instead
    // of a dropped connection. The read buffer is small: an idle client
    // costs little, and a large frame is read whole all the same.
    ws.read_buffer_size(conn.read_buffer_bytes)
        .write_buffer_size(conn.write_buffer_bytes)
        .max_message_size(conn.transport_bytes)
        .max_frame_size(conn.transport_bytes)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            // Boxed, so the task axum spawns stays small while it waits.
            Box::pin(connection::serve(state, client, slot, sink, stream)).await;
        })
}

/// An upgrade refused for its token: 401 (or 503 when the store cannot
/// say), with the `error` message a websocket client would have been sent.
fn refused(refusal: auth::Refusal) -> Response {
    let status = match refusal.code {
        crawler_core::ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = ServerMessage::error(None, refusal.code, refusal.message).to_json();
    (
        status,
        [
            (axum::http::header::WWW_AUTHENTICATE, "Bearer"),
            (axum::http::header::CONTENT_TYPE, "application/json"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
