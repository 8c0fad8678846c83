use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use lock_server::{LockServer, LockServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = LockServerConfig::parse();
    crawler_core::telemetry::init_tracing("lock-server", "info", config.log_format);
    let store = Arc::new(
        crawler_adapters::PgStore::connect(&config.database_url)
            .await
            .context("connecting the job store")?,
    );
    let server = LockServer::build(config.listen, store.clone(), store, config.replica()).await?;
    server
        .run_until_stopped(crawler_core::shutdown::on_signal())
        .await
}
