//! The engine settings, declared once for every service that takes them, so
//! a flag is added in one place and a cluster shares one set of environment
//! variables (`CRAWLER__AMQP_URL`, ...).

use clap::Args;
use std::path::PathBuf;

use crawler_core::config::{read_secret_file, redacted_url};
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
    /// File holding the RabbitMQ URL (a mounted secret); it replaces `--amqp-url`.
    #[arg(long, env = "CRAWLER__AMQP_URL_FILE")]
    pub amqp_url_file: Option<PathBuf>,
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
    /// File holding the Redis URL (a mounted secret); it replaces `--redis-url`.
    #[arg(long, env = "CRAWLER__REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,
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
    /// File holding the Postgres URL (a mounted secret); it replaces `--database-url`.
    #[arg(long, env = "CRAWLER__DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
}

impl MessagingArgs {
    /// Takes the URLs from their files, where files are given.
    pub fn read_url_files(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.amqp_url_file {
            self.amqp_url = read_secret_file(path, "the RabbitMQ URL")?;
        }
        if let Some(path) = &self.redis_url_file {
            self.redis_url = read_secret_file(path, "the Redis URL")?;
        }
        Ok(())
    }
}

impl StoreArgs {
    /// Takes the URL from its file, when one is given.
    pub fn read_url_file(&mut self) -> anyhow::Result<()> {
        if let Some(path) = &self.database_url_file {
            self.database_url = read_secret_file(path, "the Postgres URL")?;
        }
        Ok(())
    }
}
