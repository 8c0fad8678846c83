//! The lock service over gRPC, in process on port 0, on the SQLite store:
//! grants, fencing, stale-token refusal, takeover of orphans with their
//! checkpoints, and replicas that follow one leader.

use crawler_core::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use crawler_core::model::{CrawlOptions, JobId, JobSpec, ResultSummary};
use crawler_proto::v1::{self, acquire_response::Outcome, lock_service_client::LockServiceClient};
use lock_server::{LockServer, ReplicaSettings};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

async fn start() -> (LockServiceClient<Channel>, CancellationToken) {
    let store = Arc::new(crawler_adapters::SqliteStore::in_memory().await.unwrap());
    let (client, stop, _) = replica(&store, ReplicaSettings::single()).await;
    (client, stop)
}

/// A lock-server replica on `store`, serving until the token is cancelled.
async fn replica(
    store: &Arc<crawler_adapters::SqliteStore>,
    settings: ReplicaSettings,
) -> (LockServiceClient<Channel>, CancellationToken, String) {
    let server = LockServer::build(
        "127.0.0.1:0".parse().unwrap(),
        store.clone(),
        store.clone(),
        settings,
        crawler_core::tls::GrpcSecurity::Plaintext,
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run_until_stopped(stop.clone()));
    (
        LockServiceClient::connect(url.clone()).await.unwrap(),
        stop,
        url,
    )
}

fn granted(outcome: Option<Outcome>) -> v1::Lease {
    match outcome {
        Some(Outcome::Granted(lease)) => lease,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn spec() -> JobSpec {
    JobSpec {
        job_id: JobId::new_random(),
        client_id: "c".into(),
        client_job_id: "J1".into(),
        url: "http://a.test/".into(),
        depth: 1,
        options: CrawlOptions {
            max_pages: 10,
            ..Default::default()
        },
        gateway_key: "gw".into(),
        accepted_at_ms: crawler_core::now_ms(),
        trace: Default::default(),
    }
}

fn acquire(spec: &JobSpec, master: &str, ttl_ms: u32) -> v1::AcquireRequest {
    v1::AcquireRequest {
        job: Some(spec.into()),
        master_id: master.into(),
        ttl_ms,
    }
}

/// Completes with a result of no page (a crawl whose start page was refused).
fn complete(spec: &JobSpec, token: u64) -> v1::CompleteRequest {
    let summary = ResultSummary {
        depth: 1,
        ..Default::default()
    };
    v1::CompleteRequest {
        job_id: spec.job_id.0.clone(),
        fencing_token: token,
        outcome: Some(v1::complete_request::Outcome::Result((&summary).into())),
        last_pages: Vec::new(),
    }
}

#[tokio::test]
async fn a_master_that_lost_its_lease_can_neither_heartbeat_nor_complete() {
    let (mut lock, _stop) = start().await;
    let job = spec();
    let first = lock
        .acquire(acquire(&job, "m1", 300))
        .await
        .unwrap()
        .into_inner()
        .outcome;
    let Some(Outcome::Granted(lease1)) = first else {
        panic!("{first:?}")
    };
    let held = lock
        .acquire(acquire(&job, "m2", 300))
        .await
        .unwrap()
        .into_inner()
        .outcome;
    assert!(
        matches!(held, Some(Outcome::Held(ref h)) if h.master_id == "m1"),
        "{held:?}"
    );

    // m1 stops heartbeating; once its lease runs out, m2 gets a higher token.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lease2 = loop {
        match lock
            .acquire(acquire(&job, "m2", 5_000))
            .await
            .unwrap()
            .into_inner()
            .outcome
        {
            Some(Outcome::Granted(lease)) => break lease,
            Some(Outcome::Held(h)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the lease never expired"
                );
                tokio::time::sleep(Duration::from_millis(u64::from(h.expires_in_ms.max(10)))).await;
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(lease2.fencing_token > lease1.fencing_token);

    let beat = v1::HeartbeatRequest {
        job_id: job.job_id.0.clone(),
        fencing_token: lease1.fencing_token,
        pages_done: 1,
        current_depth: 0,
        ttl_ms: 300,
    };
    let refused = lock.heartbeat(beat).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        ErrorCode::of(&refused),
        Some(ErrorCode::StaleLease),
        "{}",
        refused.message()
    );
    let refused = lock
        .complete(complete(&job, lease1.fencing_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let record = lock
        .complete(complete(&job, lease2.fencing_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        record.state,
        v1::JobState::Done as i32,
        "complete returns the stored record"
    );
    assert_eq!(record.summary.unwrap().depth, 1);
    let again = lock
        .acquire(acquire(&job, "m3", 5_000))
        .await
        .unwrap()
        .into_inner()
        .outcome;
    assert!(
        matches!(again, Some(Outcome::Done(_))),
        "a finished job is never leased again: {again:?}"
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_with_clear_codes() {
    let (mut lock, _stop) = start().await;
    let no_job = v1::AcquireRequest {
        job: None,
        master_id: "m".into(),
        ttl_ms: 1000,
    };
    let e = lock.acquire(no_job).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(ErrorCode::of(&e), Some(ErrorCode::MissingField));
    let e = lock.acquire(acquire(&spec(), "m", 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = lock
        .get_job(v1::GetJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = lock.complete(complete(&spec(), 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_released_job_is_taken_over_with_its_saved_levels() {
    let (mut lock, _stop) = start().await;
    let job = spec();
    let lease = granted(
        lock.acquire(acquire(&job, "m1", 60_000))
            .await
            .unwrap()
            .into_inner()
            .outcome,
    );
    assert_eq!(lease.checkpoint, None);
    let page = crawler_core::model::PageFacts {
        url: job.url.clone(),
        status: Some(200),
        links: vec!["http://a.test/next".into()],
        ..Default::default()
    };
    lock.save_pages(v1::SavePagesRequest {
        job_id: job.job_id.0.clone(),
        fencing_token: lease.fencing_token,
        depth: 0,
        pages: vec![(&page).into()],
    })
    .await
    .unwrap();
    let level = crawler_core::model::LevelDone {
        depth: 0,
        page_count: 1,
        truncated: false,
        max_pages: 10,
    };
    lock.save_level(v1::SaveLevelRequest::new(
        &job.job_id,
        lease.fencing_token,
        &level,
    ))
    .await
    .unwrap();
    let claim = |running: Vec<String>| v1::ClaimOrphanRequest {
        master_id: "m2".into(),
        ttl_ms: 60_000,
        running_job_ids: running,
    };
    let none = lock.claim_orphan(claim(vec![])).await.unwrap().into_inner();
    assert_eq!(none.orphan, None, "its lease is live for a minute");

    lock.release(v1::ReleaseRequest {
        job_id: job.job_id.0.clone(),
        fencing_token: lease.fencing_token,
    })
    .await
    .unwrap();
    let skipped = lock
        .claim_orphan(claim(vec![job.job_id.0.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        skipped.orphan, None,
        "a master is never handed a job it runs"
    );
    let orphan = lock
        .claim_orphan(claim(vec![]))
        .await
        .unwrap()
        .into_inner()
        .orphan
        .expect("released at once");
    assert_eq!(orphan.previous_master, "m1");
    assert_eq!(orphan.job.unwrap().job_id, job.job_id.0);
    let new_lease = orphan.lease.unwrap();
    assert_eq!(new_lease.fencing_token, lease.fencing_token + 1);
    let checkpoint: crawler_core::model::Checkpoint = new_lease.checkpoint.unwrap().into();
    assert_eq!(checkpoint.levels_done, 1);
    let stored = lock
        .read_pages(v1::ReadPagesRequest::new(
            &job.job_id,
            &crawler_core::ports::PageQuery {
                max_depth: 0,
                after: None,
                limit: 10,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .pages;
    let stored: Vec<crawler_core::model::PageFacts> = stored.into_iter().map(Into::into).collect();
    assert_eq!(
        stored,
        [page],
        "the new holder reads the saved level's pages"
    );

    let stale = lock
        .save_level(v1::SaveLevelRequest::new(
            &job.job_id,
            lease.fencing_token,
            &level,
        ))
        .await
        .unwrap_err();
    assert_eq!(ErrorCode::of(&stale), Some(ErrorCode::StaleLease));
}

#[tokio::test]
async fn a_follower_names_the_leader_and_takes_over_when_it_stops() {
    let store = Arc::new(crawler_adapters::SqliteStore::in_memory().await.unwrap());
    let settings = |id: &str| ReplicaSettings {
        id: id.into(),
        advertise_url: None,
        leader_ttl: Duration::from_millis(600),
        takeover_grace: Duration::from_secs(600),
    };
    let (mut leader, stop_leader, leader_url) = replica(&store, settings("a")).await;
    let (mut follower, _stop_follower, _) = replica(&store, settings("b")).await;

    let job = spec();
    let first = granted(
        leader
            .acquire(acquire(&job, "m1", 300))
            .await
            .unwrap()
            .into_inner()
            .outcome,
    );
    let refused = follower
        .acquire(acquire(&job, "m1", 300))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(ErrorCode::of(&refused), Some(ErrorCode::NotLeader));
    assert_eq!(
        refused
            .metadata()
            .get(crawler_proto::LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(leader_url.as_str())
    );

    // A graceful stop resigns: the follower leads by its next campaign.
    stop_leader.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        match follower.acquire(acquire(&job, "m2", 300)).await {
            Ok(response) => match response.into_inner().outcome {
                Some(Outcome::Granted(lease)) => break lease,
                Some(Outcome::Held(_)) => {}
                other => panic!("{other:?}"),
            },
            Err(e) => assert_eq!(ErrorCode::of(&e), Some(ErrorCode::NotLeader), "{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        second.fencing_token > first.fencing_token,
        "tokens keep rising across leaders"
    );

    // A new leader hands out no orphan during its grace, however expired:
    // masters that could not heartbeat during the change come back first.
    follower
        .release(v1::ReleaseRequest {
            job_id: job.job_id.0.clone(),
            fencing_token: second.fencing_token,
        })
        .await
        .unwrap();
    let claim = v1::ClaimOrphanRequest {
        master_id: "m3".into(),
        ttl_ms: 300,
        running_job_ids: vec![],
    };
    let during_grace = follower.claim_orphan(claim).await.unwrap().into_inner();
    assert_eq!(during_grace.orphan, None);
}
