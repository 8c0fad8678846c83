//! The [`HostGate`] suite. Each test follows the gate's own wait hints,
//! as a worker does, and checks what the limits promise.

use std::time::{Duration, Instant};

use crawler_core::ports::{HostGate, HostLimits};

use super::PATIENCE;

/// Hosts are unique per test so suites can share one engine.
fn host() -> String {
    format!("h-{}.test", uuid::Uuid::new_v4().simple())
}

fn limits(concurrency: u32, delay_ms: u64) -> HostLimits {
    HostLimits {
        concurrency,
        delay: Duration::from_millis(delay_ms),
        lease: Duration::from_secs(60),
    }
}

/// Enters as a worker does: asks, waits as long as the gate says, asks again.
async fn enter(gate: &dyn HostGate, host: &str, ticket: &str, limits: HostLimits) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match gate.try_enter(host, ticket, limits).await.unwrap() {
            None => return Instant::now(),
            Some(wait) => {
                assert!(
                    Instant::now() + wait < deadline,
                    "{ticket} never entered {host}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

pub async fn concurrency_is_capped_and_a_slot_given_back_is_taken(gate: &dyn HostGate) {
    let (host, two) = (host(), limits(2, 0));
    assert_eq!(gate.try_enter(&host, "a", two).await.unwrap(), None);
    assert_eq!(gate.try_enter(&host, "b", two).await.unwrap(), None);
    let wait = gate.try_enter(&host, "c", two).await.unwrap();
    assert!(wait.is_some(), "a third fetch waits while two run");
    // Another host is not held up.
    assert_eq!(gate.try_enter(&self::host(), "c", two).await.unwrap(), None);
    gate.leave(&host, "a").await.unwrap();
    assert_eq!(gate.try_enter(&host, "c", two).await.unwrap(), None);
}

pub async fn starts_are_at_least_the_delay_apart(gate: &dyn HostGate) {
    let (host, paced) = (host(), limits(0, 150));
    let mut starts = Vec::new();
    for ticket in ["a", "b", "c", "d"] {
        starts.push(enter(gate, &host, ticket, paced).await);
        gate.leave(&host, ticket).await.unwrap();
    }
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        // The server's clock counts whole milliseconds.
        assert!(
            gap >= Duration::from_millis(149),
            "starts only {gap:?} apart"
        );
    }
}

pub async fn a_pause_holds_every_start_back(gate: &dyn HostGate) {
    let host = host();
    let asked = Instant::now();
    gate.pause(&host, Duration::from_millis(300)).await.unwrap();
    let wait = gate
        .try_enter(&host, "a", limits(0, 0))
        .await
        .unwrap()
        .expect("a paused host waits");
    assert!(wait <= Duration::from_millis(300), "{wait:?}");
    let entered = enter(gate, &host, "a", limits(0, 0)).await;
    assert!(entered - asked >= Duration::from_millis(299));
    // A shorter pause does not cut a longer one short.
    gate.pause(&host, Duration::from_millis(400)).await.unwrap();
    gate.pause(&host, Duration::from_millis(1)).await.unwrap();
    let wait = gate.try_enter(&host, "b", limits(0, 0)).await.unwrap();
    assert!(
        wait.is_some_and(|w| w > Duration::from_millis(100)),
        "{wait:?}"
    );
}

pub async fn a_slot_never_given_back_frees_itself_after_its_lease(gate: &dyn HostGate) {
    let host = host();
    let short = HostLimits {
        lease: Duration::from_millis(200),
        ..limits(1, 0)
    };
    let first = enter(gate, &host, "dies", short).await;
    let second = enter(gate, &host, "next", short).await;
    assert!(second - first >= Duration::from_millis(199));
}

/// Generates one `#[tokio::test]` per gate conformance test.
#[macro_export]
macro_rules! gate_conformance {
    ($setup:expr) => {
        $crate::__conformance_tests!(
            gate,
            $setup,
            [
                concurrency_is_capped_and_a_slot_given_back_is_taken,
                starts_are_at_least_the_delay_apart,
                a_pause_holds_every_start_back,
                a_slot_never_given_back_frees_itself_after_its_lease,
            ]
        );
    };
}
