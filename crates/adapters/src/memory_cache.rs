//! The in-process result cache of the embedded default: the same
//! keep-the-deeper-crawl rule as Redis, per-entry TTLs, and a size bound so a
//! long-running process cannot grow without limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crawler_core::model::CachedCrawl;
use crawler_core::ports::{AdapterResult, ResultCache};
use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;

#[derive(Clone)]
struct Entry {
    crawl: Arc<CachedCrawl>,
    ttl: Duration,
}

/// Each entry lives for the TTL it was put with; reads do not extend it.
struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// An in-process [`ResultCache`]. Cloning shares the cache.
#[derive(Clone)]
pub struct MemoryCache {
    entries: Cache<String, Entry>,
}

impl MemoryCache {
    /// Room for roughly a hundred thousand fetched pages.
    pub const DEFAULT_CAPACITY_PAGES: u64 = 100_000;

    /// A cache bounded by the pages it holds rather than its entry count:
    /// crawl results range from one page to thousands, so counting entries
    /// would bound nothing useful. An entry without its pages (a large
    /// crawl's, whose pages are in the store) weighs one.
    pub fn new(capacity_pages: u64) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity_pages)
            .weigher(|_: &String, entry: &Entry| {
                let pages = entry.crawl.pages.as_ref().map_or(0, Vec::len);
                u32::try_from(pages).unwrap_or(u32::MAX).saturating_add(1)
            })
            .expire_after(PerEntryTtl)
            .build();
        Self { entries }
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY_PAGES)
    }
}

#[async_trait]
impl ResultCache for MemoryCache {
    async fn get(&self, key: &str) -> AdapterResult<Option<CachedCrawl>> {
        Ok(self
            .entries
            .get(key)
            .await
            .map(|entry| CachedCrawl::clone(&entry.crawl)))
    }

    async fn ping(&self) -> AdapterResult<()> {
        Ok(())
    }

    async fn put(&self, key: &str, crawl: &CachedCrawl, ttl: Duration) -> AdapterResult<()> {
        let fresh = Entry {
            crawl: Arc::new(crawl.clone()),
            ttl,
        };
        // `and_compute_with` runs the compare and the store under moka's
        // per-key lock, so concurrent puts cannot both win.
        self.entries
            .entry(key.to_string())
            .and_compute_with(|cached| async move {
                match cached {
                    Some(cached)
                        if cached.value().crawl.summary.depth > fresh.crawl.summary.depth =>
                    {
                        Op::Nop
                    }
                    _ => Op::Put(fresh),
                }
            })
            .await;
        Ok(())
    }
}
