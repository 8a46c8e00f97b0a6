//! Time, the one way every layer reads and writes it: Unix milliseconds (what Redis stores and the
//! wire format carries), RFC 3339 times and human durations (`10s`, `1h 30m`) for people, and a
//! [`Clock`] that a broker takes so that tests can run on time they control.
//!
//! What it must not do: sleep or schedule. Waiting is tokio's; this module only tells the time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds, from the system clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 time (`2026-11-23T17:00:00Z`, `…+02:00`) to Unix milliseconds.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let ts: jiff::Timestamp = text
        .parse()
        .map_err(|e| format!("must be an RFC 3339 time such as `2026-11-23T17:00:00Z`: {e}"))?;
    u64::try_from(ts.as_millisecond()).map_err(|_| format!("`{text}` is before 1970"))
}

/// Formats Unix milliseconds as RFC 3339 UTC.
pub fn format_time(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Parses a duration as people write it: `250ms`, `10s`, `5m`, `1h 30m`, `2 days`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("`{text}` is not a duration such as `10s`, `5m` or `1h 30m`: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("`{text}` is negative"))
}

/// Where a broker reads the time. Deadlines, due times and TTLs all come from one clock, so a
/// test that moves the clock moves all of them together.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock: what production uses.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// Wall time that follows tokio's clock: it starts at the system time when made and then advances
/// with `tokio::time::Instant`. Under a paused runtime (`#[tokio::test(start_paused = true)]`)
/// time moves only when every task waits, and jumps over sleeps: a test of leases, backoff and
/// TTLs takes no real time and cannot lose a race against a slow machine.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    start_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading the system time now, advancing with tokio's clock from here on.
    pub fn new() -> Self {
        TokioClock {
            start_ms: now_ms(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start_ms + self.start.elapsed().as_millis() as u64
    }
}

/// A clock that moves only when told to. Clones share the time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock standing at `ms` (Unix milliseconds).
    pub fn at(ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(ms)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_round_trip() {
        let ms = parse_time("2026-11-23T17:00:00Z").unwrap();
        assert_eq!(format_time(ms), "2026-11-23T17:00:00Z");
        assert_eq!(
            parse_time("2026-11-23T19:00:00+02:00").unwrap(),
            ms,
            "offsets are honoured"
        );
        assert!(
            parse_time("1969-12-31T23:59:59Z")
                .unwrap_err()
                .contains("1970")
        );
        assert!(parse_time("tomorrow").unwrap_err().contains("RFC 3339"));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("soon").unwrap_err().contains("`soon`"));
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(1_000);
        let shared = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        shared.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let t0 = clock.now_ms();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ms() - t0, 3_600_000, "an hour passed at once");
    }
}
