//! Gateway configuration: defaults that work locally, then `WS_GATEWAY__*`
//! and `CRAWLER__*` environment variables, then flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use crawler_adapters::{MessagingArgs, StoreArgs};
use crawler_core::config::ServiceArgs;
use crawler_core::protocol::Limits;
use crawler_core::tls::TlsArgs;
use ipnet::IpNet;
use serde::Serialize;

use crate::auth::AuthMode;
use crate::quotas::Quotas;

#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "ws-gateway",
    version,
    about = "Crawler websocket gateway: ws://HOST:PORT/ws, /healthz, /readyz, /metrics"
)]
pub struct GatewayConfig {
    /// HTTP and websocket address.
    #[arg(long, env = "WS_GATEWAY__LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub messaging: MessagingArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// This gateway's routing key for results and progress; random when not set.
    #[arg(long, env = "WS_GATEWAY__ID", default_value_t = format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))]
    pub gateway_id: String,
    /// Deepest crawl a client may ask for.
    #[arg(long, env = "WS_GATEWAY__MAX_DEPTH", default_value_t = 5)]
    pub max_depth: u32,
    /// Page cap of a job that names none.
    #[arg(long, env = "WS_GATEWAY__DEFAULT_MAX_PAGES", default_value_t = 1000)]
    pub default_max_pages: u32,
    /// Largest page cap a job may ask for.
    #[arg(long, env = "WS_GATEWAY__MAX_PAGES", default_value_t = 10_000)]
    pub max_pages: u32,
    /// How long a recorded job may wait for its publish to be confirmed
    /// before any gateway's outbox publishes it again, in milliseconds.
    #[arg(long, env = "WS_GATEWAY__OUTBOX_GRACE_MS", default_value_t = 2_000)]
    pub outbox_grace_ms: u64,
    /// A result whose message would be larger than this, in bytes, is sent
    /// as a `resultHead` and parts of at most this size (a single page
    /// larger than this goes alone), read from the store a few hundred
    /// pages at a time.
    #[arg(long, env = "WS_GATEWAY__RESULT_PART_BYTES", default_value_t = 1 << 20)]
    pub result_part_bytes: usize,
    /// Largest text frame a request may be, in bytes: a larger one, up to
    /// four times this (the transport limit), gets `message_too_large` and
    /// the connection stays; a frame past the transport limit closes the
    /// connection with 1009 (message too big).
    #[arg(long, env = "WS_GATEWAY__MAX_FRAME_BYTES", default_value_t = 256 * 1024)]
    pub max_frame_bytes: usize,
    /// Open websocket connections at most; past it, an upgrade is refused
    /// with 503 and a reason, and HAProxy tries another gateway.
    #[arg(long, env = "WS_GATEWAY__MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// A connection silent for this long (no frame, no pong) is closed with
    /// a close frame (1000, "idle").
    #[arg(long, env = "WS_GATEWAY__IDLE_TIMEOUT_SECS", default_value_t = 120)]
    pub idle_timeout_secs: u64,
    /// The gateway pings a connection silent for this long.
    #[arg(long, env = "WS_GATEWAY__PING_INTERVAL_SECS", default_value_t = 30)]
    pub ping_interval_secs: u64,
    /// Submits a connection may make per second, sustained; past it (after
    /// a burst of as many again), a submit gets `rate_limited`.
    #[arg(long, env = "WS_GATEWAY__SUBMITS_PER_SEC", default_value_t = 50)]
    pub submits_per_sec: u32,
    /// Unfinished jobs one client may have at once; past it, a submit that
    /// would start a crawl gets `rate_limited` (answers from the cache do not count).
    #[arg(long, env = "WS_GATEWAY__MAX_RUNNING_JOBS", default_value_t = 100)]
    pub max_running_jobs: u32,
    /// How long a write to a client may take before the client counts as
    /// not reading and its connection is closed.
    #[arg(long, env = "WS_GATEWAY__WRITE_TIMEOUT_SECS", default_value_t = 15)]
    pub write_timeout_secs: u64,
    /// On SIGTERM: every client is sent close 1001 (going away), and the
    /// gateway exits once they are gone or after this many seconds.
    #[arg(long, env = "WS_GATEWAY__SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Bytes of read buffer each websocket connection allocates. The
    /// websocket library's default, 128 KiB, is what made an idle client
    /// cost 127 KB. Requests are a few hundred bytes; a larger frame is
    /// still read whole, in more reads.
    #[arg(long, env = "WS_GATEWAY__WS_READ_BUFFER_BYTES", default_value_t = 256)]
    pub ws_read_buffer_bytes: usize,
    /// Bytes a connection gathers before writing them out; 0 writes each
    /// message at once (the library's default is 128 KiB).
    #[arg(long, env = "WS_GATEWAY__WS_WRITE_BUFFER_BYTES", default_value_t = 0)]
    pub ws_write_buffer_bytes: usize,
    /// How clients authenticate: `token` (API tokens made with `crawlctl
    /// token create`) or `none`, for local development only.
    #[arg(long, env = "WS_GATEWAY__AUTH", value_enum, default_value_t = AuthMode::Token)]
    pub auth: AuthMode,
    /// Jobs one tenant may have queued or running at once (with `--auth token`).
    #[arg(long, env = "WS_GATEWAY__TENANT_RUNNING_JOBS", default_value_t = 200)]
    pub tenant_running_jobs: u32,
    /// Jobs one tenant may submit an hour, answers from the cache included.
    #[arg(
        long,
        env = "WS_GATEWAY__TENANT_JOBS_PER_HOUR",
        default_value_t = 10_000
    )]
    pub tenant_jobs_per_hour: u32,
    /// Pages the results of one tenant's jobs of the last 24 hours may hold
    /// (answers from the cache included) before its next job is refused.
    #[arg(
        long,
        env = "WS_GATEWAY__TENANT_PAGES_PER_DAY",
        default_value_t = 5_000_000
    )]
    pub tenant_pages_per_day: u64,
    /// Networks that may be crawled although they are loopback, private or link-local (comma-separated CIDRs).
    #[arg(
        long = "allow-network",
        env = "WS_GATEWAY__ALLOW_NETWORK",
        value_delimiter = ','
    )]
    pub allow_network: Vec<IpNet>,
    /// The file-sync server, asked for the version of the spider a job
    /// names: the version is part of the job's cache key, so a crawl made
    /// with an older version never answers it. Without it, a job that names
    /// a spider is neither answered from the cache nor cached. Reached with
    /// the `--tls-*` files (a gateway certificate) or `--grpc-plaintext`.
    #[arg(long = "file-sync", env = "WS_GATEWAY__FILE_SYNC")]
    #[serde(serialize_with = "crawler_core::config::redacted_optional_url")]
    pub file_sync: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl GatewayConfig {
    /// Defaults, for tests and the embedded mode; the environment is not
    /// read. Clients still need tokens unless the caller sets `auth`.
    pub fn local(listen: SocketAddr, allow_network: Vec<IpNet>) -> Self {
        let mut cfg: Self = crawler_core::config::defaults();
        cfg.listen = listen;
        cfg.allow_network = allow_network;
        cfg
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_pages >= 1, "--max-pages must be at least 1");
        anyhow::ensure!(
            (1..=self.max_pages).contains(&self.default_max_pages),
            "--default-max-pages must be from 1 to --max-pages"
        );
        anyhow::ensure!(
            (1024..=64 << 20).contains(&self.result_part_bytes),
            "--result-part-bytes must be from 1024 to 67108864 (64 MiB)"
        );
        anyhow::ensure!(
            self.max_frame_bytes >= 1024,
            "--max-frame-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_connections >= 1,
            "--max-connections must be at least 1"
        );
        anyhow::ensure!(
            self.ping_interval_secs >= 1 && self.idle_timeout_secs > self.ping_interval_secs,
            "--ping-interval-secs must be at least 1 and less than --idle-timeout-secs"
        );
        anyhow::ensure!(
            self.submits_per_sec >= 1,
            "--submits-per-sec must be at least 1"
        );
        anyhow::ensure!(
            self.max_running_jobs >= 1,
            "--max-running-jobs must be at least 1"
        );
        anyhow::ensure!(
            self.tenant_running_jobs >= 1
                && self.tenant_jobs_per_hour >= 1
                && self.tenant_pages_per_day >= 1,
            "--tenant-running-jobs, --tenant-jobs-per-hour and --tenant-pages-per-day must be at least 1"
        );
        anyhow::ensure!(
            self.write_timeout_secs >= 1,
            "--write-timeout-secs must be at least 1"
        );
        anyhow::ensure!(
            self.ws_read_buffer_bytes >= 256,
            "--ws-read-buffer-bytes must be at least 256"
        );
        anyhow::ensure!(
            !self.gateway_id.is_empty()
                && self
                    .gateway_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "--gateway-id may hold only letters, digits, `-` and `_`"
        );
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_depth: self.max_depth,
            max_pages: self.max_pages,
            default_pages: self.default_max_pages,
        }
    }

    pub fn quotas(&self) -> Quotas {
        Quotas {
            running_jobs: self.tenant_running_jobs,
            jobs_per_hour: self.tenant_jobs_per_hour,
            pages_per_day: self.tenant_pages_per_day,
        }
    }

    pub fn outbox_grace(&self) -> Duration {
        Duration::from_millis(self.outbox_grace_ms)
    }

    pub fn resolve_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }

    /// How connections are held: their buffers, liveness and limits.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            transport_bytes: self.max_frame_bytes.saturating_mul(4),
            max_connections: self.max_connections,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            ping_interval: Duration::from_secs(self.ping_interval_secs),
            submits_per_sec: self.submits_per_sec,
            max_running_jobs: self.max_running_jobs,
            write_timeout: Duration::from_secs(self.write_timeout_secs),
            read_buffer_bytes: self.ws_read_buffer_bytes,
            write_buffer_bytes: self.ws_write_buffer_bytes,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// How a gateway holds its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// A frame past this closes the connection with 1009.
    pub transport_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub submits_per_sec: u32,
    pub max_running_jobs: u32,
    pub write_timeout: Duration,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
}
