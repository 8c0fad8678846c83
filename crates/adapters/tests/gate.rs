//! The host gate conformance suite on Redis and in process.

mod common;

use std::sync::Arc;

use crawler_adapters::conformance::Subject;
use crawler_adapters::{MemoryHostGate, RedisHostGate};
use crawler_core::ports::HostGate;

async fn redis() -> Subject<dyn HostGate> {
    // Hosts are unique per test and every key expires by itself.
    let gate =
        RedisHostGate::new(&common::redis_url(), None, &common::namespace()).expect("a Redis URL");
    Subject::new(Arc::new(gate))
}

async fn memory() -> Subject<dyn HostGate> {
    Subject::new(Arc::new(MemoryHostGate::new()))
}

mod on_redis {
    crawler_adapters::gate_conformance!(super::redis());
}

mod in_memory {
    crawler_adapters::gate_conformance!(super::memory());
}
