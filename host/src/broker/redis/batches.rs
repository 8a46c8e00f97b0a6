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
        // Jobs that ended but are not settled into `pending` yet (the step after their ack).
        let [ends, _] = self.keys.queue(queue).batches;
        let unsettled: Option<u64> = self
            .query(redis::cmd("HGET").arg(&ends).arg(id).clone())
            .await?;
        let num = |f: &str| map.get(f).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(BatchInfo {
            id: id.to_owned(),
            queue: queue.to_owned(),
            total: num("total").unwrap_or(0),
            pending: num("pending")
                .unwrap_or(0)
                .saturating_sub(unsettled.unwrap_or(0)),
            callback_id: map.get("callback_id").cloned().unwrap_or_default(),
            created_at_ms: num("created").unwrap_or(0),
            done_at_ms: num("done"),
        }))
    }
}

/// Batches whose settling a maintenance pass picks up at most (left by a worker that died between
/// ending a batch's job and settling it); the rest wait for the next pass.
const SETTLE_LEFTOVER: usize = 100;

impl RedisBroker {
    /// The step after jobs of batches `bids` on `queue` ended (the scripts that end jobs only
    /// count them): settles each batch's `pending` and, for a batch with none left, enqueues its
    /// callback. Safe to repeat, and to run from several workers at once.
    pub(super) async fn settle_batches(
        &self,
        queue: &str,
        bids: &[String],
    ) -> Result<(), BrokerError> {
        for bid in bids {
            self.settle_batch(queue, bid).await?;
        }
        Ok(())
    }

    /// Settles batches a crashed worker left unsettled or without their callback, at most
    /// [`SETTLE_LEFTOVER`] per call.
    pub(super) async fn settle_leftover_batches(&self, queue: &str) -> Result<(), BrokerError> {
        let [ends, due] = self.keys.queue(queue).batches;
        let (_, fields): (String, Vec<String>) = self
            .query(
                redis::cmd("HSCAN")
                    .arg(&ends)
                    .arg(0)
                    .arg("COUNT")
                    .arg(SETTLE_LEFTOVER)
                    .clone(),
            )
            .await?;
        let mut bids: Vec<String> = fields.into_iter().step_by(2).collect();
        let (_, members): (String, Vec<String>) = self
            .query(
                redis::cmd("SSCAN")
                    .arg(&due)
                    .arg(0)
                    .arg("COUNT")
                    .arg(SETTLE_LEFTOVER)
                    .clone(),
            )
            .await?;
        bids.extend(members);
        bids.sort();
        bids.dedup();
        bids.truncate(SETTLE_LEFTOVER);
        self.settle_batches(queue, &bids).await
    }

    async fn settle_batch(&self, queue: &str, bid: &str) -> Result<(), BrokerError> {
        let [ends, due] = self.keys.queue(queue).batches;
        let [hash, jobs] = self.keys.batch(queue, bid);
        let mut settle = self.queue_script(&SCRIPTS.batch_settle, queue);
        settle.arg(bid).key(&ends).key(&due).key(&hash);
        let callback: Option<String> = self.script(&settle).await?;
        let Some(callback) = callback else {
            return Ok(());
        };
        // The batch's job list never changes after it is accepted; the script checks its length.
        let ids: Vec<String> = self
            .query(redis::cmd("LRANGE").arg(&jobs).arg(0).arg(-1).clone())
            .await?;
        let mut enqueue = self.queue_script(&SCRIPTS.batch_callback, queue);
        enqueue
            .key(&due)
            .key(&hash)
            .key(&jobs)
            .key(self.keys.job(queue, &callback));
        self.declare_jobs(&mut enqueue, queue, ids.iter().map(String::as_str), false);
        enqueue.arg(bid).arg(&callback).arg(&ids);
        let _: u32 = self.script(&enqueue).await?;
        Ok(())
    }
}
