//! Lock server configuration: defaults that work locally, then
//! `LOCK_SERVER__*` and `CRAWLER__*` environment variables, then flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use crawler_adapters::StoreArgs;
use crawler_core::config::{AdminArgs, ServiceArgs};
use crawler_core::tls::TlsArgs;
use serde::Serialize;

use crate::ReplicaSettings;

#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "lock-server",
    version,
    about = "Crawler lock server: persists jobs and leases them to masters"
)]
pub struct LockServerConfig {
    /// Address masters connect to (gRPC).
    #[arg(long, env = "LOCK_SERVER__LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// This replica's name in the leadership row and the logs; random when not set.
    #[arg(long, env = "LOCK_SERVER__ID")]
    pub id: Option<String>,
    /// Where masters reach this replica, as followers name it to them;
    /// defaults to http://<listen address>. Set it when listening on 0.0.0.0.
    #[arg(long, env = "LOCK_SERVER__ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How long a leadership lasts without renewal (renewed every third).
    /// A new leader answers within this plus a third of it after the old one dies.
    #[arg(long, env = "LOCK_SERVER__LEADER_TTL_MS", default_value_t = 3_000)]
    pub leader_ttl_ms: u64,
    /// How long a new leader waits before handing out orphaned jobs, so
    /// masters whose heartbeats failed during the change renew first;
    /// defaults to two leader TTLs.
    #[arg(long, env = "LOCK_SERVER__TAKEOVER_GRACE_MS")]
    pub takeover_grace_ms: Option<u64>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
}

impl LockServerConfig {
    /// Refuses what the service would refuse later, before it waits for
    /// Postgres: a bad setting is reported at once, not after a connection.
    pub fn validate(&self) -> anyhow::Result<()> {
        crawler_core::lease::checked_ttl(Duration::from_millis(self.leader_ttl_ms))
            .map_err(|e| anyhow::anyhow!("--leader-ttl-ms: {e}"))?;
        Ok(())
    }

    pub fn replica(&self) -> ReplicaSettings {
        let mut replica = ReplicaSettings::single();
        if let Some(id) = &self.id {
            replica.id = id.clone();
        }
        replica.advertise_url = self.advertise_url.clone();
        replica.leader_ttl = Duration::from_millis(self.leader_ttl_ms);
        replica.takeover_grace = self
            .takeover_grace_ms
            .map_or(replica.leader_ttl * 2, Duration::from_millis);
        replica
    }
}
