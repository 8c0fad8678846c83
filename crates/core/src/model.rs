//! The job model every service speaks: what a job asks for, what a page
//! fetch found, and what a finished crawl returns.

use serde::{Deserialize, Serialize};

/// Internal job id, unique across the cluster. Clients choose their own ids;
/// the gateway maps `(client id, client job id)` to one of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl JobId {
    pub fn new_random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How far a crawl may wander and how much it may fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrawlOptions {
    /// Hosts in scope besides the start URL's own host, lowercased and sorted.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Subdomains of every in-scope host are in scope too.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Upper bound on the pages this job fetches.
    pub max_pages: u32,
    /// Spider whose rules apply, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    /// The version of `spider` (file-sync's digest of its folder) when the
    /// job was accepted: part of the cache key, so a crawl made with an
    /// older version of the spider never answers the job. `None` when the
    /// job names no spider, or its version could not be learned, in which
    /// case the job is neither answered from nor written to the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spider_version: Option<String>,
    /// Pages robots.txt disallows are not fetched (the default).
    #[serde(default = "yes")]
    pub respect_robots: bool,
    /// The workers keep every fetched response as a WARC record (in their
    /// `--warc-dir`); such a job is never answered from the cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warc: bool,
}

fn yes() -> bool {
    true
}

impl CrawlOptions {
    /// Whether the job may be answered from the cache and its crawl cached:
    /// not when it names a spider whose version is unknown, since a crawl
    /// of another version could then answer it, and not when it asks for
    /// WARC records, which only fetching makes.
    pub fn cacheable(&self) -> bool {
        !self.warc && (self.spider.is_none() || self.spider_version.is_some())
    }

    /// Whether two jobs ask for the same crawl, whichever version of their
    /// spider each was accepted with: the client does not choose it.
    pub fn asks_same_as(&self, other: &Self) -> bool {
        let asked = |o: &Self| Self {
            spider_version: None,
            ..o.clone()
        };
        asked(self) == asked(other)
    }
}

impl Default for CrawlOptions {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            include_subdomains: false,
            max_pages: 0,
            spider: None,
            spider_version: None,
            respect_robots: true,
            warc: false,
        }
    }
}

/// A crawl job as accepted by a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub job_id: JobId,
    pub client_id: String,
    pub client_job_id: String,
    /// Normalised start URL.
    pub url: String,
    pub depth: u32,
    pub options: CrawlOptions,
    /// Routing key of the gateway that holds the client's connection.
    pub gateway_key: String,
    pub accepted_at_ms: u64,
    /// The job's trace context (see `crate::trace`), kept with the job so
    /// a republish or a takeover continues the same trace.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub trace: std::collections::BTreeMap<String, String>,
}

/// What one fetch found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageFacts {
    pub url: String,
    pub depth: u32,
    /// HTTP status of the final response; absent when the fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the fetch failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the page was not fetched on purpose (robots.txt disallows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Body bytes received (after any decompression, capped by the body limit).
    pub bytes: u64,
    pub fetch_ms: u64,
    /// Where redirects ended, when that differs from `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_url: Option<String>,
    /// Normalised absolute links on the page, in document order, deduplicated.
    #[serde(default)]
    pub links: Vec<String>,
    /// Fields the job's spider extracted: name -> text of each match.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, Vec<String>>,
}

/// A finished crawl: `levels[i]` holds the URLs first found at depth `i`.
/// The store keeps a crawl's pages one row each and this whole value is
/// only put together for a result small enough to send in one message
/// (see [`ResultSummary`] for what travels otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrawlResult {
    pub levels: Vec<Vec<String>>,
    /// One entry per fetched URL, ordered by depth, then URL.
    pub pages: Vec<PageFacts>,
    /// The depth the crawl was run to.
    pub depth: u32,
    /// True when the page cap stopped the crawl before it reached `depth`.
    #[serde(default)]
    pub truncated: bool,
}

impl CrawlResult {
    /// The result `summary` describes, from its pages (ordered by depth,
    /// then URL, as the store returns them): each level's pages are sorted
    /// by URL, so their URLs are the level.
    pub fn assemble(summary: &ResultSummary, pages: Vec<PageFacts>) -> Self {
        let mut levels: Vec<Vec<String>> = summary
            .level_sizes
            .iter()
            .map(|&n| Vec::with_capacity(n as usize))
            .collect();
        for page in &pages {
            if let Some(level) = levels.get_mut(page.depth as usize) {
                level.push(page.url.clone());
            }
        }
        Self {
            levels,
            pages,
            depth: summary.depth,
            truncated: summary.truncated,
        }
    }

    /// What this result looks like without its pages.
    pub fn summary(&self) -> ResultSummary {
        ResultSummary {
            depth: self.depth,
            truncated: self.truncated,
            level_sizes: self.levels.iter().map(|l| l.len() as u32).collect(),
        }
    }

    /// The same crawl as if it had been run to `depth` only.
    pub fn trimmed_to(&self, depth: u32) -> Self {
        let pages = self
            .pages
            .iter()
            .filter(|p| p.depth <= depth)
            .cloned()
            .collect();
        Self::assemble(&self.summary().trimmed_to(depth), pages)
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }
}

/// A finished crawl without its pages: what the store keeps beside them,
/// and what the cache and the result events carry whatever the crawl's size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultSummary {
    /// The depth the crawl was run to.
    pub depth: u32,
    /// True when the page cap stopped the crawl before it reached `depth`.
    pub truncated: bool,
    /// Pages per level: level `i` holds `level_sizes[i]` pages. Shorter
    /// than `depth + 1` when a level found nothing new.
    pub level_sizes: Vec<u32>,
}

impl ResultSummary {
    pub fn page_count(&self) -> u64 {
        self.level_sizes.iter().map(|&n| u64::from(n)).sum()
    }

    /// The same crawl as if it had been run to `depth` only. A crawl to a
    /// greater depth with the same options fetched exactly these pages
    /// first, because each level depends only on the levels before it.
    pub fn trimmed_to(&self, depth: u32) -> Self {
        if depth >= self.depth {
            return self.clone();
        }
        let keep = depth as usize + 1;
        Self {
            depth,
            // The cap cuts the last level a crawl reached; a trim that drops
            // that level drops the truncation with it.
            truncated: self.truncated && self.level_sizes.len() <= keep,
            level_sizes: self.level_sizes.iter().take(keep).copied().collect(),
        }
    }
}

/// A crawl in the result cache: its summary, the job whose stored pages
/// hold it, and the pages themselves when they are few enough to keep
/// beside the summary (so a repeated small job needs no store read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedCrawl {
    pub summary: ResultSummary,
    /// The job whose pages are in the store.
    pub job_id: JobId,
    /// Every page, ordered by depth then URL; `None` for a large crawl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<Vec<PageFacts>>,
}

/// The completed levels of a cached crawl that a deeper job of the same
/// URL and options starts from, instead of fetching them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadStart {
    /// The job whose stored pages hold those levels.
    pub from: JobId,
    /// Levels `0..levels_done` are complete.
    pub levels_done: u32,
    /// The pages those levels hold.
    pub pages: u64,
}

impl HeadStart {
    /// The head start `cached` gives a job of `spec`, when it is shallower
    /// and complete. Not when the page cap cut it short (the job would stop
    /// there too, but at the cap, not at a level), and not for a job naming
    /// a spider: a spider's own page cap is learned while crawling, and a
    /// resumed crawl would size its first level without it.
    pub fn of(cached: &CachedCrawl, spec: &JobSpec) -> Option<Self> {
        let summary = &cached.summary;
        let usable = summary.depth < spec.depth
            && !summary.truncated
            && spec.options.spider.is_none()
            && !summary.level_sizes.is_empty();
        usable.then(|| Self {
            from: cached.job_id.clone(),
            levels_done: summary.level_sizes.len() as u32,
            pages: summary.page_count(),
        })
    }
}

impl CachedCrawl {
    /// The same crawl as if it had been run to `depth` only.
    pub fn trimmed_to(&self, depth: u32) -> Self {
        Self {
            summary: self.summary.trimmed_to(depth),
            job_id: self.job_id.clone(),
            pages: self
                .pages
                .as_ref()
                .map(|pages| pages.iter().filter(|p| p.depth <= depth).cloned().collect()),
        }
    }
}

/// A crawl's durable progress. Its master saves each level's pages as they
/// arrive and marks the level complete when it is, so a master that takes
/// the job over continues after the last completed level instead of
/// starting again. The pages themselves are read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Levels `0..levels_done` are fetched, and their pages stored.
    pub levels_done: u32,
    /// The page cap already cut the next level short.
    pub truncated: bool,
    /// The page cap in force (a spider may have lowered the job's).
    pub max_pages: u32,
}

/// What a master makes durable when level `depth` completes, after every
/// page of it was saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LevelDone {
    pub depth: u32,
    /// How many pages the level has; the store checks it holds them all.
    pub page_count: u32,
    pub truncated: bool,
    pub max_pages: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// Why a job ended without a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    pub code: crate::ErrorCode,
    pub message: String,
}

/// A job as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub spec: JobSpec,
    pub state: JobState,
    pub pages_done: u32,
    pub current_depth: u32,
    /// A done job's result, without its pages (they are in the store).
    pub summary: Option<ResultSummary>,
    pub failure: Option<JobFailure>,
    pub elapsed_ms: u64,
    /// The job whose stored pages are this job's result, when it is not
    /// this job itself (the result came from the cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_of: Option<JobId>,
    /// A gateway has sent the job's outcome to its client.
    #[serde(default)]
    pub delivered: bool,
}

impl JobRecord {
    /// A job that failed before the store could take it (the lock server
    /// refused it): how it looks to its client.
    pub fn failed(spec: JobSpec, failure: JobFailure) -> Self {
        Self {
            spec,
            state: JobState::Failed,
            pages_done: 0,
            current_depth: 0,
            summary: None,
            failure: Some(failure),
            elapsed_ms: 0,
            pages_of: None,
            delivered: false,
        }
    }

    /// The job whose stored pages hold this job's result.
    pub fn pages_job(&self) -> &JobId {
        self.pages_of.as_ref().unwrap_or(&self.spec.job_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(url: &str, depth: u32) -> PageFacts {
        PageFacts {
            url: url.into(),
            depth,
            status: Some(200),
            ..Default::default()
        }
    }

    fn three_levels() -> CrawlResult {
        CrawlResult {
            levels: vec![
                vec!["a".into()],
                vec!["b".into(), "c".into()],
                vec!["d".into()],
            ],
            pages: vec![page("a", 0), page("b", 1), page("c", 1), page("d", 2)],
            depth: 2,
            truncated: false,
        }
    }

    #[test]
    fn trimming_keeps_only_the_requested_levels_and_pages() {
        let trimmed = three_levels().trimmed_to(1);
        assert_eq!(trimmed.depth, 1);
        assert_eq!(
            trimmed.levels,
            vec![vec!["a".to_string()], vec!["b".into(), "c".into()]]
        );
        let urls: Vec<_> = trimmed.pages.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(urls, ["a", "b", "c"]);
    }

    #[test]
    fn trimming_to_the_same_or_more_depth_is_identity() {
        assert_eq!(three_levels().trimmed_to(2), three_levels());
        assert_eq!(three_levels().trimmed_to(7), three_levels());
    }

    #[test]
    fn truncation_beyond_the_trimmed_depth_is_dropped() {
        let mut full = three_levels();
        full.truncated = true;
        assert!(!full.trimmed_to(1).truncated);
    }

    #[test]
    fn a_result_is_assembled_from_its_summary_and_pages() {
        let full = three_levels();
        assert_eq!(
            CrawlResult::assemble(&full.summary(), full.pages.clone()),
            full
        );
        assert_eq!(full.summary().level_sizes, [1, 2, 1]);
        assert_eq!(full.summary().page_count(), 4);
    }

    #[test]
    fn a_cached_crawl_trims_like_its_result() {
        let full = three_levels();
        let cached = CachedCrawl {
            summary: full.summary(),
            job_id: JobId("j".into()),
            pages: Some(full.pages.clone()),
        };
        let trimmed = cached.trimmed_to(1);
        assert_eq!(trimmed.summary, full.trimmed_to(1).summary());
        assert_eq!(trimmed.pages, Some(full.trimmed_to(1).pages));
        let large = CachedCrawl {
            pages: None,
            ..cached
        };
        assert_eq!(large.trimmed_to(0).summary.level_sizes, [1]);
    }

    #[test]
    fn job_state_round_trips_through_its_name() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Done,
            JobState::Failed,
        ] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("nope"), None);
    }
}
