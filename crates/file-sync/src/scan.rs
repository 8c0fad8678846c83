//! The scan cache: one walk and one hash pass per change of a spider folder,
//! however many clients ask at once.
//!
//! Each spider has a slot holding the last scan behind an async mutex. A
//! request takes the mutex, and either finds a fresh scan (served without
//! touching the disk) or makes one while the others wait on the mutex, then
//! all of them share the result: that is the single flight. A scan is fresh
//! for `ttl` after it was made or last checked, and as long as no upload has
//! swapped the folder (uploads bump the slot's generation). Once the TTL has
//! passed, the next request walks the folder with `stat` only and compares
//! a fingerprint of it; if nothing changed the old scan is kept (a
//! revalidation, no hashing); otherwise a new scan hashes only the files
//! whose size, mtime or inode changed.
//!
//! A download also checks the opened file against its scan entry, so a change
//! on disk inside the TTL is noticed there and invalidates the scan.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, RwLock};

use crate::metrics::{Metrics, add};
use crate::paths::{EscapeReason, PathEscape, is_valid_spider_name};
use crate::proto::FileEntry;
use crate::tree::{WalkEntry, WalkError, hash_file, walk};

/// Why a spider cannot be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("invalid spider name {0:?}: a name is 1 to 64 letters, digits, '-' or '_'")]
    InvalidName(String),
    #[error("spider {0:?} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Walk(#[from] WalkError),
    #[error("scan task failed: {0}")]
    Task(String),
}

impl From<PathEscape> for ScanError {
    fn from(e: PathEscape) -> Self {
        Self::Walk(WalkError::Escape(e))
    }
}

/// One entry of a scan, with what is needed to recognise the file later.
#[derive(Debug, Clone)]
pub struct ScannedEntry {
    pub walk: WalkEntry,
    /// Hex BLAKE3; empty for folders.
    pub hash: String,
}

impl ScannedEntry {
    pub fn to_proto(&self) -> FileEntry {
        FileEntry {
            path: self.walk.rel.clone(),
            is_dir: self.walk.is_dir,
            size: self.walk.size,
            mtime_ms: (self.walk.mtime_ns / 1_000_000) as i64,
            mode: self.walk.mode,
            hash: self.hash.clone(),
        }
    }
}

/// The listing of one spider folder at one moment.
#[derive(Debug)]
pub struct Scan {
    /// Digest of the listing (paths, kinds, modes, hashes): equal content,
    /// equal id.
    pub id: String,
    pub entries: Vec<ScannedEntry>,
    pub total_bytes: u64,
    by_path: HashMap<String, usize>,
    fingerprint: blake3::Hash,
    generation: u64,
}

impl Scan {
    pub fn get(&self, path: &str) -> Option<&ScannedEntry> {
        self.by_path.get(path).map(|&i| &self.entries[i])
    }
}

struct Cached {
    scan: Arc<Scan>,
    checked_at: Instant,
}

/// Per-spider state.
#[derive(Default)]
pub struct Slot {
    cache: Mutex<Option<Cached>>,
    /// Held for reading while walking the folder or opening a file in it,
    /// and for writing while an upload swaps the folder, so no reader ever
    /// sees the moment between the two renames.
    pub swap: RwLock<()>,
    generation: AtomicU64,
}

/// All spiders under one root, with their cached scans.
pub struct Spiders {
    root: PathBuf,
    ttl: Duration,
    metrics: Arc<Metrics>,
    slots: std::sync::Mutex<HashMap<String, Arc<Slot>>>,
}

impl Spiders {
    /// `root` must exist; it is canonicalised so containment checks hold.
    pub fn new(root: &Path, ttl: Duration, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        Ok(Self {
            root: root.canonicalize()?,
            ttl,
            metrics,
            slots: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn slot(&self, spider: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(spider.to_owned()).or_default().clone()
    }

    /// The folder of a spider, refusing a name that is not valid and a
    /// spider folder that is a link leading outside the root.
    pub fn spider_dir(&self, spider: &str) -> Result<PathBuf, ScanError> {
        if !is_valid_spider_name(spider) {
            return Err(ScanError::InvalidName(spider.to_owned()));
        }
        let dir = self.root.join(spider);
        let meta = match std::fs::symlink_metadata(&dir) {
            Ok(meta) => meta,
            Err(_) => return Err(ScanError::NotFound(spider.to_owned())),
        };
        if meta.file_type().is_symlink() {
            let target = dir
                .canonicalize()
                .map_err(|_| ScanError::NotFound(spider.to_owned()))?;
            if !target.starts_with(&self.root) {
                return Err(PathEscape::new(spider, EscapeReason::Symlink).into());
            }
            if !target.is_dir() {
                return Err(ScanError::NotFound(spider.to_owned()));
            }
            return Ok(target);
        }
        if !meta.is_dir() {
            return Err(ScanError::NotFound(spider.to_owned()));
        }
        Ok(dir)
    }

    /// Forgets the cached scan of a spider: the next request scans again.
    pub fn invalidate(&self, spider: &str) {
        self.slot(spider).generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The current scan of a spider, shared by all concurrent callers.
    pub async fn scan(&self, spider: &str) -> Result<Arc<Scan>, ScanError> {
        add(&self.metrics.scan_requests, 1);
        let slot = self.slot(spider);
        let mut cached = slot.cache.lock().await;
        if let Some(c) = cached.as_ref()
            && c.scan.generation == slot.generation.load(Ordering::SeqCst)
            && c.checked_at.elapsed() < self.ttl
        {
            add(&self.metrics.scan_cache_hits, 1);
            return Ok(c.scan.clone());
        }
        // The folder is looked up under the read lock: an upload swapping it
        // in holds the write lock, so we never see it missing in between.
        let _reading = slot.swap.read().await;
        let dir = self.spider_dir(spider)?;
        let generation = slot.generation.load(Ordering::SeqCst);
        let previous = cached
            .as_ref()
            .filter(|c| c.scan.generation == generation)
            .map(|c| c.scan.clone());
        let metrics = self.metrics.clone();
        let outcome =
            tokio::task::spawn_blocking(move || build_scan(&dir, previous, generation, &metrics))
                .await
                .map_err(|e| ScanError::Task(e.to_string()))??;
        let scan = match outcome {
            Outcome::Unchanged(scan) => {
                add(&self.metrics.scan_revalidations, 1);
                scan
            }
            Outcome::New(scan) => {
                tracing::debug!(spider, scan_id = %scan.id, entries = scan.entries.len(), "scanned spider");
                Arc::new(scan)
            }
        };
        *cached = Some(Cached {
            scan: scan.clone(),
            checked_at: Instant::now(),
        });
        Ok(scan)
    }
}

enum Outcome {
    Unchanged(Arc<Scan>),
    New(Scan),
}

fn fingerprint(entries: &[WalkEntry]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(e.rel.as_bytes());
        h.update(&[0, e.is_dir as u8]);
        h.update(&e.size.to_le_bytes());
        h.update(&e.mtime_ns.to_le_bytes());
        h.update(&e.mode.to_le_bytes());
        h.update(&e.dev.to_le_bytes());
        h.update(&e.ino.to_le_bytes());
    }
    h.finalize()
}

fn build_scan(
    dir: &Path,
    previous: Option<Arc<Scan>>,
    generation: u64,
    metrics: &Metrics,
) -> Result<Outcome, ScanError> {
    let walked = walk(dir)?;
    let fp = fingerprint(&walked);
    if let Some(prev) = &previous
        && prev.fingerprint == fp
    {
        // Same generation, same stat of every entry: the hashes still hold.
        return Ok(Outcome::Unchanged(prev.clone()));
    }
    let previous = previous.as_deref();
    add(&metrics.scans, 1);
    let mut hashed_any = false;
    let mut entries = Vec::with_capacity(walked.len());
    let mut total_bytes = 0;
    for w in walked {
        let hash = if w.is_dir {
            String::new()
        } else {
            total_bytes += w.size;
            let reuse = previous
                .and_then(|p| p.get(&w.rel))
                .filter(|p| {
                    !p.walk.is_dir
                        && p.walk.size == w.size
                        && p.walk.mtime_ns == w.mtime_ns
                        && p.walk.dev == w.dev
                        && p.walk.ino == w.ino
                })
                .map(|p| p.hash.clone());
            match reuse {
                Some(hash) => hash,
                None => {
                    hashed_any = true;
                    add(&metrics.files_hashed, 1);
                    add(&metrics.bytes_hashed, w.size);
                    hash_file(&w.abs).map_err(|source| WalkError::Io {
                        path: w.abs.clone(),
                        source,
                    })?
                }
            }
        };
        entries.push(ScannedEntry { walk: w, hash });
    }
    if hashed_any {
        add(&metrics.hash_passes, 1);
    }
    let mut id = blake3::Hasher::new();
    for e in &entries {
        id.update(e.walk.rel.as_bytes());
        id.update(&[0, e.walk.is_dir as u8]);
        id.update(&e.walk.mode.to_le_bytes());
        id.update(e.hash.as_bytes());
        id.update(&[0]);
    }
    let by_path = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.walk.rel.clone(), i))
        .collect();
    Ok(Outcome::New(Scan {
        id: id.finalize().to_hex().to_string(),
        entries,
        total_bytes,
        by_path,
        fingerprint: fp,
        generation,
    }))
}
