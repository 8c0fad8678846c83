//! A website served by the test itself on loopback: a tree of pages whose
//! links the test knows, so it knows the levels a crawl must return; a count
//! of requests per page, to prove what was fetched twice; and a gate that
//! holds the pages of one depth until the test opens it, so a fault can be
//! injected in the middle of a level.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tokio::sync::{Notify, watch};

/// The pages of a tree-shaped site: `/`, its children `/p0`..., their
/// children `/p0/p0`..., with `fanout[d]` children for each page at depth d.
#[derive(Debug, Clone)]
pub struct SitePlan {
    /// Path -> depth and the paths it links to.
    pages: BTreeMap<String, (u32, Vec<String>)>,
    gated_depth: Option<u32>,
    /// Every page takes this long to answer.
    delay: Duration,
    /// The body of `/robots.txt`, or its status when it has none.
    robots: Robots,
    /// Paths whose first request is answered 429 with this `Retry-After`.
    throttled: BTreeMap<String, u64>,
}

/// How the site answers `/robots.txt`.
#[derive(Debug, Clone)]
enum Robots {
    Status(u16),
    Body(String),
}

impl SitePlan {
    pub fn tree(fanout: &[usize]) -> Self {
        let mut pages = BTreeMap::new();
        let mut level = vec!["/".to_string()];
        for (depth, &n) in fanout.iter().enumerate() {
            let mut next = Vec::new();
            for parent in &level {
                let stem = parent.trim_end_matches('/');
                let children: Vec<String> = (0..n).map(|i| format!("{stem}/p{i}")).collect();
                next.extend(children.iter().cloned());
                pages.insert(parent.clone(), (depth as u32, children));
            }
            level = next;
        }
        for leaf in level {
            pages.insert(leaf, (fanout.len() as u32, Vec::new()));
        }
        Self {
            pages,
            gated_depth: None,
            delay: Duration::ZERO,
            robots: Robots::Status(404),
            throttled: BTreeMap::new(),
        }
    }

    /// `/` linking `n` pages `/p0`..., each linking back to `/` and to its
    /// next `siblings` pages: a wide level of heavy pages (many links each).
    pub fn flat(n: usize, siblings: usize) -> Self {
        let page = |i: usize| format!("/p{i}");
        let mut pages = BTreeMap::new();
        pages.insert("/".to_string(), (0, (0..n).map(page).collect()));
        for i in 0..n {
            let mut links = vec!["/".to_string()];
            links.extend((1..=siblings).map(|k| page((i + k) % n)));
            pages.insert(page(i), (1, links));
        }
        Self {
            pages,
            gated_depth: None,
            delay: Duration::ZERO,
            robots: Robots::Status(404),
            throttled: BTreeMap::new(),
        }
    }

    /// Every page answers after `delay`, so a crawl lasts long enough for
    /// a fault to land in its middle.
    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// `/robots.txt` answers 200 with `body`.
    pub fn robots(mut self, body: &str) -> Self {
        self.robots = Robots::Body(body.to_string());
        self
    }

    /// `/robots.txt` answers `status` with no rules.
    pub fn robots_status(mut self, status: u16) -> Self {
        self.robots = Robots::Status(status);
        self
    }

    /// The first request for `path` is answered 429 with `Retry-After: secs`.
    pub fn throttle(mut self, path: &str, secs: u64) -> Self {
        self.throttled.insert(path.to_string(), secs);
        self
    }

    /// Pages at `depth` answer only once the test opens the gate.
    pub fn gate_depth(mut self, depth: u32) -> Self {
        self.gated_depth = Some(depth);
        self
    }

    /// Paths at `depth`.
    pub fn paths_at(&self, depth: u32) -> Vec<String> {
        self.pages
            .iter()
            .filter(|(_, (d, _))| *d == depth)
            .map(|(path, _)| path.clone())
            .collect()
    }
}

struct Shared {
    plan: SitePlan,
    hits: Mutex<HashMap<String, usize>>,
    /// Every request's path and when it arrived, in order.
    arrivals: Mutex<Vec<(Instant, String)>>,
    gate: watch::Receiver<bool>,
    gated_arrivals: Mutex<usize>,
    arrived: Notify,
}

pub struct TestSite {
    pub base: String,
    shared: Arc<Shared>,
    gate: watch::Sender<bool>,
}

impl TestSite {
    pub async fn serve(plan: SitePlan) -> Self {
        Self::serve_on("127.0.0.1:0", plan).await
    }

    /// Serves on `addr` (an address of this machine other than loopback,
    /// for crawlers in containers that reach it through their network's gateway).
    pub async fn serve_on(addr: &str, plan: SitePlan) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind the test site on {addr}: {e}"));
        let base = format!("http://{}", listener.local_addr().expect("bound"));
        let (gate, gate_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            plan,
            hits: Mutex::default(),
            arrivals: Mutex::default(),
            gate: gate_rx,
            gated_arrivals: Mutex::new(0),
            arrived: Notify::new(),
        });
        let app = Router::new().fallback(page).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, shared, gate }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Requests that arrived for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far: when it arrived and its path, in order.
    pub fn arrivals(&self) -> Vec<(Instant, String)> {
        self.shared.arrivals.lock().expect("arrivals").clone()
    }

    /// The levels a crawl from `/` to `depth` must return.
    pub fn levels(&self, depth: u32) -> Vec<Vec<String>> {
        (0..=depth)
            .map(|d| {
                let mut urls: Vec<String> = self
                    .shared
                    .plan
                    .paths_at(d)
                    .iter()
                    .map(|p| self.url(p))
                    .collect();
                urls.sort();
                urls
            })
            .filter(|level| !level.is_empty())
            .collect()
    }

    pub fn plan(&self) -> &SitePlan {
        &self.shared.plan
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Waits (with a deadline) until `n` requests for gated pages arrived.
    pub async fn gated_requests(&self, n: usize) {
        let wait = async {
            loop {
                let arrived = self.shared.arrived.notified();
                if *self.shared.gated_arrivals.lock().expect("arrivals") >= n {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("{n} gated requests never arrived"));
    }
}

async fn page(State(site): State<Arc<Shared>>, OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path().to_string();
    site.arrivals
        .lock()
        .expect("arrivals")
        .push((Instant::now(), path.clone()));
    let hits = {
        let mut hits = site.hits.lock().expect("hits");
        let hits = hits.entry(path.clone()).or_default();
        *hits += 1;
        *hits
    };
    if path == "/robots.txt" {
        return match &site.plan.robots {
            Robots::Body(body) => body.clone().into_response(),
            Robots::Status(status) => {
                (StatusCode::from_u16(*status).expect("a status"), "").into_response()
            }
        };
    }
    if let Some(secs) = site.plan.throttled.get(&path)
        && hits == 1
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, secs.to_string())],
            "slow down",
        )
            .into_response();
    }
    let Some((depth, links)) = site.plan.pages.get(&path).cloned() else {
        return (StatusCode::NOT_FOUND, "no such page").into_response();
    };
    if !site.plan.delay.is_zero() {
        tokio::time::sleep(site.plan.delay).await;
    }
    if site.plan.gated_depth == Some(depth) {
        *site.gated_arrivals.lock().expect("arrivals") += 1;
        site.arrived.notify_waiters();
        let mut gate = site.gate.clone();
        let _ = gate.wait_for(|open| *open).await;
    }
    let anchors: String = links
        .iter()
        .map(|link| format!(r#"<a href="{link}">{link}</a> "#))
        .collect();
    Html(format!("<title>{path}</title>{anchors}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_plan_has_the_pages_its_fanout_says() {
        let plan = SitePlan::tree(&[2, 3]);
        assert_eq!(plan.paths_at(0), ["/"]);
        assert_eq!(plan.paths_at(1), ["/p0", "/p1"]);
        assert_eq!(plan.paths_at(2).len(), 6);
        assert!(plan.paths_at(2).contains(&"/p1/p2".to_string()));
        assert_eq!(plan.pages["/p0"].1, ["/p0/p0", "/p0/p1", "/p0/p2"]);
    }
}
