//! The in-process [`HostGate`]: shared by the embedded default's workers,
//! and a worker's own gate when no shared one is configured (its limits
//! then hold within that worker alone).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use crawler_core::ports::{AdapterResult, HostGate, HostLimits};

/// How long a full host is waited on before asking again: a slot may be
/// given back any moment.
const FULL_POLL: Duration = Duration::from_millis(10);

#[derive(Default)]
pub struct MemoryHostGate {
    hosts: Mutex<HashMap<String, HostState>>,
}

struct HostState {
    /// Tickets holding a slot, and when each lease ends.
    active: HashMap<String, Instant>,
    /// No fetch starts before this.
    next_start: Instant,
}

impl MemoryHostGate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts with state kept (for tests: idle hosts are forgotten).
    pub fn hosts_kept(&self) -> usize {
        self.hosts.lock().expect("gate lock").len()
    }
}

#[async_trait]
impl HostGate for MemoryHostGate {
    async fn try_enter(
        &self,
        host: &str,
        ticket: &str,
        limits: HostLimits,
    ) -> AdapterResult<Option<Duration>> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().expect("gate lock");
        let state = hosts.entry(host.to_string()).or_insert_with(|| HostState {
            active: HashMap::new(),
            next_start: now,
        });
        state.active.retain(|_, ends| *ends > now);
        if limits.concurrency > 0 && state.active.len() >= limits.concurrency as usize {
            let first_end = state.active.values().min().copied().unwrap_or(now);
            return Ok(Some(
                first_end
                    .saturating_duration_since(now)
                    .clamp(Duration::from_millis(1), FULL_POLL),
            ));
        }
        if state.next_start > now {
            return Ok(Some(state.next_start - now));
        }
        state.active.insert(ticket.to_string(), now + limits.lease);
        state.next_start = now + limits.delay;
        Ok(None)
    }

    async fn leave(&self, host: &str, ticket: &str) -> AdapterResult<()> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().expect("gate lock");
        if let Some(state) = hosts.get_mut(host) {
            state.active.remove(ticket);
            if state.active.is_empty() && state.next_start <= now {
                hosts.remove(host);
            }
        }
        Ok(())
    }

    async fn pause(&self, host: &str, pause: Duration) -> AdapterResult<()> {
        let until = Instant::now() + pause;
        let mut hosts = self.hosts.lock().expect("gate lock");
        let state = hosts.entry(host.to_string()).or_insert_with(|| HostState {
            active: HashMap::new(),
            next_start: until,
        });
        state.next_start = state.next_start.max(until);
        Ok(())
    }
}
