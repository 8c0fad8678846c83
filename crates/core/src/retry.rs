//! One retry policy for every service: exponential backoff with jitter and a
//! hard cap, built on `backon`, and one place ([`Transient`]) that decides
//! which failures are worth another try.
//!
//! Every delay is drawn from `[d/2, d]` ("equal jitter"), where `d` starts at
//! [`RetryPolicy::first`] and doubles up to [`RetryPolicy::cap`]. The cap is
//! a true bound, so a caller that must try at least once a second sets a cap
//! of one second; the random half keeps a fleet of clients that lost the same
//! server from coming back in lockstep.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

/// How often and how patiently to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first delay.
    pub first: Duration,
    /// Upper bound of every delay.
    pub cap: Duration,
    /// Tries after the first one; `None` tries until stopped.
    pub retries: Option<usize>,
}

impl RetryPolicy {
    /// Retries until stopped, waiting at most `first`, then doubling up to `cap`.
    pub const fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            retries: None,
        }
    }

    /// Gives up after `retries` tries beyond the first.
    pub const fn with_retries(mut self, retries: usize) -> Self {
        self.retries = Some(retries);
        self
    }

    /// A fresh sequence of delays.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            delays: self.builder().build(),
        }
    }

    fn builder(&self) -> backon::ExponentialBuilder {
        // backon adds a random part of up to 100% to each delay; halving its
        // bounds makes each delay fall in [d/2, d] with d capped at `cap`.
        let builder = backon::ExponentialBuilder::new()
            .with_min_delay(self.first / 2)
            .with_max_delay(self.cap / 2)
            .with_factor(2.0)
            .with_jitter();
        match self.retries {
            Some(n) => builder.with_max_times(n),
            None => builder.without_max_times(),
        }
    }

    /// Runs `op` until it succeeds, fails permanently, runs out of retries,
    /// or `cancel` fires. `on_retry` hears every transient failure and the
    /// delay before the next try (for logging).
    pub async fn retry<T, E, Fut>(
        &self,
        cancel: &CancellationToken,
        mut op: impl FnMut() -> Fut,
        mut on_retry: impl FnMut(&E, Duration),
    ) -> Result<T, RetryError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Transient,
    {
        let mut backoff = self.backoff();
        loop {
            let error = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(RetryError::Cancelled),
                outcome = op() => match outcome {
                    Ok(value) => return Ok(value),
                    Err(e) => e,
                },
            };
            if !error.is_transient() {
                return Err(RetryError::Permanent(error));
            }
            let Some(delay) = backoff.next_delay() else {
                return Err(RetryError::Exhausted(error));
            };
            on_retry(&error, delay);
            tokio::select! {
                _ = cancel.cancelled() => return Err(RetryError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// How a service retries an engine it cannot reach at start.
pub const AT_START: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(200), Duration::from_secs(5));

/// Connects to an engine at start, retrying until it answers or the service
/// is stopped (`None` then): a cluster that starts all at once (compose,
/// Kubernetes) brings engines up after, not before, their clients. Each
/// failure is logged with its cause, so a wrong address is visible.
pub async fn until_connected<T, E, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut connect: impl FnMut() -> Fut,
) -> Option<T>
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = AT_START.backoff();
    loop {
        match connect().await {
            Ok(connected) => return Some(connected),
            Err(e) => {
                tracing::warn!(engine = what, error = %e, "cannot connect at start; retrying")
            }
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// Why [`RetryPolicy::retry`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// A failure that another try would repeat.
    #[error("{0}")]
    Permanent(E),
    /// Still failing when the retries ran out; this is the last failure.
    #[error("{0} (gave up after retrying)")]
    Exhausted(E),
    /// Stopped from outside (shutting down) before an answer.
    #[error("cancelled while retrying")]
    Cancelled,
}

impl<E> RetryError<E> {
    /// The last failure, unless the retry was cancelled.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Permanent(e) | Self::Exhausted(e) => Some(e),
            Self::Cancelled => None,
        }
    }
}

/// The delays of one run of retries, for loops that reconnect for as long
/// as the service lives and start over after each healthy spell.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    /// The wait before the next try; `None` once the retries are spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.delays.next()
    }

    /// Starts over from the first delay, after a success.
    pub fn reset(&mut self) {
        self.delays = self.policy.builder().build();
    }

    /// Sleeps the next delay. False when the retries are spent or `cancel`
    /// fired, either of which means: stop trying.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let Some(delay) = self.next_delay() else {
            return false;
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Whether a failure may pass if the same request is tried again.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

/// A gRPC call is worth repeating when the peer could not be reached or did
/// not answer in time, or the connection failed under it; never when the
/// peer judged the request (invalid argument, failed precondition, ...).
///
/// A status made on this side from a transport failure carries that failure
/// as its source, whatever code tonic gave it (an HTTP/2 protocol error on
/// a dying connection is `Internal`); a status the peer sent never does.
impl Transient for tonic::Status {
    fn is_transient(&self) -> bool {
        use tonic::Code;
        std::error::Error::source(self).is_some()
            || matches!(
                self.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Cancelled
                    | Code::Unknown
            )
    }
}

/// An engine that failed may come back; adapters report refusals that
/// would repeat through more specific errors.
impl Transient for crate::ports::AdapterError {
    fn is_transient(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_grow_stay_within_half_to_full_and_never_pass_the_cap() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = policy.backoff();
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..20 {
            let delay = backoff.next_delay().expect("unbounded");
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} in {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(1));
        }
    }

    #[test]
    fn reset_starts_over_and_retries_run_out() {
        let policy =
            RetryPolicy::new(Duration::from_millis(10), Duration::from_secs(5)).with_retries(2);
        let mut backoff = policy.backoff();
        assert!(backoff.next_delay().is_some());
        assert!(backoff.next_delay().is_some());
        assert_eq!(backoff.next_delay(), None);
        backoff.reset();
        assert!(backoff.next_delay().unwrap() <= Duration::from_millis(10));
    }

    #[derive(Debug)]
    struct Failure(bool);
    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40));
        let heard = std::cell::Cell::new(0);
        let value = policy
            .retry(
                &CancellationToken::new(),
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0..=2 => Err(Failure(true)),
                        n => Ok(n),
                    }
                },
                |_, _| heard.set(heard.get() + 1),
            )
            .await
            .unwrap();
        assert_eq!(value, 3);
        assert_eq!(heard.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_stops_at_once_and_exhaustion_returns_the_last() {
        let policy =
            RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(40)).with_retries(2);
        let calls = AtomicU32::new(0);
        let outcome: Result<(), _> = policy
            .retry(
                &CancellationToken::new(),
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Failure(false))
                },
                |_, _| {},
            )
            .await;
        assert!(matches!(
            outcome,
            Err(RetryError::Permanent(Failure(false)))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let outcome: Result<(), _> = policy
            .retry(
                &CancellationToken::new(),
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Failure(true))
                },
                |_, _| {},
            )
            .await;
        assert!(matches!(outcome, Err(RetryError::Exhausted(_))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1 + 3,
            "the first try and two retries"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_stops_a_retry_that_would_go_on_for_ever() {
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1));
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stopper.cancel();
        });
        let outcome: Result<(), _> = policy
            .retry(&cancel, || async { Err(Failure(true)) }, |_, _| {})
            .await;
        assert!(matches!(outcome, Err(RetryError::Cancelled)));
    }

    #[test]
    fn a_transport_failure_is_transient_whatever_its_code() {
        // What a client sees when the connection dies mid-call.
        let broken =
            tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::PROTOCOL_ERROR)));
        assert_eq!(broken.code(), tonic::Code::Internal);
        assert!(broken.is_transient(), "{broken:?}");
        // The same code sent by the peer is its judgement.
        assert!(!tonic::Status::internal("the peer says: a bug").is_transient());
    }

    #[test]
    fn grpc_codes_split_into_transient_and_permanent() {
        use tonic::{Code, Status};
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Unknown] {
            assert!(Status::new(code, "x").is_transient(), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::PermissionDenied,
        ] {
            assert!(!Status::new(code, "x").is_transient(), "{code:?}");
        }
    }
}
