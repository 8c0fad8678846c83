//! `crawlctl certs`: a cluster CA and one certificate per role, for mutual
//! TLS between the services (see `crawler_core::tls`). Each certificate's
//! subject names its role in its organizational unit, and it serves both
//! as a server's certificate and as a client's. The files suit a local
//! cluster (`--tls-*` flags), compose (a mounted folder) and Kubernetes
//! (`secrets.yaml`, one Secret per role).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use crawler_core::tls::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// How long a service certificate is valid; the CA lasts ten times as long.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Names every certificate answers to, besides those asked for: a service
/// on this machine is dialled by one of these.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What was written.
#[derive(Debug)]
pub struct Written {
    pub ca_made: bool,
    pub files: Vec<PathBuf>,
}

/// Writes into `dir` the CA (`ca.pem`, `ca.key`) unless it is there
/// already, and a fresh certificate and key for every role (`ROLE.pem`,
/// `ROLE.key`), each valid for `names` and this machine's loopback names;
/// and `secrets.yaml`. Reusing the CA renews the services' certificates
/// without touching what trusts them.
pub fn write_cluster_certs(dir: &Path, names: &[String]) -> anyhow::Result<Written> {
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let mut files = Vec::new();
    let (ca_pem, ca_key_pem, ca_made) = match (
        std::fs::read_to_string(dir.join("ca.pem")),
        std::fs::read_to_string(dir.join("ca.key")),
    ) {
        (Ok(pem), Ok(key)) => (pem, key, false),
        _ => {
            let (pem, key) = make_ca()?;
            write(dir, "ca.pem", &pem, &mut files)?;
            write(dir, "ca.key", &key, &mut files)?;
            (pem, key, true)
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("reading ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("reading ca.pem")?;
    let mut secrets = String::new();
    for role in Role::ALL {
        let (pem, key) = issue(&issuer, role, names)?;
        write(dir, &format!("{role}.pem"), &pem, &mut files)?;
        write(dir, &format!("{role}.key"), &key, &mut files)?;
        secrets.push_str(&secret_yaml(role, &ca_pem, &pem, &key));
    }
    write(dir, "secrets.yaml", &secrets, &mut files)?;
    Ok(Written { ca_made, files })
}

fn make_ca() -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "crawler cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, VALIDITY * 10);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    role: Role,
    names: &[String],
) -> anyhow::Result<(String, String)> {
    let mut sans: Vec<String> = LOCAL_NAMES.iter().map(|n| n.to_string()).collect();
    for name in names {
        if !sans.contains(name) {
            sans.push(name.clone());
        }
    }
    let mut params = CertificateParams::new(sans).context("a name is not a DNS name or an IP")?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, format!("crawler {role}"));
    subject.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Valid from an hour ago (clocks differ) for `length`.
fn validity(params: &mut CertificateParams, length: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + length).into();
}

/// A Kubernetes Secret of one role: the CA, the certificate and the key.
fn secret_yaml(role: Role, ca: &str, cert: &str, key: &str) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: crawler-tls-{role}\ntype: Opaque\nstringData:\n  ca.pem: |\n    {}\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n",
        indent(ca),
        indent(cert),
        indent(key)
    )
}

/// Writes one file; keys and the Secrets readable by their owner only.
fn write(dir: &Path, name: &str, content: &str, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    if name.ends_with(".key") || name == "secrets.yaml" {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    files.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_gets_a_certificate_naming_it_and_the_ca_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_cluster_certs(dir.path(), &["masters".into()]).unwrap();
        assert!(first.ca_made);
        for role in Role::ALL {
            let pem = std::fs::read(dir.path().join(format!("{role}.pem"))).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            assert_eq!(Role::of_certificate(&pem.contents), Some(role));
        }
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let again = write_cluster_certs(dir.path(), &[]).unwrap();
        assert!(!again.ca_made);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        let secrets = std::fs::read_to_string(dir.path().join("secrets.yaml")).unwrap();
        assert_eq!(secrets.matches("kind: Secret").count(), Role::ALL.len());
    }
}
