//! One trace per job across every service. The gateway opens the job's span;
//! its W3C trace context then travels with the job: in the `assigned`
//! message's AMQP headers, in the job spec (so an outbox republish or a
//! takeover continues the same trace), in the metadata of every gRPC call to
//! the lock server, and in each batch sent to a worker. Each service opens
//! its spans as children of the context it received.
//!
//! Spans are exported when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: see
//! [`crate::telemetry::init_tracing`]. Without an exporter the context is
//! empty and nothing travels.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A trace context as text: `traceparent` and, when set, `tracestate`.
pub type TraceContext = BTreeMap<String, String>;

/// The context of the current span, to send along with a job or a call.
pub fn current() -> TraceContext {
    let mut carrier = TraceContext::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MapCarrier(&mut carrier));
    carrier
}

/// Makes `span` a child of the context a caller sent (when it sent one).
pub fn set_parent(span: &tracing::Span, carrier: &TraceContext) {
    if carrier.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&MapReader(carrier));
    let _ = span.set_parent(parent);
}

struct MapCarrier<'a>(&'a mut TraceContext);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapReader<'a>(&'a TraceContext);

impl Extractor for MapReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The trace context in gRPC metadata (HTTP/2 headers).
fn from_headers(headers: &http::HeaderMap) -> TraceContext {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| {
            let value = headers.get(key)?.to_str().ok()?;
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

/// A tonic client interceptor that sends the current span's context with
/// every call, as `traceparent` metadata.
#[derive(Clone, Copy, Default)]
pub struct SendContext;

impl tonic::service::Interceptor for SendContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (key, value) in current() {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        Ok(request)
    }
}

/// A tower layer for a gRPC server: each call runs in a span named after
/// its method, child of the context the caller sent.
#[derive(Clone, Copy)]
pub struct ServerSpans {
    pub service: &'static str,
}

impl<S> tower_layer::Layer<S> for ServerSpans {
    type Service = ServerSpansService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpansService {
            inner,
            service: self.service,
        }
    }
}

#[derive(Clone)]
pub struct ServerSpansService<S> {
    inner: S,
    service: &'static str,
}

impl<S, B> tower_service::Service<http::Request<B>> for ServerSpansService<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let span = tracing::info_span!("rpc", otel.name = %format!("{}.{method}", self.service), rpc.method = %method);
        set_parent(&span, &from_headers(request.headers()));
        Box::pin(self.inner.call(request).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_context_sent_along_makes_the_receiver_a_child() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("sender");
            let carried = sender.in_scope(current);
            assert!(carried.contains_key("traceparent"), "{carried:?}");
            let receiver = tracing::info_span!("receiver");
            set_parent(&receiver, &carried);
            drop(receiver);
            drop(sender);
        });
        let spans = exporter.get_finished_spans().unwrap();
        let trace = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no span {name}"))
                .span_context
                .trace_id()
        };
        assert_eq!(trace("sender"), trace("receiver"));
    }

    #[test]
    fn without_a_tracer_nothing_travels() {
        assert!(current().is_empty());
        set_parent(&tracing::Span::none(), &TraceContext::new());
    }
}
