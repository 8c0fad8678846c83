//! Spider file sync: the `file-sync` gRPC server that serves spider folders,
//! and the client that mirrors one into a worker's local folder.
//!
//! The design goal is that a sync cannot lose, corrupt or misplace a file:
//!
//! - paths are validated component by component on both sides ([`paths`]) and
//!   joined with [`std::path::Path::join`], never sliced as strings;
//! - the server scans and hashes a folder once for any number of concurrent
//!   requests and caches the result until the folder changes ([`scan`]);
//! - downloads are chunked, resumable and bounded in memory ([`server`]);
//! - the client writes to a temporary file, verifies the hash and renames,
//!   keeps modes, deletes what the server no longer has, and returns an error
//!   the caller must handle ([`client`]).

pub mod client;
pub mod compress;
pub mod metrics;
pub mod paths;
mod remote;
pub mod scan;
pub mod server;
pub mod tree;
pub mod versions;

pub use client::{MirrorOptions, MirrorReport, Remote, SyncError};
pub use server::{Config, FileSyncServer};
pub use versions::SpiderVersions;

/// Generated gRPC types of the file-sync contract.
pub use crawler_proto::filesync::v1 as proto;

/// Largest chunk the server sends or accepts, whatever a client asks for.
pub const MAX_CHUNK_BYTES: u32 = 1024 * 1024;
/// Chunk size used when a client does not ask for one.
pub const DEFAULT_CHUNK_BYTES: u32 = 256 * 1024;
/// Largest chunk the server sends unless configured otherwise. Smaller
/// chunks keep less in flight per download (the chunk being read, two
/// queued, one being encoded and one in the HTTP/2 send queue) and, on
/// loopback, stream faster than 1 MiB ones.
pub const DEFAULT_MAX_SEND_CHUNK_BYTES: u32 = 128 * 1024;
/// Entries per scan chunk.
pub const SCAN_CHUNK_ENTRIES: usize = 100;
