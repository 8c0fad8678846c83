//! Publishing a spider folder: every file is sent, and the server swaps the
//! folder in whole once all of them arrived and verified.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Remote, SyncError, blocking, connect, io};
use crate::DEFAULT_CHUNK_BYTES;
use crate::paths::is_valid_spider_name;
use crate::proto::{UploadBegin, UploadCommit, UploadFile, UploadRequest, upload_request};

/// What [`push_folder`] published.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    pub scan_id: String,
    pub entries: u64,
    pub bytes: u64,
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
