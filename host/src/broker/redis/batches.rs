//! The Redis broker's batches: all of a batch's jobs in one script, and its progress.

use std::collections::HashMap;

use async_trait::async_trait;

use super::{RedisBroker, SCRIPTS, queue_full};
use crate::broker::{BatchInfo, Batches, BrokerError, Enqueued, NewBatch, NewJob};
use crate::invocation::InvocationError;

#[async_trait]
impl Batches for RedisBroker {
    async fn enqueue_batch(&self, batch: &NewBatch) -> Result<Enqueued, BrokerError> {
        let queue = batch.callback.queue();
        self.register_queues([queue]).await?;
        let cb = &batch.callback;
        let mut inv = self.queue_script(&SCRIPTS.batch_enqueue, queue);
        inv.arg(&batch.id)
            .arg(cb.id())
            .arg(serde_json::to_string(&cb.invocation).expect("plain data serialises"))
            .arg(cb.invocation.priority)
            .arg(cb.invocation.max_attempts)
            .arg(batch.jobs.len());
        for job in &batch.jobs {
            inv.arg(job.id())
                .arg(serde_json::to_string(&job.invocation).expect("plain data serialises"))
                .arg(job.invocation.priority)
                .arg(job.invocation.max_attempts)
                .arg(job.run_at_ms.unwrap_or(0));
        }
        for k in self.keys.batch(queue, &batch.id) {
            inv.key(k);
        }
        self.declare_jobs(&mut inv, queue, batch.jobs.iter().map(NewJob::id), false);
        let created: u32 = match self.script(&inv).await {
            Ok(n) => n,
            // The script's refusal (a job id is taken) is the caller's mistake, not Redis's.
            Err(BrokerError::Unavailable { reason, .. })
                if reason.contains("cannot join batch") =>
            {
                let text = reason;
                let reason = text
                    .split_once("job `")
                    .map_or(text.clone(), |(_, rest)| format!("job `{rest}"));
                return Err(BrokerError::Invocation(InvocationError::Field {
                    field: "jobs",
                    reason,
                }));
            }
            Err(e) => return Err(queue_full(batch.callback.queue(), e)),
        };
        Ok(if created == 1 {
            Enqueued::Created
        } else {
            Enqueued::Existed
        })
    }

    async fn batch(&self, queue: &str, id: &str) -> Result<Option<BatchInfo>, BrokerError> {
        let [key, _] = self.keys.batch(queue, id);
        let map: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(&key).clone()).await?;
        if map.is_empty() {
            return Ok(None);
        }
        let num = |f: &str| map.get(f).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(BatchInfo {
            id: id.to_owned(),
            queue: queue.to_owned(),
            total: num("total").unwrap_or(0),
            pending: num("pending").unwrap_or(0),
            callback_id: map.get("callback_id").cloned().unwrap_or_default(),
            created_at_ms: num("created").unwrap_or(0),
            done_at_ms: num("done"),
        }))
    }
}
