//! Mutual TLS on every gRPC connection between the services.
//!
//! Each service holds a certificate signed by the cluster's CA, whose
//! subject's organizational unit names its role (`master`, `worker`,
//! `lock-server`, `file-sync`, `operator`, `gateway`; `crawlctl certs`
//! makes them). A server accepts only clients whose certificate chains to
//! the CA (the TLS handshake refuses the others: no certificate, another
//! CA's), and each service then admits only the roles that may call it. A client checks the
//! server's certificate against the CA and the name it dialled.
//!
//! Plaintext exists only when asked for (`--grpc-plaintext`): the embedded
//! cluster, and tests that choose it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::ErrorCode;

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Worker,
    LockServer,
    FileSync,
    /// A person or tool that runs the cluster: uploads spiders.
    Operator,
    /// A websocket gateway: asks file-sync for spiders' versions.
    Gateway,
}

impl Role {
    pub const ALL: [Self; 6] = [
        Self::Master,
        Self::Worker,
        Self::LockServer,
        Self::FileSync,
        Self::Operator,
        Self::Gateway,
    ];

    /// The name in a certificate's organizational unit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Worker => "worker",
            Self::LockServer => "lock-server",
            Self::FileSync => "file-sync",
            Self::Operator => "operator",
            Self::Gateway => "gateway",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The role a DER certificate grants: the first organizational unit
    /// of its subject that names one.
    pub fn of_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        cert.subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .find_map(Self::parse)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings every gRPC service and client takes.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct TlsArgs {
    /// PEM file of the cluster CA: every peer's certificate must chain to it.
    #[arg(long = "tls-ca", env = "CRAWLER__TLS_CA")]
    pub ca: Option<PathBuf>,
    /// PEM file of this service's certificate, signed by the cluster CA.
    #[arg(long = "tls-cert", env = "CRAWLER__TLS_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM file of this service's private key (its path is shown, never its content).
    #[arg(long = "tls-key", env = "CRAWLER__TLS_KEY")]
    pub key: Option<PathBuf>,
    /// gRPC without TLS: anyone who reaches a port is trusted. For the
    /// embedded cluster and local development only.
    #[arg(long = "grpc-plaintext", env = "CRAWLER__GRPC_PLAINTEXT")]
    pub plaintext: bool,
}

impl TlsArgs {
    /// Plaintext, chosen explicitly (the embedded cluster, tests).
    pub fn plaintext() -> Self {
        Self {
            plaintext: true,
            ..Self::default()
        }
    }

    /// Mutual TLS with the files of `dir` that `crawlctl certs` wrote for
    /// `role`: `ca.pem`, `ROLE.pem` and `ROLE.key`.
    pub fn from_dir(dir: &Path, role: Role) -> Self {
        Self {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join(format!("{role}.pem"))),
            key: Some(dir.join(format!("{role}.key"))),
            plaintext: false,
        }
    }

    /// Reads the files. A service with neither TLS files nor
    /// `--grpc-plaintext` does not start: an open port must be a choice.
    pub fn load(&self) -> anyhow::Result<GrpcSecurity> {
        match (&self.ca, &self.cert, &self.key, self.plaintext) {
            (None, None, None, true) => Ok(GrpcSecurity::Plaintext),
            (Some(_), _, _, true) | (_, Some(_), _, true) | (_, _, Some(_), true) => {
                anyhow::bail!("--grpc-plaintext and the --tls-* files exclude each other")
            }
            (Some(ca), Some(cert), Some(key), false) => {
                let read = |path: &PathBuf, what: &str| {
                    std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!("cannot read the {what} {}: {e}", path.display())
                    })
                };
                let ca_pem = read(ca, "CA certificate --tls-ca")?;
                let cert_pem = read(cert, "certificate --tls-cert")?;
                let key_pem = read(key, "private key --tls-key")?;
                install_crypto_provider();
                let role = role_of_pem(&cert_pem).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} names no role in its subject's organizational unit (make certificates with `crawlctl certs`)",
                        cert.display()
                    )
                })?;
                Ok(GrpcSecurity::Mutual(Arc::new(MutualTls {
                    ca: Certificate::from_pem(ca_pem),
                    identity: Identity::from_pem(cert_pem, key_pem),
                    role,
                })))
            }
            (None, None, None, false) => anyhow::bail!(
                "gRPC needs --tls-ca, --tls-cert and --tls-key (CRAWLER__TLS_*; `crawlctl certs` makes them), \
                 or --grpc-plaintext to run without authentication"
            ),
            _ => anyhow::bail!("--tls-ca, --tls-cert and --tls-key go together: give all three"),
        }
    }
}

/// Makes ring the process's TLS provider, for every rustls user (gRPC,
/// fetching, the engines' clients), whichever asks first; later calls
/// change nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The role in a PEM certificate.
fn role_of_pem(pem: &[u8]) -> Option<Role> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    Role::of_certificate(&pem.contents)
}

/// The cluster CA and this service's certificate.
pub struct MutualTls {
    ca: Certificate,
    identity: Identity,
    role: Role,
}

/// How a service's gRPC connections are secured.
#[derive(Clone)]
pub enum GrpcSecurity {
    Plaintext,
    Mutual(Arc<MutualTls>),
}

impl std::fmt::Debug for GrpcSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plaintext => f.write_str("Plaintext"),
            Self::Mutual(tls) => write!(f, "Mutual({})", tls.role),
        }
    }
}

/// The connections a gRPC server accepts on `listener`, with Nagle's
/// algorithm off. A server fed its connections (`serve_with_incoming`)
/// ignores the builder's `tcp_nodelay`, and with Nagle on, a small write
/// that follows another one not yet acknowledged (an HTTP/2 window update,
/// the end of a large message) waits for the peer's delayed ACK: about
/// 40 ms on Linux, on one large call in four.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

impl GrpcSecurity {
    /// The server's TLS: its certificate, and client certificates required
    /// and checked against the CA during the handshake.
    pub fn server_tls(&self) -> Option<ServerTlsConfig> {
        match self {
            Self::Plaintext => None,
            Self::Mutual(tls) => Some(
                ServerTlsConfig::new()
                    .identity(tls.identity.clone())
                    .client_ca_root(tls.ca.clone()),
            ),
        }
    }

    /// A server builder with this security applied.
    pub fn server(&self) -> anyhow::Result<tonic::transport::Server> {
        let builder = tonic::transport::Server::builder();
        Ok(match self.server_tls() {
            Some(tls) => builder.tls_config(tls)?,
            None => builder,
        })
    }

    /// An endpoint for `url` (`http://host:port`, or `host:port`): over TLS, presenting this
    /// service's certificate and checking the server's against the CA and
    /// `url`'s host, when TLS is on.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        self.endpoint_named(url, None)
    }

    /// As [`Self::endpoint`], checking the server's certificate against
    /// `server_name` instead of `url`'s host: `url` holds one address a
    /// name resolved to (workers dial each address of `masters`).
    pub fn endpoint_named(&self, url: &str, server_name: Option<&str>) -> anyhow::Result<Endpoint> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        anyhow::ensure!(
            matches!(scheme, "http" | "https"),
            "`{url}`: a gRPC address is http://HOST:PORT"
        );
        match self {
            Self::Plaintext => {
                anyhow::ensure!(
                    scheme == "http",
                    "`{url}` asks for TLS, but this service runs with --grpc-plaintext"
                );
                Ok(Endpoint::from_shared(format!("http://{rest}"))?)
            }
            Self::Mutual(tls) => {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(tls.ca.clone())
                    .identity(tls.identity.clone());
                if let Some(name) = server_name {
                    config = config.domain_name(name);
                }
                Ok(Endpoint::from_shared(format!("https://{rest}"))?.tls_config(config)?)
            }
        }
    }

    /// An interceptor that admits only callers of `roles` (any caller in
    /// plaintext mode, where nobody is known).
    pub fn admit(&self, roles: &'static [Role]) -> AdmitRoles {
        AdmitRoles {
            roles,
            enforced: matches!(self, Self::Mutual(_)),
        }
    }
}

/// Refuses calls whose peer certificate grants none of its roles. The TLS
/// handshake has already checked that the certificate chains to the CA.
#[derive(Debug, Clone, Copy)]
pub struct AdmitRoles {
    roles: &'static [Role],
    enforced: bool,
}

impl AdmitRoles {
    /// Admits the caller, or says why it is refused.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        if !self.enforced {
            return Ok(());
        }
        let role = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| Role::of_certificate(c)));
        match role {
            Some(role) if self.roles.contains(&role) => Ok(()),
            Some(role) => Err(ErrorCode::PermissionDenied.status(format!(
                "a {role} certificate may not call this service; it admits {}",
                names(self.roles)
            ))),
            None => Err(ErrorCode::Unauthenticated.status(format!(
                "this service admits only {} certificates of the cluster CA",
                names(self.roles)
            ))),
        }
    }
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl tonic::service::Interceptor for AdmitRoles {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.check(&request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_without_tls_files_or_the_plaintext_flag_does_not_start() {
        let refused = TlsArgs::default().load().unwrap_err().to_string();
        assert!(refused.contains("--grpc-plaintext"), "{refused}");
        let half = TlsArgs {
            ca: Some("ca.pem".into()),
            ..TlsArgs::default()
        };
        assert!(half.load().unwrap_err().to_string().contains("go together"));
        let both = TlsArgs {
            ca: Some("ca.pem".into()),
            ..TlsArgs::plaintext()
        };
        assert!(both.load().is_err());
        assert!(matches!(
            TlsArgs::plaintext().load().unwrap(),
            GrpcSecurity::Plaintext
        ));
    }

    #[test]
    fn plaintext_admits_everyone_and_refuses_https() {
        let open = GrpcSecurity::Plaintext;
        assert!(
            open.admit(&[Role::Worker])
                .check(&tonic::Request::new(()))
                .is_ok()
        );
        assert!(open.endpoint("https://a:1").is_err());
        assert!(open.endpoint("ftp://a:1").is_err());
        assert_eq!(
            open.endpoint("a:1").unwrap().uri().to_string(),
            "http://a:1/"
        );
    }

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::of_certificate(b"not DER"), None);
    }
}
