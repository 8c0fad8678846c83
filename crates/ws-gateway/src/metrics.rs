//! The gateway's counters, served as Prometheus text on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub jobs_accepted: AtomicU64,
    /// Jobs sent to the `assigned` queue, i.e. to a master.
    pub jobs_published: AtomicU64,
    /// Jobs the outbox published because their first publish failed or was lost.
    pub jobs_republished: AtomicU64,
    /// Resubmits of a job the client had submitted already, attached to it.
    pub jobs_attached: AtomicU64,
    /// Jobs answered from the cache, without a master.
    pub cache_hits: AtomicU64,
    pub results_delivered: AtomicU64,
    pub errors_sent: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, pending_jobs: usize) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, u64); 8] = [
            (
                "gateway_connections",
                "gauge",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "gateway_jobs_accepted_total",
                "counter",
                self.jobs_accepted.load(Ordering::Relaxed),
            ),
            (
                "gateway_jobs_published_total",
                "counter",
                self.jobs_published.load(Ordering::Relaxed),
            ),
            (
                "gateway_jobs_republished_total",
                "counter",
                self.jobs_republished.load(Ordering::Relaxed),
            ),
            (
                "gateway_jobs_attached_total",
                "counter",
                self.jobs_attached.load(Ordering::Relaxed),
            ),
            (
                "gateway_cache_hits_total",
                "counter",
                self.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "gateway_results_delivered_total",
                "counter",
                self.results_delivered.load(Ordering::Relaxed),
            ),
            (
                "gateway_errors_sent_total",
                "counter",
                self.errors_sent.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, value) in rows {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# TYPE gateway_jobs_pending gauge\ngateway_jobs_pending {pending_jobs}"
        );
        out
    }
}
