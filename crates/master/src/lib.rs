//! The crawler master: consumes `assigned`, leases each job from the lock
//! server, crawls it level by level on the workers connected to it, and
//! publishes the result to the gateway that holds the client.

pub mod config;
mod crawl;
mod jobs;
mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crawler_core::ports::{JobQueue, ResultCache};
use crawler_core::retry::RetryPolicy;
use crawler_proto::v1::lock_service_client::LockServiceClient;
use crawler_proto::v1::master_service_server::MasterServiceServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::MasterConfig;
use jobs::JobContext;
use pool::{MasterGrpc, WorkerPool};

/// Counters a test or an operator can read.
#[derive(Clone, Default)]
pub struct Stats {
    pub jobs_started: Arc<AtomicU64>,
    pub jobs_completed: Arc<AtomicU64>,
    pub workers_connected: Arc<std::sync::atomic::AtomicUsize>,
    /// Batches sent again because the worker holding them went away.
    pub batches_redispatched: Arc<AtomicU64>,
}

pub struct Master {
    config: MasterConfig,
    listener: TcpListener,
    queue: Arc<dyn JobQueue>,
    cache: Arc<dyn ResultCache>,
    stats: Stats,
}

impl Master {
    /// Binds the worker port (so port 0 works) without starting anything.
    pub async fn build(
        config: MasterConfig,
        queue: Arc<dyn JobQueue>,
        cache: Arc<dyn ResultCache>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        Ok(Self {
            config,
            listener,
            queue,
            cache,
            stats: Stats::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let pool = WorkerPool::new(self.config.master_id.clone(), shutdown.clone(), &self.stats);
        let lock_channel =
            tonic::transport::Endpoint::from_shared(self.config.lock_server.clone())?
                .connect_timeout(std::time::Duration::from_secs(3))
                .connect_lazy();
        let ctx = Arc::new(JobContext {
            master_id: self.config.master_id.clone(),
            lock: LockServiceClient::new(lock_channel).max_decoding_message_size(256 * 1024 * 1024),
            queue: self.queue.clone(),
            cache: self.cache.clone(),
            pool: pool.clone(),
            batch_size: self.config.batch_size,
            lease_ttl: self.config.lease_ttl(),
            cache_ttl: self.config.cache_ttl(),
            stats: self.stats.clone(),
            shutdown: shutdown.clone(),
        });

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<MasterServiceServer<MasterGrpc>>()
            .await;
        let grpc = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(
                MasterServiceServer::new(MasterGrpc { pool })
                    .max_decoding_message_size(256 * 1024 * 1024),
            )
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                shutdown.clone().cancelled_owned(),
            );
        let grpc = tokio::spawn(grpc);
        tracing::info!(%addr, master_id = %self.config.master_id, "master listening for workers");

        let consumed = consume(ctx, self.config.max_jobs, shutdown.clone()).await;
        shutdown.cancel();
        let _ = grpc.await;
        consumed
    }
}

/// How the master subscribes again after losing the job queue.
const RESUBSCRIBE: RetryPolicy = RetryPolicy::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(5),
);

/// Takes jobs while a job slot is free; unsettled deliveries never exceed the prefetch.
async fn consume(
    ctx: Arc<JobContext>,
    max_jobs: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(usize::from(max_jobs)));
    let running = TaskTracker::new();
    let mut backoff = RESUBSCRIBE.backoff();
    'connect: while !shutdown.is_cancelled() {
        let mut deliveries = match ctx.queue.consume_jobs(max_jobs).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume jobs; retrying");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
            };
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                d = deliveries.next() => d,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let ctx = ctx.clone();
                    running.spawn(async move {
                        jobs::handle_delivery(ctx, delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "job queue failed; reconnecting");
                    continue 'connect;
                }
                None => {
                    tracing::warn!("job queue closed; reconnecting");
                    continue 'connect;
                }
            }
        }
    }
    running.close();
    if tokio::time::timeout(std::time::Duration::from_secs(10), running.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "jobs still running at shutdown; their leases will expire and another master takes them"
        );
    }
    tracing::info!(
        started = ctx.stats.jobs_started.load(Ordering::Relaxed),
        completed = ctx.stats.jobs_completed.load(Ordering::Relaxed),
        "master stopped"
    );
    Ok(())
}
