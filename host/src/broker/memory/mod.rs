//! The in-process broker: the same state machine as Redis, in a mutex.
//!
//! It is the embedded default (the demo, unit tests, a single process that wants a queue without a
//! server) and the reference the Redis scripts are tested against. Nothing survives the process;
//! use [`super::redis::RedisBroker`] when jobs must outlive it.

mod admin;
mod batches;
mod cron;
mod egress;
mod grants;
mod inspect;
mod lifecycle;
mod lineage;
mod registry;
mod secrets;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::broker::{
    BrokerError, Completion, CronEntry, DEFAULT_RESULT_TTL, JobRecord, JobRef, LeaseKey,
    MAX_BATCH_RESULTS_BYTES, MAX_ERRORS, ModuleInfo, QueueLimits, QueueTotals, WorkerInfo,
};
use crate::invocation::{Invocation, NewJob};
use crate::job::{AttemptError, FailureKind, JobState, Progress, RunReport};
use crate::modules::ModuleHash;
use crate::time::{Clock, SystemClock};

/// The in-process broker.
pub struct MemoryBroker {
    state: Mutex<State>,
    /// Where every deadline, due time and TTL is read.
    clock: Arc<dyn Clock>,
    result_ttl: Duration,
    /// Woken when a job becomes ready.
    work: Notify,
    /// Woken when a job becomes final.
    done: Notify,
}

#[derive(Default)]
struct State {
    /// The clock's time when the lock was taken: one instant per operation.
    now: u64,
    queues: BTreeMap<String, Queue>,
    jobs: HashMap<(String, String), Job>,
    modules: BTreeMap<ModuleHash, (Arc<Vec<u8>>, ModuleInfo)>,
    /// (queue, name) → entry, its `next_ms` the next tick.
    crons: BTreeMap<(String, String), CronEntry>,
    workers: BTreeMap<String, WorkerInfo>,
    grants: BTreeMap<ModuleHash, crate::grant::Grant>,
    /// Secret name → sealed value.
    secrets: BTreeMap<String, Vec<u8>>,
    /// Egress limits by host, and each limited host's held slots and recent starts.
    egress: BTreeMap<String, egress::Destination>,
    batches: HashMap<(String, String), Batch>,
}

struct Batch {
    pending: u64,
    callback: NewJob,
    jobs: Vec<String>,
    created_at_ms: u64,
    done_at_ms: Option<u64>,
}

#[derive(Default)]
struct Queue {
    /// (-priority, seq, id) → id. Jobs handed back to the front of the queue all get seq 0, so the
    /// id breaks their tie (as it does in Redis's sorted set): a key that was only
    /// (-priority, seq) made a second release overwrite the first, and that job was never fetched
    /// again.
    ready: BTreeMap<(i32, u64, String), String>,
    /// (due, id).
    scheduled: BTreeSet<(u64, String)>,
    /// id → lease deadline.
    leased: HashMap<String, u64>,
    /// (died at, id).
    dead: BTreeSet<(u64, String)>,
    seq: u64,
    totals: QueueTotals,
    paused: bool,
    limits: QueueLimits,
    /// The current rate window and how many jobs started in it.
    rate_window: (u64, u32),
}

impl Queue {
    /// Jobs waiting or running: what `max_size` bounds.
    fn size(&self) -> u64 {
        (self.ready.len() + self.scheduled.len() + self.leased.len()) as u64
    }

    /// Whether a fetch now would get a job (ready ones, and room under the limits).
    fn fetchable(&self, now: u64) -> bool {
        let under_concurrency = self
            .limits
            .concurrency
            .is_none_or(|c| self.leased.len() < c as usize);
        let under_rate = self.limits.rate.is_none_or(|(rate, per_ms)| {
            self.rate_window.0 != now / per_ms.max(1) || self.rate_window.1 < rate
        });
        !self.paused && !self.ready.is_empty() && under_concurrency && under_rate
    }
}

struct Job {
    invocation: Invocation,
    state: JobState,
    attempts: u32,
    token: u64,
    enqueued_at_ms: u64,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    worker: Option<String>,
    /// Failures, oldest first, at most [`MAX_ERRORS`].
    errors: Vec<AttemptError>,
    progress: Option<Progress>,
    report: Option<RunReport>,
    /// Where the job sits in its queue's `ready` or `scheduled` index.
    ready_key: Option<(i32, u64, String)>,
    due_at: Option<u64>,
    expires_at: Option<u64>,
    /// Someone asked to cancel it while it ran.
    cancel: bool,
    /// The batch it belongs to, and whether its end was counted there.
    batch: Option<String>,
    batch_counted: bool,
    /// The job that enqueued it, its own sub-jobs (each once, in order), and whether its record
    /// is held for its parent (not expired until released).
    parent: Option<JobRef>,
    children: Vec<JobRef>,
    held: bool,
}

impl Job {
    /// Records a failed attempt, dropping the oldest beyond [`MAX_ERRORS`].
    fn failed(&mut self, error: AttemptError) {
        if self.errors.len() == MAX_ERRORS {
            self.errors.remove(0);
        }
        self.errors.push(error);
    }

    fn record(&self, queue: &str, id: &str) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            queue: queue.to_owned(),
            state: self.state,
            invocation: self.invocation.clone(),
            attempts: self.attempts,
            enqueued_at_ms: self.enqueued_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            worker: self.worker.clone(),
            last_error: self.errors.last().cloned(),
            errors: self.errors.clone(),
            progress: self.progress.clone(),
            report: self.report.clone(),
            parent: self.parent.clone(),
            children: self.children.clone(),
        }
    }
}

impl State {
    fn make_ready(&mut self, queue: &str, id: &str, front: bool) {
        let q = self.queues.entry(queue.to_owned()).or_default();
        let job = self
            .jobs
            .get_mut(&(queue.to_owned(), id.to_owned()))
            .expect("indexed jobs exist");
        q.seq += 1;
        let key = (
            -job.invocation.priority,
            if front { 0 } else { q.seq },
            id.to_owned(),
        );
        q.ready.insert(key.clone(), id.to_owned());
        job.ready_key = Some(key);
        job.due_at = None;
        job.state = JobState::Ready;
    }

    /// Refuses `jobs` whole if, on any queue, their new ids would take it past its `max_size`.
    fn check_room(&mut self, jobs: &[NewJob]) -> Result<(), BrokerError> {
        let mut new: HashMap<&str, HashSet<&str>> = HashMap::new();
        for job in jobs {
            if self.get(job.queue(), job.id()).is_none() {
                new.entry(job.queue()).or_default().insert(job.id());
            }
        }
        for (queue, ids) in new {
            let Some(q) = self.queues.get(queue) else {
                continue;
            };
            if let Some(max) = q.limits.max_size
                && q.size() + ids.len() as u64 > max
            {
                return Err(BrokerError::QueueFull {
                    queue: queue.to_owned(),
                    size: q.size(),
                    max,
                });
            }
        }
        Ok(())
    }

    /// Adds a new job (the caller checked its id is free); true if it became ready.
    fn insert(&mut self, job: &NewJob, batch: Option<&str>, now: u64) -> bool {
        let (queue, id) = (job.queue(), job.id());
        self.queues
            .entry(queue.to_owned())
            .or_default()
            .totals
            .enqueued += 1;
        self.jobs.insert(
            (queue.to_owned(), id.to_owned()),
            Job {
                invocation: job.invocation.clone(),
                state: JobState::Scheduled,
                attempts: 0,
                token: 0,
                enqueued_at_ms: now,
                started_at_ms: None,
                finished_at_ms: None,
                worker: None,
                errors: Vec::new(),
                progress: None,
                report: None,
                ready_key: None,
                due_at: None,
                expires_at: None,
                cancel: false,
                batch: batch.map(str::to_owned),
                batch_counted: false,
                parent: None,
                children: Vec::new(),
                held: false,
            },
        );
        match job.run_at_ms {
            Some(at) if at > now => {
                let q = self.queues.get_mut(queue).expect("created above");
                q.scheduled.insert((at, id.to_owned()));
                self.get(queue, id).expect("inserted above").due_at = Some(at);
                false
            }
            _ => {
                self.make_ready(queue, id, false);
                true
            }
        }
    }

    /// The job just became final: counts it in its batch and, when it was the batch's last,
    /// enqueues the callback (mirrors `batch_ended` in lua/common.lua). True if it did.
    fn ended(&mut self, queue: &str, id: &str, now: u64) -> bool {
        let Some(job) = self.get(queue, id) else {
            return false;
        };
        let Some(bid) = job.batch.clone().filter(|_| !job.batch_counted) else {
            return false;
        };
        job.batch_counted = true;
        let Some(batch) = self.batches.get_mut(&(queue.to_owned(), bid.clone())) else {
            return false;
        };
        batch.pending -= 1;
        if batch.pending > 0 {
            return false;
        }
        batch.done_at_ms = Some(now);
        let (mut callback, ids) = (batch.callback.clone(), batch.jobs.clone());
        let mut left = MAX_BATCH_RESULTS_BYTES;
        let outcomes: Vec<serde_json::Value> = ids
            .iter()
            .map(|jid| {
                let job = self.jobs.get(&(queue.to_owned(), jid.clone()));
                let state = job.map_or("expired", |j| j.state.as_str());
                let mut entry = serde_json::json!({ "id": jid, "state": state });
                // The result (succeeded) or last error (dead), as the Redis broker's
                // `batch_ended` gives them: within MAX_BATCH_RESULTS_BYTES in all.
                let extra = job.and_then(|j| match j.state {
                    JobState::Succeeded => j
                        .report
                        .as_ref()
                        .and_then(|r| r.result.clone())
                        .map(|v| ("result", v)),
                    JobState::Dead => j
                        .errors
                        .last()
                        .map(|e| ("error", serde_json::to_value(e).expect("plain data"))),
                    _ => None,
                });
                if let Some((name, value)) = extra {
                    let len = serde_json::to_string(&value).expect("plain data").len();
                    if len <= left {
                        left -= len;
                        entry[name] = value;
                    } else {
                        entry[format!("{name}_omitted")] = true.into();
                    }
                }
                entry
            })
            .collect();
        let mut args = match callback.invocation.args.take() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        args.insert("batch".into(), bid.into());
        args.insert("jobs".into(), outcomes.into());
        callback.invocation.args = serde_json::Value::Object(args);
        if self
            .jobs
            .contains_key(&(queue.to_owned(), callback.id().to_owned()))
        {
            return false;
        }
        self.insert(&callback, None, now)
    }

    /// Takes a dead job out of its queue's dead set; `None` if it is not dead.
    fn take_dead(&mut self, queue: &str, id: &str) -> Option<&mut Job> {
        let died = self
            .get(queue, id)
            .filter(|j| j.state == JobState::Dead)?
            .finished_at_ms
            .expect("dead jobs have a time");
        let q = self.queues.get_mut(queue).expect("queue of a job");
        q.dead.remove(&(died, id.to_owned()));
        self.get(queue, id)
    }

    fn get(&mut self, queue: &str, id: &str) -> Option<&mut Job> {
        let key = (queue.to_owned(), id.to_owned());
        let now = self.now;
        if self
            .jobs
            .get(&key)
            .is_some_and(|j| j.expires_at.is_some_and(|t| t <= now))
        {
            self.jobs.remove(&key);
        }
        self.jobs.get_mut(&key)
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker {
            state: Mutex::default(),
            clock: Arc::new(SystemClock),
            result_ttl: DEFAULT_RESULT_TTL,
            work: Notify::new(),
            done: Notify::new(),
        }
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps succeeded and cancelled jobs' records for `ttl` (default a day).
    pub fn with_result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// Reads the time from `clock` instead of the system clock: a [`TokioClock`] makes leases,
    /// backoff and TTLs follow a paused tokio runtime, a [`ManualClock`] moves only when told.
    ///
    /// [`TokioClock`]: crate::time::TokioClock
    /// [`ManualClock`]: crate::time::ManualClock
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every method mutates after its
        // checks, so poisoning carries no information here.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.now = self.clock.now_ms();
        state
    }

    /// Takes one named job (`Some(id)`), or every job in it now, out of `queue`'s dead set: back
    /// to ready with a fresh set of attempts (`retry`), or deleted. Returns how many (mirrors
    /// `lua/dead.lua`).
    fn take_from_dead(&self, queue: &str, id: Option<&str>, retry: bool) -> u64 {
        let mut taken = 0;
        {
            let mut state = self.lock();
            let ids: Vec<String> = match id {
                Some(id) => vec![id.to_owned()],
                None => state
                    .queues
                    .get(queue)
                    .map(|q| q.dead.iter().map(|(_, id)| id.clone()).collect())
                    .unwrap_or_default(),
            };
            for id in ids {
                let Some(job) = state.take_dead(queue, &id) else {
                    continue;
                };
                taken += 1;
                if retry {
                    job.attempts = 0;
                    job.finished_at_ms = None;
                    state.make_ready(queue, &id, false);
                } else {
                    state.jobs.remove(&(queue.to_owned(), id));
                }
            }
        }
        if retry && taken > 0 {
            self.work.notify_waiters();
        }
        taken
    }

    fn any_ready(&self, queues: &[String]) -> bool {
        let state = self.lock();
        queues
            .iter()
            .any(|q| state.queues.get(q).is_some_and(|q| q.fetchable(state.now)))
    }
}

/// Applies one held lease's completion; true when the job became final.
fn apply(
    state: &mut State,
    key: &LeaseKey,
    completion: &Completion,
    wants_cancel: bool,
    now: u64,
    result_ttl: Duration,
) -> bool {
    fn totals<'a>(state: &'a mut State, queue: &str) -> &'a mut QueueTotals {
        &mut state.queues.get_mut(queue).expect("queue of a job").totals
    }
    match completion {
        Completion::Succeeded(report) => {
            let job = state.get(&key.queue, &key.id).expect("held");
            job.state = JobState::Succeeded;
            job.finished_at_ms = Some(now);
            job.report = Some(report.clone());
            job.cancel = false;
            if !job.held {
                job.expires_at = Some(now + result_ttl.as_millis() as u64);
            }
            totals(state, &key.queue).succeeded += 1;
            true
        }
        Completion::Cancelled { error } | Completion::Retry { error, .. }
            if wants_cancel || matches!(completion, Completion::Cancelled { .. }) =>
        {
            let job = state.get(&key.queue, &key.id).expect("held");
            job.failed(error.clone());
            // What the interrupted attempt produced is kept, as for any other failure.
            if let Completion::Retry {
                report: Some(report),
                ..
            } = completion
            {
                job.report = Some(report.clone());
            }
            end_cancelled(job, now, result_ttl);
            let t = totals(state, &key.queue);
            t.failed += 1;
            t.cancelled += 1;
            true
        }
        Completion::Retry {
            delay,
            error,
            report,
        } => {
            let due = now + delay.as_millis() as u64;
            let q = state.queues.get_mut(&key.queue).expect("queue of a job");
            q.scheduled.insert((due, key.id.clone()));
            q.totals.failed += 1;
            q.totals.retried += 1;
            let job = state.get(&key.queue, &key.id).expect("held");
            job.state = JobState::Scheduled;
            job.due_at = Some(due);
            job.failed(error.clone());
            if report.is_some() {
                job.report = report.clone();
            }
            false
        }
        Completion::Dead { error, report } => {
            let q = state.queues.get_mut(&key.queue).expect("queue of a job");
            q.dead.insert((now, key.id.clone()));
            q.totals.failed += 1;
            q.totals.dead += 1;
            let job = state.get(&key.queue, &key.id).expect("held");
            job.state = JobState::Dead;
            job.cancel = false;
            job.finished_at_ms = Some(now);
            job.failed(error.clone());
            if report.is_some() {
                job.report = report.clone();
            }
            true
        }
        Completion::Cancelled { .. } => unreachable!("matched above"),
    }
}

fn end_cancelled(job: &mut Job, now: u64, result_ttl: Duration) {
    job.state = JobState::Cancelled;
    job.cancel = false;
    job.ready_key = None;
    job.due_at = None;
    job.finished_at_ms = Some(now);
    if !job.held {
        job.expires_at = Some(now + result_ttl.as_millis() as u64);
    }
}

/// The error recorded when a worker stopped heartbeating. Mirrored in `lua/maintain.lua`.
fn lease_expired(attempt: u32, worker: Option<&str>, now: u64) -> AttemptError {
    AttemptError::new(
        attempt,
        FailureKind::LeaseExpired,
        format!(
            "the lease expired: worker `{}` stopped heartbeating (killed, hung or cut off from the broker)",
            worker.unwrap_or("?")
        ),
        now,
    )
}
