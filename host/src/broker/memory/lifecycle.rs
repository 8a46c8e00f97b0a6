//! The memory broker's core: modules, enqueue, fetch, heartbeats, acknowledgements, maintenance
//! and the job record — what a worker loop needs.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{MemoryBroker, apply, end_cancelled, lease_expired};
use crate::broker::{
    Ack, Broker, BrokerError, Enqueued, Heartbeat, JobRecord, Lease, LeaseKey, Maintenance,
    ModuleInfo,
};
use crate::invocation::NewJob;
use crate::job::{JobState, Progress};
use crate::modules::ModuleHash;

#[async_trait]
impl Broker for MemoryBroker {
    async fn put_module(&self, hash: ModuleHash, bytes: &[u8]) -> Result<ModuleInfo, BrokerError> {
        let mut state = self.lock();
        let now = state.now;
        let entry = state.modules.entry(hash).or_insert_with(|| {
            let info = ModuleInfo {
                hash,
                size: bytes.len() as u64,
                uploaded_at_ms: now,
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

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut woke = false;
        {
            let mut state = self.lock();
            let now = state.now;
            state.check_room(jobs)?;
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

    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<Vec<Lease>, BrokerError> {
        let mut state = self.lock();
        let now = state.now;
        let deadline = now + lease.as_millis() as u64;
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
        let mut state = self.lock();
        let deadline = state.now + lease.as_millis() as u64;
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

    async fn ack(&self, acks: &[Ack]) -> Result<usize, BrokerError> {
        let result_ttl = self.result_ttl;
        let mut stale = 0;
        let mut finished = false;
        {
            let mut state = self.lock();
            let now = state.now;
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

    async fn maintain(&self, queue: &str, own: &[LeaseKey]) -> Result<Maintenance, BrokerError> {
        let mut done = Maintenance::default();
        let mut extra_work = false;
        {
            let mut state = self.lock();
            let now = state.now;
            // The caller's own leases (by id, with the token it holds): left to its heartbeat.
            let mut mine: HashSet<String> = HashSet::new();
            for k in own.iter().filter(|k| k.queue == queue) {
                if state
                    .get(queue, &k.id)
                    .is_some_and(|j| j.state == JobState::Leased && j.token == k.token)
                {
                    mine.insert(k.id.clone());
                }
            }
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
                .filter(|(id, _)| !mine.contains(*id))
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
}
