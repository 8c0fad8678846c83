use std::sync::Arc;

use clap::Parser;
use crawler_adapters::PgStore;
use crawler_core::retry::until_connected;
use lock_server::{LockServer, LockServerConfig};

/// mimalloc, not glibc's malloc, as for the worker: every page save
/// decodes and re-encodes hundreds of pages' small strings.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = LockServerConfig::parse();
    if crawler_core::config::dump_if_asked(&config, &config.service) {
        return Ok(());
    }
    config.store.read_url_file()?;
    // Refused before any engine is awaited, so a bad setting fails at once.
    config.validate()?;
    let security = config.tls.load()?;
    let _telemetry =
        crawler_core::telemetry::init_tracing("lock-server", "info", config.service.log_format);
    let shutdown = crawler_core::shutdown::on_signal();
    let Some(store) = until_connected("postgres", &shutdown, || {
        PgStore::connect(&config.store.database_url)
    })
    .await
    else {
        return Ok(());
    };
    let store = Arc::new(store);
    let server = LockServer::build(
        config.listen,
        store.clone(),
        store,
        config.replica(),
        security,
    )
    .await?
    .with_admin(config.admin.admin_listen);
    server.run_until_stopped(shutdown).await
}
