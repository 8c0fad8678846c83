use anyhow::Context;
use clap::Parser;
use crawler_adapters::{ClusterEngineConfig, cluster_engines};
use ws_gateway::{Gateway, GatewayConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    crawler_core::telemetry::init_tracing("ws-gateway", "info", config.log_format);
    let engines = cluster_engines(&ClusterEngineConfig::new(
        config.amqp_url.clone(),
        config.redis_url.clone(),
        config.database_url.clone(),
        config.namespace.clone(),
    ))
    .await
    .context("connecting RabbitMQ, Redis and Postgres")?;
    let gateway = Gateway::build(config, engines).await?;
    gateway
        .run_until_stopped(crawler_core::shutdown::on_signal())
        .await
}
