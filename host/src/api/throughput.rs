//! Throughput history for the dashboard's chart: jobs succeeded and attempts failed per second
//! over the last ten minutes, across every queue.
//!
//! The broker keeps running totals per queue ([`crate::broker::QueueTotals`]), shared by every
//! process; `wasmq serve` samples them once a second into a ring and turns neighbouring samples
//! into rates. Each server keeps its own history from when it started, so a freshly started
//! server's chart begins empty; a total that went down (Redis lost its data) reads as zero, not
//! as a negative rate.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::broker::{ApiBroker, QueueCounts};
use crate::time::now_ms;

/// How often the totals are sampled.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How many samples are kept: ten minutes at one a second, plus the one each rate starts from.
const KEEP: usize = 601;

/// One reading of the totals summed over every queue.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    succeeded: u64,
    failed: u64,
}

/// The rates between two samples.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rate {
    /// When the later sample was taken (Unix ms).
    pub at_ms: u64,
    /// Jobs succeeded per second.
    pub succeeded: f64,
    /// Attempts failed per second (retried, dead or cancelled while failing).
    pub failed: f64,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct Throughput {
    samples: Mutex<VecDeque<Sample>>,
}

impl Throughput {
    /// Adds a sample of `queues`' totals taken at `at_ms`.
    pub fn record(&self, at_ms: u64, queues: &[QueueCounts]) {
        let sample = Sample {
            at_ms,
            succeeded: queues.iter().map(|q| q.totals.succeeded).sum(),
            failed: queues.iter().map(|q| q.totals.failed).sum(),
        };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Rates between neighbouring samples, oldest first.
    pub fn rates(&self) -> Vec<Rate> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .filter(|(a, b)| b.at_ms > a.at_ms)
            .map(|(a, b)| {
                let secs = (b.at_ms - a.at_ms) as f64 / 1000.0;
                Rate {
                    at_ms: b.at_ms,
                    succeeded: b.succeeded.saturating_sub(a.succeeded) as f64 / secs,
                    failed: b.failed.saturating_sub(a.failed) as f64 / secs,
                }
            })
            .collect()
    }

    /// Samples `broker`'s totals every [`INTERVAL`], forever (the server aborts it). A failed read
    /// (Redis away) leaves a gap rather than stopping the sampler.
    pub async fn sample(self: Arc<Self>, broker: Arc<dyn ApiBroker>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match broker.queues().await {
                Ok(queues) => self.record(now_ms(), &queues),
                Err(e) => tracing::debug!(error = %e, "throughput sample skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::QueueTotals;

    fn queue(name: &str, succeeded: u64, failed: u64) -> QueueCounts {
        QueueCounts {
            queue: name.into(),
            totals: QueueTotals {
                succeeded,
                failed,
                ..QueueTotals::default()
            },
            ..QueueCounts::default()
        }
    }

    #[test]
    fn rates_are_per_second_summed_over_queues() {
        let t = Throughput::default();
        assert!(t.rates().is_empty());
        t.record(10_000, &[queue("a", 100, 1), queue("b", 50, 0)]);
        assert!(t.rates().is_empty(), "one sample makes no rate");
        t.record(11_000, &[queue("a", 130, 3), queue("b", 60, 0)]);
        t.record(13_000, &[queue("a", 170, 3), queue("b", 60, 4)]);
        assert_eq!(
            t.rates(),
            [
                Rate {
                    at_ms: 11_000,
                    succeeded: 40.0,
                    failed: 2.0
                },
                Rate {
                    at_ms: 13_000,
                    succeeded: 20.0,
                    failed: 2.0
                },
            ]
        );
    }

    #[test]
    fn totals_that_went_down_read_as_zero_and_the_ring_is_bounded() {
        let t = Throughput::default();
        t.record(1_000, &[queue("a", 500, 5)]);
        t.record(2_000, &[queue("a", 3, 0)]);
        assert_eq!(t.rates()[0].succeeded, 0.0);
        assert_eq!(t.rates()[0].failed, 0.0);
        for i in 0..2 * KEEP as u64 {
            t.record(3_000 + i * 1000, &[queue("a", i, 0)]);
        }
        let rates = t.rates();
        assert_eq!(rates.len(), KEEP - 1);
        assert!(rates.iter().all(|r| r.succeeded == 1.0));
    }
}
