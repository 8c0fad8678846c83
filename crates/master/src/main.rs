use std::sync::Arc;

use clap::Parser;
use crawler_adapters::{QueueSettings, RabbitQueue, RedisCache};
use crawler_core::retry::until_connected;
use master::{Master, MasterConfig};

/// mimalloc, not glibc's malloc, as for the worker: a crawl's pages are
/// many small allocations freed in bursts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = MasterConfig::parse();
    if crawler_core::config::dump_if_asked(&config, &config.service) {
        return Ok(());
    }
    config.engines.read_url_files()?;
    // Refused before any engine is awaited, so a bad setting fails at once.
    config.validate()?;
    let _telemetry =
        crawler_core::telemetry::init_tracing("master", "info", config.service.log_format);
    let shutdown = crawler_core::shutdown::on_signal();
    let engines = &config.engines;
    let Some(queue) = until_connected("rabbitmq", &shutdown, || {
        RabbitQueue::connect(
            &engines.amqp_url,
            engines.amqp_ca.as_deref(),
            &engines.namespace,
            QueueSettings::default(),
        )
    })
    .await
    else {
        return Ok(());
    };
    let Some(cache) = until_connected("redis", &shutdown, || {
        RedisCache::connect(
            &engines.redis_url,
            engines.redis_ca.as_deref(),
            &engines.namespace,
        )
    })
    .await
    else {
        return Ok(());
    };
    let master = Master::build(config, Arc::new(queue), Arc::new(cache)).await?;
    master.run_until_stopped(shutdown).await
}
