//! The RabbitMQ job queue of a cluster.
//!
//! Jobs go through `{ns}.assigned`, a quorum queue whose `x-delivery-limit`
//! dead-letters a job that keeps crashing its consumers into `{ns}.dead` (via
//! the `{ns}.dlx` exchange). Events go through the `{ns}.done` direct
//! exchange, keyed by gateway, into one `{ns}.done.{gateway}` queue per
//! gateway. The namespace prefix lets tests and deployments share a broker.
//!
//! The connection is opened lazily and re-opened by the next call after it
//! drops, so a broker restart costs the calls made while it is down, not the
//! process.

mod delivery;
mod topology;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use crawler_core::ports::{
    AdapterError, AdapterResult, DeliveryStream, EventKind, Headers, JobQueue,
};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::QueueSettings;
use crawler_core::config::redact_url;
use delivery::{Lifeline, into_stream};
use topology::Names;

const ENGINE: &str = "rabbitmq";

/// RabbitMQ takes the same tunables as the in-process queue.
pub type RabbitSettings = QueueSettings;

/// A [`crawler_core::ports::JobQueue`] on RabbitMQ.
pub struct RabbitQueue {
    url: String,
    /// For `amqps://`: the CA the broker's certificate chains to (PEM),
    /// when not a system root.
    ca: Option<String>,
    /// `url` without its password, for messages.
    shown_url: String,
    namespace: String,
    names: Names,
    settings: QueueSettings,
    session: tokio::sync::Mutex<Option<Session>>,
    /// Every event queue this instance declared, for [`Self::delete_namespace`].
    event_queues: Mutex<HashSet<String>>,
}

/// One live connection and its publishing channel (in confirm mode).
#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    publisher: Channel,
    /// Gateways whose event queue this connection has declared already.
    declared_events: Arc<Mutex<HashSet<String>>>,
}

impl Session {
    fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl RabbitQueue {
    /// Connects and declares the namespace's queues and exchanges, so a
    /// broker that is down or refuses us is reported at startup.
    /// An `amqps://` broker must show a certificate of `ca`, or of a
    /// system root.
    pub async fn connect(
        amqp_url: &str,
        ca: Option<&std::path::Path>,
        namespace: &str,
        settings: RabbitSettings,
    ) -> AdapterResult<Self> {
        let ca = match ca {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                AdapterError::new(
                    ENGINE,
                    format!("cannot read the RabbitMQ CA {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        let queue = Self {
            url: amqp_url.to_string(),
            ca,
            shown_url: redact_url(amqp_url),
            namespace: namespace.to_string(),
            names: Names::new(namespace),
            settings,
            session: tokio::sync::Mutex::new(None),
            event_queues: Mutex::default(),
        };
        queue.session().await?;
        Ok(queue)
    }

    /// Deletes every queue and exchange of the namespace that this instance
    /// declared, messages included. For tests and for retiring a namespace.
    pub async fn delete_namespace(&self) -> AdapterResult<()> {
        let session = self.session().await?;
        let channel = self.open_channel(&session).await?;
        let event_queues: Vec<String> = self.lock_event_queues().iter().cloned().collect();
        let queues = [&self.names.assigned, &self.names.dead]
            .into_iter()
            .chain(event_queues.iter());
        for queue in queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| self.failure(&format!("cannot delete queue {queue}"), e))?;
        }
        for exchange in [&self.names.done, &self.names.dlx] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| self.failure(&format!("cannot delete exchange {exchange}"), e))?;
        }
        self.lock_event_queues().clear();
        Ok(())
    }

    /// Closes the current connection; the next call opens a new one.
    /// Consumers of the old connection see their streams end and must
    /// consume again. Lets tests exercise reconnection, and lets an operator
    /// move a service off a broker node.
    pub async fn close_connection(&self) {
        if let Some(session) = self.session.lock().await.take() {
            let _ = session
                .connection
                .close(
                    lapin::protocol::constants::REPLY_SUCCESS,
                    "closed by the crawler".into(),
                )
                .await;
        }
    }

    fn failure(&self, what: &str, cause: lapin::Error) -> AdapterError {
        AdapterError::new(ENGINE, format!("{what} on {}: {cause}", self.shown_url))
    }

    fn lock_event_queues(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.event_queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current session, opening a connection or channel if the last one
    /// died.
    async fn session(&self) -> AdapterResult<Session> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref().filter(|s| s.healthy()) {
            return Ok(session.clone());
        }
        let connection = match slot.take() {
            Some(old) if old.connection.status().connected() => old.connection,
            _ => Arc::new(self.open_connection().await?),
        };
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| self.failure("cannot open a channel", e))?;
        topology::declare_core(&publisher, &self.names, &self.settings)
            .await
            .map_err(|e| {
                self.failure(
                    &format!("cannot declare the queues of namespace {}", self.namespace),
                    e,
                )
            })?;
        publisher
            .confirm_select(Default::default())
            .await
            .map_err(|e| self.failure("cannot enable publisher confirms", e))?;
        let session = Session {
            connection,
            publisher,
            declared_events: Arc::default(),
        };
        *slot = Some(session.clone());
        Ok(session)
    }

    async fn open_connection(&self) -> AdapterResult<Connection> {
        let properties = ConnectionProperties::default().with_connection_name("crawler".into());
        let unreachable = |cause: &dyn std::fmt::Display| {
            AdapterError::new(
                ENGINE,
                format!("cannot reach RabbitMQ at {}: {cause}", self.shown_url),
            )
        };
        match tokio::time::timeout(self.settings.connect_timeout, self.connect_once(properties))
            .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(unreachable(&e)),
            Err(_) => Err(unreachable(&format!(
                "no answer within {:?}",
                self.settings.connect_timeout
            ))),
        }
    }

    /// One connection attempt, over TLS with the CA given for `amqps://`.
    async fn connect_once(&self, properties: ConnectionProperties) -> lapin::Result<Connection> {
        if self.url.starts_with("amqps://") {
            crawler_core::tls::install_crypto_provider();
        }
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca.clone(),
        };
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connect_with_config(&self.url, properties, tls, runtime).await
    }

    /// Forgets `session` after an operation on it failed, so the next call
    /// opens a fresh one even if lapin has not noticed the failure yet.
    async fn forget(&self, session: &Session) {
        let mut slot = self.session.lock().await;
        if slot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(&s.connection, &session.connection))
        {
            *slot = None;
        }
    }

    async fn open_channel(&self, session: &Session) -> AdapterResult<Channel> {
        match session.connection.create_channel().await {
            Ok(channel) => Ok(channel),
            Err(e) => {
                self.forget(session).await;
                Err(self.failure("cannot open a channel", e))
            }
        }
    }

    /// Publishes with `mandatory` set and waits for the broker's confirm:
    /// only an ack for a routed message counts as held.
    async fn publish_confirmed(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> AdapterResult<Confirmation> {
        let sent = async {
            session
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    properties,
                )
                .await?
                .await
        };
        match sent.await {
            Ok(confirmation) => Ok(confirmation),
            Err(e) => {
                self.forget(session).await;
                Err(self.failure("cannot publish", e))
            }
        }
    }

    /// Makes sure the gateway's event queue exists before publishing to it:
    /// a result for a gateway that has not consumed yet then waits for it
    /// instead of being dropped as unroutable.
    async fn ensure_event_queue(&self, session: &Session, gateway_key: &str) -> AdapterResult<()> {
        let known = session
            .declared_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(gateway_key);
        if !known {
            let queue = topology::declare_events(
                &session.publisher,
                &self.names,
                &self.settings,
                gateway_key,
            )
            .await
            .map_err(|e| {
                self.failure(
                    &format!("cannot declare the event queue of {gateway_key}"),
                    e,
                )
            })?;
            self.lock_event_queues().insert(queue);
            session
                .declared_events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(gateway_key.to_string());
        }
        Ok(())
    }
}

fn expiration(ttl: std::time::Duration) -> lapin::types::ShortString {
    ttl.as_millis().to_string().into()
}

fn refused(what: &str, confirmation: Confirmation) -> Option<AdapterError> {
    match confirmation {
        Confirmation::Ack(None) => None,
        Confirmation::Ack(Some(returned)) => Some(AdapterError::new(
            ENGINE,
            format!(
                "{what} was unroutable: {} {}",
                returned.reply_code, returned.reply_text
            ),
        )),
        Confirmation::Nack(_) => Some(AdapterError::new(
            ENGINE,
            format!("the broker refused to store {what} (nack)"),
        )),
        Confirmation::NotRequested => Some(AdapterError::new(
            ENGINE,
            format!("{what} was not confirmed: confirms are off on the channel"),
        )),
    }
}

#[async_trait]
impl JobQueue for RabbitQueue {
    async fn publish_job(&self, payload: Vec<u8>, headers: &Headers) -> AdapterResult<()> {
        let session = self.session().await?;
        let persistent = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(delivery::field_table(headers));
        let confirmation = self
            .publish_confirmed(&session, "", &self.names.assigned, &payload, persistent)
            .await?;
        match refused("the job", confirmation) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    async fn consume_jobs(&self, prefetch: u16) -> AdapterResult<DeliveryStream> {
        // AMQP reads 0 as "unlimited", which is never what a caller means.
        if prefetch == 0 {
            return Err(AdapterError::new(ENGINE, "prefetch must be at least 1"));
        }
        let session = self.session().await?;
        let channel = self.open_channel(&session).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.failure("cannot set the prefetch", e))?;
        let consumer = channel
            .basic_consume(
                self.names.assigned.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failure(&format!("cannot consume {}", self.names.assigned), e))?;
        Ok(into_stream(
            consumer,
            Lifeline::new(session.connection, channel),
        ))
    }

    async fn publish_event(
        &self,
        gateway_key: &str,
        kind: EventKind,
        payload: Vec<u8>,
    ) -> AdapterResult<()> {
        let session = self.session().await?;
        self.ensure_event_queue(&session, gateway_key).await?;
        let properties = match kind {
            EventKind::Result => BasicProperties::default()
                .with_delivery_mode(2)
                .with_expiration(expiration(self.settings.result_ttl)),
            EventKind::Progress => BasicProperties::default()
                .with_delivery_mode(1)
                .with_expiration(expiration(self.settings.progress_ttl)),
        };
        let confirmation = self
            .publish_confirmed(
                &session,
                &self.names.done,
                gateway_key,
                &payload,
                properties,
            )
            .await?;
        let Some(error) = refused(&format!("the event for {gateway_key}"), confirmation) else {
            return Ok(());
        };
        // The queue may have expired since we declared it: declare again
        // next time.
        session
            .declared_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gateway_key);
        match kind {
            EventKind::Result => Err(error),
            // Losing a progress update is harmless.
            EventKind::Progress => {
                tracing::debug!(%error, "progress event dropped");
                Ok(())
            }
        }
    }

    async fn consume_events(&self, gateway_key: &str) -> AdapterResult<DeliveryStream> {
        let session = self.session().await?;
        let channel = self.open_channel(&session).await?;
        let queue = topology::declare_events(&channel, &self.names, &self.settings, gateway_key)
            .await
            .map_err(|e| {
                self.failure(
                    &format!("cannot declare the event queue of {gateway_key}"),
                    e,
                )
            })?;
        self.lock_event_queues().insert(queue.clone());
        channel
            .basic_qos(self.settings.event_prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.failure("cannot set the prefetch", e))?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failure(&format!("cannot consume {queue}"), e))?;
        Ok(into_stream(
            consumer,
            Lifeline::new(session.connection, channel),
        ))
    }

    async fn ping(&self) -> AdapterResult<()> {
        self.session().await.map(drop)
    }

    async fn dead_letter_count(&self) -> AdapterResult<u64> {
        let session = self.session().await?;
        // A throwaway channel: a failed passive declare closes its channel.
        let channel = self.open_channel(&session).await?;
        let queue = channel
            .queue_declare(
                self.names.dead.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failure(&format!("cannot inspect {}", self.names.dead), e))?;
        Ok(queue.message_count().into())
    }
}
