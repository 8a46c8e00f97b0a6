//! What a worker counts as it goes — jobs fetched, succeeded, retried, dead, fuel, outbound
//! HTTP per destination — and the histograms of attempt duration and fuel, updated from every
//! job task and read by `/metrics` and `wasmq bench`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::job::HttpUse;

/// Most destinations counted apart in one process; calls to further ones are counted under
/// `other` (a wildcard grant lets a guest name any number of hosts).
pub const MAX_HTTP_DESTINATIONS: usize = 256;

/// A histogram with fixed bucket bounds, updated lock-free from every job task.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, ascending (the `+Inf` bucket is implicit).
    pub bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in millionths (so it fits an integer atomic).
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus `le` buckets), the sum and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                running += c.load(Ordering::Relaxed);
                (*b, running)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, self.count.load(Ordering::Relaxed))
    }
}

/// Bucket bounds of attempt durations, in seconds: from a no-op job to the 15-minute ceiling.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 900.0,
];

/// Bucket bounds of fuel per attempt: decades from a no-op job to the default ceiling.
pub const FUEL_BUCKETS: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// Counters of what a worker did.
#[derive(Debug)]
pub struct Counters {
    /// Jobs fetched.
    pub fetched: AtomicU64,
    /// Attempts that succeeded.
    pub succeeded: AtomicU64,
    /// Attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Jobs moved to the dead set.
    pub dead: AtomicU64,
    /// Jobs stopped because their cancellation was requested.
    pub cancelled: AtomicU64,
    /// Acks ignored because the lease had moved on.
    pub stale: AtomicU64,
    /// Jobs handed back at shutdown.
    pub released: AtomicU64,
    /// Fuel used by every attempt.
    pub fuel_used: AtomicU64,
    /// Wall time of each attempt that ran, in seconds.
    pub duration: Histogram,
    /// Fuel of each attempt that ran.
    pub fuel: Histogram,
    /// Outbound HTTP by destination, summed over every run.
    pub http: Mutex<BTreeMap<String, HttpUse>>,
}

impl Counters {
    /// Adds one run's outbound HTTP.
    pub fn count_http(&self, uses: &[HttpUse]) {
        if uses.is_empty() {
            return;
        }
        let mut all = self.http.lock().expect("not poisoned");
        for u in uses {
            let key = if all.len() >= MAX_HTTP_DESTINATIONS && !all.contains_key(&u.destination) {
                "other".to_owned()
            } else {
                u.destination.clone()
            };
            let total = all.entry(key.clone()).or_insert_with(|| HttpUse {
                destination: key,
                ..HttpUse::default()
            });
            total.calls += u.calls;
            total.failed += u.failed;
            total.bytes_sent += u.bytes_sent;
            total.bytes_received += u.bytes_received;
            total.wait_ms += u.wait_ms;
        }
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            fetched: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            released: AtomicU64::new(0),
            fuel_used: AtomicU64::new(0),
            duration: Histogram::new(DURATION_BUCKETS),
            fuel: Histogram::new(FUEL_BUCKETS),
            http: Mutex::default(),
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStats {
    /// Jobs fetched.
    pub fetched: u64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Jobs moved to the dead set.
    pub dead: u64,
    /// Jobs stopped because their cancellation was requested.
    pub cancelled: u64,
    /// Acks ignored because the lease had moved on.
    pub stale: u64,
    /// Jobs handed back at shutdown.
    pub released: u64,
    /// Fuel used by every attempt.
    pub fuel_used: u64,
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> WorkerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WorkerStats {
            fetched: get(&self.fetched),
            succeeded: get(&self.succeeded),
            retried: get(&self.retried),
            dead: get(&self.dead),
            cancelled: get(&self.cancelled),
            stale: get(&self.stale),
            released: get(&self.released),
            fuel_used: get(&self.fuel_used),
        }
    }
}
