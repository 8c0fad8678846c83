//! Conversions between the job model of `crawler-core` and the protobuf
//! messages. Each direction lives here once, so services never hand-copy fields.

use crawler_core::ErrorCode;
use crawler_core::model::{
    self as m, Checkpoint, CrawlOptions, JobId, JobRecord, JobSpec, JobState, LevelDone, PageFacts,
    ResultSummary,
};
use crawler_core::ports::PageQuery;

use crate::v1;

impl From<&CrawlOptions> for v1::CrawlOptions {
    fn from(o: &CrawlOptions) -> Self {
        Self {
            allowed_hosts: o.allowed_hosts.clone(),
            include_subdomains: o.include_subdomains,
            max_pages: o.max_pages,
            spider: o.spider.clone().unwrap_or_default(),
            ignore_robots: !o.respect_robots,
            spider_version: o.spider_version.clone().unwrap_or_default(),
            warc: o.warc,
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
            respect_robots: !o.ignore_robots,
            spider_version: Some(o.spider_version).filter(|s| !s.is_empty()),
            warc: o.warc,
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
            refused: p.refused.clone(),
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
            refused: p.refused,
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

impl From<&ResultSummary> for v1::ResultSummary {
    fn from(r: &ResultSummary) -> Self {
        Self {
            depth: r.depth,
            truncated: r.truncated,
            level_sizes: r.level_sizes.clone(),
        }
    }
}

impl From<v1::ResultSummary> for ResultSummary {
    fn from(r: v1::ResultSummary) -> Self {
        Self {
            depth: r.depth,
            truncated: r.truncated,
            level_sizes: r.level_sizes,
        }
    }
}

impl From<&Checkpoint> for v1::Checkpoint {
    fn from(c: &Checkpoint) -> Self {
        Self {
            levels_done: c.levels_done,
            truncated: c.truncated,
            max_pages: c.max_pages,
        }
    }
}

impl From<v1::Checkpoint> for Checkpoint {
    fn from(c: v1::Checkpoint) -> Self {
        Self {
            levels_done: c.levels_done,
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
            page_count: level.page_count,
            truncated: level.truncated,
            max_pages: level.max_pages,
        }
    }

    /// The level it marks complete, and the job and token it is for.
    pub fn into_level(self) -> (JobId, u64, LevelDone) {
        (
            JobId(self.job_id),
            self.fencing_token,
            LevelDone {
                depth: self.depth,
                page_count: self.page_count,
                truncated: self.truncated,
                max_pages: self.max_pages,
            },
        )
    }
}

impl v1::ReadPagesRequest {
    pub fn new(job_id: &JobId, query: &PageQuery) -> Self {
        let (after_depth, after_url) = match &query.after {
            Some((depth, url)) => (Some(*depth), url.clone()),
            None => (None, String::new()),
        };
        Self {
            job_id: job_id.0.clone(),
            max_depth: query.max_depth,
            after_depth,
            after_url,
            limit: query.limit,
        }
    }

    /// The pages it asks for, and of which job.
    pub fn into_query(self) -> (JobId, PageQuery) {
        (
            JobId(self.job_id),
            PageQuery {
                max_depth: self.max_depth,
                after: self.after_depth.map(|depth| (depth, self.after_url)),
                limit: self.limit,
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
            summary: r.summary.as_ref().map(Into::into),
            failure: r.failure.as_ref().map(Into::into),
            elapsed_ms: r.elapsed_ms,
            pages_of: r
                .pages_of
                .as_ref()
                .map(|id| id.0.clone())
                .unwrap_or_default(),
            delivered: r.delivered,
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
            summary: r.summary.map(Into::into),
            failure: r.failure.map(Into::into),
            elapsed_ms: r.elapsed_ms,
            pages_of: Some(r.pages_of).filter(|id| !id.is_empty()).map(JobId),
            delivered: r.delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_and_a_page_survive_the_round_trip() {
        let summary = ResultSummary {
            depth: 2,
            truncated: true,
            level_sizes: vec![1, 3],
        };
        let back: ResultSummary = v1::ResultSummary::from(&summary).into();
        assert_eq!(back, summary);
        let page = PageFacts {
            url: "http://a/".into(),
            depth: 1,
            status: Some(200),
            title: Some("A".into()),
            content_type: Some("text/html".into()),
            bytes: 10,
            fetch_ms: 3,
            final_url: Some("http://a/b".into()),
            links: vec!["http://a/b".into()],
            fields: [("h".to_string(), vec!["x".to_string()])].into(),
            error: None,
            refused: Some("robots.txt disallows this page".into()),
        };
        let back: PageFacts = v1::PageFacts::from(&page).into();
        assert_eq!(back, page);
    }

    #[test]
    fn a_checkpoint_a_saved_level_and_a_page_query_survive_the_round_trip() {
        let checkpoint = Checkpoint {
            levels_done: 1,
            truncated: true,
            max_pages: 7,
        };
        let back: Checkpoint = v1::Checkpoint::from(&checkpoint).into();
        assert_eq!(back, checkpoint);

        let level = LevelDone {
            depth: 0,
            page_count: 3,
            truncated: false,
            max_pages: 7,
        };
        let job = JobId("j".into());
        let (job_back, token, level_back) = v1::SaveLevelRequest::new(&job, 4, &level).into_level();
        assert_eq!((job_back, token, level_back), (job.clone(), 4, level));

        for after in [None, Some((1, "http://a/b".to_string()))] {
            let query = PageQuery {
                max_depth: 2,
                after,
                limit: 10,
            };
            let (job_back, query_back) = v1::ReadPagesRequest::new(&job, &query).into_query();
            assert_eq!((job_back, query_back), (job.clone(), query));
        }
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

    #[test]
    fn a_spider_and_its_version_round_trip() {
        let opts = CrawlOptions {
            spider: Some("docs".into()),
            spider_version: Some("4f1c".into()),
            ..Default::default()
        };
        let back: CrawlOptions = v1::CrawlOptions::from(&opts).into();
        assert_eq!(back, opts);
    }
}
