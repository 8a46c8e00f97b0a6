//! The Redis broker's enqueue: one script call per queue and chunk, and small enqueues to one
//! queue that arrive together combined into one call (a call's fixed cost is most of what a
//! one-job enqueue costs Redis).

use std::collections::HashMap;

use super::{ENQUEUE_CHUNK, RedisBroker, SCRIPTS, queue_full};
use crate::broker::{BrokerError, Enqueued};
use crate::invocation::NewJob;

/// Enqueues of at most this many jobs, all on one queue, are combined with others waiting for
/// the same queue at the same moment (larger ones go out on their own: they already amortise a
/// script call).
const COMBINE_UP_TO: usize = 64;

/// Enqueue calls waiting to be sent together, per queue: one script call for all of them costs
/// Redis a fraction of one call each (the fixed cost of a call is most of a one-job enqueue).
/// A queue is listed exactly while a task is sending its calls (it takes whatever waits when its
/// call is done), so each queue has its own sender and a queue whose master stalls holds up no
/// other.
#[derive(Default)]
pub(super) struct Combiner {
    queues: HashMap<String, Vec<Pending>>,
}

/// One enqueue call's jobs and where its answer goes.
type Pending = (
    Vec<NewJob>,
    tokio::sync::oneshot::Sender<Result<Vec<Enqueued>, BrokerError>>,
);

impl RedisBroker {
    /// Enqueues `jobs`: a small call on one queue waits to go out with the others arriving for
    /// that queue (see [`Combiner`]); any other goes out at once.
    pub(super) async fn enqueue_combined(
        &self,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, BrokerError> {
        let queue = match jobs.first() {
            Some(first) if jobs.len() <= COMBINE_UP_TO => first.queue(),
            _ => return self.enqueue_now(jobs).await,
        };
        if jobs.iter().any(|j| j.queue() != queue) {
            return self.enqueue_now(jobs).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut combiner = self.combiner.lock().expect("not poisoned");
            let lead = !combiner.queues.contains_key(queue);
            let waiting = combiner.queues.entry(queue.to_owned()).or_default();
            waiting.push((jobs.to_vec(), tx));
            lead
        };
        if lead {
            // A task of its own: a caller that gives up cannot leave the others unanswered.
            let (broker, queue) = (self.clone(), queue.to_owned());
            tokio::spawn(async move { broker.send_combined(queue).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(BrokerError::Unavailable {
                backend: "redis",
                reason: "the enqueue was interrupted before Redis answered; it is safe to repeat"
                    .into(),
            })
        })
    }

    /// Sends what waits for `queue`, call after call, until nothing does: enqueues that arrive
    /// during a call go out together in the next (one script call: all or nothing, at most
    /// [`ENQUEUE_CHUNK`] jobs; the rest wait for the next).
    async fn send_combined(&self, queue: String) {
        loop {
            let calls: Vec<Pending> = {
                let mut combiner = self.combiner.lock().expect("not poisoned");
                let waiting = combiner.queues.entry(queue.clone()).or_default();
                if waiting.is_empty() {
                    combiner.queues.remove(&queue);
                    return;
                }
                let mut jobs = 0;
                let take = waiting
                    .iter()
                    .take_while(|(j, _)| {
                        jobs += j.len();
                        jobs <= ENQUEUE_CHUNK
                    })
                    .count()
                    .max(1);
                waiting.drain(..take).collect()
            };
            self.send_one_call(calls).await;
        }
    }

    /// Sends calls for one queue as one script call and answers each.
    async fn send_one_call(&self, calls: Vec<Pending>) {
        let all: Vec<NewJob> = calls.iter().flat_map(|(jobs, _)| jobs.clone()).collect();
        match self.enqueue_now(&all).await {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for (jobs, tx) in calls {
                    let _ = tx.send(Ok(answers.by_ref().take(jobs.len()).collect()));
                }
            }
            // The queue had no room for all of them (and nothing was written): each on its
            // own, as if it had come alone.
            Err(BrokerError::QueueFull { .. }) if calls.len() > 1 => {
                for (jobs, tx) in calls {
                    let _ = tx.send(self.enqueue_now(&jobs).await);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                let mut calls = calls.into_iter();
                if let Some((_, tx)) = calls.next() {
                    let _ = tx.send(Err(e));
                }
                for (_, tx) in calls {
                    let _ = tx.send(Err(BrokerError::Unavailable {
                        backend: "redis",
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    /// Enqueues `jobs` in as few script calls as their queues allow (at most
    /// [`ENQUEUE_CHUNK`] jobs each), sent together.
    async fn enqueue_now(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError> {
        self.register_queues(jobs.iter().map(NewJob::queue)).await?;
        // Group by queue (one slot per script call), keeping each job's position.
        let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            by_queue.entry(job.queue()).or_default().push(i);
        }
        let mut calls = Vec::new();
        for (queue, positions) in &by_queue {
            for chunk in positions.chunks(ENQUEUE_CHUNK) {
                let mut inv = self.queue_script(&SCRIPTS.enqueue, queue);
                inv.arg(chunk.len());
                for &i in chunk {
                    let job = &jobs[i];
                    let inv_json =
                        serde_json::to_string(&job.invocation).expect("plain data serialises");
                    inv.arg(job.id())
                        .arg(inv_json)
                        .arg(job.invocation.priority)
                        .arg(job.invocation.max_attempts)
                        .arg(job.run_at_ms.unwrap_or(0));
                }
                self.declare_jobs(&mut inv, queue, chunk.iter().map(|&i| jobs[i].id()), false);
                calls.push((*queue, chunk, inv));
            }
        }
        // Chunks go out together: the connection pipelines them.
        let replies = futures_util::future::join_all(
            calls.iter().map(|(_, _, inv)| self.script::<Vec<u8>>(inv)),
        )
        .await;
        let mut out = vec![Enqueued::Existed; jobs.len()];
        for ((queue, chunk, _), reply) in calls.iter().zip(replies) {
            let reply = reply.map_err(|e| queue_full(queue, e))?;
            for (&i, created) in chunk.iter().zip(reply) {
                out[i] = if created == 1 {
                    Enqueued::Created
                } else {
                    Enqueued::Existed
                };
            }
        }
        Ok(out)
    }
}
