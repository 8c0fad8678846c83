//! The in-process job queue of the embedded default. It mirrors what the
//! RabbitMQ adapter gets from the broker — prefetch, redelivery, a delivery
//! limit with dead-lettering, per-gateway event queues with message TTLs — so
//! services behave the same whichever queue they run on.
//!
//! State lives behind one `std::sync::Mutex`: every critical section is a few
//! deque operations and never awaits, so a blocking lock is cheaper and
//! simpler than an async one (the reasoning of mini-redis's `db.rs`).
//! Consumers sleep on a [`Notify`] per lane and on a [`Semaphore`] holding
//! their prefetch budget; nothing polls.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use crawler_core::ports::{
    Acker, AdapterError, AdapterResult, Delivery, DeliveryStream, EventKind, Headers, JobQueue,
    Settle,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::QueueSettings;

const ENGINE: &str = "memory queue";

/// An in-process [`JobQueue`]. Cloning shares the queue.
#[derive(Clone)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

struct Shared {
    settings: QueueSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    jobs: Lane,
    events: HashMap<String, Lane>,
    dead: Vec<Vec<u8>>,
}

/// One queue: waiting messages plus the bell its consumers sleep on.
#[derive(Default)]
struct Lane {
    ready: VecDeque<Message>,
    bell: Arc<Notify>,
    consumers: usize,
    /// When a consumer last attached, took a message or left; an event lane
    /// unused for longer than the expiry is removed, like `x-expires`.
    last_used: Option<Instant>,
}

struct Message {
    payload: Vec<u8>,
    headers: Headers,
    /// Times a consumer received it and gave it back (requeue or drop).
    returns: u32,
    expires_at: Option<Instant>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Jobs,
    Events(String),
}

impl MemoryQueue {
    pub fn new(settings: QueueSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                state: Mutex::default(),
            }),
        }
    }

    /// Payloads waiting in the dead-letter list, oldest first.
    pub fn dead_letters(&self) -> Vec<Vec<u8>> {
        self.shared.lock().dead.clone()
    }
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new(QueueSettings::default())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the deques half-updated
        // in a way later calls would trip over, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, key: &LaneKey, message: Message) {
        let mut state = self.lock();
        let lane = state.lane(key);
        lane.ready.push_back(message);
        lane.bell.notify_waiters();
    }

    /// The next live message of `key`, dropping any that expired waiting.
    fn take(&self, key: &LaneKey) -> Option<Message> {
        let mut state = self.lock();
        let lane = state.lane(key);
        let now = Instant::now();
        while let Some(message) = lane.ready.pop_front() {
            if message.expires_at.is_some_and(|at| at <= now) {
                continue;
            }
            lane.last_used = Some(now);
            return Some(message);
        }
        None
    }

    /// A message handed back by its consumer: redelivered first, unless it
    /// has now been returned more often than the delivery limit.
    fn give_back(&self, key: &LaneKey, mut message: Message) {
        message.returns += 1;
        let mut state = self.lock();
        if *key == LaneKey::Jobs && message.returns > self.settings.delivery_limit {
            tracing::warn!(
                returns = message.returns,
                "job exceeded the delivery limit; dead-lettered"
            );
            state.dead.push(message.payload);
            return;
        }
        let lane = state.lane(key);
        lane.ready.push_front(message);
        lane.bell.notify_waiters();
    }

    fn dead_letter(&self, key: &LaneKey, message: Message) {
        // Event queues have no dead-letter exchange on the broker either: a
        // rejected event is simply dropped.
        if *key == LaneKey::Jobs {
            self.lock().dead.push(message.payload);
        }
    }

    /// Removes event lanes nobody has used for longer than the expiry.
    fn sweep_idle_event_lanes(&self) {
        let expiry = self.settings.event_queue_expiry;
        let mut state = self.lock();
        state.events.retain(|_, lane| {
            lane.consumers > 0 || lane.last_used.is_none_or(|at| at.elapsed() < expiry)
        });
    }
}

impl State {
    fn lane(&mut self, key: &LaneKey) -> &mut Lane {
        match key {
            LaneKey::Jobs => &mut self.jobs,
            LaneKey::Events(gateway) => {
                self.events.entry(gateway.clone()).or_insert_with(|| Lane {
                    last_used: Some(Instant::now()),
                    ..Lane::default()
                })
            }
        }
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn publish_job(&self, payload: Vec<u8>, headers: &Headers) -> AdapterResult<()> {
        self.shared.push(
            &LaneKey::Jobs,
            Message {
                payload,
                headers: headers.clone(),
                returns: 0,
                expires_at: None,
            },
        );
        Ok(())
    }

    async fn consume_jobs(&self, prefetch: u16) -> AdapterResult<DeliveryStream> {
        consume(self.shared.clone(), LaneKey::Jobs, prefetch)
    }

    async fn publish_event(
        &self,
        gateway_key: &str,
        kind: EventKind,
        payload: Vec<u8>,
    ) -> AdapterResult<()> {
        let ttl = match kind {
            EventKind::Result => self.shared.settings.result_ttl,
            EventKind::Progress => self.shared.settings.progress_ttl,
        };
        self.shared.sweep_idle_event_lanes();
        self.shared.push(
            &LaneKey::Events(gateway_key.to_string()),
            Message {
                payload,
                headers: Headers::new(),
                returns: 0,
                expires_at: Some(Instant::now() + ttl),
            },
        );
        Ok(())
    }

    async fn consume_events(&self, gateway_key: &str) -> AdapterResult<DeliveryStream> {
        let prefetch = self.shared.settings.event_prefetch;
        consume(
            self.shared.clone(),
            LaneKey::Events(gateway_key.to_string()),
            prefetch,
        )
    }

    async fn ping(&self) -> AdapterResult<()> {
        Ok(())
    }

    async fn dead_letter_count(&self) -> AdapterResult<u64> {
        Ok(self.shared.lock().dead.len() as u64)
    }
}

// ------------------------------------------------------------- consuming

/// One consumer: its lane, its prefetch budget, and a registration that
/// keeps its event lane from expiring while it is attached.
struct Consumer {
    shared: Arc<Shared>,
    key: LaneKey,
    bell: Arc<Notify>,
    budget: Arc<Semaphore>,
}

fn consume(shared: Arc<Shared>, key: LaneKey, prefetch: u16) -> AdapterResult<DeliveryStream> {
    if prefetch == 0 {
        return Err(AdapterError::new(ENGINE, "prefetch must be at least 1"));
    }
    let bell = {
        let mut state = shared.lock();
        let lane = state.lane(&key);
        lane.consumers += 1;
        lane.last_used = Some(Instant::now());
        lane.bell.clone()
    };
    let consumer = Consumer {
        shared,
        key,
        bell,
        budget: Arc::new(Semaphore::new(prefetch.into())),
    };
    Ok(Box::pin(futures::stream::unfold(
        consumer,
        |consumer| async move {
            let delivery = consumer.next().await;
            Some((Ok(delivery), consumer))
        },
    )))
}

impl Consumer {
    async fn next(&self) -> Delivery {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = self
            .budget
            .clone()
            .acquire_owned()
            .await
            .expect("prefetch semaphore is never closed");
        loop {
            // Register for the bell before looking, so a publish between the
            // look and the wait still wakes us.
            let rung = self.bell.notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            if let Some(message) = self.shared.take(&self.key) {
                let redelivered = message.returns > 0;
                let payload = message.payload.clone();
                let headers = message.headers.clone();
                let acker = MemoryAcker {
                    shared: self.shared.clone(),
                    key: self.key.clone(),
                    message: Some(message),
                    _permit: permit,
                };
                return Delivery::new(payload, headers, redelivered, Box::new(acker));
            }
            rung.await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let lane = state.lane(&self.key);
        lane.consumers = lane.consumers.saturating_sub(1);
        lane.last_used = Some(Instant::now());
    }
}

/// Settles one delivery. Holding the prefetch permit here is what bounds a
/// consumer's unsettled deliveries: the permit returns when this is dropped.
struct MemoryAcker {
    shared: Arc<Shared>,
    key: LaneKey,
    message: Option<Message>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn settle(mut self: Box<Self>, how: Settle) -> AdapterResult<()> {
        if let Some(message) = self.message.take() {
            match how {
                Settle::Ack => {}
                Settle::Requeue => self.shared.give_back(&self.key, message),
                Settle::DeadLetter => self.shared.dead_letter(&self.key, message),
            }
        }
        Ok(())
    }
}

impl Drop for MemoryAcker {
    /// A delivery dropped unsettled (its task panicked or was cancelled) goes
    /// back to the queue, as the broker does when a consumer's channel closes.
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            self.shared.give_back(&self.key, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn queue_expiring_idle_lanes_at_once() -> MemoryQueue {
        MemoryQueue::new(QueueSettings {
            event_queue_expiry: Duration::ZERO,
            ..QueueSettings::default()
        })
    }

    fn has_lane(queue: &MemoryQueue, gateway: &str) -> bool {
        queue.shared.lock().events.contains_key(gateway)
    }

    #[tokio::test]
    async fn event_queues_of_vanished_gateways_expire() {
        let queue = queue_expiring_idle_lanes_at_once();
        queue
            .publish_event("vanished", EventKind::Result, b"x".to_vec())
            .await
            .unwrap();
        queue
            .publish_event("other", EventKind::Result, b"y".to_vec())
            .await
            .unwrap();
        assert!(!has_lane(&queue, "vanished"));
    }

    #[tokio::test]
    async fn event_queues_with_a_consumer_stay() {
        let queue = queue_expiring_idle_lanes_at_once();
        let _events = queue.consume_events("present").await.unwrap();
        queue
            .publish_event("other", EventKind::Progress, b"y".to_vec())
            .await
            .unwrap();
        assert!(has_lane(&queue, "present"));
    }
}
