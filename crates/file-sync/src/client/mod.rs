//! The client side: mirror a spider folder from file-sync into a local
//! folder ([`mirror`]), publish one ([`push_folder`]), list them.
//!
//! This module holds what every call shares: the error type, its retry rule
//! and the connection. [`mirror`] and its guarantees are in `mirror`, the
//! resumable download of one file in `download`, publishing in `push`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::retry::Transient;
use tonic::transport::Channel;

use crate::MAX_CHUNK_BYTES;
use crate::paths::PathEscape;
use crate::proto::file_sync_client::FileSyncClient;
use crate::proto::{ListSpidersRequest, StatsRequest, StatsResponse};
pub use crate::remote::Remote;

mod download;
mod mirror;
mod push;

pub(crate) use mirror::fetch_listing;
pub use mirror::{
    Durability, MirrorOptions, MirrorReport, Progress, mirror, validate_remote_entry,
};
pub use push::{PushReport, push_folder};

/// Why a sync failed. A task that needed the files must fail with it.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("invalid spider name {0:?}: a name is 1 to 64 letters, digits, '-' or '_'")]
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
    pub(super) fn from_status(status: tonic::Status, spider: &str) -> Self {
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

pub(super) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SyncError {
    let path = path.to_path_buf();
    move |source| SyncError::Io { op, path, source }
}

/// Runs file-system work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Protocol(format!("blocking task failed: {e}")))?
}

pub(super) async fn connect(
    remote: &Remote,
    timeout: Duration,
) -> Result<FileSyncClient<Channel>, SyncError> {
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
    use crate::paths::EscapeReason;

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
}
