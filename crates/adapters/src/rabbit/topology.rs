//! The broker objects one namespace owns and how they are declared. Every
//! declaration is idempotent, so each new connection simply declares them
//! again; that is what lets a reconnect find a deleted queue recreated.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::QueueSettings;

/// The names of one namespace's queues and exchanges.
#[derive(Debug, Clone)]
pub(super) struct Names {
    /// Jobs waiting for a master.
    pub assigned: String,
    /// Direct exchange of result and progress events, keyed by gateway.
    pub done: String,
    /// Where the assigned queue dead-letters poison jobs.
    pub dlx: String,
    /// Dead-lettered jobs, kept for operators.
    pub dead: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            assigned: format!("{namespace}.assigned"),
            done: format!("{namespace}.done"),
            dlx: format!("{namespace}.dlx"),
            dead: format!("{namespace}.dead"),
        }
    }

    /// The queue holding one gateway's events.
    pub fn events(&self, gateway_key: &str) -> String {
        format!("{}.{gateway_key}", self.done)
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn arguments(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(key), value);
    }
    table
}

fn millis(duration: std::time::Duration) -> AMQPValue {
    AMQPValue::LongLongInt(duration.as_millis().min(i64::MAX as u128) as i64)
}

/// Declares the dead-letter path, the assigned queue and the events exchange.
pub(super) async fn declare_core(
    channel: &Channel,
    names: &Names,
    settings: &QueueSettings,
) -> lapin::Result<()> {
    // Fanout: the dead queue takes whatever the assigned queue rejects,
    // whatever its routing key was.
    channel
        .exchange_declare(
            names.dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.dead.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.dead.as_str().into(),
            names.dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Quorum: replicated, and the only queue type that counts deliveries,
    // which is what `x-delivery-limit` needs to stop a poison job.
    channel
        .queue_declare(
            names.assigned.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments(vec![
                (
                    "x-queue-type",
                    AMQPValue::LongString(LongString::from("quorum")),
                ),
                (
                    "x-dead-letter-exchange",
                    AMQPValue::LongString(LongString::from(names.dlx.as_str())),
                ),
                (
                    "x-delivery-limit",
                    AMQPValue::LongLongInt(settings.delivery_limit.into()),
                ),
            ]),
        )
        .await?;
    channel
        .exchange_declare(
            names.done.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
}

/// Declares one gateway's event queue and binds it to the events exchange.
/// `x-expires` removes it once its gateway has been gone long enough.
pub(super) async fn declare_events(
    channel: &Channel,
    names: &Names,
    settings: &QueueSettings,
    gateway_key: &str,
) -> lapin::Result<String> {
    let queue = names.events(gateway_key);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments(vec![("x-expires", millis(settings.event_queue_expiry))]),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            names.done.as_str().into(),
            gateway_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(queue)
}
