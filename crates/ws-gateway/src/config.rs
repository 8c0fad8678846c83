//! Gateway configuration: defaults that work locally, then `WS_GATEWAY__*`
//! and `CRAWLER__*` environment variables, then flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use crawler_adapters::{MessagingArgs, StoreArgs};
use crawler_core::config::ServiceArgs;
use crawler_core::protocol::Limits;
use ipnet::IpNet;
use serde::Serialize;

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
    /// A result of more pages than this is sent as a `resultHead` and parts
    /// of this many pages, read from the store one part at a time.
    #[arg(long, env = "WS_GATEWAY__RESULT_PART_PAGES", default_value_t = 1000)]
    pub result_part_pages: u32,
    /// Largest text frame accepted, in bytes.
    #[arg(long, env = "WS_GATEWAY__MAX_FRAME_BYTES", default_value_t = 256 * 1024)]
    pub max_frame_bytes: usize,
    /// Networks that may be crawled although they are loopback, private or link-local (comma-separated CIDRs).
    #[arg(
        long = "allow-network",
        env = "WS_GATEWAY__ALLOW_NETWORK",
        value_delimiter = ','
    )]
    pub allow_network: Vec<IpNet>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl GatewayConfig {
    /// Defaults, for tests and the embedded mode; the environment is not read.
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
            (1..=10_000).contains(&self.result_part_pages),
            "--result-part-pages must be from 1 to 10000"
        );
        anyhow::ensure!(
            self.max_frame_bytes >= 1024,
            "--max-frame-bytes must be at least 1024"
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

    pub fn outbox_grace(&self) -> Duration {
        Duration::from_millis(self.outbox_grace_ms)
    }

    pub fn resolve_timeout(&self) -> Duration {
        Duration::from_secs(3)
    }
}
