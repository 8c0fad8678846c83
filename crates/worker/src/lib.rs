//! The crawler worker: stateless; it keeps a gRPC stream open to each of its
//! masters, fetches the URL batches they send, and returns per-page facts.

pub mod config;
mod discovery;
pub mod extract;
pub mod fetch;
mod metrics;
pub mod polite;
pub mod robots;
mod session;
pub mod spider;
pub mod warc;

use std::sync::Arc;
use std::time::Duration;

use crawler_core::net_policy::NetworkPolicy;
use crawler_core::ports::HostGate;
use crawler_core::tls::GrpcSecurity;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
use fetch::Fetcher;

pub struct Worker {
    config: WorkerConfig,
    security: GrpcSecurity,
    fetcher: Arc<Fetcher>,
    spiders: Arc<spider::SpiderCache>,
    politeness: Arc<polite::Politeness>,
    warc: Option<Arc<warc::WarcArchive>>,
}

impl Worker {
    pub fn build(config: WorkerConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let security = config.tls.load()?;
        let policy = NetworkPolicy::new(config.allow_network.clone());
        let fetcher = Arc::new(Fetcher::new(&config.fetch_config(), policy)?);
        // Spiders are downloaded with this worker's certificate.
        let spiders = Arc::new(spider::SpiderCache::new(
            file_sync::Remote::new(config.file_sync.clone(), security.clone()),
            config.spider_dir(),
        ));
        let gate: Option<Arc<dyn HostGate>> = match &config.host_gate {
            Some(url) => Some(Arc::new(crawler_adapters::RedisHostGate::new(
                url,
                config.host_gate_ca.as_deref(),
                &config.namespace,
            )?)),
            None => None,
        };
        let warc = match &config.warc_dir {
            Some(dir) => Some(Arc::new(
                warc::WarcArchive::new(dir, &config.worker_id)
                    .map_err(|e| anyhow::anyhow!("cannot use --warc-dir {}: {e}", dir.display()))?,
            )),
            None => None,
        };
        Ok(Self {
            warc,
            politeness: Arc::new(polite::Politeness::new(
                config.politeness(),
                gate,
                &config.worker_id,
            )),
            config,
            security,
            fetcher,
            spiders,
        })
    }

    /// Takes per-host limits from `gate`, shared with other workers (the
    /// embedded default's workers share one in-process gate).
    pub fn with_host_gate(mut self, gate: Arc<dyn HostGate>) -> Self {
        self.politeness = Arc::new(polite::Politeness::new(
            self.config.politeness(),
            Some(gate),
            &self.config.worker_id,
        ));
        self
    }

    pub fn id(&self) -> &str {
        &self.config.worker_id
    }

    /// Serves every configured master until `shutdown`, then drains.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        metrics::describe();
        let registered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ready = registered.clone();
        let admin = crawler_core::admin::spawn(
            self.config.admin.admin_listen,
            Arc::new(
                move || match ready.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => Err("not registered with any master".to_string()),
                    _ => Ok(()),
                },
            ),
            crawler_core::admin::no_own_counters(),
            shutdown.clone(),
        )
        .await;
        let admin = match admin {
            Ok(admin) => admin,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the admin endpoint; stopping");
                return;
            }
        };
        let crawling = session::Crawling {
            fetcher: self.fetcher,
            spiders: self.spiders,
            politeness: self.politeness,
            warc: self.warc,
        };
        let config = self.config.clone();
        let security = self.security.clone();
        let start: Box<discovery::StartSession> = Box::new(move |master, name, stop, lost| {
            let session = session::SessionConfig {
                master,
                master_name: name,
                security: security.clone(),
                worker_id: config.worker_id.clone(),
                credit: config.batches_in_flight,
                fetch_concurrency: config.fetch_concurrency,
                reconnect: config.reconnect_policy(),
                keepalive: Duration::from_secs(config.keepalive_secs),
                batch_progress: Duration::from_millis(config.batch_progress_ms),
                register_timeout: Duration::from_secs(config.register_timeout_secs),
                registered: registered.clone(),
                lost,
            };
            tokio::spawn(session::run(session, crawling.clone(), stop))
        });
        if let Err(e) = discovery::serve_masters(&self.config.masters, &*start, shutdown).await {
            tracing::error!(error = %e, "cannot serve the masters");
        }
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!(worker_id = %self.config.worker_id, "worker stopped");
    }
}
