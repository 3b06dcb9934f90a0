//! The one retry policy of every loop that waits for something to come back (a
//! store, NATS, a receiver, an etcd watch): exponential backoff with jitter
//! between a first and a longest wait, attempts without limit, built on `backon`.
//!
//! [`RetryPolicy::backoff`] hands out the waits for loops that do their own
//! attempts (the writer holding batches, the alerter's deliveries);
//! [`until_ok`] is the whole loop for "call until it works, unless the error is
//! final or we are shutting down" (opening a store, connecting to NATS).

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio_util::sync::CancellationToken;

/// First and longest wait between attempts; the wait `w` doubles after each
/// failure up to `longest`, and with jitter each wait is drawn from `[w/2, w)` so
/// that many clients of one server do not retry in step. A wait is never longer
/// than `longest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failure.
    pub first: Duration,
    /// Longest wait.
    pub longest: Duration,
    /// Whether waits are spread by jitter.
    pub jitter: bool,
}

impl RetryPolicy {
    /// Waits from `first` doubling up to `longest`, with jitter.
    pub const fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            longest,
            jitter: true,
        }
    }

    /// The same waits without jitter: for a loop that is the only client of what
    /// it waits for (an agent's watch on its own member), where a prompt retry
    /// matters more than spreading load.
    pub const fn without_jitter(self) -> Self {
        Self {
            jitter: false,
            ..self
        }
    }

    /// A fresh sequence of waits, starting at `first`.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            inner: self.build(),
        }
    }

    fn build(&self) -> backon::ExponentialBackoff {
        let b = backon::ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.longest.max(self.first))
            .with_factor(2.0)
            .without_max_times();
        if self.jitter { b.with_jitter() } else { b }.build()
    }
}

/// The waits of one run of failures; [`reset`](Self::reset) after a success.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    inner: backon::ExponentialBackoff,
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        // Built without a limit of attempts, so the iterator never ends; the
        // longest wait is the sane answer should it ever do.
        let w = self.inner.next().unwrap_or(self.policy.longest);
        if self.policy.jitter {
            // backon draws from [w, 2w); halved, that is [w/2, w), so the
            // configured longest wait stays the longest.
            w / 2
        } else {
            w
        }
    }

    /// Starts again from the first wait (call after a success).
    pub fn reset(&mut self) {
        self.inner = self.policy.build();
    }
}

/// Calls `op` until it succeeds or fails with an error that `retryable` says is
/// final, waiting between attempts as `policy` says and logging each failure
/// (`what` names the operation, e.g. "open the store"). Returns `None` when
/// `shutdown` fires first, so a service that is stopped while waiting for a
/// dependency stops at once.
pub async fn until_ok<T, E, Fut>(
    policy: RetryPolicy,
    shutdown: &CancellationToken,
    what: &str,
    retryable: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Fut,
) -> Option<Result<T, E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = policy.backoff();
    loop {
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            r = op() => r,
        };
        match result {
            Ok(v) => return Some(Ok(v)),
            Err(e) if !retryable(&e) => return Some(Err(e)),
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(error = %e, retry_in = ?wait, "{what}; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn waits_grow_to_the_longest_and_start_again_after_a_reset() {
        let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut b = policy.backoff();
        let waits: Vec<Duration> = (0..12).map(|_| b.next_wait()).collect();
        // With jitter a wait is drawn from [w/2, w): never above `longest`.
        assert!(waits[0] >= Duration::from_millis(50) && waits[0] <= Duration::from_millis(100));
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(1)),
            "{waits:?}"
        );
        assert!(waits[11] >= Duration::from_millis(500), "{waits:?}");
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));

        let mut exact = policy.without_jitter().backoff();
        let waits: Vec<u64> = (0..6)
            .map(|_| exact.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn until_ok_retries_retryable_errors_and_stops_at_a_final_one_or_shutdown() {
        let policy = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(50));
        let never = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let got = until_ok(
            policy,
            &never,
            "test",
            |e: &String| e == "later",
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err("later".to_owned()),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(got, Some(Ok(7)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let got: Option<Result<(), String>> = until_ok(
            policy,
            &never,
            "test",
            |e: &String| e == "later",
            || async { Err("never".to_owned()) },
        )
        .await;
        assert_eq!(got, Some(Err("never".to_owned())));

        let stop = CancellationToken::new();
        stop.cancel();
        let got: Option<Result<(), String>> = until_ok(
            policy,
            &stop,
            "test",
            |_: &String| true,
            || async { Err("later".to_owned()) },
        )
        .await;
        assert_eq!(got, None);
    }
}
