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
use crate::delivery::{Duty, Outcome, Outgoing};
use crate::metrics::Metrics;

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
                Ok(event) => deliver(&state, event),
                Err(e) => tracing::error!(error = %e, "unreadable event; dropping it"),
            }
            // Handed over, or owed to a client that is away: the store has it.
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %e, "cannot ack event");
            }
        }
        state.ready.store(false, Ordering::Relaxed);
    }
}

/// Hands an event to the connection waiting for its job, without waiting
/// on that connection: one slow client never holds up the others.
fn deliver(state: &AppState, event: GatewayEvent) {
    match event {
        GatewayEvent::Progress {
            job_id,
            client_job_id,
            pages_done,
            current_depth,
            ..
        } => {
            if let Some(client) = state.routes.peek(&job_id) {
                // Progress may be dropped if the client is slow; the next replaces it.
                let progress = ServerMessage::Progress {
                    job_id: client_job_id,
                    pages_done,
                    current_depth,
                };
                client.offer(Outgoing::message(progress), false);
            }
        }
        GatewayEvent::Finished { record, pages } => {
            // No connection here waits for it: the client is away, and is
            // sent the outcome from the store when it comes back.
            if let Some(client) = state.routes.take(&record.spec.job_id) {
                let outcome = Outcome {
                    record: *record,
                    pages,
                    cached: false,
                    duty: Duty::Push,
                };
                client.offer(Outgoing::outcome(outcome), true);
            }
        }
    }
}
