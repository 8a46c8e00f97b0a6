//! The memory broker's batches: all of a batch's jobs at once, and its progress.

use async_trait::async_trait;

use super::{Batch, MemoryBroker};
use crate::broker::{BatchInfo, Batches, BrokerError, Enqueued, NewBatch};
use crate::invocation::InvocationError;

#[async_trait]
impl Batches for MemoryBroker {
    async fn enqueue_batch(&self, batch: &NewBatch) -> Result<Enqueued, BrokerError> {
        let queue = batch.callback.queue().to_owned();
        let woke = {
            let mut state = self.lock();
            let now = state.now;
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
            state.check_room(&batch.jobs)?;
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
}
