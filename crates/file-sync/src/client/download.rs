//! The download of one file into its place: small files whole in memory,
//! larger ones chunk by chunk into a partial file that a later attempt
//! resumes, each verified against its hash before it is renamed in.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use tonic::transport::Channel;

use super::mirror::{Durability, MirrorOptions, Progress};
use super::{SyncError, blocking, io};
use crate::MAX_CHUNK_BYTES;
use crate::compress::decode;
use crate::proto::file_sync_client::FileSyncClient;
use crate::proto::{Compression, DownloadRequest, FileEntry, download_chunk};

/// What every download of one mirror attempt shares.
pub(super) struct DownloadCtx {
    pub(super) client: FileSyncClient<Channel>,
    pub(super) spider: String,
    /// The work folder, where partial files are kept.
    pub(super) work: PathBuf,
    pub(super) options: MirrorOptions,
    /// Names in the work folder when the downloads started.
    pub(super) partials: HashSet<String>,
}

/// One file in its place, and what it took.
pub(super) struct FileFetched {
    pub(super) downloaded: u64,
    pub(super) resumed: u64,
    pub(super) wire: u64,
    pub(super) dest: PathBuf,
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

    pub(super) async fn fetch(
        &self,
        entry: &FileEntry,
        dest: &Path,
    ) -> Result<FileFetched, SyncError> {
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
