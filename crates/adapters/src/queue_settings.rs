//! Queue tunables shared by the RabbitMQ and in-process queues, so both
//! behave the same under the conformance suite.

use std::time::Duration;

/// How the queue treats poison messages and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// A job delivered more often than this without an ack is dead-lettered:
    /// it keeps crashing its consumers, so retrying forever would only keep
    /// crashing them.
    pub delivery_limit: u32,
    /// How long a result event waits for its gateway.
    pub result_ttl: Duration,
    /// How long a progress event waits; stale progress is worthless.
    pub progress_ttl: Duration,
    /// How long a gateway's event queue outlives its last consumer, so the
    /// queues of vanished gateways go away on their own.
    pub event_queue_expiry: Duration,
    /// Unsettled events a gateway may hold at once.
    pub event_prefetch: u16,
    /// How long to wait for the broker to accept a connection.
    pub connect_timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            delivery_limit: 5,
            result_ttl: Duration::from_secs(60 * 60),
            progress_ttl: Duration::from_secs(30),
            event_queue_expiry: Duration::from_secs(24 * 60 * 60),
            event_prefetch: 64,
            connect_timeout: Duration::from_secs(10),
        }
    }
}
