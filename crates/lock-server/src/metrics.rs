//! The lock server's metrics, recorded where its decisions are made; names
//! and help declared here once.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

const LEASES_GRANTED: &str = "crawler_lock_server_leases_granted_total";
const TAKEOVERS: &str = "crawler_lock_server_takeovers_total";
const LEVELS_SAVED: &str = "crawler_lock_server_levels_saved_total";
const PAGES_SAVED: &str = "crawler_lock_server_pages_saved_total";
const RELEASES: &str = "crawler_lock_server_releases_total";
const COMPLETIONS: &str = "crawler_lock_server_completions_total";
const REFUSALS: &str = "crawler_lock_server_stale_writes_refused_total";
const LEADER: &str = "crawler_lock_server_leader";

pub fn describe() {
    describe_counter!(
        LEASES_GRANTED,
        Unit::Count,
        "Leases granted to masters by Acquire."
    );
    describe_counter!(
        TAKEOVERS,
        Unit::Count,
        "Orphaned jobs handed to another master."
    );
    describe_counter!(LEVELS_SAVED, Unit::Count, "Completed levels made durable.");
    describe_counter!(PAGES_SAVED, Unit::Count, "Fetched pages stored.");
    describe_counter!(
        RELEASES,
        Unit::Count,
        "Leases released early for a handover."
    );
    describe_counter!(
        COMPLETIONS,
        Unit::Count,
        "Jobs completed, by outcome: done or failed."
    );
    describe_counter!(
        REFUSALS,
        Unit::Count,
        "Writes refused because their fencing token was stale."
    );
    describe_gauge!(
        LEADER,
        Unit::Count,
        "1 while this replica leads the lock service, else 0."
    );
}

pub fn lease_granted() {
    counter!(LEASES_GRANTED).increment(1);
}

pub fn taken_over() {
    counter!(TAKEOVERS).increment(1);
}

pub fn level_saved() {
    counter!(LEVELS_SAVED).increment(1);
}

pub fn pages_saved(n: usize) {
    counter!(PAGES_SAVED).increment(n as u64);
}

pub fn released() {
    counter!(RELEASES).increment(1);
}

pub fn completed(outcome: &'static str) {
    counter!(COMPLETIONS, "outcome" => outcome).increment(1);
}

pub fn stale_write_refused() {
    counter!(REFUSALS).increment(1);
}

pub fn leading(leads: bool) {
    gauge!(LEADER).set(if leads { 1.0 } else { 0.0 });
}
