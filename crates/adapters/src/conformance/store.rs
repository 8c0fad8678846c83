//! The [`JobStore`] suite. Timestamps are chosen by the tests (the store
//! takes `now_ms` from its caller), so lease expiry needs no waiting.

use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::auth::{Tenant, TenantUsage};
use crawler_core::model::{
    CachedCrawl, CrawlOptions, HeadStart, JobFailure, JobId, JobSpec, JobState, LevelDone,
    PageFacts, ResultSummary,
};
use crawler_core::ports::{
    AcquireOutcome, Grant, InsertOutcome, JobOutcome, JobStore, Lease, PageQuery, StoreError,
};

const ACCEPTED: u64 = 1_000_000;
const TTL: Duration = Duration::from_secs(10);

fn spec() -> JobSpec {
    JobSpec {
        job_id: JobId::new_random(),
        client_id: format!("client-{}", uuid::Uuid::new_v4()),
        client_job_id: "job-1".into(),
        url: "https://example.com/".into(),
        depth: 2,
        options: CrawlOptions {
            max_pages: 100,
            ..CrawlOptions::default()
        },
        gateway_key: "gw".into(),
        accepted_at_ms: ACCEPTED,
        trace: Default::default(),
    }
}

/// The result of a crawl that saved no page (a start page the spider refused).
fn result() -> ResultSummary {
    ResultSummary {
        depth: 2,
        truncated: false,
        level_sizes: Vec::new(),
    }
}

fn done(summary: ResultSummary) -> JobOutcome {
    JobOutcome::Done {
        summary,
        last_pages: Vec::new(),
    }
}

/// Every stored page of a job, in (depth, URL) order, read in pages of
/// two; read as JSON text too, which must hold the same pages.
async fn all_pages(store: &dyn JobStore, job_id: &JobId) -> Vec<PageFacts> {
    let mut pages: Vec<PageFacts> = Vec::new();
    loop {
        let query = PageQuery {
            max_depth: u32::MAX,
            after: pages.last().map(|p| (p.depth, p.url.clone())),
            limit: 2,
        };
        let next = store.read_pages(job_id, &query).await.unwrap();
        let texts = store.read_page_texts(job_id, &query).await.unwrap();
        let parsed: Vec<PageFacts> = texts
            .iter()
            .map(|text| serde_json::from_str(&text.json).expect("a stored page's JSON"))
            .collect();
        assert_eq!(parsed, next, "the pages as text are the pages");
        let keys: Vec<(u32, &str)> = texts.iter().map(|t| (t.depth, t.url.as_str())).collect();
        let expected: Vec<(u32, &str)> = next.iter().map(|p| (p.depth, p.url.as_str())).collect();
        assert_eq!(keys, expected, "each text under its page's depth and URL");
        if next.is_empty() {
            return pages;
        }
        pages.extend(next);
    }
}

fn urls(pages: &[PageFacts]) -> Vec<&str> {
    pages.iter().map(|p| p.url.as_str()).collect()
}

async fn grant(store: &dyn JobStore, spec: &JobSpec, master: &str, now_ms: u64) -> Lease {
    full_grant(store, spec, master, now_ms).await.lease
}

async fn full_grant(store: &dyn JobStore, spec: &JobSpec, master: &str, now_ms: u64) -> Grant {
    match store.acquire(spec, master, TTL, now_ms).await.unwrap() {
        AcquireOutcome::Granted(grant) => grant,
        other => panic!("expected a grant to {master}, got {other:?}"),
    }
}

fn page(url: &str, depth: u32) -> PageFacts {
    PageFacts {
        url: url.into(),
        depth,
        status: Some(200),
        links: vec!["https://example.com/next".into()],
        ..PageFacts::default()
    }
}

fn pages(depth: u32, urls: &[&str]) -> Vec<PageFacts> {
    urls.iter().map(|url| page(url, depth)).collect()
}

/// Saves the pages of level `depth`, then marks the level complete.
async fn save_level(store: &dyn JobStore, job_id: &JobId, token: u64, depth: u32, urls: &[&str]) {
    store
        .save_pages(job_id, token, depth, &pages(depth, urls))
        .await
        .unwrap();
    store
        .save_level(job_id, token, &level(depth, urls.len()))
        .await
        .unwrap();
}

fn level(depth: u32, page_count: usize) -> LevelDone {
    LevelDone {
        depth,
        page_count: page_count as u32,
        truncated: false,
        max_pages: 100,
    }
}

fn assert_stale<T: std::fmt::Debug>(outcome: Result<T, StoreError>, presented: u64, current: u64) {
    match outcome {
        Err(StoreError::StaleToken {
            presented: p,
            current: c,
        }) => assert_eq!((p, c), (presented, current)),
        other => panic!("expected a stale token error, got {other:?}"),
    }
}

pub async fn inserting_a_client_job_twice_returns_the_first(store: &dyn JobStore) {
    let first = spec();
    assert_eq!(
        store.insert_job(&first).await.unwrap(),
        InsertOutcome::Created
    );

    let retry = JobSpec {
        job_id: JobId::new_random(),
        ..first.clone()
    };
    match store.insert_job(&retry).await.unwrap() {
        InsertOutcome::Exists(record) => {
            assert_eq!(record.spec, first);
            assert_eq!(record.state, JobState::Queued);
        }
        other => panic!("expected the first job back, got {other:?}"),
    }
    let found = store
        .find_by_client(&first.client_id, &first.client_job_id)
        .await
        .unwrap()
        .expect("the job is findable by its client id");
    assert_eq!(found.spec.job_id, first.job_id);
    assert_eq!(store.get(&retry.job_id).await.unwrap(), None);
}

pub async fn unknown_jobs_are_absent(store: &dyn JobStore) {
    assert_eq!(store.get(&JobId::new_random()).await.unwrap(), None);
    assert_eq!(
        store.find_by_client("nobody", "nothing").await.unwrap(),
        None
    );
}

/// What the cache holds of a finished crawl of `job_id`.
fn cached(job_id: &JobId) -> CachedCrawl {
    CachedCrawl {
        summary: ResultSummary {
            depth: 1,
            truncated: false,
            level_sizes: vec![1, 2],
        },
        job_id: job_id.clone(),
        pages: None,
    }
}

pub async fn a_cache_answer_is_recorded_as_done_and_delivered(store: &dyn JobStore) {
    let spec = spec();
    let source = JobId::new_random();
    assert_eq!(
        store.insert_done(&spec, &cached(&source)).await.unwrap(),
        InsertOutcome::Created
    );
    let record = store.get(&spec.job_id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Done);
    assert_eq!(record.summary, Some(cached(&source).summary));
    assert_eq!(record.pages_done, 3);
    assert_eq!(
        record.pages_job(),
        &source,
        "its pages are the cached crawl's"
    );
    assert!(record.delivered, "answered as it was recorded");
    assert!(!store.claim_delivery(&spec.job_id).await.unwrap());

    match store.acquire(&spec, "m1", TTL, ACCEPTED).await.unwrap() {
        AcquireOutcome::AlreadyDone(done) => assert_eq!(*done, record),
        other => panic!("expected AlreadyDone, got {other:?}"),
    }
    assert!(matches!(
        store.insert_done(&spec, &cached(&source)).await.unwrap(),
        InsertOutcome::Exists(_)
    ));
}

pub async fn acquire_persists_and_leases_a_new_job(store: &dyn JobStore) {
    let spec = spec();
    let now = ACCEPTED + 10;
    let lease = grant(store, &spec, "m1", now).await;
    assert_eq!(
        lease,
        Lease {
            job_id: spec.job_id.clone(),
            fencing_token: 1,
            expires_at_ms: now + 10_000,
        }
    );
    let record = store.get(&spec.job_id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Running);
    assert_eq!(record.spec, spec);
    assert_eq!(
        full_grant(store, &spec, "m1", now + 1).await.checkpoint,
        None,
        "a job that saved no level has nothing to continue from"
    );
}

pub async fn a_live_lease_is_held_elsewhere(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let outcome = store
        .acquire(&spec, "m2", TTL, lease.expires_at_ms - 1)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        AcquireOutcome::HeldElsewhere {
            master_id: "m1".into(),
            expires_at_ms: lease.expires_at_ms,
        }
    );
}

pub async fn the_same_master_reacquiring_gets_a_higher_token(store: &dyn JobStore) {
    let spec = spec();
    let first = grant(store, &spec, "m1", ACCEPTED).await;
    let second = grant(store, &spec, "m1", ACCEPTED + 1).await;
    assert_eq!(second.fencing_token, first.fencing_token + 1);
    assert_stale(
        store
            .heartbeat(&spec.job_id, first.fencing_token, 0, 0, TTL, ACCEPTED + 2)
            .await,
        first.fencing_token,
        second.fencing_token,
    );
}

pub async fn an_expired_lease_is_taken_over_and_fences_the_old_holder(store: &dyn JobStore) {
    let spec = spec();
    let old = grant(store, &spec, "m1", ACCEPTED).await;
    let new = grant(store, &spec, "m2", old.expires_at_ms).await;
    assert!(new.fencing_token > old.fencing_token);

    let later = old.expires_at_ms + 1;
    assert_stale(
        store
            .heartbeat(&spec.job_id, old.fencing_token, 3, 1, TTL, later)
            .await,
        old.fencing_token,
        new.fencing_token,
    );
    assert_stale(
        store
            .complete(&spec.job_id, old.fencing_token, &done(result()), later)
            .await,
        old.fencing_token,
        new.fencing_token,
    );
    let record = store
        .complete(&spec.job_id, new.fencing_token, &done(result()), later)
        .await
        .unwrap();
    assert_eq!(record.state, JobState::Done);
}

pub async fn heartbeat_renews_the_lease_and_records_progress(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let now = lease.expires_at_ms - 100;
    let renewed = store
        .heartbeat(&spec.job_id, lease.fencing_token, 7, 1, TTL, now)
        .await
        .unwrap();
    assert_eq!(renewed.expires_at_ms, now + 10_000);
    assert_eq!(renewed.gateway_key, None, "its client has not moved");
    store.reroute(&spec.job_id, "gw-2").await.unwrap();
    let renewed = store
        .heartbeat(&spec.job_id, lease.fencing_token, 7, 1, TTL, now)
        .await
        .unwrap();
    assert_eq!(renewed.gateway_key.as_deref(), Some("gw-2"));

    let record = store.get(&spec.job_id).await.unwrap().unwrap();
    assert_eq!((record.pages_done, record.current_depth), (7, 1));
    // Past the first expiry, the renewed lease still keeps others out.
    let outcome = store
        .acquire(&spec, "m2", TTL, lease.expires_at_ms + 1)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        AcquireOutcome::HeldElsewhere {
            master_id: "m1".into(),
            expires_at_ms: renewed.expires_at_ms,
        }
    );
}

pub async fn heartbeat_and_complete_of_an_unknown_job_are_refused(store: &dyn JobStore) {
    let ghost = JobId::new_random();
    assert!(matches!(
        store.heartbeat(&ghost, 1, 0, 0, TTL, ACCEPTED).await,
        Err(StoreError::UnknownJob(id)) if id == ghost
    ));
    assert!(matches!(
        store
            .complete(&ghost, 1, &done(result()), ACCEPTED)
            .await,
        Err(StoreError::UnknownJob(id)) if id == ghost
    ));
}

pub async fn complete_stores_the_summary_of_the_saved_pages(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED + 100).await;
    let token = lease.fencing_token;
    save_level(store, &spec.job_id, token, 0, &["https://example.com/"]).await;
    // The last level has no next level, so it is never marked complete:
    // part of it is saved as it arrives, the rest comes with the completion.
    store
        .save_pages(
            &spec.job_id,
            token,
            1,
            &pages(1, &["https://example.com/b"]),
        )
        .await
        .unwrap();
    let last_pages = pages(1, &["https://example.com/a"]);
    let summary = ResultSummary {
        depth: 1,
        truncated: false,
        level_sizes: vec![1, 2],
    };
    let short = ResultSummary {
        level_sizes: vec![1, 3],
        ..summary.clone()
    };
    assert!(
        matches!(
            store
                .complete(
                    &spec.job_id,
                    token,
                    &JobOutcome::Done {
                        summary: short,
                        last_pages: last_pages.clone()
                    },
                    ACCEPTED + 2_000
                )
                .await,
            Err(StoreError::PagesMissing {
                said: 4,
                saved: 3,
                ..
            })
        ),
        "a summary the saved pages do not add up to is refused"
    );
    let record = store
        .complete(
            &spec.job_id,
            token,
            &JobOutcome::Done {
                summary: summary.clone(),
                last_pages,
            },
            ACCEPTED + 2_500,
        )
        .await
        .unwrap();
    assert_eq!(record.state, JobState::Done);
    assert_eq!(record.summary, Some(summary));
    assert_eq!(record.pages_done, 3);
    assert_eq!(record.failure, None);
    assert_eq!(record.elapsed_ms, 2_500);
    assert!(!record.delivered);
    assert_eq!(store.get(&spec.job_id).await.unwrap(), Some(record));
    assert_eq!(
        urls(&all_pages(store, &spec.job_id).await),
        [
            "https://example.com/",
            "https://example.com/a",
            "https://example.com/b"
        ],
        "by depth, then URL"
    );
    let level_zero = PageQuery {
        max_depth: 0,
        after: None,
        limit: 10,
    };
    assert_eq!(
        store
            .read_pages(&spec.job_id, &level_zero)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn urls_are_ordered_byte_by_byte(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    // The crawler sorts levels by bytes; a locale's collation would put
    // these in another order.
    let odd = [
        "https://example.com/B",
        "https://example.com/a",
        "https://example.com/_",
        "https://example.com/\u{e9}",
    ];
    store
        .save_pages(&spec.job_id, lease.fencing_token, 0, &pages(0, &odd))
        .await
        .unwrap();
    let mut sorted = odd.to_vec();
    sorted.sort_unstable();
    assert_eq!(urls(&all_pages(store, &spec.job_id).await), sorted);
}

pub async fn a_finished_job_is_delivered_once_and_given_back_when_sending_fails(
    store: &dyn JobStore,
) {
    let spec = spec();
    store.insert_job(&spec).await.unwrap();
    assert!(
        !store.claim_delivery(&spec.job_id).await.unwrap(),
        "nothing to deliver while it runs"
    );
    let open = store.open_jobs(&spec.client_id, 10).await.unwrap();
    assert_eq!(open.len(), 1, "a running job owes its progress");
    assert_eq!(store.unfinished_jobs(&spec.client_id).await.unwrap(), 1);
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &done(result()),
            ACCEPTED + 1,
        )
        .await
        .unwrap();
    assert_eq!(store.unfinished_jobs(&spec.client_id).await.unwrap(), 0);
    assert!(store.claim_delivery(&spec.job_id).await.unwrap());
    assert!(!store.claim_delivery(&spec.job_id).await.unwrap(), "once");
    assert!(
        store
            .open_jobs(&spec.client_id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.unclaim_delivery(&spec.job_id).await.unwrap();
    let open = store.open_jobs(&spec.client_id, 10).await.unwrap();
    assert_eq!(open[0].state, JobState::Done);
    assert!(store.claim_delivery(&spec.job_id).await.unwrap());
    assert!(
        store
            .open_jobs("another client", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn failure_is_recorded(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let failure = JobFailure {
        code: ErrorCode::CrawlFailed,
        message: "the start page timed out".into(),
    };
    let record = store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &JobOutcome::Failed(failure.clone()),
            ACCEPTED + 40,
        )
        .await
        .unwrap();
    assert_eq!(record.state, JobState::Failed);
    assert_eq!(record.failure, Some(failure));
    assert_eq!(record.summary, None);
    assert_eq!(record.elapsed_ms, 40);
}

pub async fn completing_twice_keeps_the_first_outcome(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let first = store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &done(result()),
            ACCEPTED + 10,
        )
        .await
        .unwrap();
    let failure = JobFailure {
        code: ErrorCode::CrawlFailed,
        message: "late".into(),
    };
    let second = store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &JobOutcome::Failed(failure),
            ACCEPTED + 99,
        )
        .await
        .unwrap();
    assert_eq!(second, first);
    assert!(matches!(
        store
            .acquire(&spec, "m2", TTL, ACCEPTED + 100)
            .await
            .unwrap(),
        AcquireOutcome::AlreadyDone(_)
    ));
}

pub async fn racing_masters_get_exactly_one_grant(store: &dyn JobStore) {
    let spec = spec();
    let masters: Vec<String> = (0..8).map(|n| format!("m{n}")).collect();
    let outcomes = futures::future::join_all(
        masters
            .iter()
            .map(|master| store.acquire(&spec, master, TTL, ACCEPTED)),
    )
    .await;
    let grants = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap())
        .filter(|outcome| matches!(outcome, AcquireOutcome::Granted(_)))
        .count();
    assert_eq!(grants, 1);
}

pub async fn an_orphan_is_handed_over_with_the_next_token_and_its_checkpoint(store: &dyn JobStore) {
    let spec = spec();
    let old = grant(store, &spec, "m1", ACCEPTED).await;
    save_level(
        store,
        &spec.job_id,
        old.fencing_token,
        0,
        &["https://example.com/"],
    )
    .await;
    // Level 1 was under way: its pages so far are dropped at the takeover.
    store
        .save_pages(
            &spec.job_id,
            old.fencing_token,
            1,
            &pages(1, &["https://example.com/a"]),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_orphan("m2", &[], TTL, old.expires_at_ms - 1)
            .await
            .unwrap(),
        None,
        "a live lease is no orphan"
    );

    let takeover = store
        .claim_orphan("m2", &[], TTL, old.expires_at_ms)
        .await
        .unwrap()
        .expect("the expired job is an orphan");
    assert_eq!(takeover.spec, spec);
    assert_eq!(takeover.previous_master.as_deref(), Some("m1"));
    assert_eq!(takeover.grant.lease.fencing_token, old.fencing_token + 1);
    let checkpoint = takeover.grant.checkpoint.expect("level 0 was saved");
    assert_eq!(checkpoint.levels_done, 1);
    assert_eq!(checkpoint.max_pages, 100);
    assert_eq!(
        urls(&all_pages(store, &spec.job_id).await),
        ["https://example.com/"],
        "the completed level is kept, the unfinished one dropped"
    );

    assert_eq!(
        store
            .claim_orphan("m3", &[], TTL, old.expires_at_ms)
            .await
            .unwrap(),
        None,
        "taken over once"
    );
    assert_stale(
        store
            .save_pages(
                &spec.job_id,
                old.fencing_token,
                1,
                &pages(1, &["https://example.com/x"]),
            )
            .await,
        old.fencing_token,
        old.fencing_token + 1,
    );
    assert_stale(
        store
            .save_level(&spec.job_id, old.fencing_token, &level(1, 0))
            .await,
        old.fencing_token,
        old.fencing_token + 1,
    );
}

pub async fn orphans_go_oldest_first_and_skip_the_callers_own(store: &dyn JobStore) {
    let (early, late) = (spec(), spec());
    let early_lease = grant(store, &early, "m1", ACCEPTED).await;
    grant(store, &late, "m1", ACCEPTED + 500).await;
    let now = early_lease.expires_at_ms + 1_000;

    let skipped = store
        .claim_orphan("m2", std::slice::from_ref(&early.job_id), TTL, now)
        .await
        .unwrap()
        .expect("the later orphan is left");
    assert_eq!(skipped.spec.job_id, late.job_id);
    let oldest = store
        .claim_orphan("m2", &[], TTL, now)
        .await
        .unwrap()
        .expect("the early orphan is still there");
    assert_eq!(oldest.spec.job_id, early.job_id);
    assert_eq!(store.claim_orphan("m2", &[], TTL, now).await.unwrap(), None);
}

pub async fn a_released_job_is_an_orphan_at_once(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    assert_stale(
        store
            .release(&spec.job_id, lease.fencing_token + 1, ACCEPTED + 10)
            .await,
        lease.fencing_token + 1,
        lease.fencing_token,
    );
    store
        .release(&spec.job_id, lease.fencing_token, ACCEPTED + 10)
        .await
        .unwrap();
    let takeover = store
        .claim_orphan("m2", &[], TTL, ACCEPTED + 10)
        .await
        .unwrap()
        .expect("released, so claimable before its lease would have run out");
    assert_eq!(takeover.grant.checkpoint, None);

    let record = store
        .complete(
            &spec.job_id,
            takeover.grant.lease.fencing_token,
            &done(result()),
            ACCEPTED + 20,
        )
        .await
        .unwrap();
    assert_eq!(record.state, JobState::Done);
    assert!(matches!(
        store
            .release(
                &spec.job_id,
                takeover.grant.lease.fencing_token,
                ACCEPTED + 30
            )
            .await,
        Err(StoreError::Ended)
    ));
    assert!(matches!(
        store.release(&JobId::new_random(), 1, ACCEPTED).await,
        Err(StoreError::UnknownJob(_))
    ));
}

pub async fn levels_are_saved_in_order_and_a_repeated_save_is_harmless(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let token = lease.fencing_token;
    save_level(store, &spec.job_id, token, 0, &["https://example.com/"]).await;
    // Saved again (a retry after a lost answer): nothing changes.
    save_level(store, &spec.job_id, token, 0, &["https://example.com/"]).await;
    assert!(matches!(
        store.save_level(&spec.job_id, token, &level(2, 0)).await,
        Err(StoreError::LevelOutOfOrder {
            expected: 1,
            got: 2
        })
    ));
    store
        .save_pages(
            &spec.job_id,
            token,
            1,
            &pages(1, &["https://example.com/a"]),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            store.save_level(&spec.job_id, token, &level(1, 2)).await,
            Err(StoreError::PagesMissing {
                said: 2,
                saved: 1,
                ..
            })
        ),
        "a level is complete only once all its pages are saved"
    );
    assert!(
        store
            .save_pages(
                &spec.job_id,
                token,
                1,
                &pages(2, &["https://example.com/c"])
            )
            .await
            .is_err(),
        "a page of another depth is refused"
    );
    let one = LevelDone {
        truncated: true,
        max_pages: 2,
        ..level(1, 1)
    };
    store.save_level(&spec.job_id, token, &one).await.unwrap();

    let resumed = full_grant(store, &spec, "m2", lease.expires_at_ms)
        .await
        .checkpoint
        .expect("two levels saved");
    assert_eq!(resumed.levels_done, 2);
    assert!(resumed.truncated);
    assert_eq!(resumed.max_pages, 2);
    assert_eq!(
        urls(&all_pages(store, &spec.job_id).await),
        ["https://example.com/", "https://example.com/a"]
    );

    let summary = ResultSummary {
        depth: 2,
        truncated: true,
        level_sizes: vec![1, 1],
    };
    let record = store
        .complete(
            &spec.job_id,
            token + 1,
            &done(summary.clone()),
            ACCEPTED + 1,
        )
        .await
        .unwrap();
    assert_eq!(record.summary, Some(summary));
    assert!(matches!(
        store
            .save_level(&spec.job_id, token + 1, &level(0, 1))
            .await,
        Err(StoreError::Ended)
    ));
    assert!(matches!(
        store
            .save_pages(
                &spec.job_id,
                token + 1,
                0,
                &pages(0, &["https://example.com/"])
            )
            .await,
        Err(StoreError::Ended)
    ));
}

pub async fn the_outbox_hands_out_unpublished_jobs_once_per_grace(store: &dyn JobStore) {
    let waiting = spec();
    store.insert_job(&waiting).await.unwrap();
    let published = JobSpec {
        client_job_id: "job-2".into(),
        ..spec()
    };
    store.insert_job(&published).await.unwrap();
    store.mark_published(&published.job_id).await.unwrap();
    let leased = JobSpec {
        client_job_id: "job-3".into(),
        ..spec()
    };
    store.insert_job(&leased).await.unwrap();
    grant(store, &leased, "m1", ACCEPTED).await;
    store
        .insert_done(&spec(), &cached(&JobId::new_random()))
        .await
        .unwrap();

    assert_eq!(
        store
            .claim_unpublished(ACCEPTED, ACCEPTED + 5, 10)
            .await
            .unwrap(),
        Vec::<JobSpec>::new(),
        "still within its grace"
    );
    let due = store
        .claim_unpublished(ACCEPTED + 1, ACCEPTED + 5, 10)
        .await
        .unwrap();
    assert_eq!(due, vec![waiting.clone()]);
    assert_eq!(
        store
            .claim_unpublished(ACCEPTED + 1, ACCEPTED + 6, 10)
            .await
            .unwrap(),
        Vec::<JobSpec>::new(),
        "taken by that relay until another grace has passed"
    );
    assert_eq!(
        store
            .claim_unpublished(ACCEPTED + 6, ACCEPTED + 7, 10)
            .await
            .unwrap(),
        vec![waiting.clone()]
    );
    store.mark_published(&waiting.job_id).await.unwrap();
    assert_eq!(
        store
            .claim_unpublished(u64::MAX / 2, u64::MAX / 2, 10)
            .await
            .unwrap(),
        Vec::<JobSpec>::new()
    );
}

pub async fn a_rerouted_job_reports_its_new_gateway(store: &dyn JobStore) {
    let spec = spec();
    store.insert_job(&spec).await.unwrap();
    store.reroute(&spec.job_id, "gw-2").await.unwrap();
    let found = store
        .find_by_client(&spec.client_id, &spec.client_job_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.spec.gateway_key, "gw-2");
    let outbox = store
        .claim_unpublished(ACCEPTED + 1, ACCEPTED + 2, 10)
        .await
        .unwrap();
    assert_eq!(outbox[0].gateway_key, "gw-2");
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let record = store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &done(result()),
            ACCEPTED + 3,
        )
        .await
        .unwrap();
    assert_eq!(
        record.spec.gateway_key, "gw-2",
        "the master publishes where the client is"
    );
}

/// Runs the whole store suite against one implementation.
/// Quotas count a tenant's jobs by their client keys' prefix: a job of
/// another tenant, or of a tenant whose name merely starts the same, is
/// not counted.
pub async fn a_tenants_usage_counts_its_own_jobs_only(store: &dyn JobStore) {
    let tenant = Tenant::parse("team-a").unwrap();
    let job = |client_key: String, accepted_at_ms: u64| JobSpec {
        client_id: client_key,
        accepted_at_ms,
        ..spec()
    };
    let hour_ago = ACCEPTED;
    let day_ago = ACCEPTED - 100_000;
    // Running, accepted in the last hour, 7 pages so far.
    let running = job(tenant.client_key("c1"), ACCEPTED + 10);
    let lease = grant(store, &running, "m1", ACCEPTED + 20).await;
    store
        .heartbeat(
            &running.job_id,
            lease.fencing_token,
            7,
            1,
            TTL,
            ACCEPTED + 30,
        )
        .await
        .unwrap();
    // Queued, accepted today but before the last hour.
    let queued = job(tenant.client_key("c2"), day_ago + 5);
    store.insert_job(&queued).await.unwrap();
    // Done yesterday: counted nowhere.
    let old = job(tenant.client_key("c3"), day_ago - 5);
    let old_lease = grant(store, &old, "m1", ACCEPTED + 40).await;
    store
        .complete(
            &old.job_id,
            old_lease.fencing_token,
            &done(result()),
            ACCEPTED + 50,
        )
        .await
        .unwrap();
    // Other tenants' jobs, one whose name only starts like this one's.
    for other in ["team-ab", "team-b"] {
        let theirs = job(
            Tenant::parse(other).unwrap().client_key("c1"),
            ACCEPTED + 10,
        );
        store.insert_job(&theirs).await.unwrap();
    }

    let usage = store
        .tenant_usage(&tenant, hour_ago, day_ago)
        .await
        .unwrap();
    assert_eq!(
        usage,
        TenantUsage {
            running_jobs: 2,
            jobs_last_hour: 1,
            pages_last_day: 7,
        }
    );
    let nobody = Tenant::parse("nobody").unwrap();
    assert_eq!(
        store
            .tenant_usage(&nobody, hour_ago, day_ago)
            .await
            .unwrap(),
        TenantUsage::default()
    );
}

/// A deeper job of a finished crawl starts with a copy of its levels, and
/// its first grant carries the checkpoint past them. A head start whose
/// pages are not all stored records nothing; a taken id is answered as
/// [`JobStore::insert_job`] answers it.
pub async fn a_head_start_copies_the_levels_and_its_grant_resumes_past_them(store: &dyn JobStore) {
    let earlier = spec();
    let token = grant(store, &earlier, "m1", ACCEPTED + 100)
        .await
        .fencing_token;
    save_level(store, &earlier.job_id, token, 0, &["https://example.com/"]).await;
    let summary = ResultSummary {
        depth: 1,
        truncated: false,
        level_sizes: vec![1, 2],
    };
    let last_pages = pages(1, &["https://example.com/a", "https://example.com/b"]);
    store
        .complete(
            &earlier.job_id,
            token,
            &JobOutcome::Done {
                summary: summary.clone(),
                last_pages,
            },
            ACCEPTED + 1_000,
        )
        .await
        .unwrap();
    let cached = CachedCrawl {
        summary,
        job_id: earlier.job_id.clone(),
        pages: None,
    };
    let deeper = JobSpec { depth: 3, ..spec() };
    let head = HeadStart::of(&cached, &deeper).expect("a shallower complete crawl");
    assert_eq!((head.levels_done, head.pages), (2, 3));

    let gone = HeadStart {
        pages: 4,
        ..head.clone()
    };
    assert_eq!(store.insert_head_start(&deeper, &gone).await.unwrap(), None);
    assert!(
        store.get(&deeper.job_id).await.unwrap().is_none(),
        "nothing recorded"
    );

    assert_eq!(
        store.insert_head_start(&deeper, &head).await.unwrap(),
        Some(InsertOutcome::Created)
    );
    assert_eq!(
        urls(&all_pages(store, &deeper.job_id).await),
        [
            "https://example.com/",
            "https://example.com/a",
            "https://example.com/b"
        ]
    );
    let checkpoint = full_grant(store, &deeper, "m2", ACCEPTED + 2_000)
        .await
        .checkpoint
        .expect("the head start's checkpoint");
    assert_eq!((checkpoint.levels_done, checkpoint.truncated), (2, false));
    assert_eq!(checkpoint.max_pages, deeper.options.max_pages);

    let again = JobSpec {
        job_id: JobId::new_random(),
        ..deeper.clone()
    };
    assert!(matches!(
        store.insert_head_start(&again, &head).await.unwrap(),
        Some(InsertOutcome::Exists(existing)) if existing.spec.job_id == deeper.job_id
    ));
}

#[macro_export]
macro_rules! store_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            store,
            $setup,
            [
                inserting_a_client_job_twice_returns_the_first,
                unknown_jobs_are_absent,
                a_cache_answer_is_recorded_as_done_and_delivered,
                a_head_start_copies_the_levels_and_its_grant_resumes_past_them,
                acquire_persists_and_leases_a_new_job,
                a_live_lease_is_held_elsewhere,
                the_same_master_reacquiring_gets_a_higher_token,
                an_expired_lease_is_taken_over_and_fences_the_old_holder,
                heartbeat_renews_the_lease_and_records_progress,
                heartbeat_and_complete_of_an_unknown_job_are_refused,
                complete_stores_the_summary_of_the_saved_pages,
                urls_are_ordered_byte_by_byte,
                a_finished_job_is_delivered_once_and_given_back_when_sending_fails,
                failure_is_recorded,
                completing_twice_keeps_the_first_outcome,
                racing_masters_get_exactly_one_grant,
                an_orphan_is_handed_over_with_the_next_token_and_its_checkpoint,
                orphans_go_oldest_first_and_skip_the_callers_own,
                a_released_job_is_an_orphan_at_once,
                levels_are_saved_in_order_and_a_repeated_save_is_harmless,
                the_outbox_hands_out_unpublished_jobs_once_per_grace,
                a_rerouted_job_reports_its_new_gateway,
                a_tenants_usage_counts_its_own_jobs_only,
            ]
        );
    };
}
