//! Engine adapters behind the `crawler-core` ports.
//!
//! A cluster runs the queue on RabbitMQ, the result cache on Redis and the job
//! store on Postgres; the embedded default runs the same ports in process
//! (and on SQLite), so one binary works without any infrastructure. Both sets
//! pass the same [`conformance`] suites, which is what lets services treat
//! them as interchangeable.

mod args;
pub mod conformance;
mod memory_cache;
mod memory_gate;
mod memory_queue;
mod postgres_store;
mod queue_settings;
mod rabbit;
mod redis_cache;
mod redis_client;
mod redis_gate;
mod sql_store;
mod sqlite_store;

use std::sync::Arc;

use crawler_core::ports::{AdapterResult, Engines};

pub use args::{MessagingArgs, StoreArgs};
pub use memory_cache::MemoryCache;
pub use memory_gate::MemoryHostGate;
pub use memory_queue::MemoryQueue;
pub use postgres_store::PgStore;
pub use queue_settings::QueueSettings;
pub use rabbit::{RabbitQueue, RabbitSettings};
pub use redis_cache::RedisCache;
pub use redis_gate::RedisHostGate;
pub use sql_store::{Dialect, SqlStore};
pub use sqlite_store::SqliteStore;

/// Where the cluster engines live. `namespace` prefixes every queue, exchange
/// and cache key, so several deployments (or test runs) can share one broker
/// and one Redis without seeing each other.
#[derive(Debug, Clone)]
pub struct ClusterEngineConfig {
    pub amqp_url: String,
    pub redis_url: String,
    /// The CA a `rediss://` server's certificate must chain to, instead
    /// of the system's roots.
    pub redis_ca: Option<std::path::PathBuf>,
    /// The same for an `amqps://` broker.
    pub amqp_ca: Option<std::path::PathBuf>,
    pub database_url: String,
    pub namespace: String,
    pub queue: QueueSettings,
}

impl ClusterEngineConfig {
    /// A config with the default queue settings.
    pub fn new(
        amqp_url: impl Into<String>,
        redis_url: impl Into<String>,
        database_url: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            redis_url: redis_url.into(),
            redis_ca: None,
            amqp_ca: None,
            database_url: database_url.into(),
            namespace: namespace.into(),
            queue: QueueSettings::default(),
        }
    }
}

/// Connects RabbitMQ, Redis and Postgres (creating the database and running
/// its migrations when needed). Services that need only one port should call
/// that adapter's own constructor instead.
pub async fn cluster_engines(cfg: &ClusterEngineConfig) -> AdapterResult<Engines> {
    let (queue, cache, store) = tokio::try_join!(
        RabbitQueue::connect(
            &cfg.amqp_url,
            cfg.amqp_ca.as_deref(),
            &cfg.namespace,
            cfg.queue.clone()
        ),
        RedisCache::connect(&cfg.redis_url, cfg.redis_ca.as_deref(), &cfg.namespace),
        PgStore::connect(&cfg.database_url),
    )?;
    let store = Arc::new(store);
    Ok(Engines {
        queue: Arc::new(queue),
        cache: Arc::new(cache),
        store: store.clone(),
        election: store.clone(),
        tokens: store,
    })
}

/// The in-process engines: a memory queue, a memory cache and an in-memory
/// SQLite store. Nothing survives the process, which is the point: the
/// embedded default needs no infrastructure.
pub async fn embedded_engines() -> AdapterResult<Engines> {
    let store = Arc::new(SqliteStore::in_memory().await?);
    Ok(Engines {
        queue: Arc::new(MemoryQueue::new(QueueSettings::default())),
        cache: Arc::new(MemoryCache::new(MemoryCache::DEFAULT_CAPACITY_PAGES)),
        store: store.clone(),
        election: store.clone(),
        tokens: store,
    })
}
