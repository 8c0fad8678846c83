//! The LockService over a job store.

use std::sync::Arc;
use std::time::Duration;

use crawler_core::model::{JobId, JobSpec};
use crawler_core::ports::{AcquireOutcome, JobOutcome, JobStore, StoreError};
use crawler_core::{ErrorCode, now_ms};
use crawler_proto::v1::{self, acquire_response, lock_service_server::LockService};
use tonic::{Request, Response, Status};

/// Leases shorter than this would expire between two heartbeats.
const MIN_TTL_MS: u32 = 300;
const MAX_TTL_MS: u32 = 10 * 60 * 1000;

pub struct LockGrpc {
    pub store: Arc<dyn JobStore>,
}

fn ttl(ttl_ms: u32) -> Result<Duration, Status> {
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(ErrorCode::InvalidField
            .status(format!("ttl_ms must be from {MIN_TTL_MS} to {MAX_TTL_MS}")));
    }
    Ok(Duration::from_millis(u64::from(ttl_ms)))
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::UnknownJob(id) => {
            ErrorCode::UnknownJob.status(format!("job {id} is not in the store"))
        }
        e @ StoreError::StaleToken { .. } => ErrorCode::StaleLease.status(e.to_string()),
        StoreError::Adapter(e) => ErrorCode::Unavailable.status(e.to_string()),
    }
}

#[tonic::async_trait]
impl LockService for LockGrpc {
    async fn acquire(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        let request = request.into_inner();
        let spec: JobSpec = request
            .job
            .ok_or_else(|| ErrorCode::MissingField.status("acquire needs a job"))?
            .into();
        if spec.job_id.0.is_empty() || request.master_id.is_empty() {
            return Err(ErrorCode::MissingField.status("acquire needs a job id and a master id"));
        }
        let ttl = ttl(request.ttl_ms)?;
        let now = now_ms();
        let outcome = self
            .store
            .acquire(&spec, &request.master_id, ttl, now)
            .await
            .map_err(|e| ErrorCode::Unavailable.status(e.to_string()))?;
        let outcome = match outcome {
            AcquireOutcome::Granted(lease) => {
                tracing::info!(job_id = %spec.job_id, master = %request.master_id, token = lease.fencing_token, "lease granted");
                acquire_response::Outcome::Granted(v1::Lease {
                    job_id: lease.job_id.0,
                    fencing_token: lease.fencing_token,
                    ttl_ms: request.ttl_ms,
                })
            }
            AcquireOutcome::AlreadyDone(record) => {
                acquire_response::Outcome::Done(v1::AlreadyDone {
                    record: Some((&*record).into()),
                })
            }
            AcquireOutcome::HeldElsewhere {
                master_id,
                expires_at_ms,
            } => acquire_response::Outcome::Held(v1::HeldElsewhere {
                master_id,
                expires_in_ms: expires_at_ms.saturating_sub(now).min(u64::from(u32::MAX)) as u32,
            }),
        };
        Ok(Response::new(v1::AcquireResponse {
            outcome: Some(outcome),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let ttl = ttl(r.ttl_ms)?;
        self.store
            .heartbeat(
                &JobId(r.job_id),
                r.fencing_token,
                r.pages_done,
                r.current_depth,
                ttl,
                now_ms(),
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(v1::HeartbeatResponse { ttl_ms: r.ttl_ms }))
    }

    async fn complete(
        &self,
        request: Request<v1::CompleteRequest>,
    ) -> Result<Response<v1::CompleteResponse>, Status> {
        let r = request.into_inner();
        let outcome = match r.outcome {
            Some(v1::complete_request::Outcome::Result(result)) => JobOutcome::Done(result.into()),
            Some(v1::complete_request::Outcome::Failure(failure)) => {
                JobOutcome::Failed(failure.into())
            }
            None => {
                return Err(ErrorCode::MissingField.status("complete needs a result or a failure"));
            }
        };
        let job_id = JobId(r.job_id);
        self.store
            .complete(&job_id, r.fencing_token, &outcome, now_ms())
            .await
            .map_err(store_status)?;
        tracing::info!(%job_id, token = r.fencing_token, "job completed");
        Ok(Response::new(v1::CompleteResponse {}))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobRecord>, Status> {
        let job_id = JobId(request.into_inner().job_id);
        match self.store.get(&job_id).await {
            Ok(Some(record)) => Ok(Response::new((&record).into())),
            Ok(None) => {
                Err(ErrorCode::UnknownJob.status(format!("job {job_id} is not in the store")))
            }
            Err(e) => Err(ErrorCode::Unavailable.status(e.to_string())),
        }
    }
}
