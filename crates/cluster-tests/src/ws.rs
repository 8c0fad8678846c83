//! A websocket test client: every wait has a deadline.

use std::time::Duration;

use crawler_core::model::CrawlResult;
use crawler_core::protocol::{Assembled, ResultAssembler, ServerMessage};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const DEADLINE: Duration = Duration::from_secs(60);

type Request = tokio_tungstenite::tungstenite::handshake::client::Request;

/// An upgrade request to `ws_url`, with `token` as `Authorization: Bearer`.
fn upgrade(ws_url: &str, token: Option<&str>) -> Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = ws_url.into_client_request().expect("a websocket URL");
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a header value");
        request.headers_mut().insert("authorization", value);
    }
    request
}

pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages read while waiting for another one.
    backlog: Vec<Value>,
    /// Pings the gateway sent (the library answers each with a pong).
    pub pings: usize,
    pub client_id: String,
    /// The id of the gateway that welcomed this connection.
    pub gateway: String,
}

impl WsClient {
    /// Connects and reads the `welcome` message.
    pub async fn connect(ws_url: &str) -> Self {
        Self::connect_as(ws_url, None).await
    }

    /// Connects with `token` as `Authorization: Bearer`.
    pub async fn connect_with_token(ws_url: &str, token: &str) -> Self {
        Self::connect_as(ws_url, Some(token)).await
    }

    /// The gateway's refusal of an upgrade: its HTTP status and the JSON
    /// `error` in its body.
    pub async fn refused_upgrade(ws_url: &str, token: Option<&str>) -> (u16, Value) {
        match tokio_tungstenite::connect_async(upgrade(ws_url, token)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                let error = serde_json::from_slice(body).unwrap_or_else(|e| {
                    panic!(
                        "the refusal is not JSON ({e}): {}",
                        String::from_utf8_lossy(body)
                    )
                });
                (response.status().as_u16(), error)
            }
            Err(e) => panic!("cannot connect to {ws_url}: {e}"),
            Ok(_) => panic!("{ws_url} took the connection"),
        }
    }

    async fn connect_as(ws_url: &str, token: Option<&str>) -> Self {
        let (socket, _) = tokio_tungstenite::connect_async(upgrade(ws_url, token))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {ws_url}: {e}"));
        let mut client = Self {
            socket,
            backlog: Vec::new(),
            pings: 0,
            client_id: String::new(),
            gateway: String::new(),
        };
        let welcome = client.next_where(|m| m["type"] == "welcome").await;
        client.client_id = welcome["clientId"]
            .as_str()
            .expect("welcome has a clientId")
            .to_string();
        client.gateway = welcome["gateway"]
            .as_str()
            .expect("welcome names the gateway")
            .to_string();
        client
    }

    /// Connects as an earlier client, to see its jobs again.
    pub async fn reconnect(ws_base: &str, client_id: &str) -> Self {
        let client = Self::connect(&format!("{ws_base}?clientId={client_id}")).await;
        assert_eq!(client.client_id, client_id);
        client
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.socket
            .send(Message::text(text.into()))
            .await
            .expect("send a text frame");
    }

    /// Sends a frame the gateway may refuse while it is still being
    /// written (one over the transport limit): the gateway closes with a
    /// reason and stops reading, so the write may fail with a reset after
    /// the close frame has arrived. False when the write failed.
    pub async fn try_send_text(&mut self, text: impl Into<String>) -> bool {
        self.socket.send(Message::text(text.into())).await.is_ok()
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::binary(bytes))
            .await
            .expect("send a binary frame");
    }

    pub async fn submit(&mut self, job_id: &str, url: &str, depth: u32) {
        self.send_json(&json!({"type": "submit", "jobId": job_id, "url": url, "depth": depth}))
            .await;
    }

    /// The next message matching `pred`, keeping the others for later waits.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        self.next_where_within(DEADLINE, pred).await
    }

    /// [`WsClient::next_where`] with a deadline of `patience` (a benchmark
    /// waiting for a long crawl).
    pub async fn next_where_within(
        &mut self,
        patience: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let wait = async {
            loop {
                let frame = self
                    .socket
                    .next()
                    .await
                    .expect("the gateway closed the connection")
                    .expect("read a frame");
                let text = match frame {
                    Message::Text(text) => text,
                    Message::Ping(_) => {
                        self.pings += 1;
                        continue;
                    }
                    _ => continue,
                };
                let value: Value =
                    serde_json::from_str(text.as_str()).expect("the gateway sends JSON");
                if pred(&value) {
                    return value;
                }
                self.backlog.push(value);
            }
        };
        match tokio::time::timeout(patience, wait).await {
            Ok(v) => v,
            Err(_) => panic!(
                "no matching message within {patience:?}; seen: {:?}",
                self.backlog
            ),
        }
    }

    /// The final message of a job: its `result` (put back together when
    /// it came in parts) or its `error`.
    pub async fn outcome(&mut self, job_id: &str) -> Value {
        let first = self
            .next_where(|m| {
                m["jobId"] == job_id
                    && (m["type"] == "result" || m["type"] == "error" || m["type"] == "resultHead")
            })
            .await;
        if first["type"] != "resultHead" {
            return first;
        }
        let head: ServerMessage = serde_json::from_value(first).expect("a result head");
        let mut parts = ResultAssembler::new(head).expect("a result head");
        loop {
            let part = self
                .next_where(|m| m["jobId"] == job_id && m["type"] == "resultPart")
                .await;
            let ServerMessage::ResultPart {
                part, last, pages, ..
            } = serde_json::from_value(part).expect("a result part")
            else {
                unreachable!("matched by type");
            };
            if let Assembled::Done(result) = parts.add(part, last, pages).expect("parts in order") {
                return serde_json::to_value(result).expect("a result is JSON");
            }
        }
    }

    /// A job's result as `crawlctl` reads it: each frame parsed straight
    /// into its message type, parts put back together, the pages never
    /// held as generic JSON values. Fails on an `error` (a benchmark's
    /// client, whose time counts in what it measures).
    pub async fn crawl_result(&mut self, job_id: &str, patience: Duration) -> CrawlResult {
        let read = async {
            let mut parts: Option<ResultAssembler> = None;
            loop {
                let frame = self
                    .socket
                    .next()
                    .await
                    .expect("the gateway closed the connection")
                    .expect("read a frame");
                let Message::Text(text) = frame else {
                    continue;
                };
                let message: ServerMessage =
                    serde_json::from_str(text.as_str()).expect("the gateway sends its messages");
                let ours = match &message {
                    ServerMessage::Result { job_id: id, .. }
                    | ServerMessage::ResultHead { job_id: id, .. }
                    | ServerMessage::ResultPart { job_id: id, .. }
                    | ServerMessage::Error {
                        job_id: Some(id), ..
                    } => id == job_id,
                    _ => false,
                };
                if !ours {
                    let value = serde_json::to_value(message).expect("a message is JSON");
                    self.backlog.push(value);
                    continue;
                }
                match message {
                    whole @ ServerMessage::Result { .. } => return into_result(whole),
                    head @ ServerMessage::ResultHead { .. } => {
                        parts = Some(ResultAssembler::new(head).expect("a result head"));
                    }
                    ServerMessage::ResultPart {
                        part, last, pages, ..
                    } => {
                        let assembler = parts.as_mut().expect("a part after its head");
                        if let Assembled::Done(whole) =
                            assembler.add(part, last, pages).expect("parts in order")
                        {
                            return into_result(whole);
                        }
                    }
                    ServerMessage::Error { message, .. } => {
                        panic!("job {job_id} failed: {message}")
                    }
                    _ => unreachable!("only this job's outcomes are ours"),
                }
            }
        };
        tokio::time::timeout(patience, read)
            .await
            .unwrap_or_else(|_| panic!("no result for {job_id} within {patience:?}"))
    }

    /// A result, failing the test with the error if one came instead.
    pub async fn result(&mut self, job_id: &str) -> Value {
        let outcome = self.outcome(job_id).await;
        assert_eq!(outcome["type"], "result", "job {job_id} failed: {outcome}");
        outcome
    }

    /// The error a bad frame earned.
    pub async fn error(&mut self) -> Value {
        self.next_where(|m| m["type"] == "error").await
    }

    /// Waits (with a deadline) until the gateway's side of the connection is
    /// gone: closed, reset, or ended.
    pub async fn wait_closed(&mut self) {
        let closed = async {
            loop {
                match self.socket.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, closed)
            .await
            .expect("the connection never closed");
    }

    /// Reads (answering pings, keeping messages for later waits) until the
    /// gateway has pinged this connection `n` times in all.
    pub async fn wait_for_pings(&mut self, n: usize) {
        let wait = async {
            while self.pings < n {
                match self.socket.next().await {
                    Some(Ok(Message::Ping(_))) => self.pings += 1,
                    Some(Ok(Message::Text(text))) => self
                        .backlog
                        .push(serde_json::from_str(text.as_str()).expect("the gateway sends JSON")),
                    Some(Ok(_)) => {}
                    other => panic!("the connection ended while waiting for pings: {other:?}"),
                }
            }
        };
        tokio::time::timeout(DEADLINE, wait)
            .await
            .expect("the gateway never pinged enough");
    }

    /// Reads until the gateway closes the connection, and returns the close
    /// frame's code and reason (`None` when it ended without one).
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        let closed = async {
            loop {
                match self.socket.next().await {
                    None | Some(Err(_)) => return None,
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    }
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, closed)
            .await
            .expect("the connection never closed")
    }

    /// Messages already received and not yet consumed by a wait.
    pub fn backlog(&self) -> &[Value] {
        &self.backlog
    }
}

/// The crawl a whole `result` message carries.
fn into_result(message: ServerMessage) -> CrawlResult {
    let ServerMessage::Result {
        depth,
        levels,
        pages,
        truncated,
        ..
    } = message
    else {
        panic!("not a result: {message:?}");
    };
    CrawlResult {
        levels,
        pages,
        depth,
        truncated,
    }
}
