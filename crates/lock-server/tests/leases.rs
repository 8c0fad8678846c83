//! The lock service over gRPC, in process on port 0, on the SQLite store:
//! grants, fencing, stale-token refusal and idempotent completion.

use crawler_core::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

use crawler_core::model::{CrawlOptions, CrawlResult, JobId, JobSpec};
use crawler_proto::v1::{self, acquire_response::Outcome, lock_service_client::LockServiceClient};
use lock_server::LockServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

async fn start() -> (LockServiceClient<Channel>, CancellationToken) {
    let store = crawler_adapters::SqliteStore::in_memory().await.unwrap();
    let server = LockServer::build("127.0.0.1:0".parse().unwrap(), Arc::new(store))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let stop = CancellationToken::new();
    tokio::spawn(server.run_until_stopped(stop.clone()));
    (LockServiceClient::connect(url).await.unwrap(), stop)
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
    }
}

fn acquire(spec: &JobSpec, master: &str, ttl_ms: u32) -> v1::AcquireRequest {
    v1::AcquireRequest {
        job: Some(spec.into()),
        master_id: master.into(),
        ttl_ms,
    }
}

fn complete(spec: &JobSpec, token: u64) -> v1::CompleteRequest {
    let result = CrawlResult {
        levels: vec![vec![spec.url.clone()]],
        depth: 1,
        ..Default::default()
    };
    v1::CompleteRequest {
        job_id: spec.job_id.0.clone(),
        fencing_token: token,
        outcome: Some(v1::complete_request::Outcome::Result((&result).into())),
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

    lock.complete(complete(&job, lease2.fencing_token))
        .await
        .unwrap();
    let record = lock
        .get_job(v1::GetJobRequest {
            job_id: job.job_id.0.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record.state, v1::JobState::Done as i32);
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
