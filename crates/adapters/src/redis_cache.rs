//! The Redis result cache of a cluster.
//!
//! Each entry is a hash `{ns}:{key}` with the crawl's `depth` and its JSON
//! `crawl` (a [`CachedCrawl`]: its summary, the job whose stored pages hold
//! it, and the pages when they are few). A shallower crawl must never replace a deeper one (the deeper
//! one answers both), and two masters may finish crawls of the same key at
//! once, so the compare-and-set runs as one Lua script on the server.

use std::time::Duration;

use async_trait::async_trait;
use crawler_core::model::CachedCrawl;
use crawler_core::ports::{AdapterError, AdapterResult, ResultCache};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use crawler_core::config::redact_url;

const ENGINE: &str = "redis";

/// Stores unless a deeper crawl is cached; replaces an equal-depth entry so
/// a fresh crawl also refreshes the TTL.
const PUT_UNLESS_DEEPER: &str = r"
local cached = redis.call('HGET', KEYS[1], 'depth')
if cached and tonumber(cached) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'depth', ARGV[1], 'crawl', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// A [`ResultCache`] on Redis. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    namespace: String,
    put_script: Script,
    shown_url: String,
}

impl RedisCache {
    /// Connects now, so an unreachable server is reported at startup; the
    /// connection manager reconnects by itself afterwards. A `rediss://`
    /// server must show a certificate of `ca`, or of a system root.
    pub async fn connect(
        url: &str,
        ca: Option<&std::path::Path>,
        namespace: &str,
    ) -> AdapterResult<Self> {
        let shown_url = redact_url(url);
        let unreachable = |cause: &dyn std::fmt::Display| {
            AdapterError::new(
                ENGINE,
                format!("cannot reach Redis at {shown_url}: {cause}"),
            )
        };
        let client = crate::redis_client::redis_client(url, ca).map_err(|e| unreachable(&e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(Self {
            connection,
            namespace: namespace.to_string(),
            put_script: Script::new(PUT_UNLESS_DEEPER),
            shown_url,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    fn failure(&self, what: &str, cause: impl std::fmt::Display) -> AdapterError {
        AdapterError::new(ENGINE, format!("{what} on {}: {cause}", self.shown_url))
    }
}

#[async_trait]
impl ResultCache for RedisCache {
    async fn get(&self, key: &str) -> AdapterResult<Option<CachedCrawl>> {
        let mut connection = self.connection.clone();
        let json: Option<String> = connection
            .hget(self.key(key), "crawl")
            .await
            .map_err(|e| self.failure("cannot read the cache", e))?;
        json.map(|json| {
            serde_json::from_str(&json)
                .map_err(|e| self.failure(&format!("cached entry {key} is unreadable"), e))
        })
        .transpose()
    }

    async fn ping(&self) -> AdapterResult<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(|e| self.failure("cannot reach the cache", e))?;
        Ok(())
    }

    async fn put(&self, key: &str, crawl: &CachedCrawl, ttl: Duration) -> AdapterResult<()> {
        let json = serde_json::to_string(crawl)
            .map_err(|e| AdapterError::new(ENGINE, format!("cannot encode the crawl: {e}")))?;
        // PEXPIRE refuses 0; a zero TTL still means "expire at once".
        let ttl_ms = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let mut connection = self.connection.clone();
        let _stored: i64 = self
            .put_script
            .key(self.key(key))
            .arg(crawl.summary.depth)
            .arg(json)
            .arg(ttl_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.failure("cannot write the cache", e))?;
        Ok(())
    }
}
