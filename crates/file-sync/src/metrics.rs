//! Counters of the work the server does, read by the `Stats` rpc, the tests
//! and the benchmark, and published to the process's Prometheus recorder at
//! each scrape of `/metrics` as `crawler_file_sync_<counter>_total`.

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

/// Each counter's metric name and help.
const PUBLISHED: [(&str, &str); 15] = [
    ("crawler_file_sync_scans_total", "Directory scans made."),
    (
        "crawler_file_sync_hash_passes_total",
        "Hash passes over changed files.",
    ),
    ("crawler_file_sync_files_hashed_total", "Files hashed."),
    ("crawler_file_sync_bytes_hashed_total", "Bytes hashed."),
    (
        "crawler_file_sync_scan_cache_hits_total",
        "Scans answered from the cache.",
    ),
    (
        "crawler_file_sync_scan_revalidations_total",
        "Cached scans checked against the disk.",
    ),
    ("crawler_file_sync_scan_requests_total", "Scan requests."),
    (
        "crawler_file_sync_download_requests_total",
        "Download requests.",
    ),
    (
        "crawler_file_sync_download_resumes_total",
        "Downloads resumed from an offset.",
    ),
    (
        "crawler_file_sync_download_bytes_skipped_total",
        "Bytes not sent again thanks to resumes.",
    ),
    (
        "crawler_file_sync_bytes_sent_total",
        "Payload bytes sent (after compression).",
    ),
    (
        "crawler_file_sync_raw_bytes_sent_total",
        "File bytes sent (before compression).",
    ),
    (
        "crawler_file_sync_chunks_compressed_total",
        "Chunks sent compressed.",
    ),
    (
        "crawler_file_sync_chunks_raw_total",
        "Chunks sent as they are.",
    ),
    (
        "crawler_file_sync_uploads_total",
        "Spider uploads published.",
    ),
];

impl Metrics {
    /// Names and help texts, once per process.
    pub fn describe() {
        for (name, help) in PUBLISHED {
            metrics::describe_counter!(name, metrics::Unit::Count, help);
        }
    }

    /// Publishes these counters to the process's recorder.
    pub fn publish(&self) {
        let s = self.snapshot();
        let values = [
            s.scans,
            s.hash_passes,
            s.files_hashed,
            s.bytes_hashed,
            s.scan_cache_hits,
            s.scan_revalidations,
            s.scan_requests,
            s.download_requests,
            s.download_resumes,
            s.download_bytes_skipped,
            s.bytes_sent,
            s.raw_bytes_sent,
            s.chunks_compressed,
            s.chunks_raw,
            s.uploads,
        ];
        for ((name, _), value) in PUBLISHED.into_iter().zip(values) {
            metrics::counter!(name).absolute(value);
        }
    }

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
