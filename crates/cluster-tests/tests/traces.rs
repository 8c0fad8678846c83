//! One job is one trace: the gateway's span starts it, and the master (via
//! the queue message's headers), the lock server (via gRPC metadata) and
//! the workers (via the batches) open their spans in it. The embedded
//! cluster runs every service in this process over the same queue, gRPC and
//! batch paths as a cluster, so one in-memory exporter sees every span.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use cluster_tests::site::{SitePlan, TestSite};
use cluster_tests::ws::WsClient;
use crawlctl::embedded::{EmbeddedCluster, EmbeddedOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_across_gateway_queue_master_lock_server_and_workers() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("crawler")))
        .init();

    let cluster = EmbeddedCluster::start(EmbeddedOptions {
        allow_network: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    let site = TestSite::serve(SitePlan::tree(&[3])).await;
    let mut client = WsClient::connect(&cluster.ws_url()).await;
    client.submit("J", &site.url("/"), 1).await;
    client.result("J").await;
    cluster.stop().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|s| s.name == name).collect() };
    let accept = named("job.accept");
    assert_eq!(accept.len(), 1, "one job, one accepting span");
    let trace = accept[0].span_context.trace_id();
    let in_trace = |name: &str| {
        named(name)
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .count()
    };
    assert_eq!(
        in_trace("job.run"),
        1,
        "the master's span joins through the queue headers"
    );
    for rpc in [
        "lock-server.Acquire",
        "lock-server.SaveLevel",
        "lock-server.Complete",
    ] {
        assert_eq!(in_trace(rpc), 1, "{rpc} joins through gRPC metadata");
    }
    assert!(
        in_trace("batch") >= 2,
        "the workers' batches join through the batch messages"
    );
    let strays: Vec<&str> = ["job.run", "batch", "lock-server.Complete"]
        .iter()
        .flat_map(|name| named(name))
        .filter(|s| s.span_context.trace_id() != trace)
        .map(|s| s.name.as_ref())
        .collect();
    assert!(
        strays.is_empty(),
        "spans outside the job's trace: {strays:?}"
    );
}
