//! One websocket connection: frames in, messages out. Every bad frame gets an
//! `error` and the connection stays open for the next request; what ends a
//! connection is said with a close frame: 1000 when it was idle too long,
//! 1001 when the gateway stops, 1009 for a frame past the transport limit.
//!
//! An idle connection should cost little memory, since a gateway holds tens
//! of thousands: its read buffer is small (see `--ws-read-buffer-bytes`),
//! its queue of messages holds pointers, and the work done for a request or
//! a delivery lives in a boxed future only while it runs, so the task of an
//! idle connection is small.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use crawler_core::ErrorCode;
use crawler_core::protocol::{ClientMessage, ServerMessage, parse_client_message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::auth::{self, Identity};
use crate::delivery::{self, Outgoing, Writer};
use crate::metrics::Metrics;
use crate::requests;
use crate::routes::{ClientHandle, Reach};

/// Messages queued for one connection by other tasks (results, progress)
/// before it counts as a reader too slow to keep.
const OUTGOING_QUEUE: usize = 256;

/// Close codes (RFC 6455, section 7.4.1).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;

/// Who is on the other end.
pub struct Client {
    pub id: String,
    /// The client named itself (`?clientId=`): it may have jobs from an
    /// earlier connection, whose outcomes it is sent once it is known.
    pub returning: bool,
    pub identity: Identity,
}

/// One of the gateway's `--max-connections`, held for a connection's life.
pub struct Slot {
    metrics: Arc<Metrics>,
}

impl Slot {
    /// A free slot, or `None` when the gateway holds its maximum.
    pub fn take(state: &AppState) -> Option<Self> {
        let held = state.metrics.connections.fetch_add(1, Ordering::Relaxed);
        if held as usize >= state.conn.max_connections {
            state.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            Metrics::inc(&state.metrics.connections_refused);
            return None;
        }
        Some(Self {
            metrics: state.metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        self.metrics.drained.notify_waiters();
    }
}

/// A read error the client is told about before the connection ends.
pub trait ReadError: std::error::Error + 'static {
    /// The frame was past the transport limit.
    fn too_big(&self) -> bool {
        std::error::Error::source(self)
            .and_then(|e| e.downcast_ref::<tungstenite::Error>())
            .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
    }
}

impl ReadError for axum::Error {}
impl ReadError for std::convert::Infallible {}

/// What other tasks need to reach a connection: made when the connection
/// first waits for a job's events, so a connection that never does (most
/// idle ones) has no queue and no token of its own.
struct Reachable {
    /// The gateway's stop token, whose child the connection's token is.
    gateway: CancellationToken,
    handle: Option<ClientHandle>,
    rx: Option<mpsc::Receiver<Outgoing>>,
}

impl Reachable {
    fn new(gateway: &CancellationToken) -> Self {
        Self {
            gateway: gateway.clone(),
            handle: None,
            rx: None,
        }
    }

    /// The token that ends the connection: its own once it has one.
    fn stop(&self) -> &CancellationToken {
        self.handle.as_ref().map_or(&self.gateway, |h| &h.close)
    }

    /// The next message queued for the connection, when it has a queue.
    async fn next(&mut self) -> Option<Outgoing> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl Reach for Reachable {
    fn handle(&mut self) -> ClientHandle {
        if self.handle.is_none() {
            let (tx, rx) = mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
            self.handle = Some(ClientHandle::new(tx, &self.gateway));
            self.rx = Some(rx);
        }
        self.handle.clone().expect("just made")
    }
}

/// Serves one client until it leaves, is idle too long, does not read, or
/// the gateway stops. Generic over the socket halves so it can be driven by
/// channels in tests.
pub async fn serve<S, R, E>(
    state: AppState,
    mut client: Client,
    slot: Slot,
    mut sink: S,
    mut stream: R,
) where
    S: Sink<Message> + Unpin + Send,
    R: Stream<Item = Result<Message, E>> + Unpin + Send,
    E: ReadError,
{
    let _slot = slot;
    let mut reach = Reachable::new(&state.closing);
    let mut submits: Option<Box<DefaultDirectRateLimiter>> = None;
    let mut open = Box::pin(greet(&state, &client, &mut sink, &mut reach)).await;
    let mut heard = Instant::now();
    let mut pinged = false;
    while open {
        let limits = &state.conn;
        let check = heard
            + if pinged {
                limits.idle_timeout
            } else {
                limits.ping_interval
            };
        // A connection's own token is a child of the gateway's, so one
        // wait covers both a stopping gateway and a slow reader.
        let stop = reach.stop().clone();
        tokio::select! {
            _ = stop.cancelled() => {
                if state.closing.is_cancelled() {
                    let mut out = socket(&state, &mut sink);
                    out.close(GOING_AWAY, "the gateway is stopping; reconnect to another").await;
                } else {
                    Metrics::inc(&state.metrics.connections_closed_slow);
                }
                break;
            }
            _ = tokio::time::sleep_until(check) => {
                let mut out = socket(&state, &mut sink);
                if pinged {
                    Metrics::inc(&state.metrics.connections_closed_idle);
                    let reason = format!("idle for {} s", limits.idle_timeout.as_secs());
                    out.close(NORMAL, &reason).await;
                    break;
                }
                pinged = true;
                open = out.ping().await;
            }
            owed = reach.next() => {
                // The connection holds a sender, so its queue never closes.
                let Some(owed) = owed else { break };
                let mut out = socket(&state, &mut sink);
                open = Box::pin(dispatch(&state, &mut out, owed)).await;
            }
            incoming = stream.next() => {
                heard = Instant::now();
                pinged = false;
                let replies = match incoming {
                    Some(Ok(Message::Text(text))) => {
                        Box::pin(handle_text(&state, &mut client, text.as_str(), &mut reach, &mut submits)).await
                    }
                    Some(Ok(Message::Binary(_))) => vec![Outgoing::message(ServerMessage::error(
                        None,
                        ErrorCode::InvalidMessage,
                        "binary frames are not supported; send JSON as a text frame",
                    ))],
                    Some(Ok(Message::Close(_))) | None => break,
                    // Pings are answered by the library; pongs are signs of life.
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        if e.too_big() {
                            let reason = format!("a frame is over {} bytes", limits.transport_bytes);
                            socket(&state, &mut sink).close(TOO_BIG, &reason).await;
                        } else {
                            tracing::debug!(error = %e, "websocket read failed");
                        }
                        break;
                    }
                };
                for reply in replies {
                    let mut out = socket(&state, &mut sink);
                    open = Box::pin(dispatch(&state, &mut out, reply)).await;
                    if !open {
                        break;
                    }
                }
            }
        }
    }
    if let Some(handle) = &reach.handle {
        state.routes.forget(handle.id);
    }
}

/// The connection's sending half as a [`Writer`].
fn socket<'a, S>(state: &'a AppState, sink: &'a mut S) -> Socket<'a, S> {
    Socket { state, sink }
}

/// Welcomes the client and, when it comes back, sends what it is owed;
/// false once the connection is broken.
async fn greet<S: Sink<Message> + Unpin + Send>(
    state: &AppState,
    client: &Client,
    sink: &mut S,
    reach: &mut Reachable,
) -> bool {
    let welcome = ServerMessage::Welcome {
        client_id: client.id.clone(),
        gateway: state.gateway_key.clone(),
    };
    if !socket(state, sink).write(welcome).await {
        return false;
    }
    for owed in owed_on_arrival(state, client, reach).await {
        if !dispatch(state, &mut socket(state, sink), owed).await {
            return false;
        }
    }
    true
}

/// What a returning client is owed once it is known: at once when it
/// authenticated on the upgrade (or needs not), after its `auth` otherwise.
async fn owed_on_arrival(
    state: &AppState,
    client: &Client,
    reach: &mut Reachable,
) -> Vec<Outgoing> {
    match client.identity.client_key(&client.id) {
        Some(key) if client.returning => requests::owed_to(state, &key, reach).await,
        _ => Vec::new(),
    }
}

/// Sends one queued item; false once the connection is broken.
async fn dispatch<W: Writer>(state: &AppState, out: &mut W, owed: Outgoing) -> bool {
    match owed {
        Outgoing::Message(message) => out.write(*message).await,
        Outgoing::Outcome(outcome) => delivery::deliver(state, out, outcome).await,
    }
}

async fn handle_text(
    state: &AppState,
    client: &mut Client,
    text: &str,
    reach: &mut Reachable,
    submits: &mut Option<Box<DefaultDirectRateLimiter>>,
) -> Vec<Outgoing> {
    if text.len() > state.max_frame_bytes {
        return vec![Outgoing::message(ServerMessage::error(
            None,
            ErrorCode::MessageTooLarge,
            format!(
                "frame is {} bytes; the limit is {}",
                text.len(),
                state.max_frame_bytes
            ),
        ))];
    }
    let message = match parse_client_message(text, &state.limits) {
        Ok(ClientMessage::Auth { token }) => {
            return authenticate(state, client, &token, reach).await;
        }
        Ok(message) => message,
        Err(e) => return vec![Outgoing::message(e.into())],
    };
    let job_id = match &message {
        ClientMessage::Submit(submit) => Some(submit.job_id.clone()),
        ClientMessage::Status { job_id } => Some(job_id.clone()),
        ClientMessage::Auth { .. } => None,
    };
    // The token may have been revoked since the connection showed it; a
    // connection that showed none has no key to keep jobs under.
    if let Err(refusal) = state.auth.recheck(&client.identity).await {
        return vec![Outgoing::message(ServerMessage::error(
            job_id,
            refusal.code,
            refusal.message,
        ))];
    }
    let Some(key) = client.identity.client_key(&client.id) else {
        return vec![Outgoing::message(ServerMessage::error(
            job_id,
            ErrorCode::Unauthenticated,
            auth::NO_TOKEN,
        ))];
    };
    let owner = requests::Owner {
        key,
        tenant: client.identity.tenant().cloned(),
    };
    match message {
        ClientMessage::Submit(submit) => {
            let per_sec = state.conn.submits_per_sec;
            let limiter = submits.get_or_insert_with(|| {
                let rate = std::num::NonZeroU32::new(per_sec).unwrap_or(std::num::NonZeroU32::MIN);
                Box::new(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(rate),
                ))
            });
            if limiter.check().is_err() {
                Metrics::inc(&state.metrics.rate_limited);
                return vec![Outgoing::message(ServerMessage::error(
                    Some(submit.job_id),
                    ErrorCode::RateLimited,
                    format!("more than {per_sec} submits a second on this connection; slow down"),
                ))];
            }
            requests::submit(state, &owner, submit, reach).await
        }
        ClientMessage::Status { job_id } => {
            vec![requests::status(state, &owner.key, job_id, reach).await]
        }
        ClientMessage::Auth { .. } => unreachable!("answered above"),
    }
}

/// An `auth` message: the connection now speaks for the token's tenant,
/// and a returning client is sent what it is owed. A connection's tenant
/// never changes, so events of one tenant's jobs never reach another.
async fn authenticate(
    state: &AppState,
    client: &mut Client,
    token: &str,
    reach: &mut Reachable,
) -> Vec<Outgoing> {
    let identity = match client.identity {
        Identity::Open => {
            return vec![Outgoing::message(ServerMessage::error(
                None,
                ErrorCode::InvalidMessage,
                "this gateway runs with --auth none and takes no tokens",
            ))];
        }
        _ => match state.auth.verify(token).await {
            Ok(identity) => identity,
            Err(refusal) => {
                Metrics::inc(&state.metrics.auth_refused);
                return vec![Outgoing::message(ServerMessage::error(
                    None,
                    refusal.code,
                    refusal.message,
                ))];
            }
        },
    };
    if let (Some(now), Some(next)) = (client.identity.tenant(), identity.tenant())
        && now != next
    {
        return vec![Outgoing::message(ServerMessage::error(
            None,
            ErrorCode::InvalidMessage,
            "this connection is authenticated for another tenant; open a new connection",
        ))];
    }
    let first = matches!(client.identity, Identity::Pending);
    let tenant = identity
        .tenant()
        .map(ToString::to_string)
        .unwrap_or_default();
    client.identity = identity;
    let mut replies = vec![Outgoing::message(ServerMessage::Authenticated { tenant })];
    if first {
        replies.extend(owed_on_arrival(state, client, reach).await);
    }
    replies
}

/// The socket's sending half, counted, with a deadline per write: a
/// client that stops reading blocks its own connection's writes at most
/// that long (never anyone else's: events are handed over without waiting).
struct Socket<'a, S> {
    state: &'a AppState,
    sink: &'a mut S,
}

impl<S: Sink<Message> + Unpin + Send> Socket<'_, S> {
    /// Writes `frame` unless the client stops reading for the write timeout.
    async fn send(&mut self, frame: Message) -> bool {
        let timeout = self.state.conn.write_timeout;
        match tokio::time::timeout(timeout, self.sink.send(frame)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                Metrics::inc(&self.state.metrics.connections_closed_slow);
                false
            }
        }
    }

    async fn ping(&mut self) -> bool {
        self.send(Message::Ping(Default::default())).await
    }

    /// Says why the connection ends; the client may be gone already.
    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_string()),
        };
        let sent = self.send(Message::Close(Some(frame))).await;
        tracing::debug!(code, reason, sent, "connection closed");
    }
}

impl<S: Sink<Message> + Unpin + Send> Writer for Socket<'_, S> {
    async fn write(&mut self, message: ServerMessage) -> bool {
        match &message {
            ServerMessage::Error { .. } => Metrics::inc(&self.state.metrics.errors_sent),
            ServerMessage::Result { .. } | ServerMessage::ResultHead { .. } => {
                Metrics::inc(&self.state.metrics.results_delivered)
            }
            _ => {}
        }
        self.send(Message::Text(Utf8Bytes::from(message.to_json())))
            .await
    }

    async fn write_result(&mut self, json: String) -> bool {
        Metrics::inc(&self.state.metrics.results_delivered);
        self.send(Message::Text(Utf8Bytes::from(json))).await
    }

    async fn write_part(&mut self, json: String) -> bool {
        self.send(Message::Text(Utf8Bytes::from(json))).await
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::extract::ws::Message;
    use futures::StreamExt;
    use serde_json::Value;

    use crate::{Gateway, GatewayConfig};

    /// Drives one connection with `frames` and returns what it sent back.
    async fn exchange(frames: Vec<Message>) -> Vec<Value> {
        let engines = crawler_adapters::embedded_engines().await.unwrap();
        let config = GatewayConfig::local("127.0.0.1:0".parse().unwrap(), Vec::new());
        let gateway = Gateway::build(config, engines).await.unwrap();
        let (sink, sent) = futures::channel::mpsc::unbounded::<Message>();
        let incoming = futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>));
        let client = super::Client {
            id: "client-1".into(),
            returning: false,
            identity: crate::auth::Identity::Open,
        };
        let slot = super::Slot::take(&gateway.state).unwrap();
        super::serve(gateway.state.clone(), client, slot, sink, incoming).await;
        sent.map(|m| match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("the gateway sends text frames only, not {other:?}"),
        })
        .collect()
        .await
    }

    #[tokio::test]
    async fn every_bad_frame_gets_its_error_and_the_connection_reads_on() {
        let sent = exchange(vec![
            Message::Binary(vec![1, 2, 3].into()),
            Message::Text("{oops".into()),
            Message::Text(r#"{"type":"submit","jobId":"J","url":"ftp://x/","depth":1}"#.into()),
            Message::Text(r#"{"type":"status","jobId":"J"}"#.into()),
            Message::Text(
                format!(r#"{{"type":"submit","pad":"{}"}}"#, "x".repeat(300 * 1024)).into(),
            ),
        ])
        .await;
        let kinds: Vec<(&str, &str)> = sent
            .iter()
            .map(|m| {
                (
                    m["type"].as_str().unwrap(),
                    m["code"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("welcome", ""),
                ("error", "invalid_message"),
                ("error", "invalid_json"),
                ("error", "unsupported_scheme"),
                ("error", "unknown_job"),
                ("error", "message_too_large"),
            ]
        );
        assert_eq!(sent[0]["clientId"], "client-1");
        assert_eq!(sent[3]["jobId"], "J");
    }
}
