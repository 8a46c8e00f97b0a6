//! The in-process broker: the same state machine as Redis, in a mutex.
//!
//! It is the embedded default (the demo, unit tests, a single process that wants a queue without a
//! server) and the reference the Redis scripts are tested against. Nothing survives the process;
//! use [`super::redis::RedisBroker`] when jobs must outlive it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Ack, AttemptError, BatchInfo, Broker, BrokerError, CancelOutcome, Completion, CronEntry,
    DEFAULT_RESULT_TTL, Enqueued, Heartbeat, JobPage, JobRecord, JobState, Lease, LeaseKey,
    MAX_ERRORS, MAX_FINISHED_LISTED, Maintenance, ModuleDeletion, ModuleInfo, NewBatch,
    QueueCounts, QueueLimits, QueueTotals, RunReport, WORKER_TTL, WorkerInfo, now_ms,
};
use crate::invocation::{Invocation, InvocationError, NewJob};
use crate::modules::ModuleHash;
use crate::sandbox::Progress;

/// The in-process broker.
pub struct MemoryBroker {
    state: Mutex<State>,
    result_ttl: Duration,
    /// Woken when a job becomes ready.
    work: Notify,
    /// Woken when a job becomes final.
    done: Notify,
}

#[derive(Default)]
struct State {
    queues: BTreeMap<String, Queue>,
    jobs: HashMap<(String, String), Job>,
    modules: BTreeMap<ModuleHash, (Arc<Vec<u8>>, ModuleInfo)>,
    /// (queue, name) → entry, its `next_ms` the next tick.
    crons: BTreeMap<(String, String), CronEntry>,
    workers: BTreeMap<String, WorkerInfo>,
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
    /// (-priority, seq) → id.
    ready: BTreeMap<(i32, u64), String>,
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
    ready_key: Option<(i32, u64)>,
    due_at: Option<u64>,
    expires_at: Option<u64>,
    /// Someone asked to cancel it while it ran.
    cancel: bool,
    /// The batch it belongs to, and whether its end was counted there.
    batch: Option<String>,
    batch_counted: bool,
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
        let key = (-job.invocation.priority, if front { 0 } else { q.seq });
        q.ready.insert(key, id.to_owned());
        job.ready_key = Some(key);
        job.due_at = None;
        job.state = JobState::Ready;
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
        let outcomes: Vec<serde_json::Value> = ids
            .iter()
            .map(|jid| {
                let state = self
                    .jobs
                    .get(&(queue.to_owned(), jid.clone()))
                    .map_or("expired", |j| j.state.as_str());
                serde_json::json!({ "id": jid, "state": state })
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
        let now = now_ms();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every method mutates after its
        // checks, so poisoning carries no information here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
            .any(|q| state.queues.get(q).is_some_and(|q| q.fetchable(now_ms())))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn put_module(&self, hash: ModuleHash, bytes: &[u8]) -> Result<ModuleInfo, BrokerError> {
        let mut state = self.lock();
        let entry = state.modules.entry(hash).or_insert_with(|| {
            let info = ModuleInfo {
                hash,
                size: bytes.len() as u64,
                uploaded_at_ms: now_ms(),
            };
            (Arc::new(bytes.to_vec()), info)
        });
        Ok(entry.1.clone())
    }

    async fn module(&self, hash: ModuleHash) -> Result<Option<Vec<u8>>, BrokerError> {
        Ok(self
            .lock()
            .modules
            .get(&hash)
            .map(|(bytes, _)| bytes.as_ref().clone()))
    }

    async fn has_module(&self, hash: ModuleHash) -> Result<bool, BrokerError> {
        Ok(self.lock().modules.contains_key(&hash))
    }

    async fn modules(&self) -> Result<Vec<ModuleInfo>, BrokerError> {
        let mut all: Vec<_> = self
            .lock()
            .modules
            .values()
            .map(|(_, i)| i.clone())
            .collect();
        all.sort_by_key(|i| i.uploaded_at_ms);
        Ok(all)
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError> {
        let now = now_ms();
        let mut out = Vec::with_capacity(jobs.len());
        let mut woke = false;
        {
            let mut state = self.lock();
            for job in jobs {
                if state.get(job.queue(), job.id()).is_some() {
                    out.push(Enqueued::Existed);
                    continue;
                }
                woke |= state.insert(job, None, now);
                out.push(Enqueued::Created);
            }
        }
        if woke {
            self.work.notify_waiters();
        }
        Ok(out)
    }

    async fn enqueue_batch(&self, batch: &NewBatch) -> Result<Enqueued, BrokerError> {
        let now = now_ms();
        let queue = batch.callback.queue().to_owned();
        let woke = {
            let mut state = self.lock();
            if state
                .batches
                .contains_key(&(queue.clone(), batch.id.clone()))
            {
                return Ok(Enqueued::Existed);
            }
            if let Some(taken) = batch
                .jobs
                .iter()
                .find(|j| state.jobs.contains_key(&(queue.clone(), j.id().to_owned())))
            {
                return Err(InvocationError::Field {
                    field: "jobs",
                    reason: format!(
                        "job `{}` already exists and cannot join batch `{}`",
                        taken.id(),
                        batch.id
                    ),
                }
                .into());
            }
            state.batches.insert(
                (queue.clone(), batch.id.clone()),
                Batch {
                    pending: batch.jobs.len() as u64,
                    callback: batch.callback.clone(),
                    jobs: batch.jobs.iter().map(|j| j.id().to_owned()).collect(),
                    created_at_ms: now,
                    done_at_ms: None,
                },
            );
            let mut woke = false;
            for job in &batch.jobs {
                woke |= state.insert(job, Some(&batch.id), now);
            }
            woke
        };
        if woke {
            self.work.notify_waiters();
        }
        Ok(Enqueued::Created)
    }

    async fn batch(&self, queue: &str, id: &str) -> Result<Option<BatchInfo>, BrokerError> {
        let state = self.lock();
        Ok(state
            .batches
            .get(&(queue.to_owned(), id.to_owned()))
            .map(|b| BatchInfo {
                id: id.to_owned(),
                queue: queue.to_owned(),
                total: b.jobs.len() as u64,
                pending: b.pending,
                callback_id: b.callback.id().to_owned(),
                created_at_ms: b.created_at_ms,
                done_at_ms: b.done_at_ms,
            }))
    }

    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<Vec<Lease>, BrokerError> {
        let now = now_ms();
        let deadline = now + lease.as_millis() as u64;
        let mut state = self.lock();
        let mut out = Vec::new();
        for queue in queues {
            let Some(q) = state.queues.get_mut(queue) else {
                continue;
            };
            // This queue's share: what its limits allow right now.
            let mut allowed = max - out.len();
            if q.paused {
                allowed = 0;
            }
            if let Some(c) = q.limits.concurrency {
                allowed = allowed.min((c as usize).saturating_sub(q.leased.len()));
            }
            if let Some((rate, per_ms)) = q.limits.rate {
                let window = now / per_ms.max(1);
                if q.rate_window.0 != window {
                    q.rate_window = (window, 0);
                }
                allowed = allowed.min(rate.saturating_sub(q.rate_window.1) as usize);
            }
            let stop_at = out.len() + allowed;
            while out.len() < stop_at {
                let Some(q) = state.queues.get_mut(queue) else {
                    break;
                };
                let Some((_, id)) = q.ready.pop_first() else {
                    break;
                };
                q.leased.insert(id.clone(), deadline);
                q.rate_window.1 += 1;
                let job = state.get(queue, &id).expect("indexed jobs exist");
                job.attempts += 1;
                job.token += 1;
                job.state = JobState::Leased;
                job.ready_key = None;
                job.worker = Some(worker.to_owned());
                job.started_at_ms = Some(now);
                out.push(Lease {
                    key: LeaseKey {
                        queue: queue.clone(),
                        id,
                        token: job.token,
                    },
                    attempt: job.attempts,
                    invocation: job.invocation.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> Result<(), BrokerError> {
        let mut notified = pin!(self.work.notified());
        notified.as_mut().enable();
        if self.any_ready(queues) {
            return Ok(());
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        Ok(())
    }

    async fn heartbeat(
        &self,
        leases: &[LeaseKey],
        lease: Duration,
    ) -> Result<Heartbeat, BrokerError> {
        let deadline = now_ms() + lease.as_millis() as u64;
        let mut state = self.lock();
        let mut beat = Heartbeat::default();
        for key in leases {
            let held = state
                .get(&key.queue, &key.id)
                .filter(|j| j.state == JobState::Leased && j.token == key.token)
                .map(|j| j.cancel);
            match held {
                Some(cancel) => {
                    let q = state.queues.get_mut(&key.queue).expect("queue of a job");
                    q.leased.insert(key.id.clone(), deadline);
                    if cancel {
                        beat.cancel.push(key.clone());
                    }
                }
                None => beat.lost.push(key.clone()),
            }
        }
        Ok(beat)
    }

    async fn complete(&self, acks: &[Ack]) -> Result<usize, BrokerError> {
        let now = now_ms();
        let result_ttl = self.result_ttl;
        let mut stale = 0;
        let mut finished = false;
        {
            let mut state = self.lock();
            for ack in acks {
                let key = &ack.lease;
                let held = state
                    .get(&key.queue, &key.id)
                    .is_some_and(|j| j.state == JobState::Leased && j.token == key.token);
                if !held {
                    stale += 1;
                    continue;
                }
                let q = state.queues.get_mut(&key.queue).expect("queue of a job");
                q.leased.remove(&key.id);
                let wants_cancel = state.get(&key.queue, &key.id).expect("held").cancel;
                if apply(
                    &mut state,
                    key,
                    &ack.completion,
                    wants_cancel,
                    now,
                    result_ttl,
                ) {
                    finished = true;
                    state.ended(&key.queue, &key.id, now);
                }
            }
        }
        if finished {
            self.done.notify_waiters();
        }
        // A slot freed: a worker waiting on a concurrency-limited queue may fetch again.
        self.work.notify_waiters();
        Ok(stale)
    }

    async fn report_progress(&self, updates: &[(LeaseKey, Progress)]) -> Result<(), BrokerError> {
        let mut state = self.lock();
        for (key, progress) in updates {
            if let Some(job) = state
                .get(&key.queue, &key.id)
                .filter(|j| j.state == JobState::Leased && j.token == key.token)
            {
                job.progress = Some(progress.clone());
            }
        }
        Ok(())
    }

    async fn release(&self, leases: &[LeaseKey]) -> Result<(), BrokerError> {
        {
            let mut state = self.lock();
            for key in leases {
                let held = state
                    .get(&key.queue, &key.id)
                    .is_some_and(|j| j.state == JobState::Leased && j.token == key.token);
                if held {
                    let q = state.queues.get_mut(&key.queue).expect("queue of a job");
                    q.leased.remove(&key.id);
                    state.get(&key.queue, &key.id).expect("held").attempts -= 1;
                    state.make_ready(&key.queue, &key.id, true);
                }
            }
        }
        self.work.notify_waiters();
        Ok(())
    }

    async fn maintain(&self, queue: &str) -> Result<Maintenance, BrokerError> {
        let now = now_ms();
        let mut done = Maintenance::default();
        let mut extra_work = false;
        {
            let mut state = self.lock();
            let Some(q) = state.queues.get_mut(queue) else {
                return Ok(done);
            };
            let mut due = Vec::new();
            while let Some(first) = q.scheduled.first() {
                if first.0 > now {
                    break;
                }
                due.push(q.scheduled.pop_first().expect("checked").1);
            }
            let expired: Vec<String> = q
                .leased
                .iter()
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                q.leased.remove(id);
            }
            for id in due {
                if state.get(queue, &id).is_some() {
                    state.make_ready(queue, &id, false);
                    done.promoted += 1;
                }
            }
            for id in expired {
                let Some(job) = state.get(queue, &id) else {
                    continue;
                };
                if job.cancel {
                    end_cancelled(job, now, self.result_ttl);
                    state
                        .queues
                        .get_mut(queue)
                        .expect("queue of a job")
                        .totals
                        .cancelled += 1;
                    extra_work |= state.ended(queue, &id, now);
                    continue;
                }
                let last = job.attempts >= job.invocation.max_attempts;
                job.failed(lease_expired(job.attempts, job.worker.as_deref(), now));
                if last {
                    job.state = JobState::Dead;
                    job.finished_at_ms = Some(now);
                    let q = state.queues.get_mut(queue).expect("queue of a job");
                    q.dead.insert((now, id.clone()));
                    q.totals.dead += 1;
                    done.expired_dead += 1;
                    extra_work |= state.ended(queue, &id, now);
                } else {
                    state.make_ready(queue, &id, false);
                    state
                        .queues
                        .get_mut(queue)
                        .expect("queue of a job")
                        .totals
                        .recovered += 1;
                    done.recovered += 1;
                }
            }
            let before = state.jobs.len();
            state
                .jobs
                .retain(|_, j| j.expires_at.is_none_or(|t| t > now));
            let _expired_results = before - state.jobs.len();
        }
        if done.promoted + done.recovered > 0 || extra_work {
            self.work.notify_waiters();
        }
        if done.expired_dead > 0 || extra_work {
            self.done.notify_waiters();
        }
        Ok(done)
    }

    async fn job(&self, queue: Option<&str>, id: &str) -> Result<Option<JobRecord>, BrokerError> {
        let mut state = self.lock();
        let queues: Vec<String> = match queue {
            Some(q) => vec![q.to_owned()],
            None => state.queues.keys().cloned().collect(),
        };
        Ok(queues
            .iter()
            .find_map(|q| state.get(q, id).map(|j| j.record(q, id))))
    }

    async fn wait_job(
        &self,
        queue: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, BrokerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut notified = pin!(self.done.notified());
            notified.as_mut().enable();
            let record = self.job(Some(queue), id).await?;
            match &record {
                Some(r) if !r.state.is_final() => {}
                _ => return Ok(record),
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(record);
            }
        }
    }

    async fn queues(&self) -> Result<Vec<QueueCounts>, BrokerError> {
        let state = self.lock();
        Ok(state
            .queues
            .iter()
            .map(|(name, q)| QueueCounts {
                oldest_ready_ms: q.ready.first_key_value().and_then(|(_, id)| {
                    state
                        .jobs
                        .get(&(name.clone(), id.clone()))
                        .map(|j| j.enqueued_at_ms)
                }),
                queue: name.clone(),
                ready: q.ready.len() as u64,
                scheduled: q.scheduled.len() as u64,
                leased: q.leased.len() as u64,
                dead: q.dead.len() as u64,
                paused: q.paused,
                limits: q.limits,
                totals: q.totals.clone(),
            })
            .collect())
    }

    async fn jobs(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<JobPage, BrokerError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = now_ms();
        let ids: Vec<String> = match (state, st.queues.get(queue)) {
            (_, None) => Vec::new(),
            (JobState::Ready, Some(q)) => q.ready.values().cloned().collect(),
            (JobState::Scheduled, Some(q)) => {
                q.scheduled.iter().map(|(_, id)| id.clone()).collect()
            }
            (JobState::Leased, Some(q)) => {
                let mut by_deadline: Vec<_> = q.leased.iter().map(|(id, d)| (*d, id)).collect();
                by_deadline.sort();
                by_deadline.into_iter().map(|(_, id)| id.clone()).collect()
            }
            (JobState::Dead, Some(q)) => q.dead.iter().rev().map(|(_, id)| id.clone()).collect(),
            (JobState::Succeeded | JobState::Cancelled, Some(_)) => {
                let mut finished: Vec<_> = st
                    .jobs
                    .iter()
                    .filter(|((q, _), j)| {
                        q == queue && j.state == state && j.expires_at.is_none_or(|t| t > now)
                    })
                    .map(|((_, id), j)| (std::cmp::Reverse(j.finished_at_ms), id.clone()))
                    .collect();
                finished.sort();
                finished.truncate(MAX_FINISHED_LISTED);
                finished.into_iter().map(|(_, id)| id).collect()
            }
        };
        let total = ids.len() as u64;
        let jobs = ids
            .iter()
            .skip(offset)
            .take(limit)
            .filter_map(|id| st.get(queue, id).map(|j| j.record(queue, id)))
            .collect();
        Ok(JobPage { total, jobs })
    }

    async fn retry_dead(&self, queue: &str, id: &str) -> Result<bool, BrokerError> {
        Ok(self.take_from_dead(queue, Some(id), true) == 1)
    }

    async fn delete_dead(&self, queue: &str, id: &str) -> Result<bool, BrokerError> {
        Ok(self.take_from_dead(queue, Some(id), false) == 1)
    }

    async fn retry_all_dead(&self, queue: &str) -> Result<u64, BrokerError> {
        Ok(self.take_from_dead(queue, None, true))
    }

    async fn delete_all_dead(&self, queue: &str) -> Result<u64, BrokerError> {
        Ok(self.take_from_dead(queue, None, false))
    }

    async fn run_now(&self, queue: &str, id: &str) -> Result<bool, BrokerError> {
        {
            let mut state = self.lock();
            let Some(due) = state
                .get(queue, id)
                .filter(|j| j.state == JobState::Scheduled)
                .and_then(|j| j.due_at)
            else {
                return Ok(false);
            };
            let q = state.queues.get_mut(queue).expect("queue of a job");
            q.scheduled.remove(&(due, id.to_owned()));
            state.make_ready(queue, id, false);
        }
        self.work.notify_waiters();
        Ok(true)
    }

    async fn worker_seen(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        self.lock().workers.insert(info.name.clone(), info.clone());
        Ok(())
    }

    async fn worker_gone(&self, name: &str) -> Result<(), BrokerError> {
        self.lock().workers.remove(name);
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let cutoff = now_ms().saturating_sub(WORKER_TTL.as_millis() as u64);
        let mut state = self.lock();
        state.workers.retain(|_, w| w.last_seen_ms >= cutoff);
        Ok(state.workers.values().cloned().collect())
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<(), BrokerError> {
        {
            let mut state = self.lock();
            let q = state.queues.entry(queue.to_owned()).or_default();
            q.limits = *limits;
            q.rate_window = (0, 0);
        }
        self.work.notify_waiters();
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), BrokerError> {
        self.lock()
            .queues
            .entry(queue.to_owned())
            .or_default()
            .paused = paused;
        if !paused {
            self.work.notify_waiters();
        }
        Ok(())
    }

    async fn cancel(&self, queue: &str, id: &str) -> Result<CancelOutcome, BrokerError> {
        let now = now_ms();
        let outcome = {
            let mut state = self.lock();
            let Some(job) = state.get(queue, id) else {
                return Ok(CancelOutcome::NotFound);
            };
            match job.state {
                JobState::Ready | JobState::Scheduled => {
                    let (ready_key, due_at) = (job.ready_key, job.due_at);
                    end_cancelled(job, now, self.result_ttl);
                    let q = state.queues.get_mut(queue).expect("queue of a job");
                    if let Some(k) = ready_key {
                        q.ready.remove(&k);
                    }
                    if let Some(at) = due_at {
                        q.scheduled.remove(&(at, id.to_owned()));
                    }
                    q.totals.cancelled += 1;
                    state.ended(queue, id, now);
                    CancelOutcome::Cancelled
                }
                JobState::Leased => {
                    job.cancel = true;
                    CancelOutcome::Cancelling
                }
                final_state => CancelOutcome::AlreadyFinal(final_state),
            }
        };
        if outcome == CancelOutcome::Cancelled {
            self.done.notify_waiters();
            self.work.notify_waiters();
        }
        Ok(outcome)
    }

    async fn put_cron(&self, entry: &CronEntry) -> Result<(), BrokerError> {
        let mut state = self.lock();
        let queue = entry.invocation.queue.clone();
        state.queues.entry(queue.clone()).or_default();
        state
            .crons
            .insert((queue, entry.name.clone()), entry.clone());
        Ok(())
    }

    async fn crons(&self, queue: Option<&str>) -> Result<Vec<CronEntry>, BrokerError> {
        Ok(self
            .lock()
            .crons
            .iter()
            .filter(|((q, _), _)| queue.is_none_or(|want| want == q))
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn remove_cron(&self, queue: &str, name: &str) -> Result<bool, BrokerError> {
        Ok(self
            .lock()
            .crons
            .remove(&(queue.to_owned(), name.to_owned()))
            .is_some())
    }

    async fn fire_cron(
        &self,
        queue: &str,
        name: &str,
        tick_ms: u64,
        next_ms: u64,
        job: &NewJob,
    ) -> Result<bool, BrokerError> {
        {
            let mut state = self.lock();
            let Some(entry) = state.crons.get_mut(&(queue.to_owned(), name.to_owned())) else {
                return Ok(false);
            };
            if entry.next_ms != tick_ms {
                return Ok(false);
            }
            entry.next_ms = next_ms;
        }
        self.enqueue(std::slice::from_ref(job)).await?;
        Ok(true)
    }

    async fn module_usage(&self) -> Result<HashMap<ModuleHash, u64>, BrokerError> {
        let mut usage = HashMap::new();
        for job in self.lock().jobs.values() {
            if !matches!(job.state, JobState::Succeeded | JobState::Cancelled) {
                *usage.entry(job.invocation.module).or_default() += 1;
            }
        }
        Ok(usage)
    }

    async fn delete_module(
        &self,
        hash: ModuleHash,
        force: bool,
    ) -> Result<ModuleDeletion, BrokerError> {
        if !self.has_module(hash).await? {
            return Ok(ModuleDeletion::NotFound);
        }
        let users = self.module_usage().await?.get(&hash).copied().unwrap_or(0);
        let mut state = self.lock();
        if users > 0 && !force {
            return Ok(ModuleDeletion::InUse(users));
        }
        state.modules.remove(&hash);
        Ok(ModuleDeletion::Deleted)
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
            job.expires_at = Some(now + result_ttl.as_millis() as u64);
            totals(state, &key.queue).succeeded += 1;
            true
        }
        Completion::Cancelled { error } | Completion::Retry { error, .. }
            if wants_cancel || matches!(completion, Completion::Cancelled { .. }) =>
        {
            let job = state.get(&key.queue, &key.id).expect("held");
            job.failed(error.clone());
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
    job.expires_at = Some(now + result_ttl.as_millis() as u64);
}

/// The error recorded when a worker stopped heartbeating. Mirrored in `lua/maintain.lua`.
fn lease_expired(attempt: u32, worker: Option<&str>, now: u64) -> AttemptError {
    AttemptError {
        attempt,
        kind: "lease_expired".to_owned(),
        message: format!(
            "the lease expired: worker `{}` stopped heartbeating (killed, hung or cut off from the broker)",
            worker.unwrap_or("?")
        ),
        at_ms: now,
    }
}
