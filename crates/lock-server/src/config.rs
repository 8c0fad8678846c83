//! Lock server configuration: defaults that work locally, then
//! `LOCK_SERVER__*` environment variables, then flags.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lock-server",
    version,
    about = "Crawler lock server: persists jobs and leases them to masters"
)]
pub struct LockServerConfig {
    /// Address masters connect to (gRPC).
    #[arg(long, env = "LOCK_SERVER__LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Postgres URL; the database is created and migrated at start when missing.
    #[arg(
        long,
        env = "LOCK_SERVER__DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/crawler"
    )]
    pub database_url: String,
    /// Log format: text or json.
    #[arg(long, env = "LOCK_SERVER__LOG_FORMAT", default_value = "text")]
    pub log_format: crawler_core::telemetry::LogFormat,
}
