//! A websocket client of the gateway: submit a job, follow its progress,
//! return its result, in the typed protocol of `crawler-core`.
//!
//! A connection that drops before the result is opened again, as the same
//! client (`?clientId=`), and the same request is sent again: the gateway
//! attaches it to the job, and sends what finished while the client was
//! away. So a gateway that dies, or a network blip, costs a reconnect, not
//! the job.

use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_core::protocol::{Assembled, ResultAssembler, ServerMessage, SubmitRequest};
use crawler_core::retry::RetryPolicy;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How a crawl did not end with a result; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The gateway refused the request as it is (a bad URL, depth, option).
    #[error("{0}")]
    BadInput(String),
    /// The gateway would not take it now (rate limit, full, an engine down).
    #[error("{0}")]
    Refused(String),
    /// The crawl ran and failed.
    #[error("{0}")]
    CrawlFailed(String),
    /// The gateway could not be reached, or kept dropping the connection.
    #[error("{0}")]
    ConnectionLost(String),
}

impl Failure {
    /// The process exit code: 2 bad input, 3 refused, 4 crawl failed, 5
    /// connection lost (1 is any other error, 0 success).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::BadInput(_) => 2,
            Self::Refused(_) => 3,
            Self::CrawlFailed(_) => 4,
            Self::ConnectionLost(_) => 5,
        }
    }

    fn from_error(code: ErrorCode, message: &str) -> Self {
        let said = format!("{code}: {message}");
        match code {
            ErrorCode::RateLimited
            | ErrorCode::QuotaExceeded
            | ErrorCode::Unauthenticated
            | ErrorCode::PermissionDenied
            | ErrorCode::Unavailable => Self::Refused(said),
            ErrorCode::CrawlFailed | ErrorCode::Internal | ErrorCode::StaleLease => {
                Self::CrawlFailed(said)
            }
            _ => Self::BadInput(said),
        }
    }
}

/// A gateway to crawl through, and the API token it needs, if any.
#[derive(Clone)]
pub struct Gateway {
    /// Its websocket URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    pub token: Option<String>,
}

impl Gateway {
    /// A gateway that needs no token (`--auth none`, the embedded cluster).
    pub fn open(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
        }
    }

    /// The upgrade request, with the token as `Authorization: Bearer`.
    fn request(&self, client_id: Option<&str>) -> Result<Request, Failure> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = match client_id {
            Some(id) => with_client_id(&self.url, id),
            None => self.url.clone(),
        };
        let mut request = url.into_client_request().map_err(|e| {
            Failure::BadInput(format!("`{}` is not a websocket URL: {e}", self.url))
        })?;
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                Failure::BadInput("the token holds characters no header may".into())
            })?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        Ok(request)
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

type Request = tokio_tungstenite::tungstenite::handshake::client::Request;

/// Where a running crawl stands.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub pages_done: u32,
    pub current_depth: u32,
}

/// Reconnects after a dropped connection: quickly at first, at least once
/// a second, 30 times (15 to 28 s of waiting in all).
const RECONNECT: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1)).with_retries(30);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one connection ended with.
enum Session {
    Done(ServerMessage),
    Failed(Failure),
    /// The connection dropped before the outcome; the client id it had.
    Dropped(String),
}

/// Submits `request` to the gateway at `ws_url` and waits for its result
/// (a [`ServerMessage::Result`], put back together when it came in parts),
/// calling `on_progress` as the crawl advances.
pub async fn crawl(
    gateway: &Gateway,
    request: &SubmitRequest,
    mut on_progress: impl FnMut(Progress),
) -> Result<ServerMessage, Failure> {
    let ws_url = gateway.url.as_str();
    let mut client_id: Option<String> = None;
    let mut backoff = RECONNECT.backoff();
    let never = CancellationToken::new();
    loop {
        let upgrade = gateway.request(client_id.as_deref())?;
        let connected = tokio_tungstenite::connect_async(upgrade).await;
        let session = match connected {
            Ok((socket, _)) => {
                backoff.reset();
                follow(socket, request, &mut on_progress).await
            }
            // The gateway answered, and said no (it holds its maximum of
            // connections): that is a refusal, with its reason.
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                // A refused token comes as the `error` message a connection would get.
                let reason = match serde_json::from_slice::<ServerMessage>(body) {
                    Ok(ServerMessage::Error { code, message, .. }) => format!("{code}: {message}"),
                    _ => String::from_utf8_lossy(body).into_owned(),
                };
                return Err(Failure::Refused(format!(
                    "the gateway at {ws_url} refused the connection ({}): {reason}",
                    response.status()
                )));
            }
            // Never reached: say so at once rather than retry a wrong address.
            Err(e) if client_id.is_none() => {
                return Err(Failure::ConnectionLost(format!(
                    "cannot connect to the gateway at {ws_url}: {e}"
                )));
            }
            Err(_) => Session::Dropped(client_id.clone().unwrap_or_default()),
        };
        match session {
            Session::Done(result) => return Ok(result),
            Session::Failed(failure) => return Err(failure),
            Session::Dropped(id) => {
                if !id.is_empty() {
                    client_id = Some(id);
                }
                if !backoff.wait(&never).await {
                    return Err(Failure::ConnectionLost(format!(
                        "the connection to the gateway at {ws_url} dropped and did not come back"
                    )));
                }
                tracing::warn!(
                    "connection to the gateway dropped; reconnecting as the same client"
                );
            }
        }
    }
}

fn with_client_id(ws_url: &str, client_id: &str) -> String {
    let separator = if ws_url.contains('?') { '&' } else { '?' };
    format!("{ws_url}{separator}clientId={client_id}")
}

/// One connection: submits (again) and reads until the job's outcome.
async fn follow(
    mut socket: Socket,
    request: &SubmitRequest,
    on_progress: &mut impl FnMut(Progress),
) -> Session {
    let mut client_id = String::new();
    if socket.send(Message::text(request.to_json())).await.is_err() {
        return Session::Dropped(client_id);
    }
    let mut parts: Option<ResultAssembler> = None;
    while let Some(frame) = socket.next().await {
        let text = match frame {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) else {
            return Session::Failed(Failure::CrawlFailed(format!(
                "the gateway sent a message this client does not know: {text}"
            )));
        };
        match message {
            ServerMessage::Welcome { client_id: id, .. } => client_id = id,
            ServerMessage::Progress {
                job_id,
                pages_done,
                current_depth,
            }
            | ServerMessage::Status {
                job_id,
                pages_done,
                current_depth,
                ..
            } if job_id == request.job_id => on_progress(Progress {
                pages_done,
                current_depth,
            }),
            result @ ServerMessage::Result { .. } if is_for(&result, &request.job_id) => {
                let _ = socket.close(None).await;
                return Session::Done(result);
            }
            head @ ServerMessage::ResultHead { .. } if is_for(&head, &request.job_id) => {
                parts = ResultAssembler::new(head);
            }
            ServerMessage::ResultPart {
                job_id,
                part,
                last,
                pages,
            } if job_id == request.job_id => {
                let Some(assembler) = parts.as_mut() else {
                    continue; // a part of a result whose head this connection missed
                };
                match assembler.add(part, last, pages) {
                    Ok(Assembled::Done(result)) => {
                        let _ = socket.close(None).await;
                        return Session::Done(result);
                    }
                    Ok(Assembled::Pending) => {}
                    Err(e) => return Session::Failed(Failure::CrawlFailed(e)),
                }
            }
            ServerMessage::Error {
                job_id: Some(job_id),
                code,
                message,
            } if job_id == request.job_id => {
                return Session::Failed(Failure::from_error(code, &message));
            }
            ServerMessage::Error {
                job_id: None,
                code,
                message,
            } => return Session::Failed(Failure::from_error(code, &message)),
            _ => {}
        }
    }
    Session::Dropped(client_id)
}

fn is_for(message: &ServerMessage, job: &str) -> bool {
    matches!(message,
        ServerMessage::Result { job_id, .. } | ServerMessage::ResultHead { job_id, .. } if job_id == job)
}

/// A readable summary of a result message.
pub fn summarize(result: &ServerMessage) -> String {
    use std::fmt::Write;
    let ServerMessage::Result {
        url,
        depth,
        levels,
        pages,
        truncated,
        cached,
        elapsed_ms,
        ..
    } = result
    else {
        return String::new();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{url} to depth {depth}: {} pages in {elapsed_ms} ms{}{}",
        pages.len(),
        if *cached { " (from cache)" } else { "" },
        if *truncated {
            " (page cap reached)"
        } else {
            ""
        },
    );
    let facts: std::collections::HashMap<&str, &crawler_core::model::PageFacts> =
        pages.iter().map(|p| (p.url.as_str(), p)).collect();
    for (depth, urls) in levels.iter().enumerate() {
        let _ = writeln!(out, "level {depth}: {} URLs", urls.len());
        for url in urls {
            let page = facts.get(url.as_str());
            let status = page
                .and_then(|p| {
                    p.status
                        .map(|s| s.to_string())
                        .or_else(|| p.error.as_ref().map(|e| format!("error: {e}")))
                })
                .unwrap_or_else(|| "-".into());
            let title = page.and_then(|p| p.title.as_deref()).unwrap_or("");
            let _ = writeln!(out, "  [{status}] {url}  {title}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_exit_code() {
        let code = |c: ErrorCode| Failure::from_error(c, "m").exit_code();
        assert_eq!(code(ErrorCode::UnsupportedScheme), 2);
        assert_eq!(code(ErrorCode::InvalidDepth), 2);
        assert_eq!(code(ErrorCode::DuplicateJob), 2);
        assert_eq!(code(ErrorCode::RateLimited), 3);
        assert_eq!(code(ErrorCode::Unavailable), 3);
        assert_eq!(code(ErrorCode::CrawlFailed), 4);
        assert_eq!(Failure::ConnectionLost("x".into()).exit_code(), 5);
    }

    #[test]
    fn the_client_id_joins_the_url() {
        assert_eq!(with_client_id("ws://h/ws", "c"), "ws://h/ws?clientId=c");
        assert_eq!(
            with_client_id("ws://h/ws?a=1", "c"),
            "ws://h/ws?a=1&clientId=c"
        );
    }
}
