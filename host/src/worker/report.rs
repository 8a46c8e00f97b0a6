//! What a worker tells the broker while jobs run and end: acknowledgements in batches (each with
//! the fetch that refills the slots its runs freed), live progress four times a second, and
//! heartbeats that extend every held lease, stop runs whose lease was lost or whose
//! cancellation was requested, and report the worker to the registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use super::retry::cancelled;
use super::{Counters, InFlightMap};
use crate::broker::{Ack, Completion, JobRef, Lease, LeaseKey, WorkerBroker, WorkerInfo};
use crate::job::{JobInfo, Progress};
use crate::sandbox::ProgressSink;
use crate::time::now_ms;

/// How often running jobs' latest progress goes to the broker: a progress bar that moves four
/// times a second looks live, and it costs one script call per worker per period however often
/// guests report.
const PROGRESS_FLUSH: Duration = Duration::from_millis(250);

/// The latest progress of each running job, between flushes.
#[derive(Default)]
pub(super) struct ProgressBoard {
    latest: Mutex<HashMap<(String, String), Progress>>,
}

impl ProgressSink for ProgressBoard {
    fn progress(&self, job: &JobInfo, progress: &Progress) {
        self.latest
            .lock()
            .expect("not poisoned")
            .insert((job.queue.clone(), job.id.clone()), progress.clone());
    }
}

/// A run that ended: its acknowledgement, and the worker slot it held (none for a run stopped
/// from outside, whose slot went back when its task was aborted).
pub(super) struct Finished {
    pub(super) ack: Ack,
    pub(super) slot: Option<OwnedSemaphorePermit>,
}

/// Leases the acker fetched, with a slot for each (and maybe a few more, to give back).
pub(super) type Refilled = (Vec<Lease>, Vec<OwnedSemaphorePermit>);

/// How the acker refills the slots that the runs of a batch freed: one fetch sent at once with
/// the batch's acks, so that Redis reads both in one go and answers both in one write — two
/// round trips become one, and a round trip costs Redis more than most scripts do.
pub(super) struct Refill {
    pub(super) queues: Vec<String>,
    pub(super) weights: Vec<u32>,
    pub(super) lease: Duration,
    pub(super) worker: String,
    /// The most jobs one fetch takes (`fetch_batch`).
    pub(super) max: usize,
    /// Set when the worker stops fetching: slots are then only given back.
    pub(super) draining: Arc<AtomicBool>,
    /// Where the leases go to be started (the worker's loop).
    pub(super) leases: mpsc::UnboundedSender<Refilled>,
}

impl Refill {
    /// Fetches for `slots` (at most `max` of them; the rest go back to the worker's slots) and
    /// hands what it leased to the worker's loop, with the slots. A failed fetch: the slots go
    /// back, and the loop fetches for them (retrying).
    async fn fetch(
        &self,
        broker: &Arc<dyn WorkerBroker>,
        mut slots: Vec<OwnedSemaphorePermit>,
        rng: &mut fastrand::Rng,
    ) {
        if slots.is_empty() || self.draining.load(Ordering::SeqCst) {
            return;
        }
        slots.truncate(self.max.max(1));
        let order = super::fetch_order(&self.queues, &self.weights, rng);
        match broker
            .fetch(&order, slots.len(), self.lease, &self.worker)
            .await
        {
            // Even none: the loop then waits for work before it fetches for these slots. The
            // send cannot fail: the receiver lives until this acker, the only sender, has ended
            // (past the loop's end, it hands back what it receives).
            Ok(leases) => {
                let _ = self.leases.send((leases, slots));
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetch with acks failed; the worker's loop fetches")
            }
        }
    }
}

/// Acks `batch`, retrying; returns how many were stale once applied.
async fn ack_rounds(
    broker: &Arc<dyn WorkerBroker>,
    batch: &[Ack],
    counters: &Counters,
) -> Option<usize> {
    // Each round already retries for the broker's retry window (30 s for Redis): ten rounds ride
    // out a long outage without pinning a shutting-down worker forever.
    const ROUNDS: u32 = 10;
    let mut pause = Duration::from_millis(50);
    for round in 1..=ROUNDS {
        match broker.ack(batch).await {
            Ok(stale) => {
                counters.stale.fetch_add(stale as u64, Ordering::Relaxed);
                if stale > 0 {
                    tracing::warn!(stale, "acks ignored: those leases had expired and moved on");
                }
                return Some(stale);
            }
            Err(e) if round == ROUNDS => {
                tracing::error!(error = %e, jobs = batch.len(), "giving up on acks: these jobs' leases will expire and they will run again");
            }
            Err(e) => {
                // Keep trying: giving up makes the lease expire and the job run again.
                tracing::warn!(error = %e, jobs = batch.len(), "ack failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
    None
}

/// Sends acks in batches — everything that finished while the previous batch was in flight —
/// each with the fetch that refills the slots the batch's runs freed ([`Refill`]).
pub(super) async fn ack_loop(
    broker: Arc<dyn WorkerBroker>,
    mut rx: mpsc::UnboundedReceiver<Finished>,
    inflight: InFlightMap,
    counters: Arc<Counters>,
    children: Arc<super::ChildWatch>,
    refill: Refill,
) {
    // An ack batch this large holds Redis for about a millisecond.
    const MAX_BATCH: usize = 256;
    let mut finished = Vec::with_capacity(MAX_BATCH);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut rng = fastrand::Rng::new();
    while rx.recv_many(&mut finished, MAX_BATCH).await > 0 {
        let mut slots = Vec::new();
        for f in finished.drain(..) {
            slots.extend(f.slot);
            batch.push(f.ack);
        }
        // The ack is sent first (a queue's concurrency limit counts the slots it frees), the
        // fetch right behind it.
        let (stale_in_batch, ()) = tokio::join!(
            ack_rounds(&broker, &batch, &counters),
            refill.fetch(&broker, slots, &mut rng)
        );
        // Parents that ended for good let their sub-jobs' records expire (after the result
        // TTL). Any attempt but a first one may have enqueued some, so those are always asked.
        let ended_parents: Vec<JobRef> = {
            let map = inflight.lock().expect("not poisoned");
            batch
                .iter()
                .filter(|a| {
                    let had_children = match &a.completion {
                        Completion::Succeeded(report) => !report.sub_jobs.is_empty(),
                        Completion::Dead { report, .. } => {
                            report.as_ref().is_none_or(|r| !r.sub_jobs.is_empty())
                        }
                        Completion::Cancelled { .. } => true,
                        Completion::Retry { .. } => return false,
                    };
                    had_children || map.get(&a.lease).is_none_or(|f| f.attempt > 1)
                })
                .map(|a| JobRef {
                    queue: a.lease.queue.clone(),
                    id: a.lease.id.clone(),
                })
                .collect()
        };
        if !ended_parents.is_empty() {
            // Off the ack path: releases need not hold up the next batch.
            let broker = broker.clone();
            tokio::spawn(async move {
                let releases = ended_parents.iter().map(|p| broker.release_children(p));
                for (parent, released) in ended_parents
                    .iter()
                    .zip(futures_util::future::join_all(releases).await)
                {
                    if let Err(e) = released {
                        tracing::warn!(error = %e, id = %parent.id, "could not release sub-jobs; their records are kept");
                    }
                }
            });
        }
        // Parents waiting in this worker for these jobs read their records now.
        // When every ack of the batch was applied, the outcomes are the stored ones.
        children.ended(
            batch
                .iter()
                .filter(|a| !matches!(a.completion, Completion::Retry { .. }))
                .map(|a| {
                    let told = (stale_in_batch == Some(0))
                        .then(|| super::join::acked_outcome(&a.completion))
                        .flatten();
                    (a.lease.queue.as_str(), a.lease.id.as_str(), told)
                }),
        );
        let mut map = inflight.lock().expect("not poisoned");
        for ack in batch.drain(..) {
            map.remove(&ack.lease);
            let counter = match ack.completion {
                Completion::Succeeded(_) => &counters.succeeded,
                Completion::Retry { .. } => &counters.retried,
                Completion::Dead { .. } => &counters.dead,
                Completion::Cancelled { .. } => &counters.cancelled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends running jobs' latest progress to the broker every [`PROGRESS_FLUSH`].
pub(super) async fn progress_loop(
    broker: Arc<dyn WorkerBroker>,
    board: Arc<ProgressBoard>,
    inflight: InFlightMap,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_FLUSH) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let latest = std::mem::take(&mut *board.latest.lock().expect("not poisoned"));
        if latest.is_empty() {
            continue;
        }
        let updates: Vec<(LeaseKey, Progress)> = inflight
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, f)| !f.acking)
            .filter_map(|(k, _)| {
                latest
                    .get(&(k.queue.clone(), k.id.clone()))
                    .map(|p| (k.clone(), p.clone()))
            })
            .collect();
        if !updates.is_empty()
            && let Err(e) = broker.report_progress(&updates).await
        {
            tracing::warn!(error = %e, "progress update failed");
        }
    }
}

/// Extends every held lease each `min(lease / 3, 1 s)`, abandons runs whose lease was lost, stops
/// those whose cancellation was requested, and reports the worker to the registry.
pub(super) async fn heartbeat_loop(
    broker: Arc<dyn WorkerBroker>,
    inflight: InFlightMap,
    lease: Duration,
    mut me: WorkerInfo,
    acks: mpsc::UnboundedSender<Finished>,
    mut stop: watch::Receiver<bool>,
    waiting: impl Fn() -> usize + Send + 'static,
) {
    // A third of the lease, so two heartbeats may be lost before it expires; at most a second,
    // because the heartbeat is also how a running job hears that it was cancelled. One script
    // a second carrying every held lease costs Redis next to nothing.
    let period = (lease / 3).min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let held: Vec<LeaseKey> = inflight
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        me.in_flight = held.len();
        me.waiting = waiting();
        me.last_seen_ms = now_ms();
        if let Err(e) = broker.worker_seen(&me).await {
            tracing::warn!(error = %e, "worker report failed");
        }
        if held.is_empty() {
            continue;
        }
        match broker.heartbeat(&held, lease).await {
            Ok(beat) => {
                let mut map = inflight.lock().expect("not poisoned");
                for key in beat.cancel {
                    let Some(entry) = map.get_mut(&key).filter(|f| !f.acking) else {
                        continue;
                    };
                    tracing::info!(id = %key.id, queue = %key.queue, "cancelled while running; stopping it");
                    if let Some(handle) = entry.abort.take() {
                        handle.abort();
                    }
                    entry.acking = true;
                    let completion = cancelled(entry.attempt);
                    let _ = acks.send(Finished {
                        ack: Ack {
                            lease: key,
                            completion,
                        },
                        slot: None,
                    });
                }
                for key in beat.lost {
                    // A job whose ack is on its way is left to it: the ack will be counted stale.
                    if map.get(&key).is_some_and(|f| !f.acking) {
                        tracing::warn!(id = %key.id, queue = %key.queue, "lease lost; abandoning the run");
                        if let Some(handle) = map.remove(&key).and_then(|f| f.abort) {
                            handle.abort();
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
