//! Every service in one process, on loopback ports, with the embedded engines
//! (in-process queue and cache, in-memory SQLite). The services talk through
//! the same gRPC and queue code paths as in a cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use crawler_core::tls::{GrpcSecurity, TlsArgs};
use ipnet::IpNet;
use lock_server::{LockServer, ReplicaSettings};
use master::{Master, MasterConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use worker::{Worker, WorkerConfig};
use ws_gateway::{Gateway, GatewayConfig};

pub struct EmbeddedOptions {
    pub allow_network: Vec<IpNet>,
    pub workers: usize,
    pub max_depth: u32,
    /// Where the workers keep the WARC records of jobs that ask for them.
    pub warc_dir: Option<std::path::PathBuf>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            allow_network: Vec::new(),
            workers: 2,
            max_depth: 5,
            warc_dir: None,
        }
    }
}

/// A running one-process cluster; dropping it does not stop it, `stop` does.
pub struct EmbeddedCluster {
    pub gateway: SocketAddr,
    pub master_stats: master::Stats,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl EmbeddedCluster {
    pub async fn start(options: EmbeddedOptions) -> anyhow::Result<Self> {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let engines = crawler_adapters::embedded_engines()
            .await
            .context("starting the embedded engines")?;
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();

        let lock = LockServer::build(
            loopback,
            engines.store.clone(),
            engines.election.clone(),
            ReplicaSettings::single(),
            // In one process, on loopback: nothing to authenticate.
            GrpcSecurity::Plaintext,
        )
        .await?;
        let lock_url = format!("http://{}", lock.local_addr());
        tasks.spawn(lock.run_until_stopped(shutdown.clone()));

        let mut master_config = MasterConfig::local(loopback, lock_url);
        master_config.tls = TlsArgs::plaintext();
        let master =
            Master::build(master_config, engines.queue.clone(), engines.cache.clone()).await?;
        let master_url = format!("http://{}", master.local_addr());
        let master_stats = master.stats();
        tasks.spawn(master.run_until_stopped(shutdown.clone()));

        // The workers share one host gate, so per-host limits hold across them.
        let host_gate = Arc::new(crawler_adapters::MemoryHostGate::new());
        for n in 1..=options.workers.max(1) {
            let mut worker_config =
                WorkerConfig::for_masters(vec![master_url.clone()], options.allow_network.clone());
            // The default id is drawn once per process: name each worker.
            worker_config.worker_id = format!("embedded-worker-{n}");
            worker_config.tls = TlsArgs::plaintext();
            worker_config.warc_dir = options.warc_dir.clone();
            let worker = Worker::build(worker_config)?.with_host_gate(host_gate.clone());
            let token = shutdown.clone();
            tasks.spawn(async move {
                worker.run_until_stopped(token).await;
                Ok(())
            });
        }

        let mut gateway_config = GatewayConfig::local(loopback, options.allow_network);
        gateway_config.max_depth = options.max_depth;
        // The embedded gateway listens on loopback only, for this process's
        // user: it needs no token.
        gateway_config.auth = ws_gateway::AuthMode::None;
        let gateway = Gateway::build(gateway_config, engines).await?;
        let gateway_addr = gateway.local_addr();
        tasks.spawn(gateway.run_until_stopped(shutdown.clone()));

        Ok(Self {
            gateway: gateway_addr,
            master_stats,
            shutdown,
            tasks,
        })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.gateway)
    }

    /// The embedded gateway, which takes no token.
    pub fn gateway(&self) -> crate::client::Gateway {
        crate::client::Gateway::open(self.ws_url())
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(joined) = self.tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                tracing::warn!(error = %e, "embedded service stopped with an error");
            }
        }
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
