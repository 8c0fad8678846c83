//! The cluster's [`HostGate`] on Redis, so per-host limits hold across
//! every worker (and every job) that crawls a host.
//!
//! Per host, a sorted set `{ns}:host:{host}:active` holds the tickets in a
//! slot, scored by when each lease ends (a dead worker's slot frees itself),
//! and `{ns}:host:{host}:next` holds the earliest time the next fetch may
//! start. Both expire on their own. Each step runs as one Lua script on the
//! server's clock, so workers' clocks never need to agree.

use std::time::Duration;

use async_trait::async_trait;
use crawler_core::config::redact_url;
use crawler_core::ports::{AdapterError, AdapterResult, HostGate, HostLimits};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

const ENGINE: &str = "redis";

/// Most a full host is waited on before asking again (ms): a slot may be
/// given back any moment.
const FULL_POLL_MS: u64 = 10;

/// Takes a slot if one is free and the host's delay has passed; else
/// returns how many milliseconds to wait.
const TRY_ENTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.min(tonumber(first[2]) - now, tonumber(ARGV[5])))
end
local next_start = tonumber(redis.call('GET', KEYS[2]) or '0')
if next_start > now then
  return next_start - now
end
local lease = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('SET', KEYS[2], now + delay, 'PX', delay)
end
return 0
";

/// Moves the host's next start to at least now + pause.
const PAUSE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = tonumber(ARGV[1])
local next_start = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + pause > next_start then
  redis.call('SET', KEYS[1], now + pause, 'PX', pause)
end
return 0
";

/// A [`HostGate`] on Redis. It connects on first use and reconnects by
/// itself, so a worker starts (and keeps crawling, on its own gate) while
/// Redis is away.
pub struct RedisHostGate {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    namespace: String,
    shown_url: String,
    enter_script: Script,
    pause_script: Script,
}

impl RedisHostGate {
    /// The gate on the Redis at `url` (over TLS for `rediss://`, trusting
    /// `ca` when given).
    pub fn new(url: &str, ca: Option<&std::path::Path>, namespace: &str) -> AdapterResult<Self> {
        let shown_url = redact_url(url);
        let client = crate::redis_client::redis_client(url, ca).map_err(|e| {
            AdapterError::new(ENGINE, format!("bad Redis address {shown_url}: {e}"))
        })?;
        Ok(Self {
            client,
            connection: OnceCell::new(),
            namespace: namespace.to_string(),
            shown_url,
            enter_script: Script::new(TRY_ENTER),
            pause_script: Script::new(PAUSE),
        })
    }

    async fn connection(&self) -> AdapterResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
            .map_err(|e| self.failed(&e))
    }

    fn failed(&self, cause: &dyn std::fmt::Display) -> AdapterError {
        AdapterError::new(ENGINE, format!("host gate at {}: {cause}", self.shown_url))
    }

    fn key(&self, host: &str, part: &str) -> String {
        format!("{}:host:{host}:{part}", self.namespace)
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[async_trait]
impl HostGate for RedisHostGate {
    async fn try_enter(
        &self,
        host: &str,
        ticket: &str,
        limits: HostLimits,
    ) -> AdapterResult<Option<Duration>> {
        let mut connection = self.connection().await?;
        let wait: u64 = self
            .enter_script
            .key(self.key(host, "active"))
            .key(self.key(host, "next"))
            .arg(ticket)
            .arg(limits.concurrency)
            .arg(millis(limits.delay))
            .arg(millis(limits.lease).max(1))
            .arg(FULL_POLL_MS)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.failed(&e))?;
        Ok((wait > 0).then(|| Duration::from_millis(wait)))
    }

    async fn leave(&self, host: &str, ticket: &str) -> AdapterResult<()> {
        let mut connection = self.connection().await?;
        redis::cmd("ZREM")
            .arg(self.key(host, "active"))
            .arg(ticket)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed(&e))
    }

    async fn pause(&self, host: &str, pause: Duration) -> AdapterResult<()> {
        if pause.is_zero() {
            return Ok(());
        }
        let mut connection = self.connection().await?;
        self.pause_script
            .key(self.key(host, "next"))
            .arg(millis(pause))
            .invoke_async::<()>(&mut connection)
            .await
            .map_err(|e| self.failed(&e))
    }
}
