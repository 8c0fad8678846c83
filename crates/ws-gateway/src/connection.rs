//! One websocket connection: frames in, messages out. Every bad frame gets an
//! `error` and the connection stays open for the next request.

use axum::extract::ws::{Message, Utf8Bytes};
use crawler_core::ErrorCode;
use crawler_core::protocol::{ClientMessage, ServerMessage, parse_client_message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::AppState;
use crate::metrics::Metrics;
use crate::requests;

/// Serves one client until it leaves. Generic over the socket halves so it
/// can be driven by channels in tests.
pub async fn serve<S, R, E>(state: AppState, client_id: String, mut sink: S, mut stream: R)
where
    S: Sink<Message> + Unpin + Send,
    R: Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    Metrics::inc(&state.metrics.connections);
    let (tx, mut rx) = mpsc::channel::<ServerMessage>(256);
    let welcome = ServerMessage::Welcome {
        client_id: client_id.clone(),
        gateway: state.gateway_key.clone(),
    };
    if send(&state, &mut sink, welcome).await.is_err() {
        Metrics::dec(&state.metrics.connections);
        return;
    }
    loop {
        tokio::select! {
            outgoing = rx.recv() => {
                // `tx` lives in this function, so the channel never closes here.
                let Some(message) = outgoing else { break };
                if send(&state, &mut sink, message).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                let replies = match incoming {
                    Some(Ok(Message::Text(text))) => handle_text(&state, &client_id, text.as_str(), &tx).await,
                    Some(Ok(Message::Binary(_))) => vec![ServerMessage::error(
                        None,
                        ErrorCode::InvalidMessage,
                        "binary frames are not supported; send JSON as a text frame",
                    )],
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue, // ping and pong are answered by the server
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        break;
                    }
                };
                for reply in replies {
                    if send(&state, &mut sink, reply).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    state
        .metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

async fn handle_text(
    state: &AppState,
    client_id: &str,
    text: &str,
    tx: &mpsc::Sender<ServerMessage>,
) -> Vec<ServerMessage> {
    if text.len() > state.max_frame_bytes {
        return vec![ServerMessage::error(
            None,
            ErrorCode::MessageTooLarge,
            format!(
                "frame is {} bytes; the limit is {}",
                text.len(),
                state.max_frame_bytes
            ),
        )];
    }
    match parse_client_message(text, &state.limits) {
        Ok(ClientMessage::Submit(submit)) => requests::submit(state, client_id, submit, tx).await,
        Ok(ClientMessage::Status { job_id }) => {
            vec![requests::status(state, client_id, job_id, tx).await]
        }
        Err(e) => vec![e.into()],
    }
}

async fn send<S: Sink<Message> + Unpin>(
    state: &AppState,
    sink: &mut S,
    message: ServerMessage,
) -> Result<(), ()> {
    match &message {
        ServerMessage::Error { .. } => Metrics::inc(&state.metrics.errors_sent),
        ServerMessage::Result { .. } => Metrics::inc(&state.metrics.results_delivered),
        _ => {}
    }
    sink.send(Message::Text(Utf8Bytes::from(message.to_json())))
        .await
        .map_err(|_| ())
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
        super::serve(gateway.state.clone(), "client-1".into(), sink, incoming).await;
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
