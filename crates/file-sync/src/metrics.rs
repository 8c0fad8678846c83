//! Counters of the work the server does, read by the `Stats` rpc, the tests
//! and the benchmark.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::StatsResponse;

/// Monotonic counters; see `StatsResponse` in the proto for their meaning.
#[derive(Debug, Default)]
pub struct Metrics {
    pub scans: AtomicU64,
    pub hash_passes: AtomicU64,
    pub files_hashed: AtomicU64,
    pub bytes_hashed: AtomicU64,
    pub scan_cache_hits: AtomicU64,
    pub scan_revalidations: AtomicU64,
    pub scan_requests: AtomicU64,
    pub download_requests: AtomicU64,
    pub download_resumes: AtomicU64,
    pub download_bytes_skipped: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub raw_bytes_sent: AtomicU64,
    pub chunks_compressed: AtomicU64,
    pub chunks_raw: AtomicU64,
    pub uploads: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn snapshot(&self) -> StatsResponse {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsResponse {
            scans: get(&self.scans),
            hash_passes: get(&self.hash_passes),
            files_hashed: get(&self.files_hashed),
            bytes_hashed: get(&self.bytes_hashed),
            scan_cache_hits: get(&self.scan_cache_hits),
            scan_revalidations: get(&self.scan_revalidations),
            scan_requests: get(&self.scan_requests),
            download_requests: get(&self.download_requests),
            download_resumes: get(&self.download_resumes),
            download_bytes_skipped: get(&self.download_bytes_skipped),
            bytes_sent: get(&self.bytes_sent),
            raw_bytes_sent: get(&self.raw_bytes_sent),
            chunks_compressed: get(&self.chunks_compressed),
            chunks_raw: get(&self.chunks_raw),
            uploads: get(&self.uploads),
        }
    }
}
