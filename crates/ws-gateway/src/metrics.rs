//! The gateway's metrics. Its counters belong to the gateway instance (a
//! test of one gateway reads its own), and are published to the process's
//! Prometheus recorder at each scrape of `/metrics`, under the names and
//! with the help declared here.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    /// Notified each time a connection ends (a stopping gateway waits on it).
    pub drained: std::sync::Arc<tokio::sync::Notify>,
    pub connections_refused: AtomicU64,
    pub connections_closed_idle: AtomicU64,
    pub connections_closed_slow: AtomicU64,
    pub rate_limited: AtomicU64,
    pub auth_refused: AtomicU64,
    pub quota_exceeded: AtomicU64,
    pub jobs_accepted: AtomicU64,
    pub jobs_published: AtomicU64,
    pub jobs_republished: AtomicU64,
    pub jobs_attached: AtomicU64,
    pub cache_hits: AtomicU64,
    pub head_starts: AtomicU64,
    pub events_consumed: AtomicU64,
    pub results_delivered: AtomicU64,
    pub errors_sent: AtomicU64,
}

const CONNECTIONS: &str = "crawler_gateway_connections";
const CONNECTIONS_REFUSED: &str = "crawler_gateway_connections_refused_total";
const CLOSED_IDLE: &str = "crawler_gateway_connections_closed_idle_total";
const CLOSED_SLOW: &str = "crawler_gateway_connections_closed_slow_total";
const RATE_LIMITED: &str = "crawler_gateway_rate_limited_total";
const AUTH_REFUSED: &str = "crawler_gateway_auth_refused_total";
const QUOTA_EXCEEDED: &str = "crawler_gateway_quota_exceeded_total";
const JOBS_PENDING: &str = "crawler_gateway_jobs_pending";
const JOBS_ACCEPTED: &str = "crawler_gateway_jobs_accepted_total";
const JOBS_PUBLISHED: &str = "crawler_gateway_jobs_published_total";
const JOBS_REPUBLISHED: &str = "crawler_gateway_jobs_republished_total";
const JOBS_ATTACHED: &str = "crawler_gateway_jobs_attached_total";
const CACHE_HITS: &str = "crawler_gateway_cache_hits_total";
const HEAD_STARTS: &str = "crawler_gateway_head_starts_total";
const EVENTS_CONSUMED: &str = "crawler_gateway_events_consumed_total";
const RESULTS_DELIVERED: &str = "crawler_gateway_results_delivered_total";
const ERRORS_SENT: &str = "crawler_gateway_errors_sent_total";

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Names and help texts, once per process.
    pub fn describe() {
        describe_gauge!(CONNECTIONS, Unit::Count, "Open websocket connections.");
        describe_counter!(
            CONNECTIONS_REFUSED,
            Unit::Count,
            "Upgrades refused because the gateway held its maximum of connections."
        );
        describe_counter!(
            CLOSED_IDLE,
            Unit::Count,
            "Connections closed after the idle timeout."
        );
        describe_counter!(
            CLOSED_SLOW,
            Unit::Count,
            "Connections closed because their client did not read what it was sent."
        );
        describe_counter!(
            RATE_LIMITED,
            Unit::Count,
            "Submits refused with rate_limited."
        );
        describe_counter!(
            AUTH_REFUSED,
            Unit::Count,
            "Tokens refused at the upgrade or in an `auth` message: malformed, unknown or revoked."
        );
        describe_counter!(
            QUOTA_EXCEEDED,
            Unit::Count,
            "Submits refused with quota_exceeded."
        );
        describe_gauge!(
            JOBS_PENDING,
            Unit::Count,
            "Jobs whose result this gateway waits for."
        );
        describe_counter!(JOBS_ACCEPTED, Unit::Count, "Jobs accepted from clients.");
        describe_counter!(
            JOBS_PUBLISHED,
            Unit::Count,
            "Jobs published to the `assigned` queue."
        );
        describe_counter!(
            JOBS_REPUBLISHED,
            Unit::Count,
            "Jobs the outbox published after their first publish failed or was lost."
        );
        describe_counter!(
            JOBS_ATTACHED,
            Unit::Count,
            "Resubmits attached to a job the client had already submitted."
        );
        describe_counter!(
            CACHE_HITS,
            Unit::Count,
            "Jobs answered from the result cache."
        );
        describe_counter!(
            HEAD_STARTS,
            Unit::Count,
            "Jobs that start from the levels of a shallower cached crawl."
        );
        describe_counter!(
            EVENTS_CONSUMED,
            Unit::Count,
            "Result and progress events consumed from this gateway's queue."
        );
        describe_counter!(RESULTS_DELIVERED, Unit::Count, "Results sent to clients.");
        describe_counter!(ERRORS_SENT, Unit::Count, "Error messages sent to clients.");
    }

    /// Publishes this gateway's counters to the process's recorder.
    pub fn publish(&self, pending_jobs: usize) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gauge!(CONNECTIONS).set(get(&self.connections) as f64);
        gauge!(JOBS_PENDING).set(pending_jobs as f64);
        for (name, value) in [
            (JOBS_ACCEPTED, &self.jobs_accepted),
            (JOBS_PUBLISHED, &self.jobs_published),
            (JOBS_REPUBLISHED, &self.jobs_republished),
            (JOBS_ATTACHED, &self.jobs_attached),
            (CACHE_HITS, &self.cache_hits),
            (HEAD_STARTS, &self.head_starts),
            (EVENTS_CONSUMED, &self.events_consumed),
            (RESULTS_DELIVERED, &self.results_delivered),
            (ERRORS_SENT, &self.errors_sent),
            (CONNECTIONS_REFUSED, &self.connections_refused),
            (CLOSED_IDLE, &self.connections_closed_idle),
            (CLOSED_SLOW, &self.connections_closed_slow),
            (RATE_LIMITED, &self.rate_limited),
            (AUTH_REFUSED, &self.auth_refused),
            (QUOTA_EXCEEDED, &self.quota_exceeded),
        ] {
            counter!(name).absolute(get(value));
        }
    }
}
