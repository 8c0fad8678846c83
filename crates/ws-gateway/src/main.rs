use clap::Parser;
use crawler_adapters::{ClusterEngineConfig, cluster_engines};
use crawler_core::retry::until_connected;
use ws_gateway::{Gateway, GatewayConfig};

/// mimalloc, not glibc's malloc: the buffers of a burst of handshakes,
/// freed once connections are upgraded, stay resident under glibc (about
/// 1 KiB per connection at 5,000) and are returned under mimalloc, whose
/// idle connections are also smaller (`cargo bench --bench gateway_memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = GatewayConfig::parse();
    if crawler_core::config::dump_if_asked(&config, &config.service) {
        return Ok(());
    }
    config.messaging.read_url_files()?;
    config.store.read_url_file()?;
    // Refused before any engine is awaited, so a bad setting fails at once.
    config.validate()?;
    let _telemetry =
        crawler_core::telemetry::init_tracing("ws-gateway", "info", config.service.log_format);
    let shutdown = crawler_core::shutdown::on_signal();
    let mut engines = ClusterEngineConfig::new(
        config.messaging.amqp_url.clone(),
        config.messaging.redis_url.clone(),
        config.store.database_url.clone(),
        config.messaging.namespace.clone(),
    );
    engines.redis_ca.clone_from(&config.messaging.redis_ca);
    engines.amqp_ca.clone_from(&config.messaging.amqp_ca);
    let Some(engines) = until_connected("rabbitmq, redis and postgres", &shutdown, || {
        cluster_engines(&engines)
    })
    .await
    else {
        return Ok(());
    };
    let gateway = Gateway::build(config, engines).await?;
    gateway.run_until_stopped(shutdown).await
}
