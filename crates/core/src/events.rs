//! Messages from masters to the gateway that holds a job's client, carried
//! on that gateway's routing key.

use serde::{Deserialize, Serialize};

use crate::model::{JobId, JobRecord, PageFacts};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum GatewayEvent {
    #[serde(rename_all = "camelCase")]
    Progress {
        job_id: JobId,
        client_id: String,
        client_job_id: String,
        pages_done: u32,
        current_depth: u32,
    },
    /// The job ended: `record` holds its spec and its result's summary or
    /// its failure; `pages` the result's pages when they are few (a large
    /// result's pages are read from the store, never sent in one message).
    Finished {
        record: Box<JobRecord>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pages: Option<Vec<PageFacts>>,
    },
}

impl GatewayEvent {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events always serialise")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
