//! The `file-sync` gRPC server.
//!
//! [`FileSyncServer::build`] binds first, so a test can ask for port 0 and
//! read the address back with [`FileSyncServer::local_addr`]; then
//! [`FileSyncServer::run_until_stopped`] serves until a token is cancelled.
//!
//! Besides `FileSync` the server answers the standard gRPC health check
//! (`grpc.health.v1.Health`). Its counters are read with the `Stats` rpc.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use crawler_core::ErrorCode;
use crawler_core::config::{AdminArgs, ServiceArgs};
use crawler_core::tls::{AdmitRoles, GrpcSecurity, Role, TlsArgs};
use futures::Stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::compress::ChunkEncoder;
use crate::metrics::{Metrics, add};
use crate::paths::{EscapeReason, PathEscape, is_hex_hash, is_valid_spider_name, join_under};
use crate::proto::file_sync_server::{FileSync, FileSyncServer as FileSyncService};
use crate::proto::{
    Compression, DataChunk, DownloadChunk, DownloadRequest, FileHeader, ListSpidersRequest,
    ListSpidersResponse, ScanChunk, ScanRequest, ScanSummary, SpiderInfo, StatsRequest,
    StatsResponse, UploadRequest, UploadResponse, download_chunk, upload_request,
};
use crate::scan::{ScanError, Spiders};
use crate::tree::WalkError;
use crate::{
    DEFAULT_CHUNK_BYTES, DEFAULT_MAX_SEND_CHUNK_BYTES, MAX_CHUNK_BYTES, SCAN_CHUNK_ENTRIES,
};

/// Configuration of the file-sync server. Every flag can also be set in the
/// environment as `FILE_SYNC__<FLAG>` (for example `FILE_SYNC__ROOT`), and
/// the shared ones as `CRAWLER__<FLAG>`; flags win over the environment,
/// which wins over the defaults.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(
    name = "file-sync",
    version,
    about = "Serves spider folders to workers over gRPC (scan, resumable download, atomic upload)"
)]
pub struct Config {
    /// Address to listen on for gRPC (FileSync, health). Port 0 picks a free port.
    #[arg(long, env = "FILE_SYNC__LISTEN", default_value = "127.0.0.1:50053")]
    pub listen: SocketAddr,
    /// Folder holding one sub-folder per spider (`<root>/<spider>/...`).
    /// Created if missing. Relative paths are taken from the working directory.
    #[arg(long, env = "FILE_SYNC__ROOT", default_value = "./spiders-root")]
    pub root: PathBuf,
    /// How long a scan is served from the cache before the folder is checked
    /// again (a cheap stat walk; files are rehashed only if they changed).
    #[arg(long, env = "FILE_SYNC__SCAN_TTL_MS", default_value_t = 2000)]
    pub scan_ttl_ms: u64,
    /// Largest download chunk the server sends, whatever a client asks for.
    #[arg(long, env = "FILE_SYNC__MAX_CHUNK_BYTES", default_value_t = DEFAULT_MAX_SEND_CHUNK_BYTES)]
    pub max_chunk_bytes: u32,
    /// Log filter, overridden by RUST_LOG.
    #[arg(long, env = "FILE_SYNC__LOG_FILTER", default_value = "info")]
    pub log_filter: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl Config {
    /// A configuration for `root` on a free loopback port, for tests and
    /// embedding.
    pub fn for_root(root: impl Into<PathBuf>) -> Self {
        let mut config: Self = crawler_core::config::defaults();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.root = root.into();
        config
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (4096..=MAX_CHUNK_BYTES).contains(&self.max_chunk_bytes),
            "max chunk bytes must be between 4096 and {MAX_CHUNK_BYTES}"
        );
        anyhow::ensure!(
            !self.root.as_os_str().is_empty(),
            "the root folder must be set"
        );
        Ok(())
    }
}

/// A bound, not yet running, file-sync server.
pub struct FileSyncServer {
    listener: TcpListener,
    security: GrpcSecurity,
    addr: SocketAddr,
    state: Arc<State>,
    admin: Option<SocketAddr>,
}

/// What the rpc handlers share.
pub struct State {
    /// Who may read spiders (scan, download, list, stats): workers,
    /// gateways and operators; who may publish them: operators.
    readers: AdmitRoles,
    publishers: AdmitRoles,
    spiders: Spiders,
    metrics: Arc<Metrics>,
    max_chunk: u32,
}

impl FileSyncServer {
    /// Validates the configuration, creates the root if needed and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let security = config.tls.load()?;
        std::fs::create_dir_all(&config.root)
            .with_context(|| format!("creating the root folder {}", config.root.display()))?;
        let metrics = Arc::new(Metrics::default());
        let spiders = Spiders::new(
            &config.root,
            Duration::from_millis(config.scan_ttl_ms),
            metrics.clone(),
        )
        .with_context(|| format!("opening the root folder {}", config.root.display()))?;
        for leftover in [STAGING, TRASH] {
            let dir = spiders.root().join(leftover);
            if dir.exists() {
                // Left by a crash: never published, or already replaced.
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state: Arc::new(State {
                readers: security.admit(&[Role::Worker, Role::Operator, Role::Gateway]),
                publishers: security.admit(&[Role::Operator]),
                spiders,
                metrics,
                max_chunk: config.max_chunk_bytes,
            }),
            admin: config.admin.admin_listen,
            security,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The live counters, for in-process tests.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets
    /// running calls finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FileSyncService<Service>>().await;
        Metrics::describe();
        let counters = self.state.metrics.clone();
        let admin = crawler_core::admin::spawn(
            self.admin,
            Arc::new(|| Ok(())),
            Arc::new(move || counters.publish()),
            shutdown.clone(),
        )
        .await?;
        tracing::info!(addr = %self.addr, root = %self.state.spiders.root().display(), "file-sync serving");
        let served = self
            .security
            .server()?
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .add_service(health_service)
            .add_service(service(self.state))
            .serve_with_incoming_shutdown(crawler_core::tls::incoming(self.listener), async move {
                shutdown.cancelled().await;
                tracing::info!("file-sync stopping");
            })
            .await
            .context("serving gRPC");
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        served
    }
}

/// The gRPC service over a shared state, with message limits set for our
/// chunk sizes.
pub fn service(state: Arc<State>) -> FileSyncService<Service> {
    FileSyncService::new(Service { state })
        .max_decoding_message_size(2 * MAX_CHUNK_BYTES as usize + 64 * 1024)
        .max_encoding_message_size(2 * MAX_CHUNK_BYTES as usize + 64 * 1024)
}

const STAGING: &str = ".staging";
const TRASH: &str = ".trash";

/// Implementation of the `FileSync` rpcs.
pub struct Service {
    state: Arc<State>,
}

fn scan_status(e: ScanError) -> Status {
    match e {
        ScanError::InvalidName(name) => ErrorCode::InvalidField.status(format!(
            "invalid spider name {name:?}: a name is 1 to 64 letters, digits, '-' or '_'"
        )),
        ScanError::NotFound(name) => {
            ErrorCode::UnknownSpider.status(format!("spider {name:?} does not exist"))
        }
        ScanError::Walk(WalkError::Escape(e)) => ErrorCode::PathEscapesRoot.status(e.to_string()),
        ScanError::Walk(e @ WalkError::Unsupported { .. }) => {
            ErrorCode::InvalidField.status(e.to_string())
        }
        other => {
            tracing::error!(error = %other, "scan failed");
            ErrorCode::Internal.status(other.to_string())
        }
    }
}

fn escape_status(e: PathEscape) -> Status {
    ErrorCode::PathEscapesRoot.status(e.to_string())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FileSync for Service {
    type StreamFileScanStream = BoxStream<ScanChunk>;
    type StreamFileDownloadStream = BoxStream<DownloadChunk>;

    #[tracing::instrument(skip_all, fields(spider = %request.get_ref().spider), err)]
    async fn stream_file_scan(
        &self,
        request: Request<ScanRequest>,
    ) -> Result<Response<Self::StreamFileScanStream>, Status> {
        self.state.readers.check(&request)?;
        let req = request.into_inner();
        let prefix = if req.path.is_empty() {
            None
        } else {
            crate::paths::validate_relative(&req.path).map_err(escape_status)?;
            Some(req.path.clone())
        };
        let scan = self
            .state
            .spiders
            .scan(&req.spider)
            .await
            .map_err(scan_status)?;
        let selected: Vec<usize> = scan
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| match &prefix {
                None => true,
                Some(p) => e
                    .walk
                    .rel
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/')),
            })
            .map(|(i, _)| i)
            .collect();
        let total_bytes = selected.iter().map(|&i| scan.entries[i].walk.size).sum();
        let summary = ScanChunk {
            entries: Vec::new(),
            summary: Some(ScanSummary {
                total_entries: selected.len() as u64,
                total_bytes,
                scan_id: scan.id.clone(),
            }),
        };
        // Chunks are built lazily from the shared scan, one at a time.
        let chunks: Vec<Vec<usize>> = selected
            .chunks(SCAN_CHUNK_ENTRIES)
            .map(<[usize]>::to_vec)
            .collect();
        let stream = futures::stream::iter(chunks)
            .map(move |idx| {
                Ok(ScanChunk {
                    entries: idx.iter().map(|&i| scan.entries[i].to_proto()).collect(),
                    summary: None,
                })
            })
            .chain(futures::stream::once(async move { Ok(summary) }));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(spider = %request.get_ref().spider, path = %request.get_ref().path, offset = request.get_ref().offset), err)]
    async fn stream_file_download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<Self::StreamFileDownloadStream>, Status> {
        self.state.readers.check(&request)?;
        let req = request.into_inner();
        let state = &self.state;
        add(&state.metrics.download_requests, 1);
        crate::paths::validate_relative(&req.path).map_err(escape_status)?;
        let chunk_size = match req.chunk_size {
            0 => DEFAULT_CHUNK_BYTES.min(state.max_chunk),
            n => n.clamp(4096, state.max_chunk),
        };
        let zstd = req.accept.contains(&(Compression::Zstd as i32));
        let (opened, entry) = match self
            .open_for_download(&req.spider, &req.path, req.offset, chunk_size, zstd)
            .await
        {
            // The client listed this file in an earlier version: it is the
            // version that changed, not the client that is wrong.
            Err(s) if s.code() == tonic::Code::NotFound && !req.expected_hash.is_empty() => {
                return Err(ErrorCode::FileChanged.status(s.message()));
            }
            other => other?,
        };
        if !req.expected_hash.is_empty() && req.expected_hash != entry.hash {
            return Err(ErrorCode::FileChanged.status(format!(
                "{} now has hash {}, not {}",
                req.path, entry.hash, req.expected_hash
            )));
        }
        let total = entry.walk.size;
        if req.offset > total {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end of {} ({total} bytes)",
                req.offset, req.path
            )));
        }
        if req.offset > 0 {
            add(&state.metrics.download_resumes, 1);
            add(&state.metrics.download_bytes_skipped, req.offset);
        }
        // Two chunks in the channel, one being read: memory per download is
        // a few chunks whatever the file size.
        let (tx, rx) = mpsc::channel(2);
        let header = DownloadChunk {
            kind: Some(download_chunk::Kind::Header(FileHeader {
                total_size: total,
                hash: entry.hash.clone(),
                mode: entry.walk.mode,
                offset: req.offset,
                chunk_size,
            })),
        };
        let file = match opened {
            Opened::File(file) => file,
            // The rest fits in one chunk: it was read with the open, on the
            // same blocking thread, and is sent without a reader thread.
            Opened::Whole(rest) => {
                let mut messages = vec![Ok(header)];
                if let Some(rest) = rest {
                    messages.push(Ok(data_message(rest, &state.metrics)));
                }
                return Ok(Response::new(Box::pin(futures::stream::iter(messages))));
            }
        };
        tx.send(Ok(header))
            .await
            .map_err(|_| Status::cancelled("client went away"))?;
        let metrics = state.metrics.clone();
        let path = req.path.clone();
        tokio::task::spawn_blocking(move || {
            produce_chunks(
                file, req.offset, total, chunk_size, zstd, &tx, &metrics, &path,
            )
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, err)]
    async fn upload(
        &self,
        request: Request<Streaming<UploadRequest>>,
    ) -> Result<Response<UploadResponse>, Status> {
        // Publishing a spider changes what every worker runs.
        self.state.publishers.check(&request)?;
        let mut stream = request.into_inner();
        let spider = match stream.message().await? {
            Some(UploadRequest {
                kind: Some(upload_request::Kind::Begin(begin)),
            }) => begin.spider,
            _ => {
                return Err(ErrorCode::InvalidMessage.status("an upload must start with `begin`"));
            }
        };
        if !is_valid_spider_name(&spider) {
            return Err(scan_status(ScanError::InvalidName(spider)));
        }
        let root = self.state.spiders.root().to_path_buf();
        let staging_parent = root.join(STAGING);
        tokio::fs::create_dir_all(&staging_parent)
            .await
            .map_err(internal("creating the staging folder"))?;
        let staging = StagingDir(staging_parent.join(format!("{spider}.{}", uuid::Uuid::new_v4())));
        tokio::fs::create_dir(&staging.0)
            .await
            .map_err(internal("creating the staging folder"))?;
        let (entries, bytes) = receive_upload(&mut stream, &staging.0).await?;

        let slot = self.state.spiders.slot(&spider);
        let live = root.join(&spider);
        let trash = root
            .join(TRASH)
            .join(format!("{spider}.{}", uuid::Uuid::new_v4()));
        {
            let _writing = slot.swap.write().await;
            let had_old = tokio::fs::symlink_metadata(&live).await.is_ok();
            if had_old {
                tokio::fs::create_dir_all(root.join(TRASH))
                    .await
                    .map_err(internal("creating the trash folder"))?;
                tokio::fs::rename(&live, &trash)
                    .await
                    .map_err(internal("moving the old version aside"))?;
            }
            if let Err(e) = tokio::fs::rename(&staging.0, &live).await {
                if had_old {
                    let _ = tokio::fs::rename(&trash, &live).await;
                }
                return Err(internal("publishing the new version")(e));
            }
            self.state.spiders.invalidate(&spider);
        }
        std::mem::forget(staging);
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(trash);
        });
        add(&self.state.metrics.uploads, 1);
        let scan = self
            .state
            .spiders
            .scan(&spider)
            .await
            .map_err(scan_status)?;
        tracing::info!(spider, entries, bytes, scan_id = %scan.id, "published spider");
        Ok(Response::new(UploadResponse {
            scan_id: scan.id.clone(),
            entries,
            bytes,
        }))
    }

    async fn list_spiders(
        &self,
        request: Request<ListSpidersRequest>,
    ) -> Result<Response<ListSpidersResponse>, Status> {
        self.state.readers.check(&request)?;
        let root = self.state.spiders.root().to_path_buf();
        let mut names = Vec::new();
        let mut dir = tokio::fs::read_dir(&root)
            .await
            .map_err(internal("listing the root"))?;
        while let Some(item) = dir
            .next_entry()
            .await
            .map_err(internal("listing the root"))?
        {
            if let Some(name) = item.file_name().to_str()
                && is_valid_spider_name(name)
                && self.state.spiders.spider_dir(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(Response::new(ListSpidersResponse {
            spiders: names.into_iter().map(|name| SpiderInfo { name }).collect(),
        }))
    }

    async fn stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        self.state.readers.check(&request)?;
        Ok(Response::new(self.state.metrics.snapshot()))
    }
}

impl Service {
    /// Opens a file of the current scan, checking that what was opened is
    /// the file the scan describes. If it is not (changed on disk since the
    /// scan), the scan is invalidated and redone once.
    async fn open_for_download(
        &self,
        spider: &str,
        path: &str,
        offset: u64,
        chunk_size: u32,
        zstd: bool,
    ) -> Result<(Opened, crate::scan::ScannedEntry), Status> {
        let spiders = &self.state.spiders;
        for attempt in 0..2 {
            let scan = spiders.scan(spider).await.map_err(scan_status)?;
            let entry = scan
                .get(path)
                .ok_or_else(|| Status::not_found(format!("{path} is not in spider {spider:?}")))?
                .clone();
            if entry.walk.is_dir {
                return Err(ErrorCode::InvalidField.status(format!("{path} is a folder")));
            }
            let slot = spiders.slot(spider);
            let _reading = slot.swap.read().await;
            let dir = spiders.spider_dir(spider).map_err(scan_status)?;
            let full = join_under(&dir, path).map_err(escape_status)?;
            let rel = path.to_owned();
            let size = entry.walk.size;
            let whole = offset <= size && size - offset <= u64::from(chunk_size);
            let walked = entry.walk.clone();
            let opened = tokio::task::spawn_blocking(move || {
                let (file, meta) = open_inside(&dir, &full, rel.clone())?;
                // Read only the file the scan describes; another one is
                // answered below, as a file opened for the reader thread.
                if !whole || !walked.same_file(&meta) {
                    return Ok((Opened::File(file), meta));
                }
                let rest = read_rest(file, offset, size, zstd, &rel)?;
                Ok((Opened::Whole(rest), meta))
            })
            .await
            .map_err(|e| ErrorCode::Internal.status(e.to_string()))?;
            match opened {
                Ok((file, meta)) if entry.walk.same_file(&meta) => return Ok((file, entry)),
                Ok(_) | Err(OpenError::Gone) if attempt == 0 => {
                    tracing::debug!(spider, path, "file changed since the scan; rescanning");
                    spiders.invalidate(spider);
                }
                Ok(_) | Err(OpenError::Gone) => {
                    return Err(Status::unavailable(format!(
                        "{path} is changing on the server; retry"
                    )));
                }
                Err(OpenError::Escape(e)) => return Err(escape_status(e)),
                Err(OpenError::Io(e)) => return Err(internal("opening the file")(e)),
                Err(OpenError::Read(status)) => return Err(status),
            }
        }
        unreachable!("the loop returns on its second pass")
    }
}

enum OpenError {
    Gone,
    Escape(PathEscape),
    Io(std::io::Error),
    Read(Status),
}

/// A file opened for a download: left to a reader thread, or, when what
/// is asked fits in one chunk, already read (`None` if nothing is left).
enum Opened {
    File(std::fs::File),
    Whole(Option<EncodedChunk>),
}

/// One chunk read and encoded, ready to send.
struct EncodedChunk {
    offset: u64,
    raw_len: usize,
    data: Vec<u8>,
    compression: Compression,
}

/// Reads `offset..size` of `file` (at most one chunk) and encodes it.
fn read_rest(
    mut file: std::fs::File,
    offset: u64,
    size: u64,
    zstd: bool,
    path: &str,
) -> Result<Option<EncodedChunk>, OpenError> {
    if offset == size {
        return Ok(None);
    }
    let want = (size - offset) as usize;
    let mut raw = vec![0u8; want];
    let read = file
        .seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut raw));
    if let Err(e) = read {
        return Err(OpenError::Read(read_status(e, path)));
    }
    let (data, compression) = ChunkEncoder::new(zstd).encode(raw);
    Ok(Some(EncodedChunk {
        offset,
        raw_len: want,
        data,
        compression,
    }))
}

fn read_status(e: std::io::Error, path: &str) -> Status {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Status::unavailable(format!("{path} shrank while being sent; retry"))
    } else {
        internal("reading")(e)
    }
}

/// The data message of an encoded chunk, counted in the metrics.
fn data_message(chunk: EncodedChunk, metrics: &Metrics) -> DownloadChunk {
    add(&metrics.bytes_sent, chunk.data.len() as u64);
    add(&metrics.raw_bytes_sent, chunk.raw_len as u64);
    add(
        if chunk.compression == Compression::Zstd {
            &metrics.chunks_compressed
        } else {
            &metrics.chunks_raw
        },
        1,
    );
    DownloadChunk {
        kind: Some(download_chunk::Kind::Data(DataChunk {
            offset: chunk.offset,
            data: chunk.data,
            compression: chunk.compression as i32,
            raw_len: chunk.raw_len as u32,
        })),
    }
}

/// Opens `full`, refusing it if it resolves (through links) outside `dir`.
fn open_inside(
    dir: &Path,
    full: &Path,
    rel: String,
) -> Result<(std::fs::File, std::fs::Metadata), OpenError> {
    let resolved = match full.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(OpenError::Gone),
        Err(e) => return Err(OpenError::Io(e)),
    };
    // `dir` comes from `Spiders::spider_dir`: already canonical.
    if !resolved.starts_with(dir) {
        return Err(OpenError::Escape(PathEscape::new(
            rel,
            EscapeReason::Symlink,
        )));
    }
    let file = match std::fs::File::open(&resolved) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(OpenError::Gone),
        Err(e) => return Err(OpenError::Io(e)),
    };
    let meta = file.metadata().map_err(OpenError::Io)?;
    Ok((file, meta))
}

fn internal(what: &'static str) -> impl Fn(std::io::Error) -> Status {
    move |e| {
        tracing::error!(error = %e, "{what} failed");
        ErrorCode::Internal.status(format!("{what}: {e}"))
    }
}

/// Reads the file from `offset` and sends it chunk by chunk. Runs on a
/// blocking thread; `blocking_send` waits while the channel is full, so the
/// reader never runs ahead of the client by more than the channel's capacity.
#[allow(clippy::too_many_arguments)]
fn produce_chunks(
    mut file: std::fs::File,
    offset: u64,
    total: u64,
    chunk_size: u32,
    zstd: bool,
    tx: &mpsc::Sender<Result<DownloadChunk, Status>>,
    metrics: &Metrics,
    path: &str,
) {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        let _ = tx.blocking_send(Err(internal("seeking")(e)));
        return;
    }
    let mut encoder = ChunkEncoder::new(zstd);
    let mut pos = offset;
    while pos < total {
        let want = (total - pos).min(chunk_size as u64) as usize;
        let mut raw = vec![0u8; want];
        if let Err(e) = file.read_exact(&mut raw) {
            let _ = tx.blocking_send(Err(read_status(e, path)));
            return;
        }
        let (data, compression) = encoder.encode(raw);
        let chunk = data_message(
            EncodedChunk {
                offset: pos,
                raw_len: want,
                data,
                compression,
            },
            metrics,
        );
        if tx.blocking_send(Ok(chunk)).is_err() {
            return; // the client went away
        }
        pos += want as u64;
    }
}

/// A staging folder removed when dropped, unless published (forgotten).
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Incoming {
    file: tokio::fs::File,
    hasher: blake3::Hasher,
    remaining: u64,
    path: String,
    hash: String,
}

async fn finish_file(current: Option<Incoming>) -> Result<(), Status> {
    let Some(mut inc) = current else {
        return Ok(());
    };
    if inc.remaining != 0 {
        return Err(ErrorCode::InvalidMessage
            .status(format!("{}: {} bytes missing", inc.path, inc.remaining)));
    }
    let actual = inc.hasher.finalize().to_hex().to_string();
    if actual != inc.hash {
        return Err(ErrorCode::InvalidField.status(format!(
            "{}: content hash {actual} does not match the announced {}",
            inc.path, inc.hash
        )));
    }
    inc.file.flush().await.map_err(internal("writing"))?;
    inc.file.sync_all().await.map_err(internal("syncing"))?;
    Ok(())
}

/// Writes an upload's entries into `staging`; returns (entries, bytes).
async fn receive_upload(
    stream: &mut Streaming<UploadRequest>,
    staging: &Path,
) -> Result<(u64, u64), Status> {
    use std::os::unix::fs::PermissionsExt;
    let mut current: Option<Incoming> = None;
    let mut entries = 0u64;
    let mut bytes = 0u64;
    let mut dir_modes = Vec::new();
    loop {
        let Some(msg) = stream.message().await? else {
            return Err(Status::aborted(
                "upload ended without `commit`; nothing was published",
            ));
        };
        match msg.kind {
            Some(upload_request::Kind::File(f)) => {
                finish_file(current.take()).await?;
                let full = join_under(staging, &f.path).map_err(escape_status)?;
                entries += 1;
                if let Some(parent) = full.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .map_err(internal("creating a folder"))?;
                }
                if f.is_dir {
                    match tokio::fs::create_dir(&full).await {
                        Ok(()) => {}
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists && full.is_dir() => {}
                        Err(e) => return Err(internal("creating a folder")(e)),
                    }
                    dir_modes.push((full, f.mode & 0o777 | 0o700));
                    continue;
                }
                if !is_hex_hash(&f.hash) {
                    return Err(ErrorCode::InvalidField
                        .status(format!("{}: hash must be a hex BLAKE3 digest", f.path)));
                }
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(f.mode & 0o777 | 0o600)
                    .open(&full)
                    .await
                    .map_err(|e| ErrorCode::InvalidField.status(format!("{}: {e}", f.path)))?;
                file.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o777))
                    .await
                    .map_err(internal("setting a mode"))?;
                bytes += f.size;
                current = Some(Incoming {
                    file,
                    hasher: blake3::Hasher::new(),
                    remaining: f.size,
                    path: f.path,
                    hash: f.hash,
                });
            }
            Some(upload_request::Kind::Data(data)) => {
                let Some(inc) = current.as_mut() else {
                    return Err(ErrorCode::InvalidMessage.status("data before any file"));
                };
                if data.len() as u64 > inc.remaining {
                    return Err(ErrorCode::InvalidMessage
                        .status(format!("{}: more data than its announced size", inc.path)));
                }
                inc.remaining -= data.len() as u64;
                inc.hasher.update(&data);
                inc.file
                    .write_all(&data)
                    .await
                    .map_err(internal("writing"))?;
            }
            Some(upload_request::Kind::Commit(commit)) => {
                finish_file(current.take()).await?;
                if commit.entries != entries {
                    return Err(ErrorCode::InvalidMessage.status(format!(
                        "commit announces {} entries, {entries} were sent",
                        commit.entries
                    )));
                }
                // Folder modes last, so a read-only folder was still writable
                // while its files were written.
                for (dir, mode) in dir_modes.into_iter().rev() {
                    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                        .await
                        .map_err(internal("setting a mode"))?;
                }
                return Ok((entries, bytes));
            }
            Some(upload_request::Kind::Begin(_)) | None => {
                return Err(ErrorCode::InvalidMessage.status("unexpected message in an upload"));
            }
        }
    }
}

use futures::StreamExt;
