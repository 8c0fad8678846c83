//! The cache conformance suite on Redis and on the in-process cache.

mod common;

use std::sync::Arc;

use crawler_adapters::conformance::Subject;
use crawler_adapters::{MemoryCache, RedisCache};
use crawler_core::ports::ResultCache;

async fn redis() -> Subject<dyn ResultCache> {
    // Keys are unique per test, under a namespace unique per run; they
    // expire by themselves, so there is nothing to clean up beyond that.
    let cache = RedisCache::connect(&common::redis_url(), None, &common::namespace())
        .await
        .expect("Redis for tests");
    Subject::new(Arc::new(cache))
}

async fn memory() -> Subject<dyn ResultCache> {
    Subject::new(Arc::new(MemoryCache::new(1_000)))
}

mod on_redis {
    crawler_adapters::cache_conformance!(super::redis());
}

mod in_memory {
    crawler_adapters::cache_conformance!(super::memory());
}
