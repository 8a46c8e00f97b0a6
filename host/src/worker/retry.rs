//! The retry policy: whether a failed attempt runs again, and after how long. A failure whose kind
//! is permanent, or one on the last attempt, goes to the dead set; anything else is retried after
//! an exponential backoff with jitter.

use std::time::Duration;

use crate::broker::{Completion, Lease};
use crate::job::{AttemptError, FailureKind, RunReport};
use crate::time::now_ms;

/// Exponential backoff with jitter for retryable failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt (before jitter); doubles after each further one.
    pub base: Duration,
    /// No delay is longer than this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 5 s, doubling, capped at an hour: with the default 5 attempts a job is retried after about
    /// 5, 10, 20 and 40 s — long enough for a restarted dependency to come back, short enough that
    /// a broken job reaches the dead set within minutes.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (from 1): `base · 2^(attempt-1)`, capped,
    /// then drawn uniformly from its upper half so that jobs that failed together do not all come
    /// back in the same millisecond.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let full = self.base.saturating_mul(1u32 << exp.min(31)).min(self.max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Retry with backoff while attempts remain and the failure is retryable; otherwise dead.
pub(super) fn decide(
    backoff: &Backoff,
    lease: &Lease,
    error: AttemptError,
    report: Option<RunReport>,
) -> Completion {
    if !error.kind.is_permanent() && lease.attempt < lease.invocation.max_attempts {
        Completion::Retry {
            delay: backoff.delay(lease.attempt),
            error,
            report,
        }
    } else {
        Completion::Dead { error, report }
    }
}

/// How an attempt stopped because its cancellation was requested ends: cancelled, never retried.
pub(super) fn cancelled(attempt: u32) -> Completion {
    Completion::Cancelled {
        error: AttemptError::new(
            attempt,
            FailureKind::Cancelled,
            "cancelled while running; the attempt was stopped".to_owned(),
            now_ms(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!((50..=100).contains(&d1.as_millis()), "{d1:?}");
            let d3 = b.delay(3);
            assert!((200..=400).contains(&d3.as_millis()), "{d3:?}");
            let d40 = b.delay(40);
            assert!((500..=1000).contains(&d40.as_millis()), "{d40:?}");
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| b.delay(2)).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }
}
