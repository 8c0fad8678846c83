//! A crawl as breadth-first levels.
//!
//! Level 0 is the start URL; level i+1 is every in-scope link found on level
//! i that no earlier level holds, sorted so the result does not depend on
//! which worker answered first. Depth N fetches levels 0..=N and follows
//! links from levels 0..N-1. The page cap cuts the last level short.
//!
//! A crawl keeps no pages: each batch's pages go to its sink as they arrive
//! (the lease holder saves them to the store), and so does each completed
//! level that another level follows. What it keeps is the seen
//! set (a 128-bit digest per URL), the level being fetched and the links
//! found for the next one, so its memory follows the width of a level, not
//! the size of the crawl. A crawl may start from a checkpoint: it is given
//! the stored pages of the completed levels and finds the next level from
//! them exactly as it found it the first time, so its result is the one an
//! undisturbed crawl gives.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use crawler_core::model::{Checkpoint, JobSpec, LevelDone, PageFacts, ResultSummary};
use crawler_core::traps;
use crawler_core::urls::Scope;
use crawler_proto::v1;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::pool::WorkerPool;

/// A result whose pages add up to less than this (roughly, in JSON) is
/// kept whole beside its summary: in the result event and in the cache,
/// so a small job never needs a store read to be answered.
pub const INLINE_RESULT_BYTES: usize = 256 * 1024;

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

/// Where a crawl's pages and completed levels go: the lease holder, which
/// saves them in order. It may make the crawl wait (the store is behind),
/// or refuse (the lease is lost, or saving failed for good).
#[async_trait]
pub trait CrawlSink: Send + Sync {
    /// Takes a batch's pages, of level `depth`.
    async fn pages(&self, depth: u32, pages: Vec<PageFacts>) -> Result<(), CrawlError>;
    /// Takes a completed level that another level follows, after its pages.
    async fn level_done(&self, level: LevelDone) -> Result<(), CrawlError>;
}

/// How a crawl ended: its summary, and its pages when they are few.
#[derive(Debug)]
pub struct Crawled {
    pub summary: ResultSummary,
    /// Every page, ordered by depth then URL, when they add up to less than
    /// [`INLINE_RESULT_BYTES`].
    pub pages: Option<Vec<PageFacts>>,
}

pub struct Crawl<'a> {
    pub spec: &'a JobSpec,
    pub pool: &'a Arc<WorkerPool>,
    pub batch_size: usize,
    pub progress: &'a Progress,
    /// Called after every batch with the pages fetched so far.
    pub on_progress: &'a (dyn Fn() + Send + Sync),
    /// Takes the pages and the completed levels.
    pub sink: &'a dyn CrawlSink,
    pub cancel: &'a CancellationToken,
}

/// The URLs a crawl has met, as 128-bit digests: 16 bytes a URL however
/// long it is. Two URLs share a digest with a chance of about n²/2¹²⁹,
/// below 10⁻²⁴ for a billion URLs.
#[derive(Default)]
struct Seen(HashSet<u128>);

impl Seen {
    fn digest(url: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(url.as_bytes())
    }

    fn insert(&mut self, url: &str) -> bool {
        self.0.insert(Self::digest(url))
    }

    fn contains(&self, url: &str) -> bool {
        self.0.contains(&Self::digest(url))
    }
}

/// Where a crawl stands between two levels.
pub struct State {
    seen: Seen,
    /// The next level to fetch.
    frontier: Vec<String>,
    /// Pages of each completed level.
    level_sizes: Vec<u32>,
    truncated: bool,
    max_pages: usize,
    /// Pages of a small crawl, until they grow past [`INLINE_RESULT_BYTES`].
    inline: Inline,
}

impl State {
    pub fn fresh(start: &Url, max_pages: u32) -> Self {
        let mut seen = Seen::default();
        seen.insert(start.as_str());
        Self {
            seen,
            frontier: vec![start.to_string()],
            level_sizes: Vec::new(),
            truncated: false,
            max_pages: max_pages.max(1) as usize,
            inline: Inline::default(),
        }
    }

    fn page_count(&self) -> usize {
        self.level_sizes.iter().map(|&n| n as usize).sum()
    }
}

/// Rebuilds a crawl's state from a checkpoint and the stored pages of its
/// completed levels, fed in (depth, URL) order.
pub struct Resume {
    state: State,
    levels_done: u32,
    /// Links found on the last completed level: the next level's candidates.
    candidates: BTreeSet<String>,
    final_urls: Vec<String>,
}

impl Resume {
    pub fn new(checkpoint: &Checkpoint) -> Self {
        Self {
            state: State {
                seen: Seen::default(),
                frontier: Vec::new(),
                level_sizes: vec![0; checkpoint.levels_done as usize],
                truncated: checkpoint.truncated,
                max_pages: checkpoint.max_pages.max(1) as usize,
                inline: Inline::default(),
            },
            levels_done: checkpoint.levels_done,
            candidates: BTreeSet::new(),
            final_urls: Vec::new(),
        }
    }

    /// Takes the next stored pages.
    pub fn absorb(&mut self, pages: Vec<PageFacts>) {
        let last = self.levels_done.saturating_sub(1);
        for page in pages {
            if page.depth >= self.levels_done {
                continue; // not part of the checkpoint
            }
            self.state.level_sizes[page.depth as usize] += 1;
            self.state.seen.insert(&page.url);
            if let Some(final_url) = &page.final_url {
                self.final_urls.push(final_url.clone());
            }
            if page.depth == last {
                self.candidates.extend(page.links.iter().cloned());
            }
            self.state.inline.push(page);
        }
    }

    /// The state to continue from: the next level found from the last
    /// completed one, as [`Crawl::run`] finds it.
    pub fn finish(mut self, scope: &Scope) -> State {
        for url in &self.final_urls {
            self.state.seen.insert(url);
        }
        let next: BTreeSet<String> = std::mem::take(&mut self.candidates)
            .iter()
            .map(|link| followed_form(link).into_owned())
            .filter(|link| !self.state.seen.contains(link))
            .filter(|link| followable(link, scope))
            .collect();
        let room = self.state.max_pages.saturating_sub(self.state.page_count());
        // As `Crawl::run` marks it. A takeover's checkpoint says so already;
        // a head start's cannot, as its crawl never looked past its levels.
        self.state.truncated |= next.len() > room;
        let frontier: Vec<String> = next.into_iter().take(room).collect();
        for url in &frontier {
            self.state.seen.insert(url);
        }
        self.state.frontier = frontier;
        self.state
    }

    pub fn pages_kept(&self) -> usize {
        self.state.page_count()
    }
}

/// The pages of a small crawl, kept while they are few.
#[derive(Default)]
struct Inline {
    pages: Option<Vec<PageFacts>>,
    bytes: usize,
    given_up: bool,
}

impl Inline {
    fn wants_more(&self) -> bool {
        !self.given_up
    }

    fn push(&mut self, page: PageFacts) {
        if self.given_up {
            return;
        }
        // Roughly what the page weighs in JSON.
        self.bytes += 160
            + page.url.len()
            + page.title.as_ref().map_or(0, String::len)
            + page.error.as_ref().map_or(0, String::len)
            + page.links.iter().map(|l| l.len() + 3).sum::<usize>()
            + page
                .fields
                .values()
                .flatten()
                .map(|v| v.len() + 3)
                .sum::<usize>();
        if self.bytes > INLINE_RESULT_BYTES {
            self.given_up = true;
            self.pages = None;
            return;
        }
        self.pages.get_or_insert_with(Vec::new).push(page);
    }

    fn take(&mut self) -> Option<Vec<PageFacts>> {
        if self.given_up {
            return None;
        }
        let mut pages = self.pages.take().unwrap_or_default();
        pages.sort_by(|a, b| (a.depth, &a.url).cmp(&(b.depth, &b.url)));
        Some(pages)
    }
}

impl Crawl<'_> {
    /// Crawls from the start URL, or from a resumed state.
    pub async fn run(&self, resumed: Option<State>) -> Result<Crawled, CrawlError> {
        let spec = self.spec;
        let start = Url::parse(&spec.url).map_err(|_| CrawlError::BadStartUrl(spec.url.clone()))?;
        let scope = Scope::new(&start, &spec.options);
        let options = v1::CrawlOptions::from(&spec.options);
        let mut state = resumed.unwrap_or_else(|| State::fresh(&start, spec.options.max_pages));
        let first = state.level_sizes.len() as u32;
        self.progress
            .pages_done
            .store(state.page_count() as u32, Ordering::Relaxed);

        for depth in first..=spec.depth {
            // A resumed crawl whose completed levels leave nothing to follow
            // (a head start from a crawl that ran out of links) is done.
            if state.frontier.is_empty() {
                break;
            }
            self.progress.current_depth.store(depth, Ordering::Relaxed);
            let frontier = std::mem::take(&mut state.frontier);
            let follow = depth < spec.depth;
            let level = self
                .fetch_level(
                    depth,
                    frontier,
                    &options,
                    &mut state,
                    follow.then_some(&scope),
                )
                .await?;
            if let Some(cap) = level.spider_cap {
                state.max_pages = state.max_pages.min(cap.max(1) as usize);
            }
            state.level_sizes.push(level.fetched);
            // Links to pages this level reached by a redirect are not new.
            // The candidates are moved, not copied: a big level is held once.
            let mut next: Vec<String> = level
                .candidates
                .into_iter()
                .filter(|link| !state.seen.contains(link))
                .collect();
            let room = state.max_pages.saturating_sub(state.page_count());
            if next.len() > room {
                state.truncated = true;
                next.truncate(room);
            }
            if next.is_empty() {
                break;
            }
            let done = LevelDone {
                depth,
                page_count: level.fetched,
                truncated: state.truncated,
                max_pages: state.max_pages as u32,
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(CrawlError::Cancelled),
                saved = self.sink.level_done(done) => saved?,
            }
            for url in &next {
                state.seen.insert(url);
            }
            state.frontier = next;
        }
        Ok(Crawled {
            summary: ResultSummary {
                depth: spec.depth,
                truncated: state.truncated,
                level_sizes: state.level_sizes,
            },
            pages: state.inline.take(),
        })
    }

    /// Sends one level to the workers in batches, hands every page to the
    /// sink as its batch returns, and gathers the links for the next level
    /// (when `scope` says there is one).
    async fn fetch_level(
        &self,
        depth: u32,
        urls: Vec<String>,
        options: &v1::CrawlOptions,
        state: &mut State,
        scope: Option<&Scope>,
    ) -> Result<Level, CrawlError> {
        let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
        let mut waiting: HashMap<u64, Vec<String>> = HashMap::new();
        // Batches go out a window at a time, so a level of a million URLs
        // is held once (here) rather than also queued and awaited whole.
        let mut unsent = batches_by_host(urls, self.batch_size).into_iter();
        let mut send_more = |waiting: &mut HashMap<u64, Vec<String>>| {
            while waiting.len() < BATCHES_OUT_PER_CRAWL {
                let Some(batch) = unsent.next() else { break };
                let id = self.pool.dispatch(
                    &self.spec.job_id.0,
                    depth,
                    batch.clone(),
                    options.clone(),
                    reply_tx.clone(),
                );
                waiting.insert(id, batch);
            }
        };
        send_more(&mut waiting);
        let mut level = Level::default();
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
            level.spider_cap = level.spider_cap.or(result.page_cap);
            let mut answered: HashMap<String, PageFacts> = result
                .pages
                .into_iter()
                .map(|p| (p.url.clone(), PageFacts::from(p)))
                .collect();
            let mut pages = Vec::with_capacity(asked.len());
            for url in asked {
                // Every URL asked for gets exactly one entry, even if a worker skipped one.
                let facts = answered.remove(&url).unwrap_or_else(|| PageFacts {
                    url: url.clone(),
                    depth,
                    error: Some("the worker returned no result for this URL".into()),
                    ..Default::default()
                });
                // A redirect target counts as visited: it was just fetched.
                if let Some(final_url) = &facts.final_url {
                    state.seen.insert(final_url);
                }
                if let Some(scope) = scope {
                    for link in &facts.links {
                        let link = followed_form(link);
                        if !state.seen.contains(&link)
                            && !level.candidates.contains(link.as_ref())
                            && followable(&link, scope)
                        {
                            level.candidates.insert(link.into_owned());
                        }
                    }
                }
                if state.inline.wants_more() {
                    state.inline.push(facts.clone());
                }
                pages.push(facts);
            }
            level.fetched += pages.len() as u32;
            self.progress
                .pages_done
                .fetch_add(pages.len() as u32, Ordering::Relaxed);
            // Cancelled while the sink waits: the crawl stops there too.
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(CrawlError::Cancelled),
                saved = self.sink.pages(depth, pages) => saved?,
            }
            send_more(&mut waiting);
            (self.on_progress)();
        }
        Ok(level)
    }
}

/// Batches of one crawl sent and not yet answered, at most: enough to keep
/// every worker busy (and a batch waiting on each of a thousand paced
/// hosts) without holding a huge level twice.
const BATCHES_OUT_PER_CRAWL: usize = 1024;

/// The form a link is followed in: without its session ids.
fn followed_form(link: &str) -> Cow<'_, str> {
    match traps::without_session_ids(link) {
        Some(stripped) => Cow::Owned(stripped),
        None => Cow::Borrowed(link),
    }
}

/// Whether a link (in its followed form) is followed: in scope, and no
/// crawler trap (see [`traps`]).
fn followable(link: &str, scope: &Scope) -> bool {
    Url::parse(link).is_ok_and(|u| scope.contains(&u) && traps::judge(&u).is_none())
}

/// A level's URLs in batches of one host each, the hosts taking turns:
/// hosts progress in parallel, a slow or paused host holds up only its own
/// batches, and a worker's per-host limits see one host per batch.
fn batches_by_host(urls: Vec<String>, size: usize) -> Vec<Vec<String>> {
    let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for url in urls {
        let host = authority(&url);
        match hosts.get_mut(host) {
            Some(of_host) => of_host.push(url),
            None => {
                hosts.insert(host.to_string(), vec![url]);
            }
        }
    }
    let mut chunks: Vec<std::vec::IntoIter<Vec<String>>> = hosts
        .into_values()
        .map(|urls| {
            let mut batches = Vec::with_capacity(urls.len().div_ceil(size.max(1)));
            let mut urls = urls.into_iter();
            loop {
                let batch: Vec<String> = urls.by_ref().take(size.max(1)).collect();
                if batch.is_empty() {
                    break batches.into_iter();
                }
                batches.push(batch);
            }
        })
        .collect();
    let mut batches = Vec::new();
    while !chunks.is_empty() {
        chunks.retain_mut(|host| match host.next() {
            Some(batch) => {
                batches.push(batch);
                true
            }
            None => false,
        });
    }
    batches
}

/// `scheme://host:port` of a URL, as written.
fn authority(url: &str) -> &str {
    let rest = url.find("://").map_or(0, |i| i + 3);
    let end = url[rest..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest + i);
    &url[..end]
}

/// What fetching one level found.
#[derive(Default)]
struct Level {
    fetched: u32,
    /// In-scope links not seen when their page arrived, sorted.
    candidates: BTreeSet<String>,
    spider_cap: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crawler_core::model::CrawlOptions;

    fn page(url: &str, depth: u32, links: &[&str]) -> PageFacts {
        PageFacts {
            url: url.into(),
            depth,
            status: Some(200),
            links: links.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        }
    }

    fn scope() -> Scope {
        Scope::new(
            &Url::parse("http://a.test/").unwrap(),
            &CrawlOptions::default(),
        )
    }

    #[test]
    fn a_level_is_batched_by_host_with_the_hosts_taking_turns() {
        let urls: Vec<String> = [
            "http://a.test/1",
            "http://a.test/2",
            "http://a.test/3",
            "http://a.test.evil/1",
            "http://a.test:81/1",
            "https://a.test/1",
            "http://b.test/1",
        ]
        .map(String::from)
        .to_vec();
        let batches = batches_by_host(urls.clone(), 2);
        let hosts: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| b.iter().map(|u| authority(u)).collect())
            .collect();
        assert!(
            hosts.iter().all(|h| h.iter().all(|a| *a == h[0])),
            "{hosts:?}"
        );
        assert_eq!(batches.concat().len(), urls.len());
        // Every host's first batch goes before any host's second.
        assert_eq!(batches.len(), 6);
        assert_eq!(batches[5], ["http://a.test/3"]);
    }

    #[test]
    fn trap_links_are_not_followed_and_session_ids_are_dropped() {
        let checkpoint = Checkpoint {
            levels_done: 1,
            truncated: false,
            max_pages: 100,
        };
        let mut resume = Resume::new(&checkpoint);
        resume.absorb(vec![page(
            "http://a.test/",
            0,
            &[
                "http://a.test/cal/2026/12",
                "http://a.test/a/b/a/b/a/b/a/b",
                "http://a.test/list?f=1&f=2&f=3",
                "http://a.test/item?id=7&PHPSESSID=e1f0",
                "http://a.test/item?id=7&PHPSESSID=99aa",
                "http://a.test/;jsessionid=0AB1",
            ],
        )]);
        let state = resume.finish(&scope());
        // The two session links are one page; the page's own URL, once
        // its session id is gone, is the start page already seen.
        assert_eq!(
            state.frontier,
            ["http://a.test/cal/2026/12", "http://a.test/item?id=7"]
        );
    }

    #[test]
    fn a_resumed_crawl_finds_the_next_level_as_the_first_run_did() {
        let checkpoint = Checkpoint {
            levels_done: 2,
            truncated: false,
            max_pages: 100,
        };
        let mut resume = Resume::new(&checkpoint);
        resume.absorb(vec![page(
            "http://a.test/",
            0,
            &["http://a.test/x", "http://a.test/r"],
        )]);
        let mut redirected = page("http://a.test/r", 1, &["http://a.test/z"]);
        redirected.final_url = Some("http://a.test/moved".into());
        resume.absorb(vec![
            redirected,
            page(
                "http://a.test/x",
                1,
                &[
                    "http://a.test/",      // level 0
                    "http://a.test/x",     // itself
                    "http://a.test/moved", // reached by a redirect
                    "http://other.test/",  // out of scope
                    "http://a.test/b",
                    "http://a.test/a",
                ],
            ),
            // A page of the level under way when the lease lapsed: ignored.
            page("http://a.test/b", 2, &["http://a.test/c"]),
        ]);
        assert_eq!(resume.pages_kept(), 3);
        let state = resume.finish(&scope());
        assert_eq!(
            state.frontier,
            ["http://a.test/a", "http://a.test/b", "http://a.test/z"]
        );
        assert_eq!(state.level_sizes, [1, 2]);
        assert!(
            state.seen.contains("http://a.test/a"),
            "the frontier is seen"
        );
        assert!(state.seen.contains("http://a.test/moved"));
    }

    /// A takeover's checkpoint says the cap cut the next level; a head
    /// start's does not (its crawl stopped before that level): both end
    /// up cut, and marked so.
    #[test]
    fn the_page_cap_cuts_a_resumed_frontier_as_it_cut_the_first() {
        for truncated in [true, false] {
            let checkpoint = Checkpoint {
                levels_done: 1,
                truncated,
                max_pages: 3,
            };
            let mut resume = Resume::new(&checkpoint);
            resume.absorb(vec![page(
                "http://a.test/",
                0,
                &["http://a.test/3", "http://a.test/1", "http://a.test/2"],
            )]);
            let state = resume.finish(&scope());
            assert_eq!(state.frontier, ["http://a.test/1", "http://a.test/2"]);
            assert!(state.truncated, "checkpoint truncated: {truncated}");
        }
    }

    #[test]
    fn a_small_crawl_keeps_its_pages_in_order_and_a_large_one_lets_them_go() {
        let mut small = Inline::default();
        small.push(page("http://a.test/b", 1, &[]));
        small.push(page("http://a.test/", 0, &[]));
        small.push(page("http://a.test/a", 1, &[]));
        let urls: Vec<String> = small.take().unwrap().into_iter().map(|p| p.url).collect();
        assert_eq!(
            urls,
            ["http://a.test/", "http://a.test/a", "http://a.test/b"]
        );

        let mut large = Inline::default();
        let long_link = format!("http://a.test/{}", "x".repeat(1000));
        for i in 0..1000 {
            large.push(page(
                &format!("http://a.test/{i}"),
                1,
                &[long_link.as_str()],
            ));
        }
        assert!(!large.wants_more());
        assert_eq!(large.take(), None);
    }
}
