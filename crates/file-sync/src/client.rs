//! The client side: mirror a spider folder from file-sync into a local
//! folder, publish one, list them.
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
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::retry::{RetryPolicy, Transient};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::compress::decode;
use crate::paths::{
    EscapeReason, PathEscape, is_hex_hash, is_valid_spider_name, join_under, parent_of,
    validate_relative,
};
use crate::proto::file_sync_client::FileSyncClient;
use crate::proto::{
    Compression, DownloadRequest, FileEntry, ListSpidersRequest, ScanRequest, StatsRequest,
    StatsResponse, UploadBegin, UploadCommit, UploadFile, UploadRequest, download_chunk,
    upload_request,
};
pub use crate::remote::Remote;
use crate::{DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES};

/// Why a sync failed. A task that needed the files must fail with it.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("invalid spider name {0:?}: only letters, digits, '-' and '_' are allowed")]
    InvalidSpiderName(String),
    #[error(transparent)]
    PathEscapesRoot(#[from] PathEscape),
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("transport to file-sync failed: {0}")]
    Transport(String),
    #[error("file-sync answered {code:?}: {message}")]
    Server { code: tonic::Code, message: String },
    #[error("spider {0:?} does not exist on the server")]
    SpiderNotFound(String),
    #[error("{path}: content hash {actual} does not match the expected {expected}")]
    HashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path} changed on the server during the sync")]
    RemoteChanged { path: String },
    #[error("malformed answer from file-sync: {0}")]
    Protocol(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether trying again may succeed: the sync's own rule, applied by the
/// one retry policy of every service.
impl Transient for SyncError {
    fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            Self::Transport(_) | Self::RemoteChanged { .. } | Self::HashMismatch { .. } => true,
            Self::Server { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::Unknown
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Internal
            ),
            _ => false,
        }
    }
}

impl SyncError {
    fn from_status(status: tonic::Status, spider: &str) -> Self {
        match ErrorCode::of(&status) {
            Some(ErrorCode::UnknownSpider) => Self::SpiderNotFound(spider.to_owned()),
            Some(ErrorCode::FileChanged) => Self::RemoteChanged {
                path: status.message().to_owned(),
            },
            _ => Self::Server {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SyncError {
    let path = path.to_path_buf();
    move |source| SyncError::Io { op, path, source }
}

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

/// What [`push_folder`] published.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub scan_id: String,
    pub entries: u64,
    pub bytes: u64,
}

async fn connect(remote: &Remote, timeout: Duration) -> Result<FileSyncClient<Channel>, SyncError> {
    let endpoint = remote.url();
    let ep = remote.endpoint()?;
    let channel = ep
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .connect()
        .await
        .map_err(|e| SyncError::Transport(format!("connecting to {endpoint}: {e}")))?;
    let limit = 2 * MAX_CHUNK_BYTES as usize + 64 * 1024;
    Ok(FileSyncClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit))
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Protocol(format!("blocking task failed: {e}")))?
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

struct DownloadCtx {
    client: FileSyncClient<Channel>,
    spider: String,
    work: PathBuf,
    options: MirrorOptions,
    /// Names in the work folder when the downloads started.
    partials: HashSet<String>,
}

struct FileFetched {
    downloaded: u64,
    resumed: u64,
    wire: u64,
    dest: PathBuf,
}

/// A partial download in progress: the file, and the hash of what it holds.
struct Partial {
    file: std::fs::File,
    hasher: blake3::Hasher,
    len: u64,
}

/// A data chunk as received, not yet decoded.
struct RawChunk {
    data: Vec<u8>,
    compression: Compression,
    raw_len: usize,
}

type DownloadStream = tonic::Streaming<crate::proto::DownloadChunk>;

/// Most bytes of already received chunks written by one blocking task.
const WRITE_BATCH_BYTES: usize = 1024 * 1024;

impl DownloadCtx {
    /// The partial file of one version of one path: resumable across runs,
    /// never shared by two different files.
    fn partial_name(entry: &FileEntry) -> String {
        let path_id = blake3::hash(entry.path.as_bytes()).to_hex();
        format!("{}-{}.partial", &path_id[..16], &entry.hash[..32])
    }

    async fn fetch(&self, entry: &FileEntry, dest: &Path) -> Result<FileFetched, SyncError> {
        let name = Self::partial_name(entry);
        let partial_path = self.work.join(&name);
        // A file that fits in one chunk and has no partial to resume from is
        // received whole in memory (one chunk, as for any download) and
        // written, verified and renamed in one step.
        if entry.size <= u64::from(self.options.chunk_size.clamp(4096, MAX_CHUNK_BYTES))
            && !self.partials.contains(&name)
        {
            return self.fetch_small(entry, dest, partial_path).await;
        }
        let size = entry.size;
        let partial = {
            let p = partial_path.clone();
            blocking(move || open_partial(&p, size)).await?
        };
        let resumed = partial.len;
        let (partial, wire) = if partial.len < size {
            self.receive(entry, partial).await?
        } else {
            (partial, 0)
        };
        let expected = entry.hash.clone();
        let (p, d, mode, path) = (
            partial_path.clone(),
            dest.to_path_buf(),
            entry.mode & 0o777,
            entry.path.clone(),
        );
        let sync = self.options.durability == Durability::EachFile;
        blocking(move || {
            verify_partial(partial.hasher, &p, &path, &expected)?;
            finish_file(partial.file, &p, &d, mode, sync)
        })
        .await?;
        Ok(FileFetched {
            downloaded: size - resumed,
            resumed,
            wire,
            dest: dest.to_path_buf(),
        })
    }

    /// Downloads a small file whole: nothing touches the disk until all of
    /// it arrived and its hash verified.
    async fn fetch_small(
        &self,
        entry: &FileEntry,
        dest: &Path,
        partial_path: PathBuf,
    ) -> Result<FileFetched, SyncError> {
        let mut stream = self.start_download(entry, 0).await?;
        let mut chunks = Vec::new();
        let mut received = 0u64;
        let mut wire = 0u64;
        while let Some(chunk) = next_chunk(&mut stream, &self.spider, entry, received).await? {
            received += chunk.raw_len as u64;
            wire += chunk.data.len() as u64;
            chunks.push(chunk);
        }
        if received != entry.size {
            return Err(SyncError::Transport(format!(
                "{}: download ended at {received} of {} bytes",
                entry.path, entry.size
            )));
        }
        let (d, mode, path, expected) = (
            dest.to_path_buf(),
            entry.mode & 0o777,
            entry.path.clone(),
            entry.hash.clone(),
        );
        let sync = self.options.durability == Durability::EachFile;
        blocking(move || {
            let mut content = Vec::with_capacity(chunks.len());
            let mut hasher = blake3::Hasher::new();
            for chunk in chunks {
                let raw = decode(chunk.data, chunk.compression, chunk.raw_len)
                    .map_err(|e| SyncError::Protocol(format!("{path}: {e}")))?;
                hasher.update(&raw);
                content.push(raw);
            }
            let actual = hasher.finalize().to_hex().to_string();
            if actual != expected {
                return Err(SyncError::HashMismatch {
                    path,
                    expected,
                    actual,
                });
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&partial_path)
                .map_err(io("opening", &partial_path))?;
            for raw in &content {
                file.write_all(raw).map_err(io("writing", &partial_path))?;
            }
            finish_file(file, &partial_path, &d, mode, sync)
        })
        .await?;
        if let Some(progress) = &self.options.progress {
            let _ = progress
                .send(Progress {
                    path: entry.path.clone(),
                    written: entry.size,
                    total: entry.size,
                })
                .await;
        }
        Ok(FileFetched {
            downloaded: entry.size,
            resumed: 0,
            wire,
            dest: dest.to_path_buf(),
        })
    }

    /// Asks for `entry` from `offset` and checks the header that comes first.
    async fn start_download(
        &self,
        entry: &FileEntry,
        offset: u64,
    ) -> Result<DownloadStream, SyncError> {
        let mut client = self.client.clone();
        let accept = if self.options.compression {
            vec![Compression::Zstd as i32]
        } else {
            Vec::new()
        };
        let status = |s| SyncError::from_status(s, &self.spider);
        let mut stream = client
            .stream_file_download(DownloadRequest {
                spider: self.spider.clone(),
                path: entry.path.clone(),
                offset,
                chunk_size: self.options.chunk_size,
                accept,
                expected_hash: entry.hash.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        match stream.message().await.map_err(status)? {
            Some(crate::proto::DownloadChunk {
                kind: Some(download_chunk::Kind::Header(h)),
            }) => {
                if h.hash != entry.hash || h.total_size != entry.size {
                    return Err(SyncError::RemoteChanged {
                        path: entry.path.clone(),
                    });
                }
                if h.offset != offset {
                    return Err(SyncError::Protocol(format!(
                        "{}: asked for offset {offset}, got {}",
                        entry.path, h.offset
                    )));
                }
            }
            Some(_) => {
                return Err(SyncError::Protocol(format!(
                    "{}: download did not start with a header",
                    entry.path
                )));
            }
            None => return Err(SyncError::Transport("download ended at once".into())),
        }
        Ok(stream)
    }

    /// Streams the rest of the file into the partial. On error the bytes
    /// already written stay on disk for the next attempt to resume from.
    async fn receive(
        &self,
        entry: &FileEntry,
        mut partial: Partial,
    ) -> Result<(Partial, u64), SyncError> {
        let mut stream = self.start_download(entry, partial.len).await?;
        let mut wire = 0u64;
        let mut ended = false;
        while !ended {
            let Some(first) = next_chunk(&mut stream, &self.spider, entry, partial.len).await?
            else {
                break;
            };
            // Chunks that already arrived are written by the same blocking
            // task (up to WRITE_BATCH_BYTES), rather than one task each.
            let mut next_at = partial.len + first.raw_len as u64;
            let mut batch_bytes = first.raw_len;
            let mut batch = vec![first];
            let mut failed = None;
            while batch_bytes < WRITE_BATCH_BYTES {
                match next_chunk(&mut stream, &self.spider, entry, next_at).now_or_never() {
                    None => break,
                    Some(Ok(Some(chunk))) => {
                        next_at += chunk.raw_len as u64;
                        batch_bytes += chunk.raw_len;
                        batch.push(chunk);
                    }
                    Some(Ok(None)) => {
                        ended = true;
                        break;
                    }
                    // What arrived before the failure is still written, for
                    // the next attempt to resume after it.
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            wire += batch.iter().map(|c| c.data.len() as u64).sum::<u64>();
            let lens: Vec<usize> = batch.iter().map(|c| c.raw_len).collect();
            let path = entry.path.clone();
            let mut p = partial;
            partial = blocking(move || {
                for chunk in batch {
                    let raw = decode(chunk.data, chunk.compression, chunk.raw_len)
                        .map_err(|e| SyncError::Protocol(format!("{path}: {e}")))?;
                    p.file.write_all(&raw).map_err(|source| SyncError::Io {
                        op: "writing",
                        path: PathBuf::from(&path),
                        source,
                    })?;
                    p.hasher.update(&raw);
                    p.len += raw.len() as u64;
                }
                Ok(p)
            })
            .await?;
            if let Some(progress) = &self.options.progress {
                let mut written = partial.len - lens.iter().map(|&n| n as u64).sum::<u64>();
                for n in lens {
                    written += n as u64;
                    let _ = progress
                        .send(Progress {
                            path: entry.path.clone(),
                            written,
                            total: entry.size,
                        })
                        .await;
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if partial.len != entry.size {
            return Err(SyncError::Transport(format!(
                "{}: download ended at {} of {} bytes",
                entry.path, partial.len, entry.size
            )));
        }
        Ok((partial, wire))
    }
}

/// The next data chunk of a download, checked to start at `at` and to stay
/// within the file; `None` at the end of the stream.
async fn next_chunk(
    stream: &mut DownloadStream,
    spider: &str,
    entry: &FileEntry,
    at: u64,
) -> Result<Option<RawChunk>, SyncError> {
    let Some(msg) = stream
        .message()
        .await
        .map_err(|s| SyncError::from_status(s, spider))?
    else {
        return Ok(None);
    };
    let Some(download_chunk::Kind::Data(chunk)) = msg.kind else {
        return Err(SyncError::Protocol(format!(
            "{}: unexpected message in a download",
            entry.path
        )));
    };
    if chunk.offset != at
        || chunk.raw_len > MAX_CHUNK_BYTES
        || at + chunk.raw_len as u64 > entry.size
    {
        return Err(SyncError::Protocol(format!(
            "{}: chunk at {} of {} bytes does not follow offset {at}",
            entry.path, chunk.offset, chunk.raw_len
        )));
    }
    let compression = Compression::try_from(chunk.compression)
        .map_err(|_| SyncError::Protocol(format!("unknown compression {}", chunk.compression)))?;
    Ok(Some(RawChunk {
        data: chunk.data,
        compression,
        raw_len: chunk.raw_len as usize,
    }))
}

/// Opens (or creates) the partial file of a download; what it already holds
/// is hashed so the final check covers the whole file.
fn open_partial(path: &Path, size: u64) -> Result<Partial, SyncError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io("opening", path))?;
    let len = file.metadata().map_err(io("inspecting", path))?.len();
    let mut hasher = blake3::Hasher::new();
    if len > size {
        file.set_len(0).map_err(io("truncating", path))?;
        return Ok(Partial {
            file,
            hasher,
            len: 0,
        });
    }
    if len == 0 {
        return Ok(Partial {
            file,
            hasher,
            len: 0,
        });
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    Ok(Partial {
        file,
        hasher,
        len: read,
    })
}

/// Checks the hash of a complete partial. A partial that does not verify is
/// deleted, so the next attempt starts over.
fn verify_partial(
    hasher: blake3::Hasher,
    partial_path: &Path,
    rel: &str,
    expected: &str,
) -> Result<(), SyncError> {
    let actual = hasher.finalize().to_hex().to_string();
    if actual != expected {
        let _ = std::fs::remove_file(partial_path);
        return Err(SyncError::HashMismatch {
            path: rel.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Flushes a verified partial if asked, sets its mode and renames it into
/// place.
fn finish_file(
    file: std::fs::File,
    partial_path: &Path,
    dest: &Path,
    mode: u32,
    sync: bool,
) -> Result<(), SyncError> {
    if sync {
        file.sync_all().map_err(io("syncing", partial_path))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", partial_path))?;
    drop(file);
    match std::fs::rename(partial_path, dest) {
        Ok(()) => Ok(()),
        // The target is on another file system than its parent (a mount
        // point): copy beside the destination, then rename there.
        Err(e) if e.raw_os_error() == Some(18) => {
            let tmp = dest.with_file_name(format!(
                ".{}.filesync-tmp",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
            ));
            std::fs::copy(partial_path, &tmp).map_err(io("copying to", &tmp))?;
            if sync {
                std::fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .map_err(io("syncing", &tmp))?;
            }
            std::fs::rename(&tmp, dest).map_err(io("renaming into", dest))?;
            let _ = std::fs::remove_file(partial_path);
            Ok(())
        }
        Err(e) => Err(io("renaming into", dest)(e)),
    }
}

/// Publishes `dir` as spider `spider`: the server writes it aside and swaps
/// it in whole once every file arrived and verified.
#[must_use = "a failed push published nothing"]
pub async fn push_folder(
    remote: &Remote,
    spider: &str,
    dir: &Path,
) -> Result<PushReport, SyncError> {
    if !is_valid_spider_name(spider) {
        return Err(SyncError::InvalidSpiderName(spider.to_owned()));
    }
    let root = tokio::fs::canonicalize(dir)
        .await
        .map_err(io("resolving", dir))?;
    let entries = {
        let root = root.clone();
        blocking(move || {
            let walked = crate::tree::walk(&root).map_err(|e| match e {
                crate::tree::WalkError::Escape(e) => SyncError::PathEscapesRoot(e),
                crate::tree::WalkError::Io { path, source } => SyncError::Io {
                    op: "reading",
                    path,
                    source,
                },
                other => SyncError::Protocol(other.to_string()),
            })?;
            walked
                .into_iter()
                .map(|w| {
                    let hash = if w.is_dir {
                        String::new()
                    } else {
                        crate::tree::hash_file(&w.abs).map_err(io("hashing", &w.abs))?
                    };
                    Ok((w, hash))
                })
                .collect::<Result<Vec<_>, SyncError>>()
        })
        .await?
    };
    let mut client = connect(remote, Duration::from_secs(5)).await?;
    let (tx, rx) = mpsc::channel::<UploadRequest>(4);
    let total = entries.len() as u64;
    // Reads files on a blocking thread, a chunk at a time; the channel keeps
    // memory bounded whatever the folder size.
    let producer = tokio::task::spawn_blocking(move || -> Result<(), SyncError> {
        let send = |kind| {
            tx.blocking_send(UploadRequest { kind: Some(kind) })
                .map_err(|_| SyncError::Transport("upload stream closed".into()))
        };
        send(upload_request::Kind::Begin(UploadBegin {
            spider: String::new(),
        }))?;
        for (w, hash) in entries {
            send(upload_request::Kind::File(UploadFile {
                path: w.rel.clone(),
                is_dir: w.is_dir,
                mode: w.mode,
                size: w.size,
                hash,
            }))?;
            if w.is_dir {
                continue;
            }
            let mut file = std::fs::File::open(&w.abs).map_err(io("opening", &w.abs))?;
            let mut left = w.size;
            while left > 0 {
                let mut buf = vec![0u8; (left.min(DEFAULT_CHUNK_BYTES as u64)) as usize];
                file.read_exact(&mut buf).map_err(io("reading", &w.abs))?;
                left -= buf.len() as u64;
                send(upload_request::Kind::Data(buf))?;
            }
        }
        send(upload_request::Kind::Commit(UploadCommit {
            entries: total,
        }))
    });
    let _ = &producer;
    let spider_owned = spider.to_owned();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |mut m| {
        if let Some(upload_request::Kind::Begin(b)) = &mut m.kind {
            b.spider = spider_owned.clone();
        }
        m
    });
    let answer = client.upload(stream).await;
    let produced = producer
        .await
        .map_err(|e| SyncError::Protocol(format!("upload task failed: {e}")))?;
    let response = match (answer, produced) {
        (Ok(r), Ok(())) => r.into_inner(),
        // A local failure explains the server's complaint about a short upload.
        (_, Err(local)) => return Err(local),
        (Err(s), Ok(())) => return Err(SyncError::from_status(s, spider)),
    };
    Ok(PushReport {
        scan_id: response.scan_id,
        entries: response.entries,
        bytes: response.bytes,
    })
}

/// Names of the spiders the server holds, sorted.
#[must_use = "the list is the point of the call"]
pub async fn list_spiders(remote: &Remote) -> Result<Vec<String>, SyncError> {
    let mut client = connect(remote, Duration::from_secs(5)).await?;
    let response = client
        .list_spiders(ListSpidersRequest {})
        .await
        .map_err(|s| SyncError::from_status(s, ""))?;
    Ok(response
        .into_inner()
        .spiders
        .into_iter()
        .map(|s| s.name)
        .collect())
}

/// The server's counters.
#[must_use = "the counters are the point of the call"]
pub async fn stats(remote: &Remote) -> Result<StatsResponse, SyncError> {
    let mut client = connect(remote, Duration::from_secs(5)).await?;
    Ok(client
        .stats(StatsRequest {})
        .await
        .map_err(|s| SyncError::from_status(s, ""))?
        .into_inner())
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
    fn transient_and_fatal_errors_are_told_apart() {
        assert!(SyncError::Transport("x".into()).is_transient());
        assert!(
            SyncError::Server {
                code: tonic::Code::Unavailable,
                message: String::new()
            }
            .is_transient()
        );
        assert!(
            !SyncError::PathEscapesRoot(PathEscape::new("..", EscapeReason::ParentDir))
                .is_transient()
        );
        assert!(!SyncError::SpiderNotFound("x".into()).is_transient());
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
