//! The gateway's API tokens on SQL, for Postgres and SQLite alike.

use async_trait::async_trait;
use crawler_core::auth::{ApiToken, Tenant, TokenDigest};
use crawler_core::ports::{AdapterError, AdapterResult, TokenError, TokenStore};
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};

use super::row::{engine, from_db, to_db};
use super::{Dialect, SqlStore, failure};

const INSERT: &str = "INSERT INTO api_tokens (name, tenant, token_sha256, created_at_ms)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT DO NOTHING
    RETURNING name";
const BY_DIGEST: &str = "SELECT name, tenant, created_at_ms, revoked_at_ms
    FROM api_tokens WHERE token_sha256 = $1";
const ALL: &str = "SELECT name, tenant, created_at_ms, revoked_at_ms
    FROM api_tokens ORDER BY created_at_ms, name";
const REVOKE: &str = "UPDATE api_tokens SET revoked_at_ms = $2
    WHERE name = $1 AND revoked_at_ms IS NULL
    RETURNING name";

fn decode<DB>(row: &DB::Row) -> AdapterResult<ApiToken>
where
    DB: sqlx::Database,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
{
    let unreadable = |e: sqlx::Error| failure::<DB>("a token row is unreadable", e);
    let tenant: String = row.try_get("tenant").map_err(unreadable)?;
    Ok(ApiToken {
        name: row.try_get("name").map_err(unreadable)?,
        tenant: Tenant::parse(&tenant).map_err(|e| AdapterError::new(engine::<DB>(), e))?,
        created_at_ms: from_db(row.try_get::<i64, _>("created_at_ms").map_err(unreadable)?),
        revoked_at_ms: row
            .try_get::<Option<i64>, _>("revoked_at_ms")
            .map_err(unreadable)?
            .map(from_db),
    })
}

#[async_trait]
impl<DB> TokenStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
    for<'r> &'r str: ColumnIndex<DB::Row>,
{
    async fn create_token(&self, token: &ApiToken, digest: &TokenDigest) -> Result<(), TokenError> {
        let inserted = sqlx::query(INSERT)
            .bind(token.name.as_str())
            .bind(token.tenant.as_str())
            .bind(digest.as_hex())
            .bind(to_db(token.created_at_ms))
            .fetch_optional(self.pool())
            .await
            .map_err(|e| failure::<DB>("cannot record a token", e))?;
        match inserted {
            Some(_) => Ok(()),
            None => Err(TokenError::NameTaken(token.name.clone())),
        }
    }

    async fn token_by_digest(&self, digest: &TokenDigest) -> AdapterResult<Option<ApiToken>> {
        let row = sqlx::query(BY_DIGEST)
            .bind(digest.as_hex())
            .fetch_optional(self.pool())
            .await
            .map_err(|e| failure::<DB>("cannot read a token", e))?;
        row.as_ref().map(decode::<DB>).transpose()
    }

    async fn list_tokens(&self) -> AdapterResult<Vec<ApiToken>> {
        let rows = sqlx::query(ALL)
            .fetch_all(self.pool())
            .await
            .map_err(|e| failure::<DB>("cannot list tokens", e))?;
        rows.iter().map(decode::<DB>).collect()
    }

    async fn revoke_token(&self, name: &str, now_ms: u64) -> AdapterResult<bool> {
        let revoked = sqlx::query(REVOKE)
            .bind(name)
            .bind(to_db(now_ms))
            .fetch_optional(self.pool())
            .await
            .map_err(|e| failure::<DB>("cannot revoke a token", e))?;
        Ok(revoked.is_some())
    }
}
