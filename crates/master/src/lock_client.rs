//! The master's side of the lock service: one or more replicas, of which the
//! leader answers. Calls go to the replica believed to lead. A follower's
//! `not_leader` answer names the leader, and the call moves there; a replica
//! that cannot be reached, or does not answer within the call's deadline,
//! sends the call on to the next replica in the list. Every call has a
//! deadline, so a frozen replica costs one deadline, never a stuck job.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::retry::{RetryError, RetryPolicy};
use crawler_core::tls::GrpcSecurity;
use crawler_core::trace::SendContext;
use crawler_proto::v1::lock_service_client::LockServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Response, Status};

/// Every call carries the current span's trace context in its metadata.
type Client = LockServiceClient<InterceptedService<Channel, SendContext>>;

pub struct LockClient {
    replicas: Vec<String>,
    security: GrpcSecurity,
    state: Mutex<State>,
}

struct State {
    /// The replica calls go to now.
    current: String,
    /// One lazily connected channel per replica address seen.
    clients: HashMap<String, Client>,
}

impl LockClient {
    /// `replicas` are `http://host:port` URLs (spoken over TLS when
    /// `security` says so); none is contacted yet.
    pub fn new(replicas: Vec<String>, security: GrpcSecurity) -> anyhow::Result<Self> {
        let first = replicas
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("--lock-server needs at least one address"))?;
        let mut clients = HashMap::new();
        for url in &replicas {
            clients.insert(url.clone(), connect(&security, url)?);
        }
        Ok(Self {
            replicas,
            security,
            state: Mutex::new(State {
                current: first,
                clients,
            }),
        })
    }

    /// One try at the current replica within `deadline`. On a refusal or
    /// silence, the next try goes to the leader it named, or the next replica.
    pub async fn once<T, F, Fut>(&self, deadline: Duration, call: F) -> Result<T, Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let (url, client) = self.current();
        let outcome = match tokio::time::timeout(deadline, call(client)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!(
                "the lock server at {url} did not answer within {deadline:?}"
            )),
        };
        self.redirect(&url, &outcome);
        Err(outcome)
    }

    /// Tries per `policy` until an answer, a permanent refusal, or `cancel`.
    pub async fn call<T, F, Fut>(
        &self,
        policy: &RetryPolicy,
        deadline: Duration,
        cancel: &CancellationToken,
        what: &str,
        call: F,
    ) -> Result<T, RetryError<Status>>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        policy
            .retry(
                cancel,
                || self.once(deadline, &call),
                |status, delay| {
                    tracing::warn!(call = %what, error = %status.message(), retry_in_ms = delay.as_millis() as u64, "lock server call failed; retrying");
                },
            )
            .await
    }

    fn current(&self) -> (String, Client) {
        let state = self.lock();
        let client = state
            .clients
            .get(&state.current)
            .cloned()
            .expect("the current replica always has a client");
        (state.current.clone(), client)
    }

    /// After `status` from `url`: follow the leader it names, or move on to
    /// the next replica when it could not answer. Permanent refusals leave
    /// the choice alone: another replica would refuse the same way.
    fn redirect(&self, url: &str, status: &Status) {
        let named = (ErrorCode::of(status) == Some(ErrorCode::NotLeader))
            .then(|| {
                status
                    .metadata()
                    .get(crawler_proto::LEADER_METADATA_KEY)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .flatten();
        let unanswered = matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        );
        let mut state = self.lock();
        if state.current != url {
            return; // another call moved on already
        }
        let next = match named {
            Some(leader) => match state.clients.contains_key(&leader) {
                true => leader,
                false => match connect(&self.security, &leader) {
                    Ok(client) => {
                        state.clients.insert(leader.clone(), client);
                        leader
                    }
                    Err(e) => {
                        tracing::warn!(leader = %leader, error = %e, "the named leader's address is unusable");
                        self.after(url)
                    }
                },
            },
            None if unanswered => self.after(url),
            None => return,
        };
        if next != url {
            tracing::info!(from = %url, to = %next, "switching lock server replica");
        }
        state.current = next;
    }

    /// The replica after `url` in the configured list (round robin).
    fn after(&self, url: &str) -> String {
        let at = self.replicas.iter().position(|r| r == url);
        let next = at.map_or(0, |i| (i + 1) % self.replicas.len());
        self.replicas[next].clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn connect(security: &GrpcSecurity, url: &str) -> anyhow::Result<Client> {
    let channel = security
        .endpoint(url)
        .map_err(|e| anyhow::anyhow!("lock server address `{url}`: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(LockServiceClient::with_interceptor(channel, SendContext)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(replicas: &[&str]) -> LockClient {
        LockClient::new(
            replicas.iter().map(|r| r.to_string()).collect(),
            GrpcSecurity::Plaintext,
        )
        .unwrap()
    }

    fn not_leader(leader: Option<&str>) -> Status {
        let mut status = ErrorCode::NotLeader.status("not the leader");
        if let Some(leader) = leader {
            status
                .metadata_mut()
                .insert(crawler_proto::LEADER_METADATA_KEY, leader.parse().unwrap());
        }
        status
    }

    #[tokio::test]
    async fn a_named_leader_is_followed_even_outside_the_list() {
        let lock = client(&["http://a:1", "http://b:1"]);
        lock.redirect("http://a:1", &not_leader(Some("http://c:1")));
        assert_eq!(lock.current().0, "http://c:1");
    }

    #[tokio::test]
    async fn silence_moves_on_round_robin_and_a_judgement_does_not() {
        let lock = client(&["http://a:1", "http://b:1"]);
        lock.redirect("http://a:1", &Status::unavailable("refused"));
        assert_eq!(lock.current().0, "http://b:1");
        lock.redirect("http://b:1", &not_leader(None));
        assert_eq!(
            lock.current().0,
            "http://a:1",
            "no leader known: try the next"
        );
        lock.redirect("http://a:1", &ErrorCode::StaleLease.status("stale"));
        assert_eq!(lock.current().0, "http://a:1");
        lock.redirect("http://b:1", &Status::unavailable("late news"));
        assert_eq!(
            lock.current().0,
            "http://a:1",
            "a stale failure does not move us"
        );
    }

    #[tokio::test]
    async fn an_empty_list_is_refused() {
        assert!(LockClient::new(Vec::new(), GrpcSecurity::Plaintext).is_err());
    }
}
