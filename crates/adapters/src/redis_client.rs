//! A Redis client for a URL: `redis://` in plaintext, `rediss://` over TLS
//! trusting the system's roots, or only the CA of `ca` when one is given
//! (a cluster's own CA, mounted from a Secret).

use std::path::Path;

/// The client of `url`; the reason it cannot be made otherwise.
pub(crate) fn redis_client(url: &str, ca: Option<&Path>) -> Result<redis::Client, String> {
    if url.starts_with("rediss://") {
        crawler_core::tls::install_crypto_provider();
    }
    match ca {
        None => redis::Client::open(url).map_err(|e| e.to_string()),
        Some(ca) => {
            let root_cert = std::fs::read(ca)
                .map_err(|e| format!("cannot read the Redis CA {}: {e}", ca.display()))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(url, certificates).map_err(|e| e.to_string())
        }
    }
}
