//! The chaos suite's workload and checker. Clients submit jobs at a steady
//! pace while a scenario injects faults; every job's history is recorded
//! (submitted, accepted, each result delivered, errors), and the checker
//! counts what the fault model promises never happens:
//!
//! - **lost**: accepted, but no result ever delivered to its client;
//! - **duplicated**: more answers for one client and job id than it sent
//!   requests (each submit or `status` ask earns one answer: the result,
//!   or a refusal); one submit and two results is a result delivered twice;
//! - **failed**: ended with an error other than a refusal.
//!
//! A client behaves as a careful real one: when its connection drops it
//! reconnects as itself (`?clientId=`) to the next gateway of its list,
//! after a backoff; it sends again the jobs it never saw accepted, and asks
//! `status` of the accepted ones still without an outcome (an outcome is
//! pushed to it wherever it reconnects, but one whose delivery a dying
//! gateway had claimed, or had left in its socket, comes only when asked);
//! and a request refused as `unavailable` or `rate_limited` is made again a
//! little later (the submit, or for an accepted job the `status` ask).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crawler_core::protocol::{
    Assembled, ResultAssembler, ServerMessage, StatusRequest, SubmitRequest,
};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    pub jobs_per_client: usize,
    /// Time between two submits of one client.
    pub pace: Duration,
    /// The crawl each job makes: this URL (a distinct query per job, so no
    /// job is answered from another's cache) to this depth.
    pub url: String,
    pub depth: u32,
    /// How long after its last submit a client waits for its outcomes.
    pub patience: Duration,
    /// Client `c` starts on gateway `c mod n` rather than all on the first.
    pub spread: bool,
}

/// One job's history.
#[derive(Debug, Clone)]
pub struct JobHistory {
    pub job_id: String,
    pub submitted: Instant,
    /// Requests made for it, each earning at most one answer: submits (a
    /// resubmit after a refusal or a lost answer) and `status` asks.
    pub sent: usize,
    pub accepted: bool,
    /// `result` messages delivered to its client (parts put together count once).
    pub results: usize,
    pub first_result: Option<Duration>,
    /// Errors other than a refusal to accept.
    pub errors: Vec<String>,
    /// Requests refused (`unavailable`, `rate_limited`), later made again.
    pub refusals: usize,
}

/// What the checker counts.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub submitted: usize,
    pub accepted: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub failed: usize,
    pub refusals: usize,
    pub reconnects: usize,
    pub p50: Duration,
    pub p99: Duration,
}

impl Report {
    pub fn of(histories: &[JobHistory], reconnects: usize) -> Self {
        let mut latencies: Vec<Duration> =
            histories.iter().filter_map(|h| h.first_result).collect();
        latencies.sort();
        let at = |p: f64| {
            latencies
                .get(((latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            submitted: histories.len(),
            accepted: histories.iter().filter(|h| h.accepted).count(),
            lost: histories
                .iter()
                .filter(|h| h.accepted && h.results == 0 && h.errors.is_empty())
                .count(),
            duplicated: histories
                .iter()
                .filter(|h| h.results + h.refusals > h.sent)
                .count(),
            failed: histories.iter().filter(|h| !h.errors.is_empty()).count(),
            refusals: histories.iter().map(|h| h.refusals).sum(),
            reconnects,
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// The table row of a run.
    pub fn row(&self, label: &str) -> String {
        format!(
            "{label:<56} {:>9} {:>8} {:>4} {:>10} {:>6} {:>8} {:>10} {:>8.0} {:>8.0}",
            self.submitted,
            self.accepted,
            self.lost,
            self.duplicated,
            self.failed,
            self.refusals,
            self.reconnects,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0
        )
    }

    pub fn header() -> String {
        format!(
            "{:<56} {:>9} {:>8} {:>4} {:>10} {:>6} {:>8} {:>10} {:>8} {:>8}",
            "run",
            "submitted",
            "accepted",
            "lost",
            "duplicated",
            "failed",
            "refusals",
            "reconnects",
            "p50 ms",
            "p99 ms"
        )
    }

    /// Nothing lost, duplicated or failed, and every job accepted.
    pub fn is_clean(&self) -> bool {
        (self.lost, self.duplicated, self.failed) == (0, 0, 0) && self.accepted == self.submitted
    }

    /// Panics unless nothing was lost, duplicated or failed.
    pub fn assert_clean(&self, label: &str) {
        assert_eq!(
            (self.lost, self.duplicated, self.failed),
            (0, 0, 0),
            "{label}: lost, duplicated, failed\n{}\n{}",
            Self::header(),
            self.row(label)
        );
        assert_eq!(
            self.accepted, self.submitted,
            "{label}: every job accepted in the end"
        );
    }
}

/// Runs `workload` against `gateways` (every client starts on the first,
/// or on its own when the workload is spread, and moves to the next when
/// its connection drops) and returns every
/// job's history and the reconnects made.
pub async fn run(workload: &Workload, gateways: &[String], tag: &str) -> (Vec<JobHistory>, usize) {
    let tasks: Vec<_> = (0..workload.clients)
        .map(|c| {
            let workload = workload.clone();
            let mut order = gateways.to_vec();
            if workload.spread {
                order.rotate_left(c % gateways.len());
            }
            let tag = format!("{tag}-c{c}");
            tokio::spawn(async move { client(workload, order, tag).await })
        })
        .collect();
    let mut histories = Vec::new();
    let mut reconnects = 0;
    for task in tasks {
        let (h, r) = task.await.expect("a chaos client");
        histories.extend(h);
        reconnects += r;
    }
    (histories, reconnects)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a refused submit waits before it is sent again.
const RESUBMIT_AFTER: Duration = Duration::from_millis(300);

async fn client(
    workload: Workload,
    gateways: Vec<String>,
    tag: String,
) -> (Vec<JobHistory>, usize) {
    let requests: Vec<SubmitRequest> = (0..workload.jobs_per_client)
        .map(|j| {
            let separator = if workload.url.contains('?') { '&' } else { '?' };
            SubmitRequest {
                job_id: format!("{tag}-j{j}"),
                url: format!("{}{separator}job={tag}-j{j}", workload.url),
                depth: workload.depth,
                max_pages: None,
                allowed_hosts: Vec::new(),
                include_subdomains: false,
                spider: None,
                respect_robots: true,
                warc: false,
            }
        })
        .collect();
    let started = Instant::now();
    let mut histories: HashMap<String, JobHistory> = HashMap::new();
    let mut due: Vec<(Instant, Ask)> = (0..requests.len())
        .map(|j| (started + workload.pace * j as u32, Ask::Submit(j)))
        .collect();
    let mut client_id: Option<String> = None;
    let mut reconnects = 0;
    let mut next_gateway = 0;
    let deadline = started + workload.pace * requests.len() as u32 + workload.patience;
    let done = |h: &HashMap<String, JobHistory>| {
        h.len() == requests.len() && h.values().all(|j| j.results > 0 || !j.errors.is_empty())
    };
    while Instant::now() < deadline && !done(&histories) {
        // Connect (again) as this client.
        let url = match &client_id {
            Some(id) => format!("{}?clientId={id}", gateways[next_gateway % gateways.len()]),
            None => gateways[next_gateway % gateways.len()].clone(),
        };
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            next_gateway += 1;
            tokio::time::sleep(Duration::from_millis(200)).await; // backoff before the next try
            continue;
        };
        if client_id.is_some() {
            reconnects += 1;
            // Jobs never seen accepted are sent again (the same request
            // attaches if it was recorded after all); accepted ones still
            // without an outcome are asked for.
            for (j, request) in requests.iter().enumerate() {
                let ask = match histories.get(&request.job_id) {
                    Some(h) if !h.errors.is_empty() || h.results > 0 => continue,
                    Some(h) if h.accepted => Ask::Status(j),
                    Some(_) => Ask::Submit(j),
                    None => continue,
                };
                due.push((Instant::now(), ask));
            }
        }
        let dropped = session(
            &mut socket,
            &requests,
            &mut due,
            &mut histories,
            &mut client_id,
            deadline,
            &done,
        )
        .await;
        if !dropped {
            break;
        }
        next_gateway += 1;
    }
    let mut histories: Vec<JobHistory> = histories.into_values().collect();
    histories.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    (histories, reconnects)
}

/// A request a client is due to send, for the job of this index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ask {
    Submit(usize),
    /// After a reconnect, for an accepted job still without an outcome.
    Status(usize),
}

impl Ask {
    fn job(self) -> usize {
        match self {
            Self::Submit(j) | Self::Status(j) => j,
        }
    }
}

/// One connection: sends what is due, reads what comes. True when the
/// connection dropped (the client reconnects), false when done.
async fn session(
    socket: &mut Socket,
    requests: &[SubmitRequest],
    due: &mut Vec<(Instant, Ask)>,
    histories: &mut HashMap<String, JobHistory>,
    client_id: &mut Option<String>,
    deadline: Instant,
    done: &impl Fn(&HashMap<String, JobHistory>) -> bool,
) -> bool {
    let mut parts: HashMap<String, ResultAssembler> = HashMap::new();
    loop {
        if done(histories) {
            let _ = socket.close(None).await;
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Send every request that is due.
        due.sort();
        while due.first().is_some_and(|(at, _)| *at <= now) {
            let (_, ask) = due.remove(0);
            let request = &requests[ask.job()];
            let history = histories
                .entry(request.job_id.clone())
                .or_insert_with(|| JobHistory {
                    job_id: request.job_id.clone(),
                    submitted: Instant::now(),
                    sent: 0,
                    accepted: false,
                    results: 0,
                    first_result: None,
                    errors: Vec::new(),
                    refusals: 0,
                });
            history.sent += 1;
            let text = match ask {
                Ask::Submit(_) => request.to_json(),
                Ask::Status(_) => StatusRequest {
                    job_id: request.job_id.clone(),
                }
                .to_json(),
            };
            if socket.send(Message::text(text)).await.is_err() {
                // Unsent: the reconnect asks again.
                history.sent -= 1;
                if let Ask::Submit(_) = ask {
                    due.push((Instant::now(), ask));
                }
                return true;
            }
        }
        let wake = due
            .first()
            .map(|(at, _)| *at)
            .unwrap_or(deadline)
            .min(deadline);
        let frame = tokio::select! {
            frame = socket.next() => frame,
            _ = tokio::time::sleep_until(wake.into()) => continue,
        };
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
            Some(Ok(_)) => continue,
        };
        let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) else {
            continue;
        };
        match message {
            ServerMessage::Welcome { client_id: id, .. } => *client_id = Some(id),
            ServerMessage::Accepted { job_id, .. } => {
                if let Some(h) = histories.get_mut(&job_id) {
                    h.accepted = true;
                }
            }
            ServerMessage::Result { ref job_id, .. } => record_result(histories, job_id),
            head @ ServerMessage::ResultHead { .. } => {
                let ServerMessage::ResultHead { job_id, .. } = &head else {
                    unreachable!()
                };
                let job_id = job_id.clone();
                if let Some(assembler) = ResultAssembler::new(head) {
                    parts.insert(job_id, assembler);
                }
            }
            ServerMessage::ResultPart {
                job_id,
                part,
                last,
                pages,
            } => {
                if let Some(assembler) = parts.get_mut(&job_id)
                    && let Ok(Assembled::Done(_)) = assembler.add(part, last, pages)
                {
                    parts.remove(&job_id);
                    record_result(histories, &job_id);
                }
            }
            ServerMessage::Error {
                job_id: Some(job_id),
                code,
                message,
            } => {
                let refused = matches!(code.as_str(), "unavailable" | "rate_limited");
                if let Some(h) = histories.get_mut(&job_id) {
                    if refused {
                        // Asked again later: the submit, or for an
                        // accepted job its status.
                        h.refusals += 1;
                        if let Some(j) = requests.iter().position(|r| r.job_id == job_id) {
                            let ask = if h.accepted {
                                Ask::Status(j)
                            } else {
                                Ask::Submit(j)
                            };
                            due.push((Instant::now() + RESUBMIT_AFTER, ask));
                        }
                    } else {
                        h.errors.push(format!("{code}: {message}"));
                    }
                }
            }
            _ => {}
        }
    }
}

fn record_result(histories: &mut HashMap<String, JobHistory>, job_id: &str) {
    if let Some(h) = histories.get_mut(job_id) {
        // A result implies the job was accepted, even if that message was
        // lost with a connection.
        h.accepted = true;
        h.results += 1;
        h.first_result.get_or_insert_with(|| h.submitted.elapsed());
    }
}
