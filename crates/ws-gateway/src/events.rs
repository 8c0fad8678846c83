//! Consumes this gateway's routing key and hands each event to the
//! connection waiting for it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crawler_core::events::GatewayEvent;
use crawler_core::protocol::ServerMessage;
use crawler_core::retry::RetryPolicy;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::metrics::Metrics;
use crate::requests::record_message;

/// How the gateway subscribes again after losing its queue.
const RESUBSCRIBE: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

pub async fn route_events(state: AppState, shutdown: CancellationToken) {
    let mut backoff = RESUBSCRIBE.backoff();
    while !shutdown.is_cancelled() {
        let mut events = match state.engines.queue.consume_events(&state.gateway_key).await {
            Ok(events) => events,
            Err(e) => {
                state.ready.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot subscribe to results; retrying");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        state.ready.store(true, Ordering::Relaxed);
        backoff.reset();
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = events.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "result subscription failed; resubscribing");
                    break;
                }
                None => break,
            };
            Metrics::inc(&state.metrics.events_consumed);
            match GatewayEvent::from_bytes(&delivery.payload) {
                Ok(event) => deliver(&state, event).await,
                Err(e) => tracing::error!(error = %e, "unreadable event; dropping it"),
            }
            // Delivered (or undeliverable: the client left and can ask `status`).
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %e, "cannot ack event");
            }
        }
        state.ready.store(false, Ordering::Relaxed);
    }
}

async fn deliver(state: &AppState, event: GatewayEvent) {
    match event {
        GatewayEvent::Progress {
            job_id,
            client_job_id,
            pages_done,
            current_depth,
            ..
        } => {
            if let Some(tx) = state.routes.peek(&job_id) {
                // Progress may be dropped if the client is slow; the result may not.
                let _ = tx.try_send(ServerMessage::Progress {
                    job_id: client_job_id,
                    pages_done,
                    current_depth,
                });
            }
        }
        GatewayEvent::Finished { record } => {
            if let Some(tx) = state.routes.take(&record.spec.job_id) {
                let _ = tx.send(record_message(*record)).await;
            }
        }
    }
}
