//! What the Postgres and SQLite stores share: the row they read back, and
//! the lease and completion rules applied to it. Keeping the rules here, as
//! plain functions of a row, is what keeps the two stores from drifting.

use std::time::Duration;

use crawler_core::model::{CrawlResult, JobFailure, JobId, JobRecord, JobSpec, JobState};
use crawler_core::ports::{AcquireOutcome, AdapterError, JobOutcome, Lease, StoreError};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

/// The columns every job query selects, in [`StoredJob::from_row`]'s terms.
macro_rules! job_columns {
    () => {
        "spec, state, pages_done, current_depth, result, failure, elapsed_ms, \
         master_id, fencing_token, lease_expires_at_ms"
    };
}
pub(crate) use job_columns;

/// The statements both stores run. Both speak `$n` parameters (SQLite
/// reads them as numbered), so only row locking differs between them.
pub(crate) mod sql {
    pub const INSERT_QUEUED: &str = "INSERT INTO jobs
            (job_id, client_id, client_job_id, spec, state, accepted_at_ms)
        VALUES ($1, $2, $3, $4, 'queued', $5)
        ON CONFLICT DO NOTHING";

    pub const INSERT_DONE: &str = "INSERT INTO jobs
            (job_id, client_id, client_job_id, spec, state, accepted_at_ms,
             result, pages_done, current_depth)
        VALUES ($1, $2, $3, $4, 'done', $5, $6, $7, $8)
        ON CONFLICT DO NOTHING";

    pub const SELECT_BY_ID: &str =
        concat!("SELECT ", job_columns!(), " FROM jobs WHERE job_id = $1");

    pub const SELECT_BY_CLIENT: &str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE client_id = $1 AND client_job_id = $2"
    );

    pub const GRANT: &str = "UPDATE jobs
        SET state = 'running', master_id = $2, fencing_token = $3, lease_expires_at_ms = $4
        WHERE job_id = $1";

    /// The token check and the renewal in one statement, so a takeover
    /// cannot slip between them.
    pub const RENEW: &str = "UPDATE jobs
        SET lease_expires_at_ms = $3, pages_done = $4, current_depth = $5
        WHERE job_id = $1 AND fencing_token = $2 AND state = 'running'";

    pub const COMPLETE: &str = "UPDATE jobs
        SET state = $2, result = $3, failure = $4, pages_done = $5, current_depth = $6,
            elapsed_ms = $7
        WHERE job_id = $1";
}

/// One job row, decoded.
#[derive(Debug, Clone)]
pub(crate) struct StoredJob {
    pub spec: JobSpec,
    pub state: JobState,
    pub pages_done: u32,
    pub current_depth: u32,
    pub result: Option<CrawlResult>,
    pub failure: Option<JobFailure>,
    pub elapsed_ms: u64,
    pub master_id: Option<String>,
    pub fencing_token: u64,
    pub lease_expires_at_ms: Option<u64>,
}

/// What `acquire` should do with a locked row.
#[derive(Debug, PartialEq)]
pub(crate) enum AcquireStep {
    /// Write this lease, then report it granted.
    Grant(Lease),
    /// Report without writing anything.
    Refuse(AcquireOutcome),
}

/// The values a completion writes.
pub(crate) struct Completion {
    pub state: JobState,
    pub result: Option<CrawlResult>,
    pub failure: Option<JobFailure>,
    pub pages_done: u32,
    pub current_depth: u32,
    pub elapsed_ms: u64,
}

impl StoredJob {
    pub fn from_row<'r, R>(row: &'r R) -> Result<Self, AdapterError>
    where
        R: Row,
        &'r str: ColumnIndex<R>,
        Json<JobSpec>: Decode<'r, R::Database> + Type<R::Database>,
        Json<CrawlResult>: Decode<'r, R::Database> + Type<R::Database>,
        Json<JobFailure>: Decode<'r, R::Database> + Type<R::Database>,
        String: Decode<'r, R::Database> + Type<R::Database>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
    {
        let unreadable = |e: sqlx::Error| {
            AdapterError::new(
                db_name::<R::Database>(),
                format!("a job row is unreadable: {e}"),
            )
        };
        let state: String = row.try_get("state").map_err(unreadable)?;
        let state = JobState::parse(&state).ok_or_else(|| {
            AdapterError::new(
                db_name::<R::Database>(),
                format!("a job row has the unknown state {state:?}"),
            )
        })?;
        let Json(spec): Json<JobSpec> = row.try_get("spec").map_err(unreadable)?;
        let result: Option<Json<CrawlResult>> = row.try_get("result").map_err(unreadable)?;
        let failure: Option<Json<JobFailure>> = row.try_get("failure").map_err(unreadable)?;
        let int = |column: &'r str| -> Result<i64, AdapterError> {
            row.try_get::<i64, _>(column).map_err(unreadable)
        };
        let lease: Option<i64> = row.try_get("lease_expires_at_ms").map_err(unreadable)?;
        Ok(Self {
            spec,
            state,
            pages_done: from_db(int("pages_done")?),
            current_depth: from_db(int("current_depth")?),
            result: result.map(|Json(r)| r),
            failure: failure.map(|Json(f)| f),
            elapsed_ms: from_db(int("elapsed_ms")?),
            master_id: row.try_get("master_id").map_err(unreadable)?,
            fencing_token: from_db(int("fencing_token")?),
            lease_expires_at_ms: lease.map(from_db),
        })
    }

    pub fn record(&self) -> JobRecord {
        JobRecord {
            spec: self.spec.clone(),
            state: self.state,
            pages_done: self.pages_done,
            current_depth: self.current_depth,
            result: self.result.clone(),
            failure: self.failure.clone(),
            elapsed_ms: self.elapsed_ms,
        }
    }

    /// Done jobs stay done; a live lease of another master wins; anything
    /// else (no lease, an expired one, or our own) gets a new lease with a
    /// higher token, so writes under any earlier grant are refused.
    pub fn acquire(&self, master_id: &str, ttl: Duration, now_ms: u64) -> AcquireStep {
        if self.state.is_final() {
            return AcquireStep::Refuse(AcquireOutcome::AlreadyDone(Box::new(self.record())));
        }
        if let (Some(holder), Some(expires_at_ms)) = (&self.master_id, self.lease_expires_at_ms)
            && holder != master_id
            && expires_at_ms > now_ms
        {
            return AcquireStep::Refuse(AcquireOutcome::HeldElsewhere {
                master_id: holder.clone(),
                expires_at_ms,
            });
        }
        AcquireStep::Grant(Lease {
            job_id: self.spec.job_id.clone(),
            fencing_token: self.fencing_token + 1,
            expires_at_ms: expiry(now_ms, ttl),
        })
    }

    /// Refuses a token that is not the current grant. Token 0 means "never
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

    /// Why a conditional heartbeat update matched no row: a stale token, or
    /// a job that already ended (then the lease is simply reported back).
    pub fn heartbeat_refusal(&self, presented: u64) -> Result<u64, StoreError> {
        self.check_token(presented)?;
        Ok(self.lease_expires_at_ms.unwrap_or(0))
    }

    pub fn completion(&self, outcome: &JobOutcome, now_ms: u64) -> Completion {
        let elapsed_ms = now_ms.saturating_sub(self.spec.accepted_at_ms);
        match outcome {
            JobOutcome::Done(result) => Completion {
                state: JobState::Done,
                pages_done: count(result.page_count()),
                current_depth: result.depth,
                result: Some(result.clone()),
                failure: None,
                elapsed_ms,
            },
            JobOutcome::Failed(failure) => Completion {
                state: JobState::Failed,
                result: None,
                failure: Some(failure.clone()),
                pages_done: self.pages_done,
                current_depth: self.current_depth,
                elapsed_ms,
            },
        }
    }

    /// The row as it reads after `completion` was written.
    pub fn completed(mut self, completion: Completion) -> Self {
        self.state = completion.state;
        self.result = completion.result;
        self.failure = completion.failure;
        self.pages_done = completion.pages_done;
        self.current_depth = completion.current_depth;
        self.elapsed_ms = completion.elapsed_ms;
        self
    }
}

/// `now + ttl` in ms, saturating rather than wrapping on absurd TTLs.
pub(crate) fn expiry(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Both databases store integers as signed 64-bit; our values are never
/// negative, and anything past `i64::MAX` is clamped rather than wrapped.
pub(crate) fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db<T: TryFrom<i64> + Bounded>(value: i64) -> T {
    T::try_from(value).unwrap_or(if value < 0 { T::ZERO } else { T::MAX })
}

trait Bounded {
    const ZERO: Self;
    const MAX: Self;
}

impl Bounded for u32 {
    const ZERO: Self = 0;
    const MAX: Self = u32::MAX;
}

impl Bounded for u64 {
    const ZERO: Self = 0;
    const MAX: Self = u64::MAX;
}

fn db_name<DB: Database>() -> &'static str {
    match DB::NAME {
        "PostgreSQL" => "postgres",
        "SQLite" => "sqlite",
        other => other,
    }
}

/// The error for a job id the store does not hold.
pub(crate) fn unknown(job_id: &JobId) -> StoreError {
    StoreError::UnknownJob(job_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crawler_core::model::CrawlOptions;

    fn job(state: JobState, master: Option<&str>, token: u64, expires: Option<u64>) -> StoredJob {
        StoredJob {
            spec: JobSpec {
                job_id: JobId("j".into()),
                client_id: "c".into(),
                client_job_id: "1".into(),
                url: "https://example.com/".into(),
                depth: 1,
                options: CrawlOptions::default(),
                gateway_key: "g".into(),
                accepted_at_ms: 1_000,
            },
            state,
            pages_done: 0,
            current_depth: 0,
            result: None,
            failure: None,
            elapsed_ms: 0,
            master_id: master.map(str::to_string),
            fencing_token: token,
            lease_expires_at_ms: expires,
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_fresh_job_is_granted_token_one() {
        let step = job(JobState::Queued, None, 0, None).acquire("m1", TTL, 5_000);
        assert_eq!(
            step,
            AcquireStep::Grant(Lease {
                job_id: JobId("j".into()),
                fencing_token: 1,
                expires_at_ms: 15_000,
            })
        );
    }

    #[test]
    fn a_live_lease_of_another_master_is_respected() {
        let step = job(JobState::Running, Some("m1"), 3, Some(9_000)).acquire("m2", TTL, 8_999);
        assert!(matches!(
            step,
            AcquireStep::Refuse(AcquireOutcome::HeldElsewhere {
                expires_at_ms: 9_000,
                ..
            })
        ));
    }

    #[test]
    fn an_expired_lease_is_taken_over_with_a_higher_token() {
        let step = job(JobState::Running, Some("m1"), 3, Some(9_000)).acquire("m2", TTL, 9_000);
        assert!(matches!(
            step,
            AcquireStep::Grant(Lease {
                fencing_token: 4,
                ..
            })
        ));
    }

    #[test]
    fn the_same_master_reacquiring_gets_a_new_token() {
        let step = job(JobState::Running, Some("m1"), 3, Some(9_000)).acquire("m1", TTL, 5_000);
        assert!(matches!(
            step,
            AcquireStep::Grant(Lease {
                fencing_token: 4,
                ..
            })
        ));
    }

    #[test]
    fn token_zero_is_never_current() {
        assert!(job(JobState::Queued, None, 0, None).check_token(0).is_err());
        assert!(
            job(JobState::Running, Some("m"), 2, None)
                .check_token(2)
                .is_ok()
        );
    }

    #[test]
    fn elapsed_time_counts_from_acceptance() {
        let running = job(JobState::Running, Some("m"), 1, Some(2_000));
        let done = running.completion(&JobOutcome::Done(CrawlResult::default()), 4_500);
        assert_eq!(done.elapsed_ms, 3_500);
        assert_eq!(done.state, JobState::Done);
    }
}
