//! The worker's metrics, recorded where pages are fetched and masters
//! registered; names and help declared here once.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

const PAGES_FETCHED: &str = "crawler_worker_pages_fetched_total";
const FETCH_DURATION: &str = "crawler_worker_fetch_duration_seconds";
const BATCHES: &str = "crawler_worker_batches_total";
const MASTERS_REGISTERED: &str = "crawler_worker_masters_registered";
const PAGES_REFUSED: &str = "crawler_worker_pages_refused_total";
const HOST_PAUSES: &str = "crawler_worker_host_pauses_total";

pub fn describe() {
    describe_counter!(
        PAGES_FETCHED,
        Unit::Count,
        "Pages fetched, by status class: 2xx, 3xx, 4xx, 5xx, or error (no response)."
    );
    describe_histogram!(
        FETCH_DURATION,
        Unit::Seconds,
        "Time to fetch and read one page, redirects included."
    );
    describe_counter!(BATCHES, Unit::Count, "URL batches run for masters.");
    describe_counter!(
        PAGES_REFUSED,
        Unit::Count,
        "Pages not fetched because robots.txt refused them."
    );
    describe_counter!(
        HOST_PAUSES,
        Unit::Count,
        "Pauses hosts asked for with 429 or 503 and Retry-After."
    );
    describe_gauge!(
        MASTERS_REGISTERED,
        Unit::Count,
        "Masters this worker is registered with."
    );
}

/// One page fetched: its status (none when the fetch failed) and its time.
pub fn page_fetched(status: Option<u16>, took: Duration) {
    let class = match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
        None => "error",
    };
    counter!(PAGES_FETCHED, "status" => class).increment(1);
    histogram!(FETCH_DURATION).record(took.as_secs_f64());
}

pub fn batch_run() {
    counter!(BATCHES).increment(1);
}

pub fn masters_registered(n: usize) {
    gauge!(MASTERS_REGISTERED).set(n as f64);
}

pub fn page_refused() {
    counter!(PAGES_REFUSED).increment(1);
}

pub fn host_paused() {
    counter!(HOST_PAUSES).increment(1);
}
