//! One websocket connection: frames in, messages out. Every bad frame gets an
//! `error` and the connection stays open for the next request.

use axum::extract::ws::{Message, Utf8Bytes};
use crawler_core::ErrorCode;
use crawler_core::protocol::{ClientMessage, ServerMessage, parse_client_message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::delivery::{self, Outgoing, Writer};
use crate::metrics::Metrics;
use crate::requests;
use crate::routes::ClientHandle;

/// Messages queued for one connection by other tasks (results, progress)
/// before it counts as a reader too slow to keep.
const OUTGOING_QUEUE: usize = 256;

/// Who is on the other end.
pub struct Client {
    pub id: String,
    /// The client named itself (`?clientId=`): it may have jobs from an
    /// earlier connection, whose outcomes it is sent now.
    pub returning: bool,
}

/// Serves one client until it leaves. Generic over the socket halves so it
/// can be driven by channels in tests.
pub async fn serve<S, R, E>(state: AppState, client: Client, mut sink: S, mut stream: R)
where
    S: Sink<Message> + Unpin + Send,
    R: Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    Metrics::inc(&state.metrics.connections);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTGOING_QUEUE);
    let handle = ClientHandle::new(tx);
    let mut out = Socket {
        state: &state,
        sink: &mut sink,
        close: handle.close.clone(),
    };
    let welcome = ServerMessage::Welcome {
        client_id: client.id.clone(),
        gateway: state.gateway_key.clone(),
    };
    let mut open = out.write(welcome).await;
    if open && client.returning {
        for owed in requests::owed_to(&state, &client.id, &handle).await {
            open = dispatch(&state, &mut out, owed).await;
            if !open {
                break;
            }
        }
    }
    while open {
        tokio::select! {
            _ = handle.close.cancelled() => break,
            owed = rx.recv() => {
                // `handle` holds a sender, so the channel never closes here.
                let Some(owed) = owed else { break };
                open = dispatch(&state, &mut out, owed).await;
            }
            incoming = stream.next() => {
                let replies = match incoming {
                    Some(Ok(Message::Text(text))) => handle_text(&state, &client.id, text.as_str(), &handle).await,
                    Some(Ok(Message::Binary(_))) => vec![Outgoing::Message(ServerMessage::error(
                        None,
                        ErrorCode::InvalidMessage,
                        "binary frames are not supported; send JSON as a text frame",
                    ))],
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue, // ping and pong are answered by the server
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        break;
                    }
                };
                for reply in replies {
                    open = dispatch(&state, &mut out, reply).await;
                    if !open {
                        break;
                    }
                }
            }
        }
    }
    state.routes.forget(handle.id);
    Metrics::dec(&state.metrics.connections);
}

/// Sends one queued item; false once the connection is broken.
async fn dispatch<W: Writer>(state: &AppState, out: &mut W, owed: Outgoing) -> bool {
    match owed {
        Outgoing::Message(message) => out.write(message).await,
        Outgoing::Outcome(outcome) => delivery::deliver(state, out, outcome).await,
    }
}

async fn handle_text(
    state: &AppState,
    client_id: &str,
    text: &str,
    handle: &ClientHandle,
) -> Vec<Outgoing> {
    if text.len() > state.max_frame_bytes {
        return vec![Outgoing::Message(ServerMessage::error(
            None,
            ErrorCode::MessageTooLarge,
            format!(
                "frame is {} bytes; the limit is {}",
                text.len(),
                state.max_frame_bytes
            ),
        ))];
    }
    match parse_client_message(text, &state.limits) {
        Ok(ClientMessage::Submit(submit)) => {
            requests::submit(state, client_id, submit, handle).await
        }
        Ok(ClientMessage::Status { job_id }) => {
            vec![requests::status(state, client_id, job_id, handle).await]
        }
        Err(e) => vec![Outgoing::Message(e.into())],
    }
}

/// The socket's sending half, counted, and given up when the connection
/// is closed for reading too slowly.
struct Socket<'a, S> {
    state: &'a AppState,
    sink: &'a mut S,
    close: CancellationToken,
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
        let frame = Message::Text(Utf8Bytes::from(message.to_json()));
        tokio::select! {
            _ = self.close.cancelled() => false,
            sent = self.sink.send(frame) => sent.is_ok(),
        }
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
        };
        super::serve(gateway.state.clone(), client, sink, incoming).await;
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
