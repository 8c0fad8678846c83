//! The lock server: the authority on which master runs which job. It
//! persists every job before a master may ack its queue message, grants
//! leases whose fencing tokens let the store refuse a master that lost its
//! lease, hands the jobs of silent masters to live ones, and keeps the
//! levels they completed so the new master continues from there.
//!
//! Several replicas may share one database; [`leader`] explains how one of
//! them answers while the others point masters to it.

pub mod config;
pub mod leader;
mod metrics;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use crawler_core::ports::{Election, JobStore};
use crawler_core::tls::{GrpcSecurity, Role};
use crawler_proto::v1::lock_service_server::LockServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

pub use config::LockServerConfig;
use leader::Leader;
pub use leader::ReplicaSettings;
use service::LockGrpc;

pub struct LockServer {
    listener: TcpListener,
    security: GrpcSecurity,
    store: Arc<dyn JobStore>,
    leader: Arc<Leader>,
    admin: Option<SocketAddr>,
}

impl LockServer {
    /// Binds first, so port 0 works and the address is known before
    /// serving, then campaigns once: a sole replica leads from its first call.
    pub async fn build(
        listen: SocketAddr,
        store: Arc<dyn JobStore>,
        election: Arc<dyn Election>,
        replica: ReplicaSettings,
        security: GrpcSecurity,
    ) -> anyhow::Result<Self> {
        crawler_core::lease::checked_ttl(replica.leader_ttl)
            .map_err(|e| anyhow::anyhow!("--leader-ttl-ms: {e}"))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let bound = listener.local_addr()?;
        let address = replica
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"));
        let leader = Arc::new(Leader::new(&replica, address, election));
        leader.campaign().await;
        Ok(Self {
            listener,
            security,
            store,
            leader,
            admin: None,
        })
    }

    /// Serves /healthz, /readyz and /metrics at `addr` as well.
    pub fn with_admin(mut self, addr: Option<SocketAddr>) -> Self {
        self.admin = addr;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<LockServiceServer<LockGrpc>>()
            .await;
        metrics::describe();
        let leader = self.leader.clone();
        let admin = crawler_core::admin::spawn(
            self.admin,
            Arc::new(move || leader.readiness()),
            crawler_core::admin::no_own_counters(),
            shutdown.clone(),
        )
        .await?;
        // The campaign outlives the gRPC server by its resignation only.
        let campaign_stop = CancellationToken::new();
        let campaign = tokio::spawn(self.leader.clone().run(campaign_stop.clone()));
        tracing::info!(%addr, advertised = %self.leader.address(), leading = self.leader.is_leading(), "lock server listening");
        // Only masters hold leases; the handshake already refused anyone
        // without a certificate of the cluster CA.
        let admit = self.security.admit(&[Role::Master]);
        let served = self
            .security
            .server()?
            .layer(crawler_core::trace::ServerSpans {
                service: "lock-server",
            })
            .add_service(health_service)
            .add_service(InterceptedService::new(
                LockServiceServer::new(LockGrpc {
                    store: self.store,
                    leader: self.leader.clone(),
                })
                .max_decoding_message_size(256 * 1024 * 1024)
                .max_encoding_message_size(256 * 1024 * 1024),
                admit,
            ))
            .serve_with_incoming_shutdown(
                crawler_core::tls::incoming(self.listener),
                shutdown.cancelled_owned(),
            )
            .await;
        campaign_stop.cancel();
        let _ = campaign.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        served?;
        tracing::info!("lock server stopped");
        Ok(())
    }
}
