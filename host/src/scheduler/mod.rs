//! Time: when a failed job runs again (backoff), and the loop every worker runs to promote delayed
//! and retrying jobs and to recover expired leases.
//!
//! There is no scheduler daemon: every worker runs [`maintain`], and the broker makes each pass
//! atomic, so any number of workers can run it at once and the queue keeps moving as long as one
//! worker is alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{Broker, Maintenance};

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

/// Runs maintenance passes over `queues` every `interval` (±10 % jitter, so many workers do not
/// hit Redis in lockstep) until `stop` turns true. Errors are logged and retried next pass.
pub async fn maintain(
    broker: Arc<dyn Broker>,
    queues: Vec<String>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> Maintenance {
    let mut total = Maintenance::default();
    loop {
        for queue in &queues {
            match broker.maintain(queue).await {
                Ok(m) => {
                    if m.recovered + m.expired_dead > 0 {
                        tracing::warn!(
                            queue = %queue,
                            recovered = m.recovered,
                            dead = m.expired_dead,
                            "recovered jobs whose worker stopped heartbeating"
                        );
                    }
                    total.promoted += m.promoted;
                    total.recovered += m.recovered;
                    total.expired_dead += m.expired_dead;
                }
                Err(e) => tracing::warn!(queue = %queue, error = %e, "maintenance pass failed"),
            }
        }
        let pause = interval.mul_f64(0.9 + 0.2 * fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return total,
        }
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
