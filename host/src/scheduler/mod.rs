//! Cron schedules, and the loop every worker runs to promote delayed and retrying jobs, recover
//! expired leases and fire cron entries. (When a failed job runs again is the worker's retry
//! policy, `worker/retry.rs`.)
//!
//! There is no scheduler daemon: every worker runs [`maintain`], and the broker makes each step
//! atomic (a cron tick fires only if the entry's next tick is still the one this worker saw), so
//! any number of workers can run it at once and the queue keeps moving as long as one is alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::BrokerError;
use crate::broker::{CronEntry, LeaseKey, Maintenance, WorkerBroker};
use crate::intake::{Intake, IntakeError, Refusal};
use crate::invocation::NewJob;
use crate::time::now_ms;

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

/// The job a cron entry enqueues for `tick_ms`, checked by `intake`: its id is
/// `cron:<name>:<tick>`, so a tick can never produce two jobs.
pub fn cron_job(intake: &Intake, entry: &CronEntry, tick_ms: u64) -> Result<NewJob, Refusal> {
    let mut inv = entry.invocation.clone();
    inv.id = Some(format!("cron:{}:{tick_ms}", entry.name));
    inv.run_at = None;
    intake.job(inv)
}

/// Checks a new cron entry — its name, schedule and invocation, and that its module was uploaded
/// — and stores it, first firing at the schedule's next tick from now.
pub async fn add_cron(
    intake: &Intake,
    broker: &dyn WorkerBroker,
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
    let job = cron_job(intake, &entry, next_ms).map_err(|r| BrokerError::Invocation(r.error))?;
    intake
        .check_modules(broker, std::slice::from_ref(&job))
        .await
        .map_err(|e| match e {
            IntakeError::Refused(r) => BrokerError::Invocation(r.error),
            IntakeError::Broker(b) => b,
        })?;
    broker.put_cron(&entry).await?;
    Ok(entry)
}

/// Fires the due cron entries of `queue` (at most once per tick across all workers). Returns how
/// many this call fired.
pub async fn fire_due_crons(
    intake: &Intake,
    broker: &dyn WorkerBroker,
    queue: &str,
) -> Result<u64, String> {
    let now = now_ms();
    let mut fired = 0;
    for entry in broker.crons(Some(queue)).await.map_err(|e| e.to_string())? {
        if entry.next_ms > now {
            continue;
        }
        // Ticks missed while no worker ran are coalesced into this one job.
        let next = next_tick(&entry.schedule, now)?;
        let job = cron_job(intake, &entry, entry.next_ms).map_err(|e| e.to_string())?;
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
/// hit Redis in lockstep) until `stop` turns true; `own` lists the caller's leases, which its
/// passes leave to its heartbeats. Errors are logged and retried next pass.
pub async fn maintain(
    intake: Intake,
    broker: Arc<dyn WorkerBroker>,
    queues: Vec<String>,
    interval: Duration,
    own: impl Fn() -> Vec<LeaseKey> + Send,
    mut stop: watch::Receiver<bool>,
) -> Maintenance {
    let mut total = Maintenance::default();
    loop {
        for queue in &queues {
            match broker.maintain(queue, &own()).await {
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
            if let Err(e) = fire_due_crons(&intake, broker.as_ref(), queue).await {
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
        let t0 = crate::time::parse_time("2026-11-23T17:00:00Z").unwrap();
        let at = |s| crate::time::parse_time(s).unwrap();
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
}
