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

/// The connection each pending job's events go to. A job's own client is
/// the only one that can route it (jobs are found by client id), so a new
/// route for a job replaces the old one: the client reconnected.
#[derive(Default)]
pub struct Routes {
    inner: Mutex<HashMap<JobId, ClientTx>>,
}

impl Routes {
    pub fn insert(&self, job_id: JobId, tx: ClientTx) {
        self.lock().insert(job_id, tx);
    }

    /// Takes the route for a final message; `None` when it was delivered already.
    pub fn take(&self, job_id: &JobId) -> Option<ClientTx> {
        self.lock().remove(job_id)
    }

    pub fn peek(&self, job_id: &JobId) -> Option<ClientTx> {
        self.lock().get(job_id).cloned()
    }

    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, ClientTx>> {
        self.inner.lock().expect("routes lock poisoned")
    }
}
