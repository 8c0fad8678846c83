//! Which connection waits for which job.
//!
//! A result is handed over by *removing* its route, and sent only by the
//! connection that wins the store's delivery claim (see `delivery`), so
//! however many times a result event arrives (a redelivery, a second
//! master, a reconnect that raced the event), the client gets it once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crawler_core::model::JobId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delivery::Outgoing;

/// How other tasks reach one connection: its queue of messages to send,
/// and a token that closes it (a slow reader whose queue overflowed).
#[derive(Clone)]
pub struct ClientHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Outgoing>,
    pub close: CancellationToken,
}

impl ClientHandle {
    /// A handle whose `close` is also cancelled when `gateway` is.
    pub fn new(tx: mpsc::Sender<Outgoing>, gateway: &CancellationToken) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            tx,
            close: gateway.child_token(),
        }
    }

    /// Queues `message` without waiting. A connection whose queue is full
    /// does not read what it is sent: for a message that must arrive, it
    /// is closed (its client reconnects and is sent what it missed from
    /// the store); a message that may be lost (progress) is dropped.
    pub fn offer(&self, message: Outgoing, must_arrive: bool) {
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) if must_arrive => {
                tracing::warn!(
                    connection = self.id,
                    "a client does not read what it is sent; closing its connection"
                );
                self.close.cancel();
            }
            Err(_) => {}
        }
    }
}

/// How a request reaches its connection's handle, made on first use.
pub trait Reach: Send {
    fn handle(&mut self) -> ClientHandle;
}

/// The connection each pending job's events go to. A job's own client is
/// the only one that can route it (jobs are found by client id), so a new
/// route for a job replaces the old one: the client reconnected.
#[derive(Default)]
pub struct Routes {
    inner: Mutex<HashMap<JobId, ClientHandle>>,
}

impl Routes {
    pub fn insert(&self, job_id: JobId, client: ClientHandle) {
        self.lock().insert(job_id, client);
    }

    /// Takes the route for a final message; `None` when it was handed over already.
    pub fn take(&self, job_id: &JobId) -> Option<ClientHandle> {
        self.lock().remove(job_id)
    }

    pub fn peek(&self, job_id: &JobId) -> Option<ClientHandle> {
        self.lock().get(job_id).cloned()
    }

    /// Drops every route to a connection that closed.
    pub fn forget(&self, connection: u64) {
        self.lock().retain(|_, client| client.id != connection);
    }

    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, ClientHandle>> {
        self.inner.lock().expect("routes lock poisoned")
    }
}
