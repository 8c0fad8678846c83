//! A crawl as breadth-first levels.
//!
//! Level 0 is the start URL; level i+1 is every in-scope link found on level
//! i that no earlier level holds, sorted so the result does not depend on
//! which worker answered first. Depth N fetches levels 0..=N and follows
//! links from levels 0..N-1. The page cap cuts the last level short.
//!
//! Each completed level that another level follows is handed to
//! `on_level` to be made durable, and a crawl may start from such a
//! checkpoint: it then fetches only the levels after it, with the same seen
//! set, so its result is the one an undisturbed crawl would have given.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crawler_core::model::{Checkpoint, CrawlResult, JobSpec, LevelDone, PageFacts};
use crawler_core::urls::Scope;
use crawler_proto::v1;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::pool::WorkerPool;

/// Progress a crawl shares with its heartbeat and progress reporters.
#[derive(Default)]
pub struct Progress {
    pub pages_done: AtomicU32,
    pub current_depth: AtomicU32,
}

#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    #[error("the start URL `{0}` cannot be parsed")]
    BadStartUrl(String),
    #[error("the crawl was cancelled")]
    Cancelled,
    /// A worker could not run the job at all (for example its spider failed to sync).
    #[error("{0}")]
    Refused(String),
}

pub struct Crawl<'a> {
    pub spec: &'a JobSpec,
    pub pool: &'a Arc<WorkerPool>,
    pub batch_size: usize,
    pub progress: &'a Progress,
    /// Called after every batch with the pages fetched so far.
    pub on_progress: &'a (dyn Fn() + Send + Sync),
    /// Called with each completed level that another level follows.
    pub on_level: &'a (dyn Fn(LevelDone) + Send + Sync),
    pub cancel: &'a CancellationToken,
}

/// Where a crawl stands between two levels.
struct State {
    seen: HashSet<String>,
    levels: Vec<Vec<String>>,
    pages: Vec<PageFacts>,
    truncated: bool,
    max_pages: usize,
}

impl State {
    fn fresh(start: &Url, max_pages: u32) -> Self {
        Self {
            seen: HashSet::from([start.to_string()]),
            levels: vec![vec![start.to_string()]],
            pages: Vec::new(),
            truncated: false,
            max_pages: max_pages.max(1) as usize,
        }
    }

    /// The state an earlier holder left: its levels, then its frontier as
    /// the next level; every URL of them seen, redirect targets included.
    fn resumed(checkpoint: Checkpoint) -> Self {
        let mut levels = checkpoint.levels();
        levels.push(checkpoint.frontier);
        let mut seen: HashSet<String> = levels.iter().flatten().cloned().collect();
        seen.extend(checkpoint.pages.iter().filter_map(|p| p.final_url.clone()));
        Self {
            seen,
            levels,
            pages: checkpoint.pages,
            truncated: checkpoint.truncated,
            max_pages: checkpoint.max_pages.max(1) as usize,
        }
    }
}

impl Crawl<'_> {
    /// Crawls from the start URL, or from `checkpoint` when one is given.
    pub async fn run(&self, checkpoint: Option<Checkpoint>) -> Result<CrawlResult, CrawlError> {
        let spec = self.spec;
        let start = Url::parse(&spec.url).map_err(|_| CrawlError::BadStartUrl(spec.url.clone()))?;
        let scope = Scope::new(&start, &spec.options);
        let options = v1::CrawlOptions::from(&spec.options);
        let mut state = match checkpoint {
            Some(checkpoint) => State::resumed(checkpoint),
            None => State::fresh(&start, spec.options.max_pages),
        };
        let first = state.levels.len() as u32 - 1;
        self.progress
            .pages_done
            .store(state.pages.len() as u32, Ordering::Relaxed);

        for depth in first..=spec.depth {
            self.progress.current_depth.store(depth, Ordering::Relaxed);
            let frontier = state.levels[depth as usize].clone();
            let (mut fetched, spider_cap) = self.fetch_level(depth, frontier, &options).await?;
            if let Some(cap) = spider_cap {
                state.max_pages = state.max_pages.min(cap.max(1) as usize);
            }
            fetched.sort_by(|a, b| a.url.cmp(&b.url));
            // A redirect target counts as visited: it was just fetched.
            state
                .seen
                .extend(fetched.iter().filter_map(|p| p.final_url.clone()));
            let next: BTreeSet<String> = if depth < spec.depth {
                fetched
                    .iter()
                    .flat_map(|p| p.links.iter())
                    .filter(|link| !state.seen.contains(*link))
                    .filter(|link| Url::parse(link).is_ok_and(|u| scope.contains(&u)))
                    .cloned()
                    .collect()
            } else {
                BTreeSet::new()
            };
            let room = state
                .max_pages
                .saturating_sub(state.pages.len() + fetched.len());
            if next.len() > room {
                state.truncated = true;
            }
            let next: Vec<String> = next.into_iter().take(room).collect();
            if next.is_empty() {
                state.pages.extend(fetched);
                break;
            }
            (self.on_level)(LevelDone {
                depth,
                pages: fetched.clone(),
                frontier: next.clone(),
                truncated: state.truncated,
                max_pages: state.max_pages as u32,
            });
            state.pages.extend(fetched);
            state.seen.extend(next.iter().cloned());
            state.levels.push(next);
        }
        Ok(CrawlResult {
            levels: state.levels,
            pages: state.pages,
            depth: spec.depth,
            truncated: state.truncated,
        })
    }

    /// Sends one level to the workers in batches and waits for every page.
    async fn fetch_level(
        &self,
        depth: u32,
        urls: Vec<String>,
        options: &v1::CrawlOptions,
    ) -> Result<(Vec<PageFacts>, Option<u32>), CrawlError> {
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
        let mut waiting: HashMap<u64, Vec<String>> = HashMap::new();
        for chunk in urls.chunks(self.batch_size.max(1)) {
            let id = self.pool.dispatch(
                &self.spec.job_id.0,
                depth,
                chunk.to_vec(),
                options.clone(),
                reply_tx.clone(),
            );
            waiting.insert(id, chunk.to_vec());
        }
        let mut pages = Vec::with_capacity(urls.len());
        let mut spider_cap = None;
        while !waiting.is_empty() {
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return Err(CrawlError::Cancelled),
                r = reply_rx.recv() => r.expect("the crawl holds a sender"),
            };
            let Some(asked) = waiting.remove(&result.batch_id) else {
                continue; // a duplicate answer for a re-dispatched batch
            };
            if let Some(reason) = result.failure {
                return Err(CrawlError::Refused(reason));
            }
            spider_cap = spider_cap.or(result.page_cap);
            let mut answered: HashMap<String, PageFacts> = result
                .pages
                .into_iter()
                .map(|p| (p.url.clone(), PageFacts::from(p)))
                .collect();
            let asked_count = asked.len() as u32;
            for url in asked {
                // Every URL asked for gets exactly one entry, even if a worker skipped one.
                let facts = answered.remove(&url).unwrap_or_else(|| PageFacts {
                    url: url.clone(),
                    depth,
                    error: Some("the worker returned no result for this URL".into()),
                    ..Default::default()
                });
                pages.push(facts);
            }
            self.progress
                .pages_done
                .fetch_add(asked_count, Ordering::Relaxed);
            (self.on_progress)();
        }
        Ok((pages, spider_cap))
    }
}
