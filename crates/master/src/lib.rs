//! The crawler master: consumes `assigned`, leases each job from the lock
//! server, crawls it level by level on the workers connected to it, and
//! publishes the result to the gateway that holds the client. With a free
//! job slot it also asks the lock server, every `--orphan-poll-ms`, for a job
//! whose master went silent, and continues that crawl from its last saved
//! level.

pub mod config;
mod crawl;
mod holder;
mod jobs;
mod lock_client;
mod metrics;
mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crawler_core::ports::{JobQueue, ResultCache};
use crawler_core::retry::RetryPolicy;
use crawler_core::tls::{GrpcSecurity, Role};
use crawler_proto::v1::master_service_server::MasterServiceServer;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;

pub use config::MasterConfig;
use jobs::JobContext;
use lock_client::LockClient;
use pool::{MasterGrpc, WorkerPool};

/// Counters a test or an operator can read.
#[derive(Clone, Default)]
pub struct Stats {
    pub jobs_started: Arc<AtomicU64>,
    pub jobs_completed: Arc<AtomicU64>,
    pub workers_connected: Arc<std::sync::atomic::AtomicUsize>,
    /// Batches sent again because the worker holding them went away.
    pub batches_redispatched: Arc<AtomicU64>,
    /// Orphaned jobs of other masters this master took over.
    pub jobs_taken_over: Arc<AtomicU64>,
    /// Pages of completed levels taken from checkpoints instead of fetched again.
    pub pages_resumed: Arc<AtomicU64>,
    pub levels_saved: Arc<AtomicU64>,
    /// Leases handed back at a graceful stop.
    pub leases_released: Arc<AtomicU64>,
    /// Subscribed to the job queue: ready for jobs.
    pub consuming: Arc<std::sync::atomic::AtomicBool>,
}

pub struct Master {
    config: MasterConfig,
    security: GrpcSecurity,
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
        let security = config.tls.load()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        Ok(Self {
            config,
            security,
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
        // Workers are served until every job has ended, not just until the
        // shutdown signal: a job completing in the grace may still need them.
        let serving = CancellationToken::new();
        let pool = WorkerPool::new(
            self.config.master_id.clone(),
            self.config.batch_deadline(),
            serving.clone(),
            &self.stats,
        );
        let ctx = Arc::new(JobContext {
            master_id: self.config.master_id.clone(),
            lock: LockClient::new(self.config.lock_server.clone(), self.security.clone())?,
            queue: self.queue.clone(),
            cache: self.cache.clone(),
            pool: pool.clone(),
            batch_size: self.config.batch_size,
            lease_ttl: self.config.lease_ttl(),
            cache_ttl: self.config.cache_ttl(),
            stats: self.stats.clone(),
            shutdown: shutdown.clone(),
            hard_stop: CancellationToken::new(),
            running: Default::default(),
        });

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<MasterServiceServer<MasterGrpc>>()
            .await;
        // Pings find a worker that went silent without a reset (frozen, or
        // cut off): its stream ends and its batches go to other workers.
        let keepalive = self.config.worker_keepalive();
        // Only workers take batches; the handshake already refused anyone
        // without a certificate of the cluster CA.
        let admit = self.security.admit(&[Role::Worker]);
        let grpc = self
            .security
            .server()?
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive))
            .add_service(health_service)
            .add_service(InterceptedService::new(
                MasterServiceServer::new(MasterGrpc { pool })
                    .max_decoding_message_size(256 * 1024 * 1024),
                admit,
            ))
            .serve_with_incoming_shutdown(
                crawler_core::tls::incoming(self.listener),
                serving.clone().cancelled_owned(),
            );
        let grpc = tokio::spawn(grpc);
        tracing::info!(%addr, master_id = %self.config.master_id, "master listening for workers");
        metrics::describe();
        let consuming = self.stats.consuming.clone();
        let engines = engine_health(&self.queue, &self.cache, serving.clone());
        let readiness: crawler_core::admin::Readiness = Arc::new(move || {
            engines.check()?;
            if consuming.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not consuming the job queue".to_string())
            }
        });
        let stats = self.stats.clone();
        let admin = crawler_core::admin::spawn(
            self.config.admin.admin_listen,
            readiness,
            Arc::new(move || stats.publish()),
            serving.clone(),
        )
        .await?;

        let consumed = consume(ctx, self.config.max_jobs, self.config.orphan_poll()).await;
        serving.cancel();
        let _ = grpc.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        consumed
    }
}

/// The master is ready only while its broker and its cache answer.
fn engine_health(
    queue: &Arc<dyn JobQueue>,
    cache: &Arc<dyn ResultCache>,
    shutdown: CancellationToken,
) -> crawler_core::admin::EngineHealth {
    use crawler_core::admin::Probe;
    let (queue, cache) = (queue.clone(), cache.clone());
    let queue: Probe = Arc::new(move || {
        let queue = queue.clone();
        Box::pin(async move { queue.ping().await.map_err(|e| e.to_string()) })
    });
    let cache: Probe = Arc::new(move || {
        let cache = cache.clone();
        Box::pin(async move { cache.ping().await.map_err(|e| e.to_string()) })
    });
    crawler_core::admin::EngineHealth::spawn(
        vec![("the queue", queue), ("the cache", cache)],
        shutdown,
    )
}

/// How the master subscribes again after losing the job queue.
const RESUBSCRIBE: RetryPolicy = RetryPolicy::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(5),
);

/// How long running jobs get, after a stop signal, to hand their leases
/// back or complete; past it, completions are abandoned too.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes jobs while a job slot is free: an orphan first when the claim timer
/// is due, so a dropped job never waits behind a queue of new ones, else
/// the next queued job. Unsettled deliveries never exceed the prefetch.
async fn consume(
    ctx: Arc<JobContext>,
    max_jobs: u16,
    orphan_poll: std::time::Duration,
) -> anyhow::Result<()> {
    let shutdown = ctx.shutdown.clone();
    let slots = Arc::new(Semaphore::new(usize::from(max_jobs)));
    let running = TaskTracker::new();
    let mut backoff = RESUBSCRIBE.backoff();
    let mut claim_due = tokio::time::interval(orphan_poll);
    claim_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        ctx.stats.consuming.store(true, Ordering::Relaxed);
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'connect,
                _ = claim_due.tick() => None,
                d = deliveries.next() => Some(d),
            };
            match next {
                None => {
                    if let Some((spec, lease, previous)) = jobs::claim_orphan(&ctx).await {
                        let ctx = ctx.clone();
                        running.spawn(async move {
                            jobs::run_orphan(&ctx, spec, lease, previous).await;
                            drop(permit);
                        });
                    }
                }
                Some(Some(Ok(delivery))) => {
                    metrics::job_consumed();
                    let ctx = ctx.clone();
                    running.spawn(async move {
                        jobs::handle_delivery(ctx, delivery).await;
                        drop(permit);
                    });
                }
                Some(Some(Err(e))) => {
                    tracing::warn!(error = %e, "job queue failed; reconnecting");
                    ctx.stats.consuming.store(false, Ordering::Relaxed);
                    continue 'connect;
                }
                Some(None) => {
                    tracing::warn!("job queue closed; reconnecting");
                    ctx.stats.consuming.store(false, Ordering::Relaxed);
                    continue 'connect;
                }
            }
        }
    }
    // The consumer is gone, so the queue gives unsettled messages to other
    // masters; running jobs see the shutdown and release their leases.
    ctx.stats.consuming.store(false, Ordering::Relaxed);
    running.close();
    if tokio::time::timeout(STOP_GRACE, running.wait())
        .await
        .is_err()
    {
        tracing::warn!("jobs still running after the stop grace; abandoning them to lease expiry");
        ctx.hard_stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), running.wait()).await;
    }
    tracing::info!(
        started = ctx.stats.jobs_started.load(Ordering::Relaxed),
        completed = ctx.stats.jobs_completed.load(Ordering::Relaxed),
        released = ctx.stats.leases_released.load(Ordering::Relaxed),
        "master stopped"
    );
    Ok(())
}
