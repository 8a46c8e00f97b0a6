//! The memory broker's read-only views: modules, queue counts, job listings, workers, usage.

use std::collections::HashMap;

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{
    BrokerError, Durability, Inspect, JobPage, JobRecord, MAX_FINISHED_LISTED, ModuleInfo,
    QueueCounts, WORKER_TTL, WorkerInfo,
};
use crate::job::JobState;
use crate::modules::ModuleHash;

#[async_trait]
impl Inspect for MemoryBroker {
    async fn durability(&self) -> Durability {
        Durability {
            backend: "memory",
            ..Durability::default()
        }
    }

    async fn job_records(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<Option<JobRecord>>, BrokerError> {
        let mut state = self.lock();
        Ok(ids
            .iter()
            .map(|id| state.get(queue, id).map(|j| j.record(queue, id)))
            .collect())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
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
        let now = st.now;
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

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let mut state = self.lock();
        let cutoff = state.now.saturating_sub(WORKER_TTL.as_millis() as u64);
        state.workers.retain(|_, w| w.last_seen_ms >= cutoff);
        Ok(state.workers.values().cloned().collect())
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
}
