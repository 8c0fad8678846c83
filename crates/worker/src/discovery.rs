//! Which masters a worker serves. Each `--master` is a URL whose host may be
//! a DNS name that resolves to several masters (a compose service scaled to
//! three, a Kubernetes headless Service); the worker keeps one stream to each
//! address. Names are resolved again every [`RESOLVE_EVERY`] and whenever a
//! registered stream is lost (its master may have moved): streams to new
//! addresses start, streams to addresses no longer listed drain and stop. A
//! failed lookup changes nothing, so a DNS hiccup never drops a master.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// How often master names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// One configured master: a URL and the addresses its host resolved to last.
struct Target {
    url: Url,
    resolved: BTreeSet<String>,
}

impl Target {
    fn parse(raw: &str) -> anyhow::Result<Self> {
        let url = Url::parse(raw).map_err(|e| anyhow::anyhow!("--master `{raw}`: {e}"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https") && url.host_str().is_some(),
            "--master `{raw}` must be an http:// or https:// URL with a host"
        );
        Ok(Self {
            url,
            resolved: BTreeSet::new(),
        })
    }

    /// The master URLs this target stands for now: one per address.
    async fn resolve(&mut self) -> &BTreeSet<String> {
        let host = self.url.host_str().unwrap_or_default().to_string();
        let port = self.url.port_or_known_default().unwrap_or(80);
        match tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await {
            Ok(addrs) => {
                let found: BTreeSet<String> = addrs
                    .map(|addr| endpoint(self.url.scheme(), addr))
                    .collect();
                if found.is_empty() {
                    tracing::warn!(master = %self.url, "the master name resolves to no address; keeping the last ones");
                } else {
                    if found != self.resolved {
                        tracing::info!(master = %self.url, addresses = ?found, "masters resolved");
                    }
                    self.resolved = found;
                }
            }
            Err(e) => {
                tracing::warn!(master = %self.url, error = %e, "cannot resolve the master name; keeping the last addresses");
            }
        }
        &self.resolved
    }
}

fn endpoint(scheme: &str, addr: SocketAddr) -> String {
    format!("{scheme}://{addr}")
}

/// Starts a session to one master address; it runs until its token is
/// cancelled, and notifies `lost` each time a registered stream ends.
pub type StartSession =
    dyn Fn(String, CancellationToken, Arc<Notify>) -> JoinHandle<()> + Send + Sync;

/// Keeps one session per resolved master address until `shutdown`, then
/// waits for every session to drain.
pub async fn serve_masters(
    configured: &[String],
    start: &StartSession,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut targets = configured
        .iter()
        .map(|raw| Target::parse(raw))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lost = Arc::new(Notify::new());
    let mut sessions: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    loop {
        let mut wanted = BTreeSet::new();
        for target in &mut targets {
            wanted.extend(target.resolve().await.iter().cloned());
        }
        sessions.retain(|address, (stop, _)| {
            let keep = wanted.contains(address);
            if !keep {
                tracing::info!(master = %address, "master no longer listed; draining its stream");
                stop.cancel();
            }
            keep
        });
        for address in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = sessions.entry(address) {
                let stop = shutdown.child_token();
                let task = start(slot.key().clone(), stop.clone(), lost.clone());
                slot.insert((stop, task));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            _ = lost.notified() => {}
        }
    }
    for (_, (_, task)) in sessions {
        let _ = task.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn bad_master_urls_are_refused_clearly() {
        assert!(Target::parse("master:50052").is_err());
        assert!(Target::parse("ftp://master:50052").is_err());
        assert!(Target::parse("http://master:50052").is_ok());
    }

    #[tokio::test]
    async fn a_name_with_two_addresses_gets_a_session_each() {
        // `localhost` resolves to 127.0.0.1 and, where IPv6 is set up, ::1.
        let started = Arc::new(Mutex::new(Vec::new()));
        let seen = started.clone();
        let start: Box<StartSession> = Box::new(move |address, stop, _lost| {
            seen.lock().unwrap().push(address);
            tokio::spawn(async move { stop.cancelled().await })
        });
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let serving = tokio::spawn(async move {
            serve_masters(
                &[
                    "http://localhost:50052".into(),
                    "http://127.0.0.1:50052".into(),
                ],
                &*start,
                stop,
            )
            .await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while started.lock().unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no session started");
            tokio::task::yield_now().await;
        }
        shutdown.cancel();
        serving.await.unwrap().unwrap();
        let started = started.lock().unwrap().clone();
        assert!(
            started.contains(&"http://127.0.0.1:50052".to_string()),
            "{started:?}"
        );
        let unique: BTreeSet<_> = started.iter().collect();
        assert_eq!(
            unique.len(),
            started.len(),
            "one session per address: {started:?}"
        );
    }
}
