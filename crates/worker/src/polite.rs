//! Politeness per host. Before a page is fetched, robots.txt is asked (when
//! the job respects it, or the operator forces it), then a slot on the host
//! is taken from the host gate: at most `host_concurrency` fetches at once
//! and starts at least the larger of `host_delay` and the host's
//! `Crawl-delay` apart. The gate is shared by the whole cluster when one is
//! configured; while it cannot be reached, this worker's own gate keeps the
//! limits within the worker. A host that answers 429 or 503 with
//! `Retry-After` is paused on the shared gate and on this worker's own:
//! every worker that asks the shared gate waits. With politeness off
//! (no limit, no delay) a worker asks only its own gate, so only the
//! pauses it was asked for itself hold for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crawler_adapters::MemoryHostGate;
use crawler_core::ports::{HostGate, HostLimits};
use url::Url;

use crate::fetch::Fetcher;
use crate::robots::{RobotsCache, RobotsSettings, Verdict};

/// How long fetches go by this worker's own gate after the shared one
/// failed, before it is asked again: a Redis that is away must not cost
/// every fetch a timeout.
const GATE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct PolitenessSettings {
    /// robots.txt is respected even by jobs that ask otherwise.
    pub force_robots: bool,
    /// Fetches at once on one host; 0 for no limit.
    pub host_concurrency: u32,
    /// Least time between two fetches' starts on one host.
    pub host_delay: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// How long a slot is held at most (a fetch's whole timeout, and a
    /// margin): a worker that dies holding one frees it after this.
    pub lease: Duration,
    pub robots: RobotsSettings,
}

/// What a host needs before a fetch.
pub enum Admission {
    /// Fetch it; give the slot back afterwards.
    Enter(Slot),
    /// Do not fetch it, for this reason (robots.txt).
    Refused(String),
}

pub struct Politeness {
    settings: PolitenessSettings,
    robots: RobotsCache,
    gate: Arc<dyn HostGate>,
    /// This worker's own gate, used while `gate` cannot be reached.
    own: Arc<MemoryHostGate>,
    /// When the shared gate last failed; for [`GATE_RETRY`] after that,
    /// fetches do not wait on it.
    gate_failed: Mutex<Option<Instant>>,
    turns: Turns,
    tickets: AtomicU64,
    worker_id: String,
}

impl Politeness {
    /// Politeness through `gate`; `None` means this worker's own gate.
    pub fn new(
        settings: PolitenessSettings,
        gate: Option<Arc<dyn HostGate>>,
        worker_id: &str,
    ) -> Self {
        let own = Arc::new(MemoryHostGate::new());
        Self {
            robots: RobotsCache::new(settings.robots.clone()),
            gate: gate.unwrap_or_else(|| own.clone()),
            own,
            settings,
            gate_failed: Mutex::new(None),
            turns: Turns::default(),
            tickets: AtomicU64::new(0),
            worker_id: worker_id.to_string(),
        }
    }

    /// Waits until `url` may be fetched by `agent`, or says why it may not.
    pub async fn admit(
        &self,
        fetcher: &Fetcher,
        url: &Url,
        agent: &str,
        respect_robots: bool,
    ) -> Admission {
        let mut delay = self.settings.host_delay;
        if respect_robots || self.settings.force_robots {
            match self.robots.judge(fetcher, url, agent).await {
                Verdict::Refused(reason) => return Admission::Refused(reason),
                Verdict::Allowed { crawl_delay } => {
                    delay = delay.max(crawl_delay.unwrap_or_default());
                }
            }
        }
        let Some(host) = url.host_str() else {
            return Admission::Enter(Slot::free());
        };
        // With no limit and no delay (politeness off), the shared gate is
        // not asked: only the pauses this worker was asked for hold.
        let off = self.settings.host_concurrency == 0 && delay.is_zero();
        let limits = HostLimits {
            concurrency: self.settings.host_concurrency,
            delay,
            lease: self.settings.lease,
        };
        let ticket = format!(
            "{}-{}",
            self.worker_id,
            self.tickets.fetch_add(1, Ordering::Relaxed)
        );
        // A paced host lets one fetch start per delay: this worker's fetches
        // for it queue here, in order, so only the first asks the gate
        // rather than all of them at every wake-up.
        let turn = if delay.is_zero() {
            None
        } else {
            Some(self.turns.take(host).await)
        };
        let admission = self.enter(off, host, ticket, limits).await;
        drop(turn);
        admission
    }

    /// Asks a gate until a slot on `host` is taken: the shared one unless
    /// politeness is `off` or the shared gate failed a moment ago, in which
    /// case (and when it fails now) this worker's own.
    async fn enter(&self, off: bool, host: &str, ticket: String, limits: HostLimits) -> Admission {
        loop {
            let (gate, answer) = if off || self.gate_recently_failed() {
                self.try_own(host, &ticket, limits).await
            } else {
                match self.gate.try_enter(host, &ticket, limits).await {
                    Ok(answer) => {
                        self.gate_back();
                        (self.gate.clone(), answer)
                    }
                    Err(e) => {
                        self.gate_lost(&e);
                        self.try_own(host, &ticket, limits).await
                    }
                }
            };
            match answer {
                None => {
                    return Admission::Enter(Slot {
                        held: Some((gate, host.to_string(), ticket)),
                    });
                }
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Asks this worker's own gate (which never fails).
    async fn try_own(
        &self,
        host: &str,
        ticket: &str,
        limits: HostLimits,
    ) -> (Arc<dyn HostGate>, Option<Duration>) {
        let answer = self
            .own
            .try_enter(host, ticket, limits)
            .await
            .ok()
            .flatten();
        (self.own.clone(), answer)
    }

    /// The host asked for a pause of `asked` (capped): nothing starts on it
    /// until then. Returns the pause applied.
    pub async fn pause(&self, url: &Url, asked: Duration) -> Duration {
        let pause = asked.min(self.settings.max_retry_after);
        let Some(host) = url.host_str() else {
            return pause;
        };
        if let Err(e) = self.gate.pause(host, pause).await {
            self.gate_lost(&e);
        }
        let _ = self.own.pause(host, pause).await;
        pause
    }

    fn gate_recently_failed(&self) -> bool {
        self.gate_failed
            .lock()
            .expect("gate state")
            .is_some_and(|at| at.elapsed() < GATE_RETRY)
    }

    fn gate_lost(&self, error: &dyn std::fmt::Display) {
        let was_up = self
            .gate_failed
            .lock()
            .expect("gate state")
            .replace(Instant::now())
            .is_none();
        if was_up {
            tracing::warn!(%error, "the shared host gate cannot be reached; per-host limits hold within this worker until it is back");
        }
    }

    fn gate_back(&self) {
        if self
            .gate_failed
            .lock()
            .expect("gate state")
            .take()
            .is_some()
        {
            tracing::info!("the shared host gate is back");
        }
    }
}

/// A slot on a host, given back with [`Slot::leave`].
pub struct Slot {
    held: Option<(Arc<dyn HostGate>, String, String)>,
}

impl Slot {
    fn free() -> Self {
        Self { held: None }
    }

    pub async fn leave(self) {
        if let Some((gate, host, ticket)) = self.held
            && let Err(e) = gate.leave(&host, &ticket).await
        {
            // The lease frees the slot in the end.
            tracing::debug!(%host, error = %e, "cannot give a host slot back");
        }
    }
}

/// One queue per host of this worker's fetches waiting to start; a host's
/// queue is forgotten once nobody waits in it.
#[derive(Default)]
struct Turns(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A host's turn, held until the fetch has its slot.
struct Turn<'a> {
    turns: &'a Turns,
    host: String,
    queue: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Turns {
    async fn take(&self, host: &str) -> Turn<'_> {
        let queue = self
            .0
            .lock()
            .expect("turns")
            .entry(host.to_string())
            .or_default()
            .clone();
        let guard = queue.clone().lock_owned().await;
        Turn {
            turns: self,
            host: host.to_string(),
            queue,
            guard: Some(guard),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut turns = self.turns.0.lock().expect("turns");
        // The map's and this turn's references: nobody else waits.
        if Arc::strong_count(&self.queue) == 2 {
            turns.remove(&self.host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchConfig;
    use crate::robots::RobotsSettings;
    use crawler_core::net_policy::NetworkPolicy;

    fn politeness(host_delay: Duration) -> Politeness {
        let settings = PolitenessSettings {
            force_robots: false,
            host_concurrency: 2,
            host_delay,
            max_retry_after: Duration::from_secs(60),
            lease: Duration::from_secs(30),
            robots: RobotsSettings {
                ttl: Duration::from_secs(60),
                retry_unreachable: Duration::from_secs(60),
                max_crawl_delay: Duration::from_secs(5),
            },
        };
        Politeness::new(settings, None, "w")
    }

    #[tokio::test]
    async fn fetches_of_a_paced_host_start_a_delay_apart_and_leave_nothing_behind() {
        let polite = Arc::new(politeness(Duration::from_millis(40)));
        let fetcher =
            Arc::new(Fetcher::new(&FetchConfig::default(), NetworkPolicy::default()).unwrap());
        let url = Url::parse("http://paced.test/").unwrap();
        let starts = futures::future::join_all((0..6).map(|_| {
            let (polite, fetcher, url) = (polite.clone(), fetcher.clone(), url.clone());
            async move {
                let Admission::Enter(slot) = polite.admit(&fetcher, &url, "crawler", false).await
                else {
                    panic!("no robots.txt was asked");
                };
                let started = Instant::now();
                slot.leave().await;
                started
            }
        }))
        .await;
        let mut starts = starts;
        starts.sort();
        for pair in starts.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(39),
                "{:?}",
                pair[1] - pair[0]
            );
        }
        assert!(
            polite.turns.0.lock().unwrap().is_empty(),
            "every host queue forgotten"
        );
    }
}
