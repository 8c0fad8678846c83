//! Turns lapin deliveries into port [`Delivery`] values whose settling maps
//! onto basic.ack / basic.nack / basic.reject.

use std::sync::Arc;

use async_trait::async_trait;
use crawler_core::ports::{
    Acker, AdapterError, AdapterResult, Delivery, DeliveryStream, Headers, Settle,
};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};

use super::ENGINE;

/// Keeps what a consumer's deliveries need alive: the channel they arrived
/// on (closing it would requeue them) and the connection under it, even if
/// the queue has meanwhile reconnected and dropped its own handles.
#[derive(Clone)]
pub(super) struct Lifeline {
    _connection: Arc<Connection>,
    _channel: Channel,
}

impl Lifeline {
    pub fn new(connection: Arc<Connection>, channel: Channel) -> Self {
        Self {
            _connection: connection,
            _channel: channel,
        }
    }
}

/// Wraps a lapin consumer as a port stream.
pub(super) fn into_stream(consumer: Consumer, lifeline: Lifeline) -> DeliveryStream {
    Box::pin(consumer.map(move |item| match item {
        Ok(delivery) => Ok(Delivery::new(
            delivery.data,
            text_headers(delivery.properties.headers().as_ref()),
            delivery.redelivered,
            Box::new(RabbitAcker {
                acker: Some(delivery.acker),
                lifeline: lifeline.clone(),
            }),
        )),
        Err(e) => Err(AdapterError::new(ENGINE, format!("consumer failed: {e}"))),
    }))
}

/// Our text headers as AMQP long strings.
pub(super) fn field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in headers {
        table.insert(
            key.as_str().into(),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    table
}

/// The text headers of a delivery; headers of other types are not ours.
fn text_headers(table: Option<&FieldTable>) -> Headers {
    table
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(key, value)| match value {
                    AMQPValue::LongString(text) => Some((
                        key.to_string(),
                        String::from_utf8_lossy(text.as_bytes()).into_owned(),
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

struct RabbitAcker {
    /// `None` once settled.
    acker: Option<lapin::Acker>,
    lifeline: Lifeline,
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn settle(mut self: Box<Self>, how: Settle) -> AdapterResult<()> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        let outcome = match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => acker.nack(requeue()).await,
            // No requeue: the queue's dead-letter exchange takes it.
            Settle::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
        };
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(AdapterError::new(
                ENGINE,
                "cannot settle the delivery: its channel closed, so the broker will redeliver it",
            )),
            Err(e) => Err(AdapterError::new(
                ENGINE,
                format!("cannot settle the delivery: {e}"),
            )),
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

impl Drop for RabbitAcker {
    /// A delivery dropped unsettled goes back to the queue now, rather than
    /// holding a prefetch slot until the whole consumer goes away — the same
    /// behaviour as the in-process queue.
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        if !acker.usable() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lifeline = self.lifeline.clone();
            runtime.spawn(async move {
                if let Err(e) = acker.nack(requeue()).await {
                    tracing::debug!(error = %e, "requeueing a dropped delivery failed; the broker redelivers it when the channel closes");
                }
                drop(lifeline);
            });
        }
    }
}
