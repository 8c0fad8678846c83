//! Which replica of the lock service answers. Replicas elect a leader
//! through the database they share (a lease row, see
//! [`crawler_core::lease::Leadership`]): the leader renews it every third of
//! its TTL, and when the leader stops renewing (it died, froze or lost the
//! database) another replica takes the row once it expires. So a new leader
//! answers at most one TTL plus one renewal interval after the old one went
//! silent: 3 s + 1 s with the defaults.
//!
//! Followers refuse every call with `not_leader` and the leader's address,
//! so masters go straight to it. A leader that took the lead after it had
//! lapsed hands out no orphans for a grace (two leadership TTLs by
//! default): leases that ran out while no replica could answer belong to
//! masters that are alive and will heartbeat again, not to dead ones. The
//! first leader of a new database has no such leases and no grace. Correctness never rests on there being one
//! leader: every write is fenced in the database (see `crawler_core::lease`),
//! so a paused ex-leader that answers one more call cannot break a job.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::lease::Leadership;
use crawler_core::ports::Election;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::metadata::MetadataValue;

/// How one replica takes part in the election.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// This replica's name in the leadership row and the logs.
    pub id: String,
    /// Where masters reach this replica; `None` means `http://<bound address>`.
    pub advertise_url: Option<String>,
    /// How long a leadership lasts without renewal.
    pub leader_ttl: Duration,
    /// How long a new leader waits before handing out orphans.
    pub takeover_grace: Duration,
}

impl ReplicaSettings {
    pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(3);

    /// A replica with a random id, the default TTL and a grace of two TTLs:
    /// what a single lock server (the embedded default, a test) needs.
    pub fn single() -> Self {
        Self {
            id: format!("lock-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            advertise_url: None,
            leader_ttl: Self::DEFAULT_LEADER_TTL,
            takeover_grace: Self::DEFAULT_LEADER_TTL * 2,
        }
    }
}

pub struct Leader {
    id: String,
    address: String,
    ttl: Duration,
    takeover_grace: Duration,
    election: Arc<dyn Election>,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    /// This replica answers until then (its own clock, ms since the epoch).
    leading_until_ms: u64,
    /// Until then, this leader hands out no orphans.
    takeovers_from_ms: u64,
    /// When the database last answered a campaign.
    last_campaign_ms: u64,
    /// The leadership as last read.
    last: Option<Leadership>,
}

impl Leader {
    pub fn new(settings: &ReplicaSettings, address: String, election: Arc<dyn Election>) -> Self {
        Self {
            id: settings.id.clone(),
            address,
            ttl: settings.leader_ttl,
            takeover_grace: settings.takeover_grace,
            election,
            view: Mutex::default(),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// One round: lead, or renew the lead, unless another replica holds it.
    pub async fn campaign(&self) {
        // The lease counts from before the call, so a slow database can
        // only make this replica step down early, never late.
        let asked_at = crawler_core::now_ms();
        let outcome = self
            .election
            .try_lead(&self.id, &self.address, self.ttl, asked_at)
            .await;
        let mut view = self.lock_view();
        let was_leading = view.leading_until_ms > asked_at;
        match outcome {
            Ok(leadership) => {
                let leading = leadership.holder == self.id;
                if leading && !was_leading {
                    view.takeovers_from_ms = if leadership.epoch > 1 {
                        asked_at.saturating_add(
                            u64::try_from(self.takeover_grace.as_millis()).unwrap_or(u64::MAX),
                        )
                    } else {
                        0
                    };
                    tracing::info!(replica = %self.id, epoch = leadership.epoch, "became the lock service leader");
                } else if !leading && was_leading {
                    tracing::warn!(replica = %self.id, leader = %leadership.holder, "lost the lock service leadership");
                }
                view.leading_until_ms = if leading { leadership.expires_at_ms } else { 0 };
                view.last = Some(leadership);
                view.last_campaign_ms = asked_at;
                crate::metrics::leading(leading);
            }
            // Keep answering until the lease we hold runs out: the database
            // may be back before then, and no one else can lead meanwhile.
            Err(e) => tracing::warn!(replica = %self.id, error = %e, "cannot renew the leadership"),
        }
    }

    /// Campaigns every third of the TTL until `shutdown`, then resigns so
    /// another replica leads at once instead of after the TTL.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => self.campaign().await,
            }
        }
        if self.is_leading() {
            self.lock_view().leading_until_ms = 0;
            match self.election.resign(&self.id).await {
                Ok(()) => {
                    tracing::info!(replica = %self.id, "resigned the lock service leadership")
                }
                Err(e) => {
                    tracing::warn!(replica = %self.id, error = %e, "cannot resign; the leadership lapses by itself")
                }
            }
        }
    }

    /// Ready when the database answered a campaign within the last TTL: a
    /// replica that cannot reach it can neither lead nor name the leader.
    pub fn readiness(&self) -> Result<(), String> {
        let last = self.lock_view().last_campaign_ms;
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        if crawler_core::now_ms() < last.saturating_add(ttl) {
            Ok(())
        } else {
            Err("the job store has not answered within a leadership TTL".to_string())
        }
    }

    /// Whether orphans may be handed out: this replica has led for long
    /// enough that every live master has renewed its lease with it.
    pub fn takeovers_allowed(&self) -> bool {
        crawler_core::now_ms() >= self.lock_view().takeovers_from_ms
    }

    pub fn is_leading(&self) -> bool {
        self.lock_view().leading_until_ms > crawler_core::now_ms()
    }

    /// `Ok` while this replica leads; otherwise the refusal that names the
    /// leader, when one is known to be live.
    pub fn check(&self) -> Result<(), Status> {
        let now = crawler_core::now_ms();
        let view = self.lock_view();
        if view.leading_until_ms > now {
            return Ok(());
        }
        let leader = view
            .last
            .as_ref()
            .filter(|l| l.is_live(now) && l.holder != self.id && !l.address.is_empty());
        let mut status = ErrorCode::NotLeader.status(match leader {
            Some(l) => format!(
                "this lock server is not the leader; {} at {} is",
                l.holder, l.address
            ),
            None => "this lock server is not the leader, and no leader is known yet".to_string(),
        });
        if let Some(value) = leader.and_then(|l| MetadataValue::try_from(l.address.as_str()).ok()) {
            status
                .metadata_mut()
                .insert(crawler_proto::LEADER_METADATA_KEY, value);
        }
        Err(status)
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }
}
