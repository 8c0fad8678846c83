//! One conformance suite per port, run against every implementation: the
//! RabbitMQ and in-process queues, the Redis and in-process caches and host gates, the
//! Postgres and SQLite stores and their leader elections. Passing the same suite is what makes the
//! embedded default a faithful stand-in for the cluster engines.
//!
//! Each suite is a set of plain async functions taking the port, plus a
//! macro that turns them into `#[tokio::test]`s for one implementation:
//!
//! ```ignore
//! mod memory {
//!     crawler_adapters::queue_conformance!(super::memory_queue());
//! }
//! ```
//!
//! where the expression yields a [`Subject`]: the port under test and how to
//! clean up after it. The calling crate needs `tokio` (with `macros` and
//! `rt-multi-thread`) among its dev-dependencies.

pub mod cache;
pub mod election;
pub mod gate;
pub mod queue;
pub mod store;
pub mod tokens;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type Teardown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A port under test and the cleanup to run after the test, pass or fail.
pub struct Subject<P: ?Sized> {
    port: Arc<P>,
    teardown: Option<Teardown>,
}

impl<P: ?Sized> Subject<P> {
    pub fn new(port: Arc<P>) -> Self {
        Self {
            port,
            teardown: None,
        }
    }

    /// Runs `teardown` after the test (deleting queues, dropping a database).
    pub fn with_teardown(mut self, teardown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.teardown = Some(Box::pin(teardown));
        self
    }

    pub fn port(&self) -> &P {
        &self.port
    }

    pub async fn teardown(self) {
        drop(self.port);
        if let Some(teardown) = self.teardown {
            teardown.await;
        }
    }
}

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Polls `check` until it yields a value or [`PATIENCE`] runs out. For
/// conditions that have no event to wait on (a broker-side count, a TTL).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Plumbing for the suite macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::future::Future;
    use std::panic::AssertUnwindSafe;

    use futures::FutureExt;

    pub async fn catch(test: impl Future<Output = ()>) -> Result<(), Box<dyn Any + Send>> {
        AssertUnwindSafe(test).catch_unwind().await
    }

    pub fn resume(outcome: Result<(), Box<dyn Any + Send>>) {
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Expands to one `#[tokio::test]` per listed test of `suite`, each getting
/// a fresh subject from `setup` and tearing it down afterwards.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($suite:ident, $setup:expr, [$($test:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let subject = $setup.await;
                let outcome = $crate::conformance::__private::catch(
                    $crate::conformance::$suite::$test(subject.port()),
                )
                .await;
                subject.teardown().await;
                $crate::conformance::__private::resume(outcome);
            }
        )*
    };
}
