//! What every service's configuration shares: the settings each of them
//! takes (`--log-format`, `--admin-listen`, `--dump-config`), defaults for
//! the code that builds a configuration itself, and the dump that shows an
//! operator what a service would run with, secrets hidden.
//!
//! Each service has one typed configuration: defaults that work locally,
//! then `CRAWLER__*` (shared) or `SERVICE__*` environment variables, then
//! flags. Tests and the embedded cluster start from [`defaults`] and set
//! what they need: they never read the process environment.

use std::net::SocketAddr;

use clap::{Args, Parser};
use serde::Serialize;

use crate::telemetry::LogFormat;

/// The defaults the flags declare, whatever the process environment holds:
/// for tests and the embedded cluster, which pass their values in.
pub fn defaults<T: Parser>() -> T {
    let command = without_environment(T::command());
    let name = command.get_name().to_string();
    let matches = command
        .try_get_matches_from([name])
        .expect("the declared defaults parse");
    T::from_arg_matches(&matches).expect("the declared defaults are valid")
}

fn without_environment(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| arg.env(None::<&'static str>))
}

/// The configuration as JSON, passwords in URLs replaced by `***` (fields
/// marked `#[serde(serialize_with = "redacted_url")]`).
pub fn dump<T: Serialize>(config: &T) -> String {
    serde_json::to_string_pretty(config).expect("configurations serialise")
}

/// Answers `--dump-config`: prints the configuration (passwords hidden)
/// and returns true, when the flag was given.
pub fn dump_if_asked<T: Serialize>(config: &T, service: &ServiceArgs) -> bool {
    if service.dump_config {
        println!("{}", dump(config));
    }
    service.dump_config
}

/// The secret in `path`, a file mounted from a secret store (a Kubernetes
/// Secret, a compose secret), without its trailing newline. The error names
/// the file, never what it holds.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {what} from {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!secret.is_empty(), "{} holds no {what}", path.display());
    Ok(secret)
}

/// `url` with any password replaced by `***`. Unparseable input is returned
/// as a placeholder rather than verbatim, since it may still hold a secret.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have credentials at all.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

/// Serialises a URL field with its password hidden.
pub fn redacted_url<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(url))
}

/// Serialises an optional URL with its password hidden.
pub fn redacted_optional_url<S: serde::Serializer>(
    url: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_some(&redact_url(url)),
        None => serializer.serialize_none(),
    }
}

/// Serialises a list of URLs with their passwords hidden.
pub fn redacted_urls<S: serde::Serializer>(
    urls: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(urls.iter().map(|u| redact_url(u)))
}

/// Settings every service takes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ServiceArgs {
    /// Log format: text or json.
    #[arg(long, env = "CRAWLER__LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Print the configuration this service would run with (passwords
    /// hidden) as JSON, and exit.
    #[arg(long)]
    #[serde(skip)]
    pub dump_config: bool,
}

/// Where a gRPC service serves `/healthz`, `/readyz` and `/metrics`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct AdminArgs {
    /// Address of the HTTP endpoint for /healthz, /readyz and /metrics
    /// (port 0 picks a free one; the service logs it as `admin=`).
    #[arg(long = "admin-listen", env = "CRAWLER__ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser, Serialize)]
    #[command(name = "probe")]
    struct Probe {
        #[arg(long, env = "CRAWLER_CONFIG_TEST__DEPTH", default_value_t = 3)]
        depth: u32,
        #[arg(long, default_value = "amqp://guest:secret@127.0.0.1:5672/%2f")]
        #[serde(serialize_with = "redacted_url")]
        amqp_url: String,
    }

    #[test]
    fn defaults_read_no_environment_variable() {
        use clap::CommandFactory;
        assert!(
            Probe::command()
                .get_arguments()
                .any(|a| a.get_env().is_some())
        );
        let bare = without_environment(Probe::command());
        assert!(bare.get_arguments().all(|a| a.get_env().is_none()));
        assert_eq!(defaults::<Probe>().depth, 3);
    }

    #[test]
    fn a_dump_hides_passwords() {
        let dump = dump(&defaults::<Probe>());
        assert!(
            dump.contains("amqp://guest:***@127.0.0.1:5672/%2f"),
            "{dump}"
        );
        assert!(!dump.contains("secret"));
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }
}
