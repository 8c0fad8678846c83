//! The [`JobStore`] suite. Timestamps are chosen by the tests (the store
//! takes `now_ms` from its caller), so lease expiry needs no waiting.

use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::model::{
    CrawlOptions, CrawlResult, JobFailure, JobId, JobSpec, JobState, LevelDone, PageFacts,
};
use crawler_core::ports::{
    AcquireOutcome, Grant, InsertOutcome, JobOutcome, JobStore, Lease, StoreError,
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

fn result() -> CrawlResult {
    CrawlResult {
        levels: vec![vec!["https://example.com/".into()]],
        depth: 2,
        ..CrawlResult::default()
    }
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

fn level(depth: u32, urls: &[&str], frontier: &[&str]) -> LevelDone {
    LevelDone {
        depth,
        pages: urls.iter().map(|url| page(url, depth)).collect(),
        frontier: frontier.iter().map(|url| url.to_string()).collect(),
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

pub async fn a_cache_answer_is_recorded_as_done(store: &dyn JobStore) {
    let spec = spec();
    assert_eq!(
        store.insert_done(&spec, &result()).await.unwrap(),
        InsertOutcome::Created
    );
    let record = store.get(&spec.job_id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Done);
    assert_eq!(record.result, Some(result()));

    match store.acquire(&spec, "m1", TTL, ACCEPTED).await.unwrap() {
        AcquireOutcome::AlreadyDone(done) => assert_eq!(*done, record),
        other => panic!("expected AlreadyDone, got {other:?}"),
    }
    assert!(matches!(
        store.insert_done(&spec, &result()).await.unwrap(),
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
            .complete(
                &spec.job_id,
                old.fencing_token,
                &JobOutcome::Done(result()),
                later,
            )
            .await,
        old.fencing_token,
        new.fencing_token,
    );
    let record = store
        .complete(
            &spec.job_id,
            new.fencing_token,
            &JobOutcome::Done(result()),
            later,
        )
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
    assert_eq!(renewed, now + 10_000);

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
            expires_at_ms: renewed,
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
            .complete(&ghost, 1, &JobOutcome::Done(result()), ACCEPTED)
            .await,
        Err(StoreError::UnknownJob(id)) if id == ghost
    ));
}

pub async fn complete_stores_the_result_and_elapsed_time(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED + 100).await;
    let record = store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &JobOutcome::Done(result()),
            ACCEPTED + 2_500,
        )
        .await
        .unwrap();
    assert_eq!(record.state, JobState::Done);
    assert_eq!(record.result, Some(result()));
    assert_eq!(record.failure, None);
    assert_eq!(record.elapsed_ms, 2_500);
    assert_eq!(store.get(&spec.job_id).await.unwrap(), Some(record));
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
    assert_eq!(record.result, None);
    assert_eq!(record.elapsed_ms, 40);
}

pub async fn completing_twice_keeps_the_first_outcome(store: &dyn JobStore) {
    let spec = spec();
    let lease = grant(store, &spec, "m1", ACCEPTED).await;
    let first = store
        .complete(
            &spec.job_id,
            lease.fencing_token,
            &JobOutcome::Done(result()),
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
    let first = level(
        0,
        &["https://example.com/"],
        &["https://example.com/a", "https://example.com/b"],
    );
    store
        .save_level(&spec.job_id, old.fencing_token, &first)
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
    assert_eq!(checkpoint.pages, first.pages);
    assert_eq!(checkpoint.frontier, first.frontier);
    assert_eq!(
        checkpoint.levels(),
        vec![vec!["https://example.com/".to_string()]]
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
            .save_level(&spec.job_id, old.fencing_token, &level(1, &[], &[]))
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
            &JobOutcome::Done(result()),
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
    let zero = level(0, &["https://example.com/"], &["https://example.com/a"]);
    store.save_level(&spec.job_id, token, &zero).await.unwrap();
    store.save_level(&spec.job_id, token, &zero).await.unwrap();
    assert!(matches!(
        store
            .save_level(&spec.job_id, token, &level(2, &[], &[]))
            .await,
        Err(StoreError::LevelOutOfOrder {
            expected: 1,
            got: 2
        })
    ));
    let one = LevelDone {
        truncated: true,
        max_pages: 2,
        ..level(1, &["https://example.com/a"], &["https://example.com/z"])
    };
    store.save_level(&spec.job_id, token, &one).await.unwrap();

    let resumed = full_grant(store, &spec, "m2", lease.expires_at_ms)
        .await
        .checkpoint
        .expect("two levels saved");
    assert_eq!(resumed.levels_done, 2);
    assert_eq!(
        resumed.levels(),
        vec![
            vec!["https://example.com/".to_string()],
            vec!["https://example.com/a".to_string()]
        ]
    );
    assert_eq!(resumed.frontier, one.frontier);
    assert!(resumed.truncated);
    assert_eq!(resumed.max_pages, 2);

    let record = store
        .complete(
            &spec.job_id,
            token + 1,
            &JobOutcome::Done(result()),
            ACCEPTED + 1,
        )
        .await
        .unwrap();
    assert_eq!(record.result, Some(result()));
    assert!(matches!(
        store.save_level(&spec.job_id, token + 1, &zero).await,
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
    store.insert_done(&spec(), &result()).await.unwrap();

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
            &JobOutcome::Done(result()),
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
#[macro_export]
macro_rules! store_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            store,
            $setup,
            [
                inserting_a_client_job_twice_returns_the_first,
                unknown_jobs_are_absent,
                a_cache_answer_is_recorded_as_done,
                acquire_persists_and_leases_a_new_job,
                a_live_lease_is_held_elsewhere,
                the_same_master_reacquiring_gets_a_higher_token,
                an_expired_lease_is_taken_over_and_fences_the_old_holder,
                heartbeat_renews_the_lease_and_records_progress,
                heartbeat_and_complete_of_an_unknown_job_are_refused,
                complete_stores_the_result_and_elapsed_time,
                failure_is_recorded,
                completing_twice_keeps_the_first_outcome,
                racing_masters_get_exactly_one_grant,
                an_orphan_is_handed_over_with_the_next_token_and_its_checkpoint,
                orphans_go_oldest_first_and_skip_the_callers_own,
                a_released_job_is_an_orphan_at_once,
                levels_are_saved_in_order_and_a_repeated_save_is_harmless,
                the_outbox_hands_out_unpublished_jobs_once_per_grace,
                a_rerouted_job_reports_its_new_gateway,
            ]
        );
    };
}
