//! The LockService over a job store, answered only by the leading replica.

use std::sync::Arc;
use std::time::Duration;

use crawler_core::lease::checked_ttl;
use crawler_core::model::{JobId, JobSpec, PageFacts};
use crawler_core::ports::{AcquireOutcome, Grant, JobOutcome, JobStore, StoreError};
use crawler_core::{ErrorCode, now_ms};
use crawler_proto::v1::{self, acquire_response, lock_service_server::LockService};
use tonic::{Request, Response, Status};

use crate::leader::Leader;
use crate::metrics;

pub struct LockGrpc {
    pub store: Arc<dyn JobStore>,
    pub leader: Arc<Leader>,
}

/// Most pages one ReadPages answers, whatever it asks for: a few MB.
const MAX_PAGES_READ: u32 = 2_000;

fn ttl(ttl_ms: u32) -> Result<Duration, Status> {
    checked_ttl(Duration::from_millis(u64::from(ttl_ms)))
        .map_err(|e| ErrorCode::InvalidField.status(format!("ttl_ms: {e}")))
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::UnknownJob(id) => {
            ErrorCode::UnknownJob.status(format!("job {id} is not in the store"))
        }
        e @ (StoreError::StaleToken { .. } | StoreError::Ended) => {
            metrics::stale_write_refused();
            ErrorCode::StaleLease.status(e.to_string())
        }
        e @ StoreError::LevelOutOfOrder { .. } => ErrorCode::InvalidField.status(e.to_string()),
        // The master's account of its crawl and the store disagree: a bug,
        // never fixed by trying again.
        e @ StoreError::PagesMissing { .. } => ErrorCode::Internal.status(e.to_string()),
        StoreError::Adapter(e) => ErrorCode::Unavailable.status(e.to_string()),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    ErrorCode::Unavailable.status(e.to_string())
}

fn required(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(ErrorCode::MissingField.status(format!("{what} is required")));
    }
    Ok(())
}

fn lease(grant: Grant, ttl_ms: u32) -> v1::Lease {
    v1::Lease {
        job_id: grant.lease.job_id.0,
        fencing_token: grant.lease.fencing_token,
        ttl_ms,
        checkpoint: grant.checkpoint.as_ref().map(Into::into),
    }
}

#[tonic::async_trait]
impl LockService for LockGrpc {
    async fn acquire(
        &self,
        request: Request<v1::AcquireRequest>,
    ) -> Result<Response<v1::AcquireResponse>, Status> {
        self.leader.check()?;
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
            .map_err(unavailable)?;
        let outcome = match outcome {
            AcquireOutcome::Granted(grant) => {
                tracing::info!(
                    job_id = %spec.job_id,
                    master = %request.master_id,
                    token = grant.lease.fencing_token,
                    levels_done = grant.checkpoint.as_ref().map_or(0, |c| c.levels_done),
                    "lease granted"
                );
                metrics::lease_granted();
                acquire_response::Outcome::Granted(lease(grant, request.ttl_ms))
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

    async fn claim_orphan(
        &self,
        request: Request<v1::ClaimOrphanRequest>,
    ) -> Result<Response<v1::ClaimOrphanResponse>, Status> {
        self.leader.check()?;
        let r = request.into_inner();
        required(&r.master_id, "master_id")?;
        let ttl = ttl(r.ttl_ms)?;
        if !self.leader.takeovers_allowed() {
            return Ok(Response::new(v1::ClaimOrphanResponse { orphan: None }));
        }
        let running: Vec<JobId> = r.running_job_ids.into_iter().map(JobId).collect();
        let takeover = self
            .store
            .claim_orphan(&r.master_id, &running, ttl, now_ms())
            .await
            .map_err(unavailable)?;
        let orphan = takeover.map(|t| {
            tracing::info!(
                job_id = %t.spec.job_id,
                master = %r.master_id,
                previous_master = t.previous_master.as_deref().unwrap_or(""),
                token = t.grant.lease.fencing_token,
                levels_done = t.grant.checkpoint.as_ref().map_or(0, |c| c.levels_done),
                "job taken over"
            );
            metrics::taken_over();
            v1::Orphan {
                job: Some((&t.spec).into()),
                previous_master: t.previous_master.unwrap_or_default(),
                lease: Some(lease(t.grant, r.ttl_ms)),
            }
        });
        Ok(Response::new(v1::ClaimOrphanResponse { orphan }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.leader.check()?;
        let r = request.into_inner();
        let ttl = ttl(r.ttl_ms)?;
        let renewal = self
            .store
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
        Ok(Response::new(v1::HeartbeatResponse {
            ttl_ms: r.ttl_ms,
            gateway_key: renewal.gateway_key.unwrap_or_default(),
        }))
    }

    async fn save_pages(
        &self,
        request: Request<v1::SavePagesRequest>,
    ) -> Result<Response<v1::SavePagesResponse>, Status> {
        self.leader.check()?;
        let r = request.into_inner();
        required(&r.job_id, "job_id")?;
        let pages: Vec<PageFacts> = r.pages.into_iter().map(Into::into).collect();
        self.store
            .save_pages(&JobId(r.job_id), r.fencing_token, r.depth, &pages)
            .await
            .map_err(store_status)?;
        metrics::pages_saved(pages.len());
        Ok(Response::new(v1::SavePagesResponse {}))
    }

    async fn read_pages(
        &self,
        request: Request<v1::ReadPagesRequest>,
    ) -> Result<Response<v1::ReadPagesResponse>, Status> {
        self.leader.check()?;
        let (job_id, mut query) = request.into_inner().into_query();
        required(&job_id.0, "job_id")?;
        query.limit = query.limit.clamp(1, MAX_PAGES_READ);
        let pages = self
            .store
            .read_pages(&job_id, &query)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(v1::ReadPagesResponse {
            pages: pages.iter().map(Into::into).collect(),
        }))
    }

    async fn save_level(
        &self,
        request: Request<v1::SaveLevelRequest>,
    ) -> Result<Response<v1::SaveLevelResponse>, Status> {
        self.leader.check()?;
        let (job_id, token, level) = request.into_inner().into_level();
        required(&job_id.0, "job_id")?;
        self.store
            .save_level(&job_id, token, &level)
            .await
            .map_err(store_status)?;
        tracing::info!(%job_id, token, depth = level.depth, pages = level.page_count, "level saved");
        metrics::level_saved();
        Ok(Response::new(v1::SaveLevelResponse {}))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.leader.check()?;
        let r = request.into_inner();
        required(&r.job_id, "job_id")?;
        let job_id = JobId(r.job_id);
        self.store
            .release(&job_id, r.fencing_token, now_ms())
            .await
            .map_err(store_status)?;
        tracing::info!(%job_id, token = r.fencing_token, "lease released for handover");
        metrics::released();
        Ok(Response::new(v1::ReleaseResponse {}))
    }

    async fn complete(
        &self,
        request: Request<v1::CompleteRequest>,
    ) -> Result<Response<v1::JobRecord>, Status> {
        self.leader.check()?;
        let r = request.into_inner();
        let outcome = match r.outcome {
            Some(v1::complete_request::Outcome::Result(summary)) => JobOutcome::Done {
                summary: summary.into(),
                last_pages: r.last_pages.into_iter().map(Into::into).collect(),
            },
            Some(v1::complete_request::Outcome::Failure(failure)) => {
                JobOutcome::Failed(failure.into())
            }
            None => {
                return Err(ErrorCode::MissingField.status("complete needs a result or a failure"));
            }
        };
        let job_id = JobId(r.job_id);
        let record = self
            .store
            .complete(&job_id, r.fencing_token, &outcome, now_ms())
            .await
            .map_err(store_status)?;
        tracing::info!(%job_id, token = r.fencing_token, "job completed");
        metrics::completed(record.state.as_str());
        Ok(Response::new((&record).into()))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobRecord>, Status> {
        self.leader.check()?;
        let job_id = JobId(request.into_inner().job_id);
        match self.store.get(&job_id).await {
            Ok(Some(record)) => Ok(Response::new((&record).into())),
            Ok(None) => {
                Err(ErrorCode::UnknownJob.status(format!("job {job_id} is not in the store")))
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}
