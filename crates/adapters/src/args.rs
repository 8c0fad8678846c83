//! The engine settings, declared once for every service that takes them, so
//! a flag is added in one place and a cluster shares one set of environment
//! variables (`CRAWLER__AMQP_URL`, ...).

use clap::Args;
use crawler_core::config::redacted_url;
use serde::Serialize;

/// The job queue and result cache of the master and the gateway.
#[derive(Debug, Clone, Args, Serialize)]
pub struct MessagingArgs {
    /// RabbitMQ URL of the job queue and the result events.
    #[arg(
        long,
        env = "CRAWLER__AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_default_value = true
    )]
    #[serde(serialize_with = "redacted_url")]
    pub amqp_url: String,
    /// PEM file of the CA an `amqps://` broker's certificate chains to,
    /// when not a system root.
    #[arg(long, env = "CRAWLER__AMQP_CA")]
    pub amqp_ca: Option<std::path::PathBuf>,
    /// Redis URL of the result cache.
    #[arg(
        long,
        env = "CRAWLER__REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    #[serde(serialize_with = "redacted_url")]
    pub redis_url: String,
    /// PEM file of the CA a `rediss://` server's certificate chains to,
    /// when not a system root.
    #[arg(long, env = "CRAWLER__REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// Prefix of queue names and cache keys; services of one cluster share it.
    #[arg(long, env = "CRAWLER__NAMESPACE", default_value = "crawler")]
    pub namespace: String,
}

/// The job store of the gateway and the lock server.
#[derive(Debug, Clone, Args, Serialize)]
pub struct StoreArgs {
    /// Postgres URL of the job store; the database is created and migrated
    /// at start when missing.
    #[arg(
        long,
        env = "CRAWLER__DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/crawler"
    )]
    #[serde(serialize_with = "redacted_url")]
    pub database_url: String,
}
