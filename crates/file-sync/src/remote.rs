//! Where a file-sync server is and how it is reached: over mutual TLS with
//! this side's certificate (a worker's to download, a gateway's to learn
//! spiders' versions, an operator's to upload), or in plaintext when that
//! was chosen.

use crawler_core::tls::GrpcSecurity;
use tonic::transport::Endpoint;

use crate::client::SyncError;

#[derive(Debug, Clone)]
pub struct Remote {
    url: String,
    security: GrpcSecurity,
}

impl Remote {
    /// The server at `url` (`host:port` or `http://host:port`).
    pub fn new(url: impl Into<String>, security: GrpcSecurity) -> Self {
        Self {
            url: url.into(),
            security,
        }
    }

    /// The server at `url`, without TLS (tests and local development).
    pub fn plaintext(url: impl Into<String>) -> Self {
        Self::new(url, GrpcSecurity::Plaintext)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn endpoint(&self) -> Result<Endpoint, SyncError> {
        self.security
            .endpoint(&self.url)
            .map_err(|e| SyncError::InvalidEndpoint {
                endpoint: self.url.clone(),
                reason: e.to_string(),
            })
    }
}
