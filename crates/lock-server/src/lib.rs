//! The lock server: the authority on which master runs which job. It
//! persists every job before a master may ack its queue message, and grants
//! leases whose fencing tokens let the store refuse a master that lost its lease.

pub mod config;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use crawler_core::ports::JobStore;
use crawler_proto::v1::lock_service_server::LockServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use config::LockServerConfig;
use service::LockGrpc;

pub struct LockServer {
    listener: TcpListener,
    store: Arc<dyn JobStore>,
}

impl LockServer {
    /// Binds first, so port 0 works and the address is known before serving.
    pub async fn build(listen: SocketAddr, store: Arc<dyn JobStore>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        Ok(Self { listener, store })
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
        tracing::info!(%addr, "lock server listening");
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(
                LockServiceServer::new(LockGrpc { store: self.store })
                    .max_decoding_message_size(256 * 1024 * 1024)
                    .max_encoding_message_size(256 * 1024 * 1024),
            )
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                shutdown.cancelled_owned(),
            )
            .await?;
        tracing::info!("lock server stopped");
        Ok(())
    }
}
