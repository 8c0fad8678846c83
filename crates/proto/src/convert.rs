//! Conversions between the job model of `crawler-core` and the protobuf
//! messages. Each direction lives here once, so services never hand-copy fields.

use crawler_core::ErrorCode;
use crawler_core::model::{
    self as m, Checkpoint, CrawlOptions, CrawlResult, JobId, JobRecord, JobSpec, JobState,
    LevelDone, PageFacts,
};

use crate::v1;

impl From<&CrawlOptions> for v1::CrawlOptions {
    fn from(o: &CrawlOptions) -> Self {
        Self {
            allowed_hosts: o.allowed_hosts.clone(),
            include_subdomains: o.include_subdomains,
            max_pages: o.max_pages,
            spider: o.spider.clone().unwrap_or_default(),
        }
    }
}

impl From<v1::CrawlOptions> for CrawlOptions {
    fn from(o: v1::CrawlOptions) -> Self {
        Self {
            allowed_hosts: o.allowed_hosts,
            include_subdomains: o.include_subdomains,
            max_pages: o.max_pages,
            spider: Some(o.spider).filter(|s| !s.is_empty()),
        }
    }
}

impl From<&JobSpec> for v1::JobSpec {
    fn from(j: &JobSpec) -> Self {
        Self {
            job_id: j.job_id.0.clone(),
            client_id: j.client_id.clone(),
            client_job_id: j.client_job_id.clone(),
            url: j.url.clone(),
            depth: j.depth,
            options: Some((&j.options).into()),
            gateway_key: j.gateway_key.clone(),
            accepted_at_ms: j.accepted_at_ms,
            trace: j.trace.clone().into_iter().collect(),
        }
    }
}

impl From<v1::JobSpec> for JobSpec {
    fn from(j: v1::JobSpec) -> Self {
        Self {
            job_id: JobId(j.job_id),
            client_id: j.client_id,
            client_job_id: j.client_job_id,
            url: j.url,
            depth: j.depth,
            options: j.options.map(Into::into).unwrap_or_default(),
            gateway_key: j.gateway_key,
            accepted_at_ms: j.accepted_at_ms,
            trace: j.trace.into_iter().collect(),
        }
    }
}

impl From<&PageFacts> for v1::PageFacts {
    fn from(p: &PageFacts) -> Self {
        Self {
            url: p.url.clone(),
            depth: p.depth,
            status: p.status.map(u32::from),
            error: p.error.clone(),
            title: p.title.clone(),
            content_type: p.content_type.clone(),
            bytes: p.bytes,
            fetch_ms: p.fetch_ms,
            final_url: p.final_url.clone(),
            links: p.links.clone(),
            fields: p
                .fields
                .iter()
                .map(|(name, values)| {
                    (
                        name.clone(),
                        v1::FieldValues {
                            values: values.clone(),
                        },
                    )
                })
                .collect(),
        }
    }
}

impl From<v1::PageFacts> for PageFacts {
    fn from(p: v1::PageFacts) -> Self {
        Self {
            url: p.url,
            depth: p.depth,
            status: p.status.and_then(|s| u16::try_from(s).ok()),
            error: p.error,
            title: p.title,
            content_type: p.content_type,
            bytes: p.bytes,
            fetch_ms: p.fetch_ms,
            final_url: p.final_url,
            links: p.links,
            fields: p
                .fields
                .into_iter()
                .map(|(name, v)| (name, v.values))
                .collect(),
        }
    }
}

impl From<&CrawlResult> for v1::CrawlResult {
    fn from(r: &CrawlResult) -> Self {
        Self {
            levels: r
                .levels
                .iter()
                .map(|urls| v1::Level { urls: urls.clone() })
                .collect(),
            pages: r.pages.iter().map(Into::into).collect(),
            depth: r.depth,
            truncated: r.truncated,
        }
    }
}

impl From<v1::CrawlResult> for CrawlResult {
    fn from(r: v1::CrawlResult) -> Self {
        Self {
            levels: r.levels.into_iter().map(|l| l.urls).collect(),
            pages: r.pages.into_iter().map(Into::into).collect(),
            depth: r.depth,
            truncated: r.truncated,
        }
    }
}

impl From<&Checkpoint> for v1::Checkpoint {
    fn from(c: &Checkpoint) -> Self {
        Self {
            levels_done: c.levels_done,
            pages: c.pages.iter().map(Into::into).collect(),
            frontier: c.frontier.clone(),
            truncated: c.truncated,
            max_pages: c.max_pages,
        }
    }
}

impl From<v1::Checkpoint> for Checkpoint {
    fn from(c: v1::Checkpoint) -> Self {
        Self {
            levels_done: c.levels_done,
            pages: c.pages.into_iter().map(Into::into).collect(),
            frontier: c.frontier,
            truncated: c.truncated,
            max_pages: c.max_pages,
        }
    }
}

impl v1::SaveLevelRequest {
    pub fn new(job_id: &JobId, fencing_token: u64, level: &LevelDone) -> Self {
        Self {
            job_id: job_id.0.clone(),
            fencing_token,
            depth: level.depth,
            pages: level.pages.iter().map(Into::into).collect(),
            frontier: level.frontier.clone(),
            truncated: level.truncated,
            max_pages: level.max_pages,
        }
    }

    /// The level it carries, and the job and token it is for.
    pub fn into_level(self) -> (JobId, u64, LevelDone) {
        (
            JobId(self.job_id),
            self.fencing_token,
            LevelDone {
                depth: self.depth,
                pages: self.pages.into_iter().map(Into::into).collect(),
                frontier: self.frontier,
                truncated: self.truncated,
                max_pages: self.max_pages,
            },
        )
    }
}

impl From<&m::JobFailure> for v1::JobFailure {
    fn from(f: &m::JobFailure) -> Self {
        Self {
            code: f.code.as_str().to_string(),
            message: f.message.clone(),
        }
    }
}

impl From<v1::JobFailure> for m::JobFailure {
    fn from(f: v1::JobFailure) -> Self {
        let code = ErrorCode::parse(&f.code).unwrap_or(ErrorCode::Internal);
        Self {
            code,
            message: f.message,
        }
    }
}

impl From<JobState> for v1::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => Self::Queued,
            JobState::Running => Self::Running,
            JobState::Done => Self::Done,
            JobState::Failed => Self::Failed,
        }
    }
}

impl From<&JobRecord> for v1::JobRecord {
    fn from(r: &JobRecord) -> Self {
        Self {
            job: Some((&r.spec).into()),
            state: v1::JobState::from(r.state) as i32,
            pages_done: r.pages_done,
            current_depth: r.current_depth,
            result: r.result.as_ref().map(Into::into),
            failure: r.failure.as_ref().map(Into::into),
            elapsed_ms: r.elapsed_ms,
        }
    }
}

impl TryFrom<v1::JobRecord> for JobRecord {
    type Error = tonic::Status;
    fn try_from(r: v1::JobRecord) -> Result<Self, Self::Error> {
        let state = match v1::JobState::try_from(r.state) {
            Ok(v1::JobState::Queued) => JobState::Queued,
            Ok(v1::JobState::Running) => JobState::Running,
            Ok(v1::JobState::Done) => JobState::Done,
            Ok(v1::JobState::Failed) => JobState::Failed,
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "job record without a known state",
                ));
            }
        };
        Ok(Self {
            spec: r
                .job
                .ok_or_else(|| tonic::Status::invalid_argument("job record without a job"))?
                .into(),
            state,
            pages_done: r.pages_done,
            current_depth: r.current_depth,
            result: r.result.map(Into::into),
            failure: r.failure.map(Into::into),
            elapsed_ms: r.elapsed_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_survives_the_round_trip() {
        let result = CrawlResult {
            levels: vec![vec!["http://a/".into()], vec!["http://a/b".into()]],
            pages: vec![PageFacts {
                url: "http://a/".into(),
                depth: 0,
                status: Some(200),
                title: Some("A".into()),
                content_type: Some("text/html".into()),
                bytes: 10,
                fetch_ms: 3,
                links: vec!["http://a/b".into()],
                ..Default::default()
            }],
            depth: 1,
            truncated: true,
        };
        let back: CrawlResult = v1::CrawlResult::from(&result).into();
        assert_eq!(back, result);
    }

    #[test]
    fn a_checkpoint_and_a_saved_level_survive_the_round_trip() {
        let page = PageFacts {
            url: "http://a/".into(),
            status: Some(200),
            links: vec!["http://a/b".into()],
            ..Default::default()
        };
        let checkpoint = Checkpoint {
            levels_done: 1,
            pages: vec![page.clone()],
            frontier: vec!["http://a/b".into()],
            truncated: true,
            max_pages: 7,
        };
        let back: Checkpoint = v1::Checkpoint::from(&checkpoint).into();
        assert_eq!(back, checkpoint);

        let level = LevelDone {
            depth: 0,
            pages: vec![page],
            frontier: vec!["http://a/b".into()],
            truncated: false,
            max_pages: 7,
        };
        let job = JobId("j".into());
        let (job_back, token, level_back) = v1::SaveLevelRequest::new(&job, 4, &level).into_level();
        assert_eq!((job_back, token, level_back), (job, 4, level));
    }

    #[test]
    fn options_without_spider_round_trip_to_none() {
        let opts = CrawlOptions {
            max_pages: 5,
            ..Default::default()
        };
        let back: CrawlOptions = v1::CrawlOptions::from(&opts).into();
        assert_eq!(back, opts);
    }
}
