//! Where Postgres and SQLite differ for the job store: how a transaction
//! takes the lock that makes read-then-write atomic, the statements that
//! pick rows among competing callers, and how a level's pages are passed
//! in. Everything else is shared SQL.

use sqlx::query::Query;
use sqlx::{Database, Postgres, Sqlite};

use super::row::job_columns;

/// The statements one database needs written its own way.
pub trait Dialect: sqlx::Database {
    /// Starts a transaction that reads a row and then writes it.
    const BEGIN_WRITE: &'static str;
    /// Reads one job row that the transaction goes on to write.
    const SELECT_JOB_FOR_UPDATE: &'static str;
    /// The longest-orphaned job: running, lease expired at `$1`, not in the
    /// JSON array of job ids `$2`. Two lock servers never pick the same one.
    const PICK_ORPHAN: &'static str;
    /// Takes up to `$3` queued jobs whose publication has waited since before
    /// `$1`, marks them as waiting since `$2`, and returns their specs.
    const CLAIM_UNPUBLISHED: &'static str;
    /// Reads the leadership row that the transaction goes on to write.
    const SELECT_LEADER_FOR_UPDATE: &'static str;
    /// Stores pages (bound by [`Dialect::bind_pages`]) as level `$2` of
    /// job `$1`, one row each; a page saved again replaces itself.
    const UPSERT_PAGES: &'static str;
    /// Binds pages, each its URL and its JSON text, to [`Dialect::UPSERT_PAGES`].
    fn bind_pages<'q>(query: Bound<'q, Self>, pages: &[PageRow<'_>]) -> Bound<'q, Self>;
    /// Records a job answered at once from the cache, so delivered as it
    /// is recorded: $1..$9 are its id, client, client job id, spec,
    /// acceptance time, summary, pages, depth and the job whose pages it
    /// shows. Committed without waiting for the disk where the database
    /// allows it, in the same single round trip.
    const INSERT_DONE: &'static str;
}

/// A statement being given its parameters.
pub type Bound<'q, DB> = Query<'q, DB, <DB as Database>::Arguments>;

/// One page as stored: its URL (the key) and its JSON text.
pub struct PageRow<'a> {
    pub url: &'a str,
    pub json: String,
}

/// Row locks: `FOR UPDATE` holds a row until commit; `SKIP LOCKED` lets a
/// competing caller take the next row instead of waiting for this one.
impl Dialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const SELECT_JOB_FOR_UPDATE: &'static str = concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE job_id = $1 FOR UPDATE"
    );
    const PICK_ORPHAN: &'static str = "SELECT job_id FROM jobs
        WHERE state = 'running' AND lease_expires_at_ms <= $1
          AND job_id NOT IN (SELECT jsonb_array_elements_text($2))
        ORDER BY lease_expires_at_ms
        LIMIT 1
        FOR UPDATE SKIP LOCKED";
    const CLAIM_UNPUBLISHED: &'static str = "UPDATE jobs SET publish_pending_since_ms = $2
        WHERE job_id IN (
            SELECT job_id FROM jobs
            WHERE state = 'queued' AND publish_pending_since_ms < $1
            ORDER BY publish_pending_since_ms
            LIMIT $3
            FOR UPDATE SKIP LOCKED)
        RETURNING spec, gateway_key";
    const SELECT_LEADER_FOR_UPDATE: &'static str =
        "SELECT holder, address, epoch, expires_at_ms FROM lock_leader WHERE id = 1 FOR UPDATE";
    // Two arrays, of URLs and of pages: nothing for Postgres to parse.
    const UPSERT_PAGES: &'static str = "INSERT INTO job_pages (job_id, depth, url, page)
        SELECT $1, $2, p.url, p.page FROM UNNEST($3::TEXT[], $4::TEXT[]) AS p (url, page)
        ON CONFLICT (job_id, depth, url) DO UPDATE SET page = EXCLUDED.page";
    fn bind_pages<'q>(query: Bound<'q, Self>, pages: &[PageRow<'_>]) -> Bound<'q, Self> {
        let urls: Vec<&str> = pages.iter().map(|p| p.url).collect();
        let texts: Vec<&str> = pages.iter().map(|p| p.json.as_str()).collect();
        query.bind(urls).bind(texts)
    }
    // `set_config(..., true)` lasts for the statement's own transaction,
    // whose commit then does not wait for the WAL flush.
    const INSERT_DONE: &'static str = "WITH unflushed AS (
            SELECT set_config('synchronous_commit', 'off', true))
        INSERT INTO jobs
            (job_id, client_id, client_job_id, spec, state, accepted_at_ms,
             summary, pages_done, current_depth, pages_of, delivered)
        SELECT $1, $2, $3, $4, 'done', $5, $6, $7, $8, $9, true FROM unflushed
        ON CONFLICT DO NOTHING
        RETURNING job_id";
}

/// SQLite has one writer at a time: `BEGIN IMMEDIATE` takes the database's
/// write lock up front (a deferred transaction could read, then fail to
/// upgrade), so plain reads inside it are as good as row locks.
impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const SELECT_JOB_FOR_UPDATE: &'static str =
        concat!("SELECT ", job_columns!(), " FROM jobs WHERE job_id = $1");
    const PICK_ORPHAN: &'static str = "SELECT job_id FROM jobs
        WHERE state = 'running' AND lease_expires_at_ms <= $1
          AND job_id NOT IN (SELECT value FROM json_each($2))
        ORDER BY lease_expires_at_ms
        LIMIT 1";
    const CLAIM_UNPUBLISHED: &'static str = "UPDATE jobs SET publish_pending_since_ms = $2
        WHERE job_id IN (
            SELECT job_id FROM jobs
            WHERE state = 'queued' AND publish_pending_since_ms < $1
            ORDER BY publish_pending_since_ms
            LIMIT $3)
        RETURNING spec, gateway_key";
    const SELECT_LEADER_FOR_UPDATE: &'static str =
        "SELECT holder, address, epoch, expires_at_ms FROM lock_leader WHERE id = 1";
    // SQLite has no arrays: the pages come as one JSON array. `WHERE true`
    // tells SQLite's parser the ON CONFLICT is the upsert's, not a join
    // constraint of the SELECT.
    const UPSERT_PAGES: &'static str = "INSERT INTO job_pages (job_id, depth, url, page)
        SELECT $1, $2, json_extract(p.value, '$.url'), p.value FROM json_each($3) p WHERE true
        ON CONFLICT (job_id, depth, url) DO UPDATE SET page = excluded.page";
    fn bind_pages<'q>(query: Bound<'q, Self>, pages: &[PageRow<'_>]) -> Bound<'q, Self> {
        let mut array =
            String::with_capacity(pages.iter().map(|p| p.json.len() + 1).sum::<usize>() + 2);
        array.push('[');
        for (i, page) in pages.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(&page.json);
        }
        array.push(']');
        query.bind(array)
    }
    const INSERT_DONE: &'static str = "INSERT INTO jobs
            (job_id, client_id, client_job_id, spec, state, accepted_at_ms,
             summary, pages_done, current_depth, pages_of, delivered)
        VALUES ($1, $2, $3, $4, 'done', $5, $6, $7, $8, $9, true)
        ON CONFLICT DO NOTHING
        RETURNING job_id";
}
