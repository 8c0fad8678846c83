//! Mirroring a spider folder.
//!
//! [`mirror`] makes `target` an exact copy of the server's spider folder:
//!
//! - every path from the server is validated ([`validate_remote_entry`]) and
//!   joined component by component under `target`; one bad path fails the
//!   whole sync before anything is written;
//! - local entries the server does not have (and any local symbolic link)
//!   are deleted first, so nothing is ever written through a link;
//! - files whose size and hash already match are kept (their mode fixed if
//!   needed); others are downloaded to a partial file beside `target`
//!   (`.<target>.filesync/`), verified, given their mode, and renamed into
//!   place, so a reader never sees half a file;
//! - an interrupted download keeps its partial file and the next attempt
//!   resumes from its length; the hash of the whole file is checked at the
//!   end, and a partial that does not verify is dropped and fetched again;
//! - transient failures (connection, server restart, a file changing on the
//!   server) are retried with exponential backoff and jitter;
//! - two syncs into the same folder (in this process or another) take turns
//!   on a file lock.
//!
//! Folders are created with at least `rwx` for the owner, so a later sync can
//! always update them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crawler_core::retry::{RetryPolicy, Transient};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::download::{DownloadCtx, FileFetched};
use super::{Remote, SyncError, blocking, connect, io};
use crate::DEFAULT_CHUNK_BYTES;
use crate::paths::{
    EscapeReason, PathEscape, is_hex_hash, is_valid_spider_name, join_under, parent_of,
    validate_relative,
};
use crate::proto::file_sync_client::FileSyncClient;
use crate::proto::{FileEntry, ScanRequest};

/// What a mirror does and how hard it tries.
#[derive(Debug, Clone)]
pub struct MirrorOptions {
    /// Download chunk size asked for (the server caps it).
    pub chunk_size: u32,
    /// Files downloaded at once over the one connection.
    pub parallel_downloads: usize,
    /// How transient failures are retried before one is returned.
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Accept zstd-compressed chunks (the server compresses only where it pays).
    pub compression: bool,
    /// Receives an event after every chunk written. The sync waits while
    /// this channel is full, which lets a caller (or a test) pace it.
    pub progress: Option<mpsc::Sender<Progress>>,
    /// When downloaded files are flushed to disk.
    pub durability: Durability,
}

/// When a mirror waits for the disk. Whatever the choice, a file is renamed
/// into place only once its whole content is written and its hash verified,
/// so a reader never sees half a file; and every sync checks the hash of the
/// files already present, so a file damaged by a crash is fetched again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each file is flushed to disk before it is renamed into place, and the
    /// folders that received files are flushed at the end.
    EachFile,
    /// Files are renamed into place as they arrive; before the mirror returns,
    /// every file it wrote and the folders that received them are flushed.
    /// As safe as `EachFile` once the mirror returned, much cheaper for many
    /// small files.
    #[default]
    AtEnd,
    /// Nothing is flushed: the system writes back when it likes.
    None,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_BYTES,
            parallel_downloads: 4,
            retry: RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5))
                .with_retries(4),
            connect_timeout: Duration::from_secs(5),
            compression: true,
            progress: None,
            durability: Durability::default(),
        }
    }
}

/// One chunk of one file written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub path: String,
    /// Bytes of the file now on disk.
    pub written: u64,
    pub total: u64,
}

/// What a mirror did, summed over its attempts.
#[must_use]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorReport {
    /// Scan id of the version now in the target.
    pub scan_id: String,
    pub files_downloaded: u64,
    /// Files already present with the right hash.
    pub files_skipped: u64,
    /// Local files, folders and links removed because the server lacks them.
    pub entries_deleted: u64,
    pub dirs_created: u64,
    /// Files or folders whose mode alone was corrected.
    pub modes_fixed: u64,
    /// File bytes received in this sync.
    pub bytes_downloaded: u64,
    /// Bytes taken from partial files left by an interrupted sync.
    pub bytes_resumed: u64,
    /// Payload bytes received (after compression).
    pub wire_bytes: u64,
    pub attempts: u32,
}

/// Makes `target` an exact copy of the spider `spider` on the server at
/// `remote`. See the module documentation for the guarantees.
#[must_use = "a failed mirror must fail the task that needed the files"]
pub async fn mirror(
    remote: &Remote,
    spider: &str,
    target: &Path,
    options: &MirrorOptions,
) -> Result<MirrorReport, SyncError> {
    if !is_valid_spider_name(spider) {
        return Err(SyncError::InvalidSpiderName(spider.to_owned()));
    }
    tokio::fs::create_dir_all(target)
        .await
        .map_err(io("creating", target))?;
    let target = tokio::fs::canonicalize(target)
        .await
        .map_err(io("resolving", target))?;
    let work = work_dir(&target)?;
    tokio::fs::create_dir_all(&work)
        .await
        .map_err(io("creating", &work))?;
    let _lock = lock_folder(&work).await?;
    let mut report = MirrorReport::default();
    let mut attempt = 0;
    let mut backoff = options.retry.backoff();
    loop {
        attempt += 1;
        report.attempts = attempt;
        match mirror_once(remote, spider, &target, &work, options, &mut report).await {
            Ok(()) => {
                tracing::info!(
                    spider,
                    scan_id = %report.scan_id,
                    downloaded = report.files_downloaded,
                    skipped = report.files_skipped,
                    deleted = report.entries_deleted,
                    "spider mirrored"
                );
                return Ok(report);
            }
            Err(e) if e.is_transient() => {
                let Some(delay) = backoff.next_delay() else {
                    return Err(e);
                };
                tracing::warn!(spider, attempt, error = %e, ?delay, "sync attempt failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `.<name>.filesync` beside the target: holds the lock and partial files,
/// on the same file system as the target so a rename moves them in.
fn work_dir(target: &Path) -> Result<PathBuf, SyncError> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(SyncError::Io {
            op: "using as a target",
            path: target.to_path_buf(),
            source: std::io::Error::other("the target must not be a file-system root"),
        });
    };
    let mut work_name = std::ffi::OsString::from(".");
    work_name.push(name);
    work_name.push(".filesync");
    Ok(parent.join(work_name))
}

async fn lock_folder(work: &Path) -> Result<std::fs::File, SyncError> {
    let path = work.join("lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        file.lock().map_err(io("locking", &path))?;
        Ok(file)
    })
    .await
    .map_err(|e| SyncError::Protocol(format!("lock task failed: {e}")))?
}

/// Checks one entry of a server listing before anything is done with it.
/// A path that could leave the target (`..`, absolute, empty, NUL, ...)
/// is refused with [`SyncError::PathEscapesRoot`].
pub fn validate_remote_entry(entry: &FileEntry) -> Result<(), SyncError> {
    validate_relative(&entry.path)?;
    if !entry.is_dir && !is_hex_hash(&entry.hash) {
        return Err(SyncError::Protocol(format!(
            "{}: {:?} is not a BLAKE3 hash",
            entry.path, entry.hash
        )));
    }
    Ok(())
}

/// Fetches and checks a whole listing: every path valid, no duplicates,
/// every parent listed as a folder before its children, totals matching.
pub(crate) async fn fetch_listing(
    client: &mut FileSyncClient<Channel>,
    spider: &str,
) -> Result<(Vec<FileEntry>, String), SyncError> {
    let mut stream = client
        .stream_file_scan(ScanRequest {
            spider: spider.to_owned(),
            path: String::new(),
        })
        .await
        .map_err(|s| SyncError::from_status(s, spider))?
        .into_inner();
    let mut entries: Vec<FileEntry> = Vec::new();
    let mut kinds: HashMap<String, bool> = HashMap::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| SyncError::from_status(s, spider))?
    {
        for entry in chunk.entries {
            validate_remote_entry(&entry)?;
            if let Some(parent) = parent_of(&entry.path)
                && kinds.get(parent) != Some(&true)
            {
                return Err(SyncError::Protocol(format!(
                    "{} listed before its folder",
                    entry.path
                )));
            }
            if kinds.insert(entry.path.clone(), entry.is_dir).is_some() {
                return Err(SyncError::Protocol(format!("{} listed twice", entry.path)));
            }
            entries.push(entry);
        }
        if let Some(summary) = chunk.summary {
            if summary.total_entries != entries.len() as u64 {
                return Err(SyncError::Protocol(format!(
                    "listing announced {} entries, {} came",
                    summary.total_entries,
                    entries.len()
                )));
            }
            return Ok((entries, summary.scan_id));
        }
    }
    Err(SyncError::Transport(
        "listing ended without its summary".into(),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalKind {
    Dir,
    File,
    /// A link, fifo, socket or device: never kept.
    Other,
}

/// What is in the target now, without following any link. Names that are
/// not UTF-8 cannot be on the server, so they are returned for deletion.
fn local_listing(
    target: &Path,
) -> Result<BTreeMap<PathBuf, (Option<String>, LocalKind)>, SyncError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(target.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let item = item.map_err(io("listing", &dir))?;
            let abs = item.path();
            let kind = item.file_type().map_err(io("inspecting", &abs))?;
            let kind = if kind.is_dir() {
                LocalKind::Dir
            } else if kind.is_file() {
                LocalKind::File
            } else {
                LocalKind::Other
            };
            let rel = item.file_name().to_str().map(|name| {
                if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}/{name}")
                }
            });
            if kind == LocalKind::Dir
                && let Some(rel) = &rel
            {
                stack.push((abs.clone(), rel.clone()));
            }
            out.insert(abs, (rel, kind));
        }
    }
    Ok(out)
}

async fn mirror_once(
    remote: &Remote,
    spider: &str,
    target: &Path,
    work: &Path,
    options: &MirrorOptions,
    report: &mut MirrorReport,
) -> Result<(), SyncError> {
    let mut client = connect(remote, options.connect_timeout).await?;
    let (entries, scan_id) = fetch_listing(&mut client, spider).await?;
    let remote: HashMap<&str, &FileEntry> = entries.iter().map(|e| (e.path.as_str(), e)).collect();

    // 1. Delete what the server does not have, links always, and anything
    //    of the wrong kind; deepest first.
    let local = {
        let target = target.to_path_buf();
        blocking(move || local_listing(&target)).await?
    };
    let mut doomed: Vec<(PathBuf, LocalKind)> = local
        .iter()
        .filter(|(_, (rel, kind))| {
            let wanted = rel.as_deref().and_then(|r| remote.get(r));
            match (wanted, kind) {
                (_, LocalKind::Other) | (None, _) => true,
                (Some(e), LocalKind::Dir) => !e.is_dir,
                (Some(e), LocalKind::File) => e.is_dir,
            }
        })
        .map(|(abs, (_, kind))| (abs.clone(), *kind))
        .collect();
    doomed.sort_by(|a, b| b.0.cmp(&a.0));
    for (abs, kind) in doomed {
        let removed = if kind == LocalKind::Dir {
            tokio::fs::remove_dir_all(&abs).await
        } else {
            tokio::fs::remove_file(&abs).await
        };
        match removed {
            Ok(()) => report.entries_deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("deleting", &abs)(e)),
        }
    }

    // 2. Folders, parents first (the listing is sorted that way).
    for entry in entries.iter().filter(|e| e.is_dir) {
        let abs = join_under(target, &entry.path)?;
        let mode = entry.mode & 0o777 | 0o700;
        match tokio::fs::symlink_metadata(&abs).await {
            Ok(meta) if meta.is_dir() => {
                if meta.permissions().mode() & 0o777 != mode {
                    set_mode(&abs, mode).await?;
                    report.modes_fixed += 1;
                }
            }
            Ok(_) => {
                return Err(SyncError::PathEscapesRoot(PathEscape::new(
                    entry.path.clone(),
                    EscapeReason::Symlink,
                )));
            }
            Err(_) => {
                tokio::fs::create_dir(&abs)
                    .await
                    .map_err(io("creating", &abs))?;
                set_mode(&abs, mode).await?;
                report.dirs_created += 1;
            }
        }
    }

    // 3. Files: keep those that match, download the others. One blocking
    //    task checks them all: most are absent on a first sync, and the
    //    others are hashed one after the other at disk speed anyway.
    let files: Vec<(FileEntry, PathBuf)> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| Ok((e.clone(), join_under(target, &e.path)?)))
        .collect::<Result<_, SyncError>>()?;
    let (to_fetch, skipped, fixed) = blocking(move || {
        let (mut to_fetch, mut skipped, mut fixed) = (Vec::new(), 0u64, 0u64);
        for (entry, abs) in files {
            let matches = match std::fs::symlink_metadata(&abs) {
                Ok(meta) if meta.is_file() && meta.len() == entry.size => {
                    (crate::tree::hash_file(&abs).map_err(io("hashing", &abs))? == entry.hash)
                        .then_some(meta)
                }
                _ => None,
            };
            match matches {
                Some(meta) => {
                    if meta.permissions().mode() & 0o777 != entry.mode & 0o777 {
                        std::fs::set_permissions(
                            &abs,
                            std::fs::Permissions::from_mode(entry.mode & 0o777),
                        )
                        .map_err(io("setting the mode of", &abs))?;
                        fixed += 1;
                    }
                    skipped += 1;
                }
                None => to_fetch.push((entry, abs)),
            }
        }
        Ok((to_fetch, skipped, fixed))
    })
    .await?;
    report.files_skipped += skipped;
    report.modes_fixed += fixed;
    // Partial files left by an interrupted sync, listed once rather than
    // probed file by file.
    let partials = {
        let work = work.to_path_buf();
        blocking(move || {
            let mut names = HashSet::new();
            for item in std::fs::read_dir(&work).map_err(io("listing", &work))? {
                let item = item.map_err(io("listing", &work))?;
                if let Ok(name) = item.file_name().into_string() {
                    names.insert(name);
                }
            }
            Ok(names)
        })
        .await?
    };
    let ctx = DownloadCtx {
        client,
        spider: spider.to_owned(),
        work: work.to_path_buf(),
        options: options.clone(),
        partials,
    };
    let results: Vec<FileFetched> = futures::stream::iter(to_fetch)
        .map(|(entry, abs)| {
            let ctx = &ctx;
            async move { ctx.fetch(&entry, &abs).await }
        })
        .buffer_unordered(options.parallel_downloads.max(1))
        .try_collect()
        .await?;
    let mut written = Vec::with_capacity(results.len());
    for r in results {
        report.files_downloaded += 1;
        report.bytes_downloaded += r.downloaded;
        report.bytes_resumed += r.resumed;
        report.wire_bytes += r.wire;
        written.push(r.dest);
    }
    if options.durability != Durability::None && !written.is_empty() {
        let each_file = options.durability == Durability::EachFile;
        blocking(move || flush_to_disk(&written, !each_file)).await?;
    }
    report.scan_id = scan_id;
    Ok(())
}

/// Flushes the given files (unless `files` is false) and the folders that
/// hold them, so the renames survive a crash.
fn flush_to_disk(paths: &[PathBuf], files: bool) -> Result<(), SyncError> {
    let mut dirs = BTreeSet::new();
    for path in paths {
        if files {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io("syncing", path))?;
        }
        if let Some(parent) = path.parent() {
            dirs.insert(parent);
        }
    }
    for dir in dirs {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing", dir))?;
    }
    Ok(())
}

async fn set_mode(path: &Path, mode: u32) -> Result<(), SyncError> {
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(io("setting the mode of", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            is_dir: false,
            size: 1,
            mtime_ms: 0,
            mode: 0o644,
            hash: "a".repeat(64),
        }
    }

    #[test]
    fn remote_entries_that_escape_are_refused() {
        for bad in [
            "../x",
            "/etc/passwd",
            "",
            "a/../../b",
            "a\0b",
            "a//b",
            "./a",
            "..\\x",
        ] {
            match validate_remote_entry(&file(bad)) {
                Err(SyncError::PathEscapesRoot(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(validate_remote_entry(&file("crawlab_project/spiders/quotes.py")).is_ok());
    }

    #[test]
    fn a_file_without_a_real_hash_is_refused() {
        let mut e = file("a");
        e.hash = "../../etc".into();
        assert!(matches!(
            validate_remote_entry(&e),
            Err(SyncError::Protocol(_))
        ));
    }

    #[test]
    fn the_work_folder_is_a_hidden_sibling() {
        assert_eq!(
            work_dir(Path::new("/data/spiders/quotes")).unwrap(),
            Path::new("/data/spiders/.quotes.filesync")
        );
        assert!(work_dir(Path::new("/")).is_err());
    }
}
