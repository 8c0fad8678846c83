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

use futures::future::BoxFuture;
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

    /// The host name the URL gives, which the master's certificate names.
    fn host_name(&self) -> String {
        self.url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string()
    }

    /// The master URLs this target stands for now: one per address.
    async fn resolve(&mut self, lookup: &Lookup) -> &BTreeSet<String> {
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port_or_known_default().unwrap_or(80);
        match lookup(host.trim_matches(['[', ']']).to_string(), port).await {
            Ok(addrs) => {
                let found: BTreeSet<String> = addrs
                    .into_iter()
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

/// Starts a session to one master address (its URL, and the name it was
/// resolved from, which the master's certificate must carry); it runs
/// until its token is cancelled, and notifies `lost` each time a
/// registered stream ends.
pub type StartSession =
    dyn Fn(String, String, CancellationToken, Arc<Notify>) -> JoinHandle<()> + Send + Sync;

/// Resolves a host and port to socket addresses.
pub type Lookup =
    dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync;

/// The system resolver (DNS, /etc/hosts).
fn system_lookup(host: String, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
    Box::pin(async move {
        Ok(tokio::net::lookup_host((host.as_str(), port))
            .await?
            .collect())
    })
}

/// Keeps one session per resolved master address until `shutdown`, then
/// waits for every session to drain.
pub async fn serve_masters(
    configured: &[String],
    start: &StartSession,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_resolved(configured, &system_lookup, start, shutdown).await
}

/// [`serve_masters`] with the resolver given.
async fn serve_resolved(
    configured: &[String],
    lookup: &Lookup,
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
        let mut wanted = std::collections::BTreeMap::new();
        for target in &mut targets {
            let name = target.host_name();
            for address in target.resolve(lookup).await {
                wanted.insert(address.clone(), name.clone());
            }
        }
        sessions.retain(|address, (stop, _)| {
            let keep = wanted.contains_key(address);
            if !keep {
                tracing::info!(master = %address, "master no longer listed; draining its stream");
                stop.cancel();
            }
            keep
        });
        for (address, name) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = sessions.entry(address) {
                let stop = shutdown.child_token();
                let task = start(slot.key().clone(), name, stop.clone(), lost.clone());
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn bad_master_urls_are_refused_clearly() {
        assert!(Target::parse("master:50052").is_err());
        assert!(Target::parse("ftp://master:50052").is_err());
        assert!(Target::parse("http://master:50052").is_ok());
    }

    /// What a fake name resolves to; the test changes it as masters scale.
    type Answers = Arc<Mutex<Vec<SocketAddr>>>;

    /// A resolver of the one name `masters`, counting its lookups.
    fn fake_lookup(answers: Answers, lookups: Arc<AtomicUsize>) -> Box<Lookup> {
        Box::new(move |host, _port| {
            lookups.fetch_add(1, Ordering::SeqCst);
            let answer = answers.lock().unwrap().clone();
            Box::pin(async move {
                assert_eq!(host, "masters");
                Ok(answer)
            })
        })
    }

    /// Sessions started, and the stop token of each.
    type Sessions = Arc<Mutex<Vec<(String, CancellationToken)>>>;

    async fn wait_for(
        sessions: &Sessions,
        what: &str,
        done: impl Fn(&[(String, CancellationToken)]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done(&sessions.lock().unwrap()) {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn each_address_of_a_name_gets_a_session_and_the_name_is_followed_as_it_changes() {
        let addr = |port: u16| SocketAddr::from(([10, 0, 0, 1], port));
        let answers: Answers = Arc::new(Mutex::new(vec![addr(1), addr(2)]));
        let lookups = Arc::new(AtomicUsize::new(0));
        let lookup = fake_lookup(answers.clone(), lookups.clone());
        let sessions: Sessions = Arc::default();
        let lost = Arc::new(Mutex::new(None::<Arc<Notify>>));
        let (seen, lost_slot) = (sessions.clone(), lost.clone());
        let start: Box<StartSession> = Box::new(move |address, _name, stop, notify| {
            seen.lock().unwrap().push((address, stop.clone()));
            *lost_slot.lock().unwrap() = Some(notify);
            tokio::spawn(async move { stop.cancelled().await })
        });
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let serving = tokio::spawn(async move {
            serve_resolved(&["http://masters:50052".into()], &*lookup, &*start, stop).await
        });
        wait_for(&sessions, "a session per address", |s| s.len() == 2).await;
        let names: BTreeSet<String> = sessions
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "http://10.0.0.1:1".to_string(),
                "http://10.0.0.1:2".to_string()
            ])
        );

        // The masters scale: :1 goes, :3 comes. A lost stream makes the
        // worker look again at once, without waiting for the timer.
        *answers.lock().unwrap() = vec![addr(2), addr(3)];
        lost.lock().unwrap().clone().unwrap().notify_one();
        wait_for(&sessions, "a session for the new address", |s| s.len() == 3).await;
        {
            let sessions = sessions.lock().unwrap();
            let stopped = |address: &str| {
                sessions
                    .iter()
                    .find(|(a, _)| a == address)
                    .is_some_and(|(_, stop)| stop.is_cancelled())
            };
            assert!(
                stopped("http://10.0.0.1:1"),
                "the address no longer listed drains"
            );
            assert!(
                !stopped("http://10.0.0.1:2"),
                "a kept address keeps its stream"
            );
            assert_eq!(sessions[2].0, "http://10.0.0.1:3");
        }

        // A lookup that finds nothing keeps the masters it knows.
        let looked = lookups.load(Ordering::SeqCst);
        answers.lock().unwrap().clear();
        lost.lock().unwrap().clone().unwrap().notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while lookups.load(Ordering::SeqCst) == looked {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no lookup after a lost stream"
            );
            tokio::task::yield_now().await;
        }
        // The loop acts on a lookup before it waits again; one more turn of
        // it proves the empty answer was acted on.
        lost.lock().unwrap().clone().unwrap().notify_one();
        while lookups.load(Ordering::SeqCst) < looked + 2 {
            assert!(tokio::time::Instant::now() < deadline, "no second lookup");
            tokio::task::yield_now().await;
        }
        {
            let sessions = sessions.lock().unwrap();
            assert_eq!(sessions.len(), 3, "no session started");
            assert!(
                sessions[1..].iter().all(|(_, stop)| !stop.is_cancelled()),
                "an empty answer drains nothing"
            );
        }
        shutdown.cancel();
        serving.await.unwrap().unwrap();
    }
}
