//! Worker configuration: defaults that work locally, then `WORKER__*` and
//! `CRAWLER__*` environment variables, then flags.

use std::time::Duration;

use clap::Parser;
use crawler_core::config::{AdminArgs, ServiceArgs};
use crawler_core::tls::TlsArgs;
use ipnet::IpNet;
use serde::Serialize;

use crate::fetch::FetchConfig;
use crate::polite::PolitenessSettings;
use crate::robots::RobotsSettings;

#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "worker",
    version,
    about = "Crawler worker: fetches the URL batches its masters send"
)]
pub struct WorkerConfig {
    /// Master gRPC addresses to serve (comma-separated).
    #[arg(
        long = "master",
        env = "WORKER__MASTERS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50052"
    )]
    #[serde(serialize_with = "crawler_core::config::redacted_urls")]
    pub masters: Vec<String>,
    /// This worker's id; random when not set.
    #[arg(long, env = "WORKER__ID", default_value_t = format!("worker-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))]
    pub worker_id: String,
    /// Networks that may be crawled although they are loopback, private or link-local (comma-separated CIDRs, e.g. 127.0.0.0/8).
    #[arg(
        long = "allow-network",
        env = "WORKER__ALLOW_NETWORK",
        value_delimiter = ','
    )]
    pub allow_network: Vec<IpNet>,
    /// URL batches run at once per master (the credit granted to each master).
    #[arg(long, env = "WORKER__BATCHES_IN_FLIGHT", default_value_t = 4)]
    pub batches_in_flight: u32,
    /// Pages fetched at once within one batch.
    #[arg(long, env = "WORKER__FETCH_CONCURRENCY", default_value_t = 8)]
    pub fetch_concurrency: usize,
    /// Whole-request timeout in milliseconds.
    #[arg(long, env = "WORKER__REQUEST_TIMEOUT_MS", default_value_t = 20_000)]
    pub request_timeout_ms: u64,
    /// Connect timeout in milliseconds.
    #[arg(long, env = "WORKER__CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,
    /// Redirects followed per fetch; every hop is re-checked against the network policy.
    #[arg(long, env = "WORKER__MAX_REDIRECTS", default_value_t = 5)]
    pub max_redirects: usize,
    /// Body bytes read per page (after decompression); the rest is skipped.
    #[arg(long, env = "WORKER__MAX_BODY_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// User-Agent header sent with every request.
    #[arg(long, env = "WORKER__USER_AGENT", default_value = concat!("crawler/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,
    /// First reconnect delay in milliseconds; doubles up to the maximum, with jitter.
    #[arg(long, env = "WORKER__MIN_BACKOFF_MS", default_value_t = 200)]
    pub min_backoff_ms: u64,
    /// Longest reconnect delay in milliseconds: once the network is back,
    /// a worker tries again within this.
    #[arg(long, env = "WORKER__MAX_BACKOFF_MS", default_value_t = 1_000)]
    pub max_backoff_ms: u64,
    /// HTTP/2 keepalive with each master, in seconds: a ping this often, and
    /// a master that does not answer within as long again is gone; the
    /// worker reconnects.
    #[arg(long, env = "WORKER__KEEPALIVE_SECS", default_value_t = 5)]
    pub keepalive_secs: u64,
    /// How often a running batch reports that it fetched more pages, in
    /// milliseconds, so its master does not give it to another worker while
    /// a host's crawl delay paces it. Keep it well under the masters'
    /// `--batch-deadline-secs`.
    #[arg(long, env = "WORKER__BATCH_PROGRESS_MS", default_value_t = 10_000)]
    pub batch_progress_ms: u64,
    /// How long registering with a master may take, in seconds, before the
    /// worker gives up that try and tries again.
    #[arg(long, env = "WORKER__REGISTER_TIMEOUT_SECS", default_value_t = 3)]
    pub register_timeout_secs: u64,
    /// file-sync address that spiders are synced from.
    #[arg(
        long,
        env = "WORKER__FILE_SYNC",
        default_value = "http://127.0.0.1:50053"
    )]
    #[serde(serialize_with = "crawler_core::config::redacted_url")]
    pub file_sync: String,
    /// Folder spiders are synced into; defaults to a folder per worker id under the system temp dir.
    #[arg(long, env = "WORKER__SPIDER_DIR")]
    pub spider_dir: Option<std::path::PathBuf>,
    /// Folder where the responses of jobs that ask for WARC (`"warc": true`)
    /// are kept, in `JOB.WORKER.warc` files. Without it, such a job fails
    /// with a clear reason rather than run without its records.
    #[arg(long, env = "WORKER__WARC_DIR")]
    pub warc_dir: Option<std::path::PathBuf>,
    /// Respect robots.txt on every job, even one that asks to ignore it.
    #[arg(long, env = "WORKER__FORCE_ROBOTS")]
    pub force_robots: bool,
    /// Fetches at once on one host, across every worker sharing the host
    /// gate; 0 for no limit.
    #[arg(long, env = "WORKER__HOST_CONCURRENCY", default_value_t = 8)]
    pub host_concurrency: u32,
    /// Least milliseconds between two fetches' starts on one host; a
    /// host's robots.txt `Crawl-delay` raises it.
    #[arg(long, env = "WORKER__HOST_DELAY_MS", default_value_t = 0)]
    pub host_delay_ms: u64,
    /// The longest robots.txt `Crawl-delay` honoured, in milliseconds.
    #[arg(long, env = "WORKER__MAX_CRAWL_DELAY_MS", default_value_t = 5_000)]
    pub max_crawl_delay_ms: u64,
    /// The longest `Retry-After` (of a 429 or 503) honoured, in seconds.
    #[arg(long, env = "WORKER__MAX_RETRY_AFTER_SECS", default_value_t = 30)]
    pub max_retry_after_secs: u64,
    /// How long a host's robots.txt is kept, in seconds (at most a day).
    #[arg(long, env = "WORKER__ROBOTS_TTL_SECS", default_value_t = 3_600)]
    pub robots_ttl_secs: u64,
    /// How long an unreachable robots.txt (5xx, 429, no answer) keeps its
    /// host closed before it is asked again, in seconds.
    #[arg(long, env = "WORKER__ROBOTS_RETRY_SECS", default_value_t = 60)]
    pub robots_retry_secs: u64,
    /// Redis URL of the host gate shared by the cluster's workers (the
    /// cluster's Redis), so per-host limits hold across all of them;
    /// without it they hold within this worker.
    #[arg(long, env = "CRAWLER__REDIS_URL")]
    #[serde(serialize_with = "crawler_core::config::redacted_optional_url")]
    pub host_gate: Option<String>,
    /// PEM file of the CA a `rediss://` host gate's certificate chains to,
    /// when not a system root.
    #[arg(long = "host-gate-ca", env = "CRAWLER__REDIS_CA")]
    pub host_gate_ca: Option<std::path::PathBuf>,
    /// File holding the host gate's URL (a mounted secret); it replaces `--host-gate`.
    #[arg(long = "host-gate-file", env = "CRAWLER__REDIS_URL_FILE")]
    pub host_gate_file: Option<std::path::PathBuf>,
    /// Prefix of the host gate's keys; services of one cluster share it.
    #[arg(long, env = "CRAWLER__NAMESPACE", default_value = "crawler")]
    pub namespace: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl WorkerConfig {
    /// Defaults for one worker of the given masters (tests, embedded mode);
    /// the environment is not read.
    pub fn for_masters(masters: Vec<String>, allow_network: Vec<IpNet>) -> Self {
        let mut cfg: Self = crawler_core::config::defaults();
        cfg.masters = masters;
        cfg.allow_network = allow_network;
        cfg
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.masters.is_empty(),
            "at least one --master address is required"
        );
        for m in &self.masters {
            anyhow::ensure!(
                m.starts_with("http://") || m.starts_with("https://"),
                "master address `{m}` must start with http:// or https://"
            );
        }
        anyhow::ensure!(
            self.batches_in_flight >= 1,
            "--batches-in-flight must be at least 1"
        );
        anyhow::ensure!(
            self.fetch_concurrency >= 1,
            "--fetch-concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.min_backoff_ms >= 1 && self.min_backoff_ms <= self.max_backoff_ms,
            "backoff bounds are inverted"
        );
        anyhow::ensure!(
            self.batch_progress_ms >= 1,
            "--batch-progress-ms must be at least 1"
        );
        anyhow::ensure!(
            self.keepalive_secs >= 1,
            "--keepalive-secs must be at least 1"
        );
        anyhow::ensure!(
            self.register_timeout_secs >= 1,
            "--register-timeout-secs must be at least 1"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&self.robots_ttl_secs),
            "--robots-ttl-secs must be from 1 to 86400 (RFC 9309 keeps robots.txt a day at most)"
        );
        anyhow::ensure!(
            self.robots_retry_secs >= 1,
            "--robots-retry-secs must be at least 1"
        );
        if let Some(gate) = &self.host_gate {
            anyhow::ensure!(
                gate.starts_with("redis://") || gate.starts_with("rediss://"),
                "--host-gate `{}` must be a redis:// or rediss:// URL",
                crawler_core::config::redact_url(gate)
            );
        }
        Ok(())
    }

    pub fn fetch_config(&self) -> FetchConfig {
        FetchConfig {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            max_redirects: self.max_redirects,
            max_body_bytes: self.max_body_bytes,
            user_agent: self.user_agent.clone(),
        }
    }

    pub fn politeness(&self) -> PolitenessSettings {
        PolitenessSettings {
            force_robots: self.force_robots,
            host_concurrency: self.host_concurrency,
            host_delay: Duration::from_millis(self.host_delay_ms),
            max_retry_after: Duration::from_secs(self.max_retry_after_secs),
            // A slot outlives no fetch: the whole request timeout, and a margin.
            lease: Duration::from_millis(self.request_timeout_ms) + Duration::from_secs(5),
            robots: RobotsSettings {
                ttl: Duration::from_secs(self.robots_ttl_secs),
                retry_unreachable: Duration::from_secs(self.robots_retry_secs),
                max_crawl_delay: Duration::from_millis(self.max_crawl_delay_ms),
            },
        }
    }

    pub fn spider_dir(&self) -> std::path::PathBuf {
        self.spider_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir()
                .join(format!("crawler-{}", self.worker_id))
                .join("spiders")
        })
    }

    /// How a lost master is reconnected to.
    pub fn reconnect_policy(&self) -> crawler_core::retry::RetryPolicy {
        crawler_core::retry::RetryPolicy::new(
            Duration::from_millis(self.min_backoff_ms),
            Duration::from_millis(self.max_backoff_ms),
        )
    }
}
