//! The [`JobQueue`] suite. Subjects must be built with [`settings`], whose
//! short TTL and low delivery limit keep the tests fast.

use std::time::Duration;

use crawler_core::ports::{Delivery, DeliveryStream, EventKind, JobQueue};
use futures::StreamExt;

use super::{PATIENCE, eventually};
use crate::QueueSettings;

/// The settings every queue under test must use.
pub fn settings() -> QueueSettings {
    QueueSettings {
        delivery_limit: 2,
        progress_ttl: Duration::from_millis(150),
        result_ttl: Duration::from_secs(60),
        event_queue_expiry: Duration::from_secs(60),
        ..QueueSettings::default()
    }
}

/// How long a test watches for a delivery that must not come. Absence has no
/// event to wait on, so this window is the one place a test simply waits.
const QUIET: Duration = Duration::from_millis(300);

async fn next(stream: &mut DeliveryStream) -> Delivery {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("no delivery within {PATIENCE:?}"),
    }
}

async fn assert_quiet(stream: &mut DeliveryStream) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, stream.next()).await {
        let shown = item.map(|d| String::from_utf8_lossy(&d.payload).into_owned());
        panic!("expected no delivery, got {shown:?}");
    }
}

async fn dead_letters_reach(queue: &dyn JobQueue, count: u64) {
    eventually(&format!("{count} dead letter(s)"), || async {
        (queue.dead_letter_count().await.expect("dead letter count") == count).then_some(())
    })
    .await;
}

fn text(delivery: &Delivery) -> &str {
    std::str::from_utf8(&delivery.payload).expect("test payloads are text")
}

pub async fn published_job_is_consumed_once_acked(queue: &dyn JobQueue) {
    let mut jobs = queue.consume_jobs(1).await.unwrap();
    queue
        .publish_job(b"first".to_vec(), &Default::default())
        .await
        .unwrap();
    let first = next(&mut jobs).await;
    assert_eq!(text(&first), "first");
    assert!(!first.redelivered);
    first.ack().await.unwrap();

    // Had the ack not removed it, "first" would come back before "second".
    queue
        .publish_job(b"second".to_vec(), &Default::default())
        .await
        .unwrap();
    let second = next(&mut jobs).await;
    assert_eq!(text(&second), "second");
    second.ack().await.unwrap();
    assert_quiet(&mut jobs).await;
}

pub async fn a_jobs_headers_travel_with_it_and_with_its_redelivery(queue: &dyn JobQueue) {
    let mut jobs = queue.consume_jobs(1).await.unwrap();
    let headers = crawler_core::ports::Headers::from([
        (
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        ),
        ("tracestate".to_string(), "congo=t61rcWkgMzE".to_string()),
    ]);
    queue
        .publish_job(b"traced".to_vec(), &headers)
        .await
        .unwrap();
    let delivery = next(&mut jobs).await;
    assert_eq!(delivery.headers, headers);
    delivery.requeue().await.unwrap();
    let again = next(&mut jobs).await;
    assert_eq!(again.headers, headers, "a redelivery keeps them");
    again.ack().await.unwrap();
}

pub async fn requeued_job_is_redelivered(queue: &dyn JobQueue) {
    let mut jobs = queue.consume_jobs(1).await.unwrap();
    queue
        .publish_job(b"again".to_vec(), &Default::default())
        .await
        .unwrap();
    let delivery = next(&mut jobs).await;
    assert!(!delivery.redelivered);
    delivery.requeue().await.unwrap();

    let again = next(&mut jobs).await;
    assert_eq!(text(&again), "again");
    assert!(again.redelivered);
    again.ack().await.unwrap();
}

pub async fn job_of_a_vanished_consumer_goes_to_another(queue: &dyn JobQueue) {
    let mut crashing = queue.consume_jobs(1).await.unwrap();
    queue
        .publish_job(b"orphan".to_vec(), &Default::default())
        .await
        .unwrap();
    let taken = next(&mut crashing).await;
    assert_eq!(text(&taken), "orphan");

    let mut survivor = queue.consume_jobs(1).await.unwrap();
    drop(taken);
    drop(crashing);

    let rescued = next(&mut survivor).await;
    assert_eq!(text(&rescued), "orphan");
    assert!(rescued.redelivered);
    rescued.ack().await.unwrap();
}

pub async fn prefetch_bounds_unsettled_deliveries(queue: &dyn JobQueue) {
    for n in 1..=3 {
        queue
            .publish_job(format!("job {n}").into_bytes(), &Default::default())
            .await
            .unwrap();
    }
    let mut jobs = queue.consume_jobs(2).await.unwrap();
    let first = next(&mut jobs).await;
    let second = next(&mut jobs).await;
    assert_quiet(&mut jobs).await;

    first.ack().await.unwrap();
    let third = next(&mut jobs).await;
    let mut seen = [text(&second).to_string(), text(&third).to_string()];
    seen.sort();
    assert_eq!(seen, ["job 2", "job 3"]);
    second.ack().await.unwrap();
    third.ack().await.unwrap();
}

pub async fn dead_lettered_job_is_counted_and_not_redelivered(queue: &dyn JobQueue) {
    assert_eq!(queue.dead_letter_count().await.unwrap(), 0);
    let mut jobs = queue.consume_jobs(1).await.unwrap();
    queue
        .publish_job(b"poison".to_vec(), &Default::default())
        .await
        .unwrap();
    next(&mut jobs).await.dead_letter().await.unwrap();

    dead_letters_reach(queue, 1).await;
    assert_quiet(&mut jobs).await;
}

pub async fn job_returned_past_the_delivery_limit_is_dead_lettered(queue: &dyn JobQueue) {
    let limit = settings().delivery_limit;
    let mut jobs = queue.consume_jobs(1).await.unwrap();
    queue
        .publish_job(b"crasher".to_vec(), &Default::default())
        .await
        .unwrap();
    for _ in 0..=limit {
        let delivery = next(&mut jobs).await;
        assert_eq!(text(&delivery), "crasher");
        delivery.requeue().await.unwrap();
    }
    dead_letters_reach(queue, 1).await;
    assert_quiet(&mut jobs).await;
}

pub async fn events_reach_only_their_gateway(queue: &dyn JobQueue) {
    let mut gateway_a = queue.consume_events("gw-a").await.unwrap();
    let mut gateway_b = queue.consume_events("gw-b").await.unwrap();
    queue
        .publish_event("gw-a", EventKind::Result, b"for a".to_vec())
        .await
        .unwrap();
    queue
        .publish_event("gw-b", EventKind::Result, b"for b".to_vec())
        .await
        .unwrap();

    let a = next(&mut gateway_a).await;
    assert_eq!(text(&a), "for a");
    a.ack().await.unwrap();
    let b = next(&mut gateway_b).await;
    assert_eq!(text(&b), "for b");
    b.ack().await.unwrap();
    assert_quiet(&mut gateway_a).await;
}

pub async fn progress_and_results_arrive_in_order(queue: &dyn JobQueue) {
    let mut gateway = queue.consume_events("gw").await.unwrap();
    queue
        .publish_event("gw", EventKind::Progress, b"progress".to_vec())
        .await
        .unwrap();
    queue
        .publish_event("gw", EventKind::Result, b"result".to_vec())
        .await
        .unwrap();
    let progress = next(&mut gateway).await;
    assert_eq!(text(&progress), "progress");
    progress.ack().await.unwrap();
    let result = next(&mut gateway).await;
    assert_eq!(text(&result), "result");
    result.ack().await.unwrap();
}

pub async fn stale_progress_expires_while_results_wait(queue: &dyn JobQueue) {
    // Nobody consumes yet: the events wait in the gateway's queue.
    queue
        .publish_event("late-gw", EventKind::Progress, b"progress".to_vec())
        .await
        .unwrap();
    queue
        .publish_event("late-gw", EventKind::Result, b"result".to_vec())
        .await
        .unwrap();
    // Letting the progress TTL run out is the scenario itself, not a way to
    // wait for something else.
    tokio::time::sleep(settings().progress_ttl * 3).await;

    let mut gateway = queue.consume_events("late-gw").await.unwrap();
    let first = next(&mut gateway).await;
    assert_eq!(text(&first), "result");
    first.ack().await.unwrap();
    assert_quiet(&mut gateway).await;
}

pub async fn unacked_event_is_redelivered_to_the_next_consumer(queue: &dyn JobQueue) {
    let mut gateway = queue.consume_events("gw-restart").await.unwrap();
    queue
        .publish_event("gw-restart", EventKind::Result, b"result".to_vec())
        .await
        .unwrap();
    let unacked = next(&mut gateway).await;
    drop(unacked);
    drop(gateway);

    let mut restarted = queue.consume_events("gw-restart").await.unwrap();
    let again = next(&mut restarted).await;
    assert_eq!(text(&again), "result");
    assert!(again.redelivered);
    again.ack().await.unwrap();
}

/// Runs the whole queue suite against one implementation.
#[macro_export]
macro_rules! queue_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            queue,
            $setup,
            [
                published_job_is_consumed_once_acked,
                a_jobs_headers_travel_with_it_and_with_its_redelivery,
                requeued_job_is_redelivered,
                job_of_a_vanished_consumer_goes_to_another,
                prefetch_bounds_unsettled_deliveries,
                dead_lettered_job_is_counted_and_not_redelivered,
                job_returned_past_the_delivery_limit_is_dead_lettered,
                events_reach_only_their_gateway,
                progress_and_results_arrive_in_order,
                stale_progress_expires_while_results_wait,
                unacked_event_is_redelivered_to_the_next_consumer,
            ]
        );
    };
}
