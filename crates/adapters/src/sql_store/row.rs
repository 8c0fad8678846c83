//! One job row, decoded, and what a completion writes into it.

use crawler_core::lease::LeaseRow;
use crawler_core::model::{JobFailure, JobId, JobRecord, JobSpec, JobState, ResultSummary};
use crawler_core::ports::{AdapterError, JobOutcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::{ColumnIndex, Database, Decode, Row, Type};

/// The columns every job query selects, in [`StoredJob::from_row`]'s terms.
macro_rules! job_columns {
    () => {
        "spec, state, pages_done, current_depth, summary, failure, elapsed_ms, \
         master_id, fencing_token, lease_expires_at_ms, checkpoint, gateway_key, pages_of, \
         CAST(CASE WHEN delivered THEN 1 ELSE 0 END AS BIGINT) AS delivered"
    };
}
pub(crate) use job_columns;

/// A JSON column's value, as the driver hands it over.
pub(crate) type Doc = Box<RawValue>;

/// Serialises `value` for a JSON column.
pub(crate) fn doc<T: Serialize + ?Sized>(value: &T) -> Doc {
    serde_json::value::to_raw_value(value).expect("the job model always serialises")
}

/// Reads back a JSON column written by [`doc`].
pub(crate) fn parse<T: DeserializeOwned>(
    engine: &'static str,
    doc: &Doc,
) -> Result<T, AdapterError> {
    serde_json::from_str(doc.get())
        .map_err(|e| AdapterError::new(engine, format!("a stored document is unreadable: {e}")))
}

/// Where a crawl stands, beside the pages of its completed levels (rows
/// written before the takeover migration also hold their frontier, which
/// is now found again from the pages and ignored here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CheckpointHead {
    pub levels_done: u32,
    pub truncated: bool,
    pub max_pages: u32,
}

/// One job row, decoded.
#[derive(Debug, Clone)]
pub(crate) struct StoredJob {
    /// The spec as accepted, with `gateway_key` where its events go now.
    pub spec: JobSpec,
    pub state: JobState,
    pub pages_done: u32,
    pub current_depth: u32,
    pub summary: Option<ResultSummary>,
    pub failure: Option<JobFailure>,
    pub elapsed_ms: u64,
    pub lease: LeaseRow,
    pub checkpoint: Option<CheckpointHead>,
    pub pages_of: Option<JobId>,
    pub delivered: bool,
}

/// The values a completion writes.
pub(crate) struct Completion {
    pub state: JobState,
    pub summary: Option<ResultSummary>,
    pub failure: Option<JobFailure>,
    pub pages_done: u32,
    pub current_depth: u32,
    pub elapsed_ms: u64,
}

impl StoredJob {
    pub fn from_row<'r, R>(engine: &'static str, row: &'r R) -> Result<Self, AdapterError>
    where
        R: Row,
        &'r str: ColumnIndex<R>,
        Doc: Decode<'r, R::Database> + Type<R::Database>,
        String: Decode<'r, R::Database> + Type<R::Database>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
    {
        let unreadable =
            |e: sqlx::Error| AdapterError::new(engine, format!("a job row is unreadable: {e}"));
        let state: String = row.try_get("state").map_err(unreadable)?;
        let state = JobState::parse(&state).ok_or_else(|| {
            AdapterError::new(engine, format!("a job row has the unknown state {state:?}"))
        })?;
        let document = |column: &'r str| -> Result<Option<Doc>, AdapterError> {
            row.try_get::<Option<Doc>, _>(column).map_err(unreadable)
        };
        let spec_doc =
            document("spec")?.ok_or_else(|| AdapterError::new(engine, "a job row has no spec"))?;
        let mut spec: JobSpec = parse(engine, &spec_doc)?;
        if let Some(key) = row
            .try_get::<Option<String>, _>("gateway_key")
            .map_err(unreadable)?
        {
            spec.gateway_key = key;
        }
        let int = |column: &'r str| -> Result<i64, AdapterError> {
            row.try_get::<i64, _>(column).map_err(unreadable)
        };
        let lease_expiry: Option<i64> = row.try_get("lease_expires_at_ms").map_err(unreadable)?;
        Ok(Self {
            spec,
            state,
            pages_done: from_db(int("pages_done")?),
            current_depth: from_db(int("current_depth")?),
            summary: document("summary")?
                .map(|d| parse(engine, &d))
                .transpose()?,
            failure: document("failure")?
                .map(|d| parse(engine, &d))
                .transpose()?,
            elapsed_ms: from_db(int("elapsed_ms")?),
            lease: LeaseRow {
                state,
                master_id: row.try_get("master_id").map_err(unreadable)?,
                fencing_token: from_db(int("fencing_token")?),
                expires_at_ms: lease_expiry.map(from_db),
            },
            checkpoint: document("checkpoint")?
                .map(|d| parse(engine, &d))
                .transpose()?,
            pages_of: row
                .try_get::<Option<String>, _>("pages_of")
                .map_err(unreadable)?
                .map(JobId),
            delivered: int("delivered")? != 0,
        })
    }

    pub fn record(&self) -> JobRecord {
        JobRecord {
            spec: self.spec.clone(),
            state: self.state,
            pages_done: self.pages_done,
            current_depth: self.current_depth,
            summary: self.summary.clone(),
            failure: self.failure.clone(),
            elapsed_ms: self.elapsed_ms,
            pages_of: self.pages_of.clone(),
            delivered: self.delivered,
        }
    }

    pub fn completion(&self, outcome: &JobOutcome, now_ms: u64) -> Completion {
        let elapsed_ms = now_ms.saturating_sub(self.spec.accepted_at_ms);
        match outcome {
            JobOutcome::Done { summary, .. } => Completion {
                state: JobState::Done,
                pages_done: u32::try_from(summary.page_count()).unwrap_or(u32::MAX),
                current_depth: summary.depth,
                summary: Some(summary.clone()),
                failure: None,
                elapsed_ms,
            },
            JobOutcome::Failed(failure) => Completion {
                state: JobState::Failed,
                summary: None,
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
        self.lease.state = completion.state;
        self.summary = completion.summary;
        self.failure = completion.failure;
        self.pages_done = completion.pages_done;
        self.current_depth = completion.current_depth;
        self.elapsed_ms = completion.elapsed_ms;
        self
    }
}

/// Both databases store integers as signed 64-bit; our values are never
/// negative, and anything past `i64::MAX` is clamped rather than wrapped.
pub(crate) fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn from_db<T: TryFrom<i64> + Bounded>(value: i64) -> T {
    T::try_from(value).unwrap_or(if value < 0 { T::ZERO } else { T::MAX })
}

pub(crate) trait Bounded {
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

/// The engine name a database reports in errors.
pub(crate) fn engine<DB: Database>() -> &'static str {
    match DB::NAME {
        "PostgreSQL" => "postgres",
        "SQLite" => "sqlite",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crawler_core::model::{CrawlOptions, JobId};

    fn running() -> StoredJob {
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
                trace: Default::default(),
            },
            state: JobState::Running,
            pages_done: 0,
            current_depth: 0,
            summary: None,
            failure: None,
            elapsed_ms: 0,
            lease: LeaseRow {
                state: JobState::Running,
                master_id: Some("m".into()),
                fencing_token: 1,
                expires_at_ms: Some(2_000),
            },
            checkpoint: None,
            pages_of: None,
            delivered: false,
        }
    }

    #[test]
    fn elapsed_time_counts_from_acceptance() {
        let done = running().completion(
            &JobOutcome::Done {
                summary: ResultSummary::default(),
                last_pages: Vec::new(),
            },
            4_500,
        );
        assert_eq!(done.elapsed_ms, 3_500);
        assert_eq!(done.state, JobState::Done);
    }

    #[test]
    fn a_completed_row_takes_no_more_writes() {
        let job = running();
        let done = job.completion(
            &JobOutcome::Done {
                summary: ResultSummary::default(),
                last_pages: Vec::new(),
            },
            4_500,
        );
        let after = job.completed(done);
        assert!(after.lease.check_writer(1).is_err());
    }

    #[test]
    fn clamping_keeps_integers_in_range() {
        assert_eq!(to_db(u64::MAX), i64::MAX);
        assert_eq!(from_db::<u32>(-1), 0);
        assert_eq!(from_db::<u32>(i64::MAX), u32::MAX);
    }
}
