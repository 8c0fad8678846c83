//! The rules of leases: which master may run a job, whose writes count, when
//! a job is an orphan to hand over, and which lock-server replica leads.
//!
//! The stores apply these rules to a row they hold locked (Postgres
//! `SELECT … FOR UPDATE`, SQLite's write lock), so the decision and the write
//! are one step. The rules are plain functions of the row, which is what lets
//! the Postgres and SQLite stores, and their tests, agree.
//!
//! Fencing: every grant of a job raises its token by one, inside that locked
//! step, in the one database every replica shares. A token is therefore
//! strictly increasing per job whichever replica granted it, and a write
//! presented with any token but the newest is refused: a master that lost its
//! lease can never save a level, complete, or release the job.
//!
//! Times are milliseconds since the Unix epoch on the lock server's clock.
//! Replicas on different machines should run NTP: a skew shifts when a lease
//! or a leadership is deemed expired, never whose write counts.

use std::time::Duration;

use crate::model::{JobId, JobState};
use crate::ports::{Lease, StoreError};

/// Shortest lease a master may ask for: a shorter one would expire between
/// two heartbeats on a busy machine.
pub const MIN_TTL: Duration = Duration::from_millis(300);
/// Longest lease: a dead master's job waits at most this long for takeover.
pub const MAX_TTL: Duration = Duration::from_secs(600);

/// A lease length outside [`MIN_TTL`]..=[`MAX_TTL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a lease of {requested_ms} ms is outside the lock server's range of {} to {} ms",
    MIN_TTL.as_millis(),
    MAX_TTL.as_millis()
)]
pub struct TtlOutOfRange {
    pub requested_ms: u64,
}

/// Checks a requested lease length; the lock server refuses what this refuses,
/// and a master refuses the same configuration at start.
pub fn checked_ttl(ttl: Duration) -> Result<Duration, TtlOutOfRange> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        Ok(ttl)
    } else {
        Err(TtlOutOfRange {
            requested_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// `now + ttl` in ms, saturating rather than wrapping on absurd TTLs.
pub fn expiry(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// A job's lease as its row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub state: JobState,
    pub master_id: Option<String>,
    pub fencing_token: u64,
    pub expires_at_ms: Option<u64>,
}

/// What an `Acquire` of a job must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireRule {
    /// Write this lease (the next token), then report it granted.
    Grant(Lease),
    /// The job ended; report how, write nothing.
    AlreadyDone,
    /// Another master's lease is live; write nothing.
    HeldElsewhere {
        master_id: String,
        expires_at_ms: u64,
    },
}

impl LeaseRow {
    /// Done jobs stay done; a live lease of another master wins; anything
    /// else (no lease, an expired one, or the caller's own) gets a new lease
    /// with the next token, so writes under any earlier grant are refused.
    pub fn acquire(
        &self,
        job_id: &JobId,
        master_id: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> AcquireRule {
        if self.state.is_final() {
            return AcquireRule::AlreadyDone;
        }
        if let (Some(holder), Some(expires_at_ms)) = (&self.master_id, self.expires_at_ms)
            && holder != master_id
            && expires_at_ms > now_ms
        {
            return AcquireRule::HeldElsewhere {
                master_id: holder.clone(),
                expires_at_ms,
            };
        }
        AcquireRule::Grant(self.next_grant(job_id, ttl, now_ms))
    }

    /// A running job whose lease ran out: its master stopped heartbeating
    /// (it died, froze, lost its network, or released the job on purpose).
    pub fn is_orphan(&self, now_ms: u64) -> bool {
        self.state == JobState::Running && self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// The lease that takes over an orphan (see [`Self::is_orphan`]).
    pub fn takeover(&self, job_id: &JobId, ttl: Duration, now_ms: u64) -> Option<Lease> {
        self.is_orphan(now_ms)
            .then(|| self.next_grant(job_id, ttl, now_ms))
    }

    fn next_grant(&self, job_id: &JobId, ttl: Duration, now_ms: u64) -> Lease {
        Lease {
            job_id: job_id.clone(),
            fencing_token: self.fencing_token + 1,
            expires_at_ms: expiry(now_ms, ttl),
        }
    }

    /// Refuses a token that is not the newest grant. Token 0 means "never
    /// granted", so it is refused even when it matches.
    pub fn check_token(&self, presented: u64) -> Result<(), StoreError> {
        if presented != self.fencing_token || self.fencing_token == 0 {
            return Err(StoreError::StaleToken {
                presented,
                current: self.fencing_token,
            });
        }
        Ok(())
    }

    /// For writes that only a running job's holder may make (saving a level,
    /// releasing): the newest token, on a job that has not ended.
    pub fn check_writer(&self, presented: u64) -> Result<(), StoreError> {
        self.check_token(presented)?;
        if self.state.is_final() {
            return Err(StoreError::Ended);
        }
        Ok(())
    }

    /// Why a conditional heartbeat matched no row: a stale token, or a job
    /// that already ended (then the lease is simply reported back).
    pub fn heartbeat_refusal(&self, presented: u64) -> Result<u64, StoreError> {
        self.check_token(presented)?;
        Ok(self.expires_at_ms.unwrap_or(0))
    }
}

/// The lock service's leadership as its row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The replica that leads (or led last).
    pub holder: String,
    /// Where masters reach it.
    pub address: String,
    /// One continuous leadership: grows by one each time the lead is taken
    /// after it lapsed (or was resigned), whoever takes it.
    pub epoch: u64,
    pub expires_at_ms: u64,
}

impl Leadership {
    /// What the row becomes when `candidate` asks to lead at `now_ms`, or
    /// `None` when another replica's leadership is still live. The holder
    /// renews its live lead; anyone, the last holder too, takes a lapsed one
    /// with the next epoch.
    pub fn claim(
        current: &Self,
        candidate: &str,
        address: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> Option<Self> {
        let epoch = if !current.is_live(now_ms) {
            current.epoch + 1
        } else if current.holder == candidate {
            current.epoch
        } else {
            return None;
        };
        Some(Self {
            holder: candidate.to_string(),
            address: address.to_string(),
            epoch,
            expires_at_ms: expiry(now_ms, ttl),
        })
    }

    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn row(state: JobState, master: Option<&str>, token: u64, expires: Option<u64>) -> LeaseRow {
        LeaseRow {
            state,
            master_id: master.map(str::to_string),
            fencing_token: token,
            expires_at_ms: expires,
        }
    }

    fn job() -> JobId {
        JobId("j".into())
    }

    #[test]
    fn a_fresh_job_is_granted_token_one() {
        assert_eq!(
            row(JobState::Queued, None, 0, None).acquire(&job(), "m1", TTL, 5_000),
            AcquireRule::Grant(Lease {
                job_id: job(),
                fencing_token: 1,
                expires_at_ms: 15_000,
            })
        );
    }

    #[test]
    fn a_live_lease_of_another_master_is_respected() {
        assert_eq!(
            row(JobState::Running, Some("m1"), 3, Some(9_000)).acquire(&job(), "m2", TTL, 8_999),
            AcquireRule::HeldElsewhere {
                master_id: "m1".into(),
                expires_at_ms: 9_000
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_with_a_higher_token() {
        let expired = row(JobState::Running, Some("m1"), 3, Some(9_000));
        assert!(matches!(
            expired.acquire(&job(), "m2", TTL, 9_000),
            AcquireRule::Grant(Lease {
                fencing_token: 4,
                ..
            })
        ));
        assert_eq!(
            expired
                .takeover(&job(), TTL, 9_000)
                .map(|l| l.fencing_token),
            Some(4)
        );
    }

    #[test]
    fn only_running_jobs_past_their_lease_are_orphans() {
        assert!(row(JobState::Running, Some("m"), 1, Some(100)).is_orphan(100));
        assert!(!row(JobState::Running, Some("m"), 1, Some(101)).is_orphan(100));
        assert!(!row(JobState::Queued, None, 0, None).is_orphan(100));
        assert!(!row(JobState::Done, Some("m"), 1, Some(1)).is_orphan(100));
        assert_eq!(
            row(JobState::Running, Some("m"), 1, Some(101)).takeover(&job(), TTL, 100),
            None
        );
    }

    #[test]
    fn the_same_master_reacquiring_gets_a_new_token() {
        assert!(matches!(
            row(JobState::Running, Some("m1"), 3, Some(9_000)).acquire(&job(), "m1", TTL, 5_000),
            AcquireRule::Grant(Lease {
                fencing_token: 4,
                ..
            })
        ));
    }

    #[test]
    fn done_jobs_are_never_leased_again() {
        assert_eq!(
            row(JobState::Done, Some("m1"), 3, Some(1)).acquire(&job(), "m2", TTL, 5_000),
            AcquireRule::AlreadyDone
        );
    }

    #[test]
    fn token_zero_is_never_current_and_ended_jobs_take_no_writes() {
        assert!(row(JobState::Queued, None, 0, None).check_token(0).is_err());
        assert!(
            row(JobState::Running, Some("m"), 2, None)
                .check_token(2)
                .is_ok()
        );
        assert!(
            row(JobState::Running, Some("m"), 2, None)
                .check_writer(2)
                .is_ok()
        );
        assert!(matches!(
            row(JobState::Done, Some("m"), 2, None).check_writer(2),
            Err(StoreError::Ended)
        ));
        assert!(matches!(
            row(JobState::Running, Some("m"), 3, None).check_writer(2),
            Err(StoreError::StaleToken {
                presented: 2,
                current: 3
            })
        ));
    }

    #[test]
    fn ttls_outside_the_range_are_refused() {
        assert!(checked_ttl(Duration::from_millis(299)).is_err());
        assert!(checked_ttl(MIN_TTL).is_ok());
        assert!(checked_ttl(MAX_TTL).is_ok());
        let err = checked_ttl(Duration::from_secs(601)).unwrap_err();
        assert!(err.to_string().contains("601000 ms"), "{err}");
    }

    #[test]
    fn leadership_is_renewed_by_its_holder_and_taken_only_once_expired() {
        let unclaimed = Leadership {
            holder: String::new(),
            address: String::new(),
            epoch: 0,
            expires_at_ms: 0,
        };
        let first = Leadership::claim(&unclaimed, "a", "http://a", TTL, 1_000).unwrap();
        assert_eq!((first.holder.as_str(), first.epoch), ("a", 1));
        assert_eq!(
            Leadership::claim(&first, "b", "http://b", TTL, 10_999),
            None
        );
        let renewed = Leadership::claim(&first, "a", "http://a", TTL, 5_000).unwrap();
        assert_eq!((renewed.epoch, renewed.expires_at_ms), (1, 15_000));
        let taken = Leadership::claim(&renewed, "b", "http://b", TTL, 15_000).unwrap();
        assert_eq!((taken.holder.as_str(), taken.epoch), ("b", 2));
        assert!(taken.is_live(24_999) && !taken.is_live(25_000));
        let back = Leadership::claim(&taken, "b", "http://b", TTL, 25_000).unwrap();
        assert_eq!(back.epoch, 3, "a lapsed lead taken back is a new epoch");
    }
}
