use clap::Parser;
use worker::{Worker, WorkerConfig};

/// mimalloc, not glibc's malloc: each page allocates and frees response
/// buffers, headers and links, and glibc spent about a tenth of the
/// worker's CPU merging and unlinking free chunks (`malloc_consolidate`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = WorkerConfig::parse();
    if crawler_core::config::dump_if_asked(&config, &config.service) {
        return Ok(());
    }
    if let Some(path) = &config.host_gate_file {
        config.host_gate = Some(crawler_core::config::read_secret_file(
            path,
            "the host gate's URL",
        )?);
    }
    let _telemetry =
        crawler_core::telemetry::init_tracing("worker", "info", config.service.log_format);
    let worker = Worker::build(config)?;
    tracing::info!(worker_id = worker.id(), "worker starting");
    worker
        .run_until_stopped(crawler_core::shutdown::on_signal())
        .await;
    Ok(())
}
