//! A spider's current version as file-sync sees it: the scan id of its
//! folder, a digest of the whole listing, so equal folders have equal ids
//! and any change to any file makes a new one. A gateway asks for it for
//! every job that names a spider and puts it in the job's cache key, so a
//! crawl made with an older version of the spider never answers the job.

use std::time::Duration;

use tonic::transport::Channel;

use crate::client::{SyncError, fetch_listing};
use crate::proto::file_sync_client::FileSyncClient;
use crate::remote::Remote;

#[derive(Clone)]
pub struct SpiderVersions {
    client: FileSyncClient<Channel>,
    deadline: Duration,
}

impl SpiderVersions {
    /// Asks the server at `remote`, each answer within `deadline`. The
    /// channel connects at the first ask, and again after it is lost.
    pub fn new(remote: &Remote, deadline: Duration) -> Result<Self, SyncError> {
        let channel = remote
            .endpoint()?
            .connect_timeout(deadline)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: FileSyncClient::new(channel),
            deadline,
        })
    }

    /// The version of `spider` now: what a worker would sync if it synced now.
    pub async fn current(&self, spider: &str) -> Result<String, SyncError> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.deadline, fetch_listing(&mut client, spider)).await {
            Ok(listing) => listing.map(|(_, scan_id)| scan_id),
            Err(_) => Err(SyncError::Transport(format!(
                "file-sync did not list spider `{spider}` within {:?}",
                self.deadline
            ))),
        }
    }
}
