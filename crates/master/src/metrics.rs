//! The master's metrics. Its `Stats` counters belong to the instance (the
//! embedded cluster and tests read them) and are published to the process's
//! Prometheus recorder at each scrape; job outcomes and durations are
//! recorded where a job ends. Names and help are declared here once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::Stats;

const JOBS_STARTED: &str = "crawler_master_jobs_started_total";
const JOBS_COMPLETED: &str = "crawler_master_jobs_completed_total";
const JOBS_TAKEN_OVER: &str = "crawler_master_jobs_taken_over_total";
const PAGES_RESUMED: &str = "crawler_master_pages_resumed_total";
const LEVELS_SAVED: &str = "crawler_master_levels_saved_total";
const LEASES_RELEASED: &str = "crawler_master_leases_released_total";
const BATCHES_REDISPATCHED: &str = "crawler_master_batches_redispatched_total";
const WORKERS_CONNECTED: &str = "crawler_master_workers_connected";
const JOBS_CONSUMED: &str = "crawler_master_jobs_consumed_total";
const JOBS_ENDED: &str = "crawler_master_jobs_ended_total";
const JOB_DURATION: &str = "crawler_master_job_duration_seconds";
const RESULTS_PUBLISHED: &str = "crawler_master_results_published_total";
const RESULT_EVENT_BYTES: &str = "crawler_master_result_event_bytes";

/// Names and help texts, once per process.
pub fn describe() {
    describe_counter!(
        JOBS_STARTED,
        Unit::Count,
        "Crawls started, from the queue or taken over."
    );
    describe_counter!(
        JOBS_COMPLETED,
        Unit::Count,
        "Crawls whose outcome the lock server stored."
    );
    describe_counter!(
        JOBS_TAKEN_OVER,
        Unit::Count,
        "Orphaned jobs of other masters taken over."
    );
    describe_counter!(
        PAGES_RESUMED,
        Unit::Count,
        "Pages of completed levels taken from checkpoints instead of fetched again."
    );
    describe_counter!(LEVELS_SAVED, Unit::Count, "Completed levels made durable.");
    describe_counter!(
        LEASES_RELEASED,
        Unit::Count,
        "Leases handed back at a graceful stop."
    );
    describe_counter!(
        BATCHES_REDISPATCHED,
        Unit::Count,
        "Batches sent again because their worker went away."
    );
    describe_gauge!(
        WORKERS_CONNECTED,
        Unit::Count,
        "Workers with an open stream to this master."
    );
    describe_counter!(
        JOBS_CONSUMED,
        Unit::Count,
        "Job messages taken from the `assigned` queue."
    );
    describe_counter!(
        JOBS_ENDED,
        Unit::Count,
        "Jobs this master stopped running, by outcome: done, failed, stale (taken over), released, abandoned."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "From acceptance at the gateway to the stored outcome, for jobs done or failed here."
    );
    describe_counter!(
        RESULTS_PUBLISHED,
        Unit::Count,
        "Outcomes published to gateways."
    );
    describe_histogram!(
        RESULT_EVENT_BYTES,
        Unit::Bytes,
        "Size of each outcome message published to a gateway: a summary, and the pages only of a small result."
    );
}

impl Stats {
    /// Publishes this master's counters to the process's recorder.
    pub fn publish(&self) {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        for (name, value) in [
            (JOBS_STARTED, &self.jobs_started),
            (JOBS_COMPLETED, &self.jobs_completed),
            (JOBS_TAKEN_OVER, &self.jobs_taken_over),
            (PAGES_RESUMED, &self.pages_resumed),
            (LEVELS_SAVED, &self.levels_saved),
            (LEASES_RELEASED, &self.leases_released),
            (BATCHES_REDISPATCHED, &self.batches_redispatched),
        ] {
            counter!(name).absolute(get(value));
        }
        gauge!(WORKERS_CONNECTED).set(self.workers_connected.load(Ordering::Relaxed) as f64);
    }
}

pub fn job_consumed() {
    counter!(JOBS_CONSUMED).increment(1);
}

/// A job this master ran ended; `took` is set for a stored outcome.
pub fn job_ended(outcome: &'static str, took: Option<Duration>) {
    counter!(JOBS_ENDED, "outcome" => outcome).increment(1);
    if let Some(took) = took {
        histogram!(JOB_DURATION).record(took.as_secs_f64());
    }
}

pub fn result_published(bytes: usize) {
    counter!(RESULTS_PUBLISHED).increment(1);
    histogram!(RESULT_EVENT_BYTES).record(bytes as f64);
}
