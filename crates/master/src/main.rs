use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use crawler_adapters::{QueueSettings, RabbitQueue, RedisCache};
use master::{Master, MasterConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = MasterConfig::parse();
    crawler_core::telemetry::init_tracing("master", "info", config.log_format);
    let queue = RabbitQueue::connect(
        &config.amqp_url,
        &config.namespace,
        QueueSettings::default(),
    )
    .await
    .context("connecting the job queue")?;
    let cache = RedisCache::connect(&config.redis_url, &config.namespace)
        .await
        .context("connecting the result cache")?;
    let master = Master::build(config, Arc::new(queue), Arc::new(cache)).await?;
    master
        .run_until_stopped(crawler_core::shutdown::on_signal())
        .await
}
