//! The file-sync server: serves spider folders to workers. See `--help`.

use clap::Parser;
use file_sync::{Config, FileSyncServer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if crawler_core::config::dump_if_asked(&config, &config.service) {
        return Ok(());
    }
    let _telemetry = crawler_core::telemetry::init_tracing(
        "file-sync",
        &config.log_filter,
        config.service.log_format,
    );
    let server = FileSyncServer::build(config).await?;
    // One line on stdout with the bound address, for supervisors and tests
    // that start the server on port 0.
    println!("file-sync listening on {}", server.local_addr());
    server
        .run_until_stopped(crawler_core::shutdown::on_signal())
        .await
}
