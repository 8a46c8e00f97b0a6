//! Time: when a failed job runs again (backoff), cron schedules, and the loop every worker runs to
//! promote delayed and retrying jobs, recover expired leases and fire cron entries.
//!
//! There is no scheduler daemon: every worker runs [`maintain`], and the broker makes each step
//! atomic (a cron tick fires only if the entry's next tick is still the one this worker saw), so
//! any number of workers can run it at once and the queue keeps moving as long as one is alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{Broker, CronEntry, Maintenance, now_ms};
use crate::invocation::NewJob;
use crate::sandbox::Limits;

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

/// The first tick of `schedule` (a cron expression, UTC) strictly after `after_ms`.
pub fn next_tick(schedule: &str, after_ms: u64) -> Result<u64, String> {
    let cron: croner::Cron = schedule
        .parse()
        .map_err(|e| format!("`{schedule}` is not a cron expression: {e}"))?;
    let start = jiff::Timestamp::from_millisecond(after_ms as i64)
        .map_err(|e| e.to_string())?
        .to_zoned(jiff::tz::TimeZone::UTC);
    let next = cron
        .find_next_occurrence(&start, false)
        .map_err(|e| format!("`{schedule}` has no next time: {e}"))?;
    Ok(next.timestamp().as_millisecond() as u64)
}

/// The job a cron entry enqueues for `tick_ms`: its id is `cron:<name>:<tick>`, so a tick can
/// never produce two jobs.
pub fn cron_job(
    entry: &CronEntry,
    tick_ms: u64,
) -> Result<NewJob, crate::invocation::InvocationError> {
    let mut inv = entry.invocation.clone();
    inv.id = Some(format!("cron:{}:{tick_ms}", entry.name));
    inv.run_at = None;
    inv.prepare(&Limits::default_ceilings())
}

/// Checks a new cron entry — its name, schedule and invocation, and that its module was uploaded
/// — and stores it, first firing at the schedule's next tick from now.
pub async fn add_cron(
    broker: &dyn Broker,
    name: &str,
    schedule: &str,
    invocation: crate::invocation::Invocation,
) -> Result<CronEntry, crate::broker::BrokerError> {
    use crate::invocation::InvocationError;
    let field = |field: &'static str, reason: String| {
        crate::broker::BrokerError::Invocation(InvocationError::Field { field, reason })
    };
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(field(
            "name",
            format!("`{name}` must be 1 to 64 letters, digits, `_`, `-` or `.`"),
        ));
    }
    if invocation.id.is_some() || invocation.run_at.is_some() {
        return Err(field(
            "invocation",
            "must not set `id` or `run_at`: each tick's job gets `cron:<name>:<tick>`".to_owned(),
        ));
    }
    let next_ms = next_tick(schedule, now_ms()).map_err(|e| field("schedule", e))?;
    let entry = CronEntry {
        name: name.to_owned(),
        schedule: schedule.to_owned(),
        invocation,
        next_ms,
    };
    // The same checks a tick's job gets, now rather than at the first tick.
    let job = cron_job(&entry, next_ms)?;
    crate::broker::check_modules(broker, std::slice::from_ref(&job)).await?;
    broker.put_cron(&entry).await?;
    Ok(entry)
}

/// Fires the due cron entries of `queue` (at most once per tick across all workers). Returns how
/// many this call fired.
pub async fn fire_due_crons(broker: &dyn Broker, queue: &str) -> Result<u64, String> {
    let now = now_ms();
    let mut fired = 0;
    for entry in broker.crons(Some(queue)).await.map_err(|e| e.to_string())? {
        if entry.next_ms > now {
            continue;
        }
        // Ticks missed while no worker ran are coalesced into this one job.
        let next = next_tick(&entry.schedule, now)?;
        let job = cron_job(&entry, entry.next_ms).map_err(|e| e.to_string())?;
        if broker
            .fire_cron(queue, &entry.name, entry.next_ms, next, &job)
            .await
            .map_err(|e| e.to_string())?
        {
            tracing::info!(queue, cron = %entry.name, job = job.id(), "cron fired");
            fired += 1;
        }
    }
    Ok(fired)
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
            if let Err(e) = fire_due_crons(broker.as_ref(), queue).await {
                tracing::warn!(queue = %queue, error = %e, "cron pass failed");
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
    fn cron_ticks_are_computed_in_utc() {
        let t0 = crate::invocation::parse_time("2026-11-23T17:00:00Z").unwrap();
        let at = |s| crate::invocation::parse_time(s).unwrap();
        assert_eq!(
            next_tick("*/15 * * * *", t0),
            Ok(at("2026-11-23T17:15:00Z"))
        );
        assert_eq!(
            next_tick("*/10 * * * * *", t0 + 1),
            Ok(at("2026-11-23T17:00:10Z"))
        );
        assert_eq!(
            next_tick("0 3 * * 1", t0),
            Ok(at("2026-11-30T03:00:00Z")),
            "next Monday"
        );
        let err = next_tick("every tuesday", t0).unwrap_err();
        assert!(
            err.contains("`every tuesday` is not a cron expression"),
            "{err}"
        );
    }

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
