//! Which connection waits for which job.
//!
//! A result is delivered by *removing* its route, so however many times a
//! result event arrives (a redelivery, a second master), the client gets it
//! once.

use std::collections::HashMap;
use std::sync::Mutex;

use crawler_core::model::JobId;
use crawler_core::protocol::ServerMessage;
use tokio::sync::mpsc;

pub type ClientTx = mpsc::Sender<ServerMessage>;

struct Route {
    client_id: String,
    tx: ClientTx,
}

#[derive(Default)]
pub struct Routes {
    inner: Mutex<HashMap<JobId, Route>>,
}

impl Routes {
    pub fn insert(&self, job_id: JobId, client_id: String, tx: ClientTx) {
        self.lock().insert(job_id, Route { client_id, tx });
    }

    /// Takes the route for a final message; `None` when it was delivered already.
    pub fn take(&self, job_id: &JobId) -> Option<ClientTx> {
        self.lock().remove(job_id).map(|r| r.tx)
    }

    pub fn peek(&self, job_id: &JobId) -> Option<ClientTx> {
        self.lock().get(job_id).map(|r| r.tx.clone())
    }

    /// Points a pending job at the client's new connection (after a reconnect).
    pub fn reattach(&self, job_id: &JobId, client_id: &str, tx: &ClientTx) -> bool {
        match self.lock().get_mut(job_id) {
            Some(route) if route.client_id == client_id => {
                route.tx = tx.clone();
                true
            }
            _ => false,
        }
    }

    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Route>> {
        self.inner.lock().expect("routes lock poisoned")
    }
}
