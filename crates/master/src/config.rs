//! Master configuration: defaults that work locally, then `MASTER__*` and
//! `CRAWLER__*` environment variables, then flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use crawler_adapters::MessagingArgs;
use crawler_core::config::{AdminArgs, ServiceArgs, redacted_urls};
use crawler_core::tls::TlsArgs;
use serde::Serialize;

#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "master",
    version,
    about = "Crawler master: runs queued crawl jobs on its workers"
)]
pub struct MasterConfig {
    /// Address workers connect to (gRPC).
    #[arg(long, env = "MASTER__LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Lock server replicas, comma-separated; calls follow the leader among them.
    #[arg(
        long,
        env = "MASTER__LOCK_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    #[serde(serialize_with = "redacted_urls")]
    pub lock_server: Vec<String>,
    #[command(flatten)]
    pub engines: MessagingArgs,
    /// This master's id; random when not set.
    #[arg(long, env = "MASTER__ID", default_value_t = format!("master-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))]
    pub master_id: String,
    /// Jobs run at once; also the queue prefetch.
    #[arg(long, env = "MASTER__MAX_JOBS", default_value_t = 8)]
    pub max_jobs: u16,
    /// URLs per batch sent to a worker.
    #[arg(long, env = "MASTER__BATCH_SIZE", default_value_t = 8)]
    pub batch_size: usize,
    /// Lease length in milliseconds; heartbeats renew it three times per
    /// lease. A dead master's job is taken over within this plus the orphan poll.
    #[arg(long, env = "MASTER__LEASE_TTL_MS", default_value_t = 3_000)]
    pub lease_ttl_ms: u32,
    /// How often a master with a free job slot asks for an orphaned job, in milliseconds.
    #[arg(long, env = "MASTER__ORPHAN_POLL_MS", default_value_t = 500)]
    pub orphan_poll_ms: u64,
    /// HTTP/2 keepalive with each worker, in seconds: a ping this often,
    /// and a worker that does not answer within as long again is gone
    /// (frozen, or cut off without a reset); its batches go to others.
    #[arg(long, env = "MASTER__WORKER_KEEPALIVE_SECS", default_value_t = 5)]
    pub worker_keepalive_secs: u64,
    /// A batch a worker has neither answered nor reported progress on
    /// (pages fetched since its last report) in this many seconds is
    /// queued again for another worker; the crawl keeps the first answer
    /// that reaches it.
    #[arg(long, env = "MASTER__BATCH_DEADLINE_SECS", default_value_t = 60)]
    pub batch_deadline_secs: u64,
    /// How long finished crawls stay in the cache, in seconds.
    #[arg(long, env = "MASTER__CACHE_TTL_SECS", default_value_t = 3600)]
    pub cache_ttl_secs: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl MasterConfig {
    /// Defaults, for tests and the embedded mode; the environment is not read.
    pub fn local(listen: SocketAddr, lock_server: String) -> Self {
        let mut cfg: Self = crawler_core::config::defaults();
        cfg.listen = listen;
        cfg.lock_server = vec![lock_server];
        cfg
    }

    /// Refuses at start what the lock server would refuse on every call.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_jobs >= 1, "--max-jobs must be at least 1");
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        crawler_core::lease::checked_ttl(self.lease_ttl())
            .map_err(|e| anyhow::anyhow!("--lease-ttl-ms: {e}"))?;
        anyhow::ensure!(
            self.orphan_poll_ms >= 10,
            "--orphan-poll-ms must be at least 10"
        );
        anyhow::ensure!(
            self.worker_keepalive_secs >= 1,
            "--worker-keepalive-secs must be at least 1"
        );
        anyhow::ensure!(
            self.batch_deadline_secs >= 1,
            "--batch-deadline-secs must be at least 1"
        );
        anyhow::ensure!(
            !self.lock_server.is_empty(),
            "--lock-server needs at least one address"
        );
        for url in &self.lock_server {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--lock-server `{url}` must start with http:// or https://"
            );
        }
        Ok(())
    }

    pub fn orphan_poll(&self) -> Duration {
        Duration::from_millis(self.orphan_poll_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.lease_ttl_ms))
    }

    pub fn worker_keepalive(&self) -> Duration {
        Duration::from_secs(self.worker_keepalive_secs)
    }

    pub fn batch_deadline(&self) -> Duration {
        Duration::from_secs(self.batch_deadline_secs)
    }

    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_secs)
    }
}
