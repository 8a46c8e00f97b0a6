//! The memory broker's operator actions: the dead set, run now, limits, pause, cancel, deleting a
//! module.

use async_trait::async_trait;

use super::{MemoryBroker, end_cancelled};
use crate::broker::{
    Admin, Broker, BrokerError, CancelOutcome, Inspect, ModuleDeletion, QueueLimits,
};
use crate::job::JobState;
use crate::modules::ModuleHash;

#[async_trait]
impl Admin for MemoryBroker {
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
        let outcome = {
            let mut state = self.lock();
            let now = state.now;
            let Some(job) = state.get(queue, id) else {
                return Ok(CancelOutcome::NotFound);
            };
            match job.state {
                JobState::Ready | JobState::Scheduled => {
                    let (ready_key, due_at) = (job.ready_key.take(), job.due_at);
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
