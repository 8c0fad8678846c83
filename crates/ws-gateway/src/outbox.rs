//! The outbox: a job the gateway recorded is published to `assigned` even if
//! the publish right after the insert failed, or the gateway died between
//! the two. The job row itself is the outbox entry: it stays marked "publish
//! pending" until a publish is confirmed (or a master leases it), and every
//! gateway relays the entries that have waited past a grace, whichever
//! gateway recorded them. A job published twice is harmless: its lease lets
//! one master run it. The other copy is acked as held elsewhere, or, when
//! it reaches the master running the job, as a copy of a running job.

use std::time::Duration;

use crawler_core::model::JobSpec;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::metrics::Metrics;

/// How often the relay looks for jobs whose publication is overdue.
const RELAY_EVERY: Duration = Duration::from_secs(1);
/// Jobs relayed per look; the rest wait for the next look.
const RELAY_BATCH: u32 = 100;

/// Publishes `spec`, with its trace context in the message's headers, and,
/// once the queue confirms it, takes it out of the outbox.
pub async fn publish(state: &AppState, spec: &JobSpec) -> Result<(), String> {
    let payload = serde_json::to_vec(spec).expect("job specs serialise");
    state
        .engines
        .queue
        .publish_job(payload, &spec.trace)
        .await
        .map_err(|e| e.to_string())?;
    Metrics::inc(&state.metrics.jobs_published);
    if let Err(e) = state.engines.store.mark_published(&spec.job_id).await {
        // The relay will publish it once more; the lease makes that harmless.
        tracing::warn!(job_id = %spec.job_id, error = %e, "cannot mark a job published");
    }
    Ok(())
}

/// Relays overdue jobs until `shutdown`.
pub async fn relay(state: AppState, grace: Duration, shutdown: CancellationToken) {
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let mut every = tokio::time::interval(RELAY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = crawler_core::now_ms();
        let overdue = match state
            .engines
            .store
            .claim_unpublished(now.saturating_sub(grace_ms), now, RELAY_BATCH)
            .await
        {
            Ok(overdue) => overdue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                continue;
            }
        };
        for spec in overdue {
            match publish(&state, &spec).await {
                Ok(()) => {
                    Metrics::inc(&state.metrics.jobs_republished);
                    tracing::info!(job_id = %spec.job_id, "published a job from the outbox");
                }
                // Claimed for one grace: the next look after it tries again.
                Err(e) => {
                    tracing::warn!(job_id = %spec.job_id, error = %e, "outbox publish failed; retrying later")
                }
            }
        }
    }
}
