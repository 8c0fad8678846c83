//! The [`ResultCache`] suite.

use std::time::Duration;

use crawler_core::model::{CachedCrawl, JobId, PageFacts, ResultSummary};
use crawler_core::ports::ResultCache;

use super::eventually;

const LONG: Duration = Duration::from_secs(600);

/// A crawl to `depth` with one page per level, so depths are told apart;
/// its pages kept beside it.
fn crawl(depth: u32) -> CachedCrawl {
    let url = |d: u32| format!("https://example.com/{d}");
    CachedCrawl {
        summary: ResultSummary {
            depth,
            truncated: false,
            level_sizes: vec![1; depth as usize + 1],
        },
        job_id: JobId(format!("job-{depth}")),
        pages: Some(
            (0..=depth)
                .map(|d| PageFacts {
                    url: url(d),
                    depth: d,
                    status: Some(200),
                    ..PageFacts::default()
                })
                .collect(),
        ),
    }
}

/// Keys are unique per test so suites can share one engine.
fn key() -> String {
    format!("crawl-{}", uuid::Uuid::new_v4())
}

pub async fn missing_key_is_a_miss(cache: &dyn ResultCache) {
    assert_eq!(cache.get(&key()).await.unwrap(), None);
}

pub async fn stored_result_is_returned(cache: &dyn ResultCache) {
    let key = key();
    cache.put(&key, &crawl(2), LONG).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(crawl(2)));
    // A large crawl is cached without its pages: a reference to the store.
    let large = CachedCrawl {
        pages: None,
        ..crawl(3)
    };
    let key = self::key();
    cache.put(&key, &large, LONG).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(large));
}

pub async fn deeper_crawl_is_kept_over_a_shallower_put(cache: &dyn ResultCache) {
    let key = key();
    cache.put(&key, &crawl(3), LONG).await.unwrap();
    cache.put(&key, &crawl(1), LONG).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(crawl(3)));

    cache.put(&key, &crawl(4), LONG).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(crawl(4)));
}

pub async fn entry_expires_after_its_ttl(cache: &dyn ResultCache) {
    let key = key();
    cache
        .put(&key, &crawl(1), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(crawl(1)));
    eventually("the entry to expire", || async {
        cache.get(&key).await.unwrap().is_none().then_some(())
    })
    .await;
}

pub async fn expired_deeper_crawl_no_longer_blocks_a_shallower_put(cache: &dyn ResultCache) {
    let key = key();
    cache
        .put(&key, &crawl(3), Duration::from_secs(1))
        .await
        .unwrap();
    eventually("the deep entry to expire", || async {
        cache.get(&key).await.unwrap().is_none().then_some(())
    })
    .await;
    cache.put(&key, &crawl(1), LONG).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Some(crawl(1)));
}

/// Runs the whole cache suite against one implementation.
#[macro_export]
macro_rules! cache_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            cache,
            $setup,
            [
                missing_key_is_a_miss,
                stored_result_is_returned,
                deeper_crawl_is_kept_over_a_shallower_put,
                entry_expires_after_its_ttl,
                expired_deeper_crawl_no_longer_blocks_a_shallower_put,
            ]
        );
    };
}
