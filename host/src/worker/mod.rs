//! The worker: fetch → run → acknowledge, with heartbeats and a graceful drain.
//!
//! One [`Worker`] keeps up to `concurrency` jobs in flight. Guests run on the sandbox's own
//! threads: one waiting on I/O holds none, and a CPU-bound one yields at every epoch tick, so it
//! cannot starve the other guests — nor the worker's heartbeats and acks, which stay on the
//! caller's runtime (`tests/all/faults.rs` spins 200 guests on two cores under a 5 s lease).
//!
//! - **Fetch** asks the broker for as many jobs as there are free slots, in one atomic step that
//!   leases them; with nothing ready it blocks on the broker (no polling).
//! - **Heartbeats** extend every held lease each `min(lease / 3, 1 s)`; a lease found lost (it
//!   expired and the job went to someone else) aborts the local run, whose result would be
//!   ignored anyway, and a job whose cancellation was requested is stopped.
//! - **Acknowledgements** are batched: whatever finished while the previous batch was in flight goes
//!   out in one call, each ack atomic on its own. The slots those runs held go with it: the acker
//!   sends the fetch that refills them right behind the acks, so that the broker gets both in one
//!   round trip, and hands the leases back to the loop to start.
//! - **Outcomes**: success stores the report; a retryable failure is retried after
//!   [`Backoff`] until `max_attempts`, then dead; the guest's `fail` is dead at once.
//! - **Shutdown**: stop fetching, let running jobs finish within the grace period, abort the rest and
//!   hand their leases back (the attempt is not counted), then flush the acks.
//!
//! What it must not do: touch wasmtime (that is `sandbox`) or Redis (that is `broker`).

mod egress;
mod join;
mod metrics;
mod modules;
mod report;
mod retry;
mod secrets;
mod sub_jobs;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::Instrument as _;

use crate::broker::{Ack, Completion, Lease, LeaseKey, WorkerBroker, WorkerInfo};
use crate::grant::Grant;
use crate::intake::Intake;
use crate::invocation::{args_to_bytes, bytes_to_json, check_args_size};
use crate::job::{AttemptError, FailureKind, JobInfo, RunReport};
use crate::sandbox::{RunOutcome, RunRequest, Sandbox};
use crate::time::now_ms;
pub use egress::{BrokerEgress, DEFAULT_EGRESS_LEASE};
pub use join::{ChildWatch, DEFAULT_MAX_WAITING, RunSlot};
pub use metrics::{
    Counters, DURATION_BUCKETS, FUEL_BUCKETS, Histogram, MAX_HTTP_DESTINATIONS, WorkerStats,
};
pub use modules::ModuleCache;
use report::{Finished, ProgressBoard, Refill, Refilled, ack_loop, heartbeat_loop, progress_loop};
pub use retry::Backoff;
use retry::decide;
pub use secrets::BrokerSecrets;
pub use sub_jobs::{BrokerSubJobs, FanOut, MAX_KEY_LEN, sub_job_id};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Queues to take jobs from. Without weights, in strict order: a later queue only gets a
    /// worker's free slots when the earlier ones are empty.
    pub queues: Vec<String>,
    /// One weight per queue, or empty for strict order. With weights, each fetch tries the
    /// queues in a random order in which a queue comes first with probability weight / total
    /// (Sidekiq's weighted fetch), so no queue starves.
    pub weights: Vec<u32>,
    /// Jobs in flight at once.
    pub concurrency: usize,
    /// How long a fetched job stays leased without a heartbeat. 30 s: a killed worker's jobs run
    /// again within half a minute, and three heartbeats must all be missed first.
    pub lease: Duration,
    /// How long running jobs get to finish after a shutdown signal. 25 s, Sidekiq's default: inside
    /// the 30 s most process managers wait before SIGKILL.
    pub grace: Duration,
    /// Retry delays.
    pub backoff: Backoff,
    /// Period of the maintenance pass (promote due jobs, recover expired leases). Also the
    /// resolution of `run_at` and of retry delays.
    pub maintain_every: Duration,
    /// The most jobs one fetch takes.
    pub fetch_batch: usize,
    /// This worker's name in job records: `host:pid:random`.
    pub name: String,
    /// At start, load every uploaded module in the background (from the artifact cache, or by
    /// compiling it), so that no job waits for a compile. Off by default: a store with many
    /// modules would hold them all in memory.
    pub precompile: bool,
    /// How far jobs may fan out into sub-jobs.
    pub fan_out: FanOut,
    /// Runs that may wait for their sub-jobs at once (each gives its slot back while it waits
    /// and stays in memory, suspended); past it a guest's `join` returns an error. The sandbox
    /// must have room for `concurrency + max_waiting` instances.
    pub max_waiting: usize,
    /// How long a module's grant is used before it is read again: a grant or revoke reaches
    /// runs that start later than this (1 s).
    pub grant_ttl: Duration,
    /// The operator's key, to open the secrets granted to modules (none: a job that asks for
    /// one is told this worker cannot open it).
    pub secret_key: Option<crate::secret::SecretKey>,
    /// How long a held egress slot lives without a renewal (a killed worker's slots come back
    /// within this).
    pub egress_lease: Duration,
    /// How long past its rate window an egress start keeps counting (`None`: 2% of the window,
    /// at least 10 ms); it must cover how much the delay from admission to arrival at the
    /// destination varies.
    pub egress_rate_guard: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec![crate::invocation::DEFAULT_QUEUE.to_owned()],
            weights: Vec::new(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(25),
            backoff: Backoff::default(),
            maintain_every: Duration::from_secs(1),
            // Enough to amortise a round trip over many no-op jobs; small enough that one worker
            // does not hoard a queue that others could share.
            fetch_batch: 64,
            name: default_name(),
            precompile: false,
            fan_out: FanOut::default(),
            max_waiting: join::DEFAULT_MAX_WAITING,
            grant_ttl: modules::DEFAULT_GRANT_TTL,
            secret_key: None,
            egress_lease: DEFAULT_EGRESS_LEASE,
            egress_rate_guard: None,
        }
    }
}

/// Loads every uploaded module, one at a time (a job that needs one meanwhile waits for the same
/// load, never a second one).
async fn precompile(broker: Arc<dyn WorkerBroker>, modules: ModuleCache) {
    let list = match broker.modules().await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "could not list modules to precompile");
            return;
        }
    };
    for info in list {
        let started = std::time::Instant::now();
        match modules.get(info.hash).await {
            Ok(m) => tracing::info!(
                module = %info.hash,
                origin = ?m.origin(),
                ms = started.elapsed().as_millis() as u64,
                "module ready"
            ),
            Err(e) => tracing::warn!(module = %info.hash, error = %e.message, "module not loaded"),
        }
    }
}

/// `host:pid:4-hex`, unique enough to tell workers apart in records and logs.
pub fn default_name() -> String {
    format!(
        "{}:{}:{:04x}",
        hostname(),
        std::process::id(),
        fastrand::u16(..)
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A worker process's job loop.
pub struct Worker {
    broker: Arc<dyn WorkerBroker>,
    sandbox: Sandbox,
    modules: ModuleCache,
    config: WorkerConfig,
    counters: Arc<Counters>,
    progress: Arc<ProgressBoard>,
    secrets: Arc<BrokerSecrets>,
    egress: BrokerEgress,
    children: Arc<ChildWatch>,
}

/// A job in flight: how to stop it, and whether its ack is already on its way.
struct InFlight {
    abort: Option<AbortHandle>,
    attempt: u32,
    acking: bool,
}

type InFlightMap = Arc<Mutex<HashMap<LeaseKey, InFlight>>>;

impl Worker {
    /// A worker taking jobs from `broker` and running them in `sandbox`.
    pub fn new(broker: Arc<dyn WorkerBroker>, sandbox: Sandbox, config: WorkerConfig) -> Self {
        Worker {
            modules: ModuleCache::new(broker.clone(), sandbox.clone())
                .with_grant_ttl(config.grant_ttl),
            secrets: Arc::new(BrokerSecrets::new(
                broker.clone(),
                config.secret_key.clone(),
            )),
            egress: BrokerEgress::new(
                broker.clone(),
                config.egress_lease,
                config.grant_ttl,
                config.egress_rate_guard,
            ),
            broker,
            sandbox,
            config,
            counters: Arc::default(),
            progress: Arc::default(),
            children: Arc::default(),
        }
    }

    /// Live counters (for progress displays).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Runs until `shutdown` completes, then drains (see the module docs) and returns the counts.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerStats {
        let config = &self.config;
        let (stop_tx, stop_rx) = watch::channel(false);
        let inflight: InFlightMap = Arc::default();
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        // Waiting runs stay alive: no more of them than the sandbox has room for beside the
        // running ones.
        let max_waiting = config.max_waiting.min(
            self.sandbox
                .max_instances()
                .saturating_sub(config.concurrency),
        );
        let waiting = Arc::new(Semaphore::new(max_waiting));
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Finished>();
        // Leases the acker fetched for the slots its acks freed, to start here.
        let (refilled_tx, mut refilled) = mpsc::unbounded_channel::<Refilled>();
        let draining = Arc::new(AtomicBool::new(false));

        let acker = tokio::spawn(ack_loop(
            self.broker.clone(),
            ack_rx,
            inflight.clone(),
            self.counters.clone(),
            self.children.clone(),
            Refill {
                queues: config.queues.clone(),
                weights: config.weights.clone(),
                lease: config.lease,
                worker: config.name.clone(),
                max: config.fetch_batch,
                draining: draining.clone(),
                leases: refilled_tx,
            },
        ));
        if config.precompile {
            tokio::spawn(precompile(self.broker.clone(), self.modules.clone()));
        }
        let me = WorkerInfo {
            name: config.name.clone(),
            host: hostname(),
            pid: std::process::id(),
            queues: config.queues.clone(),
            concurrency: config.concurrency,
            in_flight: 0,
            waiting: 0,
            started_at_ms: now_ms(),
            last_seen_ms: now_ms(),
        };
        if let Err(e) = self.broker.worker_seen(&me).await {
            tracing::warn!(error = %e, "could not register the worker");
        }
        let waiting_now = {
            let waiting = waiting.clone();
            move || max_waiting - waiting.available_permits()
        };
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.broker.clone(),
            inflight.clone(),
            config.lease,
            me,
            ack_tx.clone(),
            stop_rx.clone(),
            waiting_now,
        ));
        let progress = tokio::spawn(progress_loop(
            self.broker.clone(),
            self.progress.clone(),
            inflight.clone(),
            stop_rx.clone(),
        ));
        // The worker's own leases: a pass after a stall leaves them to the heartbeat, which the
        // same stall held up, instead of taking back jobs this worker is still running.
        let own = {
            let inflight = inflight.clone();
            move || -> Vec<LeaseKey> {
                inflight
                    .lock()
                    .expect("not poisoned")
                    .keys()
                    .cloned()
                    .collect()
            }
        };
        let maintenance = tokio::spawn(crate::scheduler::maintain(
            Intake::new(*self.sandbox.ceilings(), self.sandbox.sizes()),
            self.broker.clone(),
            config.queues.clone(),
            config.maintain_every,
            own,
            stop_rx.clone(),
        ));

        let mut jobs = JoinSet::new();
        let mut rng = fastrand::Rng::new();
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::info!(worker = %config.name, queues = ?config.queues, concurrency = config.concurrency, max_waiting, "worker started");
        // The last fetch (this loop's or the acker's) found fewer jobs than it had slots for:
        // wait for work before fetching again. The wait is kept while the acker's leases are
        // started: dropped, its blocked connection would have to be closed and opened again.
        let mut idle = false;
        let mut work_wait = None;
        loop {
            // Reap finished tasks so the set does not grow.
            while jobs.try_join_next().is_some() {}
            // Slots come back with leases when the acker fetched for them along with its acks;
            // free slots otherwise (at start, after a short fetch, from a run that waits for its
            // sub-jobs) are fetched for here.
            let (leases, permits) = if idle {
                let wait = work_wait.get_or_insert_with(|| {
                    self.broker
                        .wait_for_work(&config.queues, config.maintain_every)
                });
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    // The acker fetched meanwhile: what it found starts now, and the wait
                    // goes on.
                    Some(refilled) = refilled.recv() => refilled,
                    r = wait => {
                        work_wait = None;
                        idle = false;
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "waiting for work failed; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        continue;
                    }
                }
            } else {
                // Biased: a shutdown already due is seen before another fetch (and the
                // shutdown future is polled from the first round on).
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(refilled) = refilled.recv() => refilled,
                    permits = take_slots(&slots, config.fetch_batch) => {
                        // Not raced with shutdown: a fetch abandoned after Redis ran it would
                        // leave its jobs leased to nobody until the leases expire.
                        let fetched = self
                            .broker
                            .fetch(
                                &fetch_order(&config.queues, &config.weights, &mut rng),
                                permits.len(),
                                config.lease,
                                &config.name,
                            )
                            .await;
                        match fetched {
                            Ok(leases) => (leases, permits),
                            Err(e) => {
                                tracing::warn!(error = %e, "fetch failed; retrying in 1 s");
                                tokio::select! {
                                    _ = &mut shutdown => break,
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                                }
                            }
                        }
                    }
                }
            };
            // Slots left over go back; fetching for them again at once would find nothing.
            if leases.len() < permits.len() {
                idle = true;
            }
            self.counters
                .fetched
                .fetch_add(leases.len() as u64, Ordering::Relaxed);
            let mut permits = permits.into_iter();
            for lease in leases {
                let permit = permits.next().expect("fetched at most one job per slot");
                let key = lease.key.clone();
                inflight.lock().expect("not poisoned").insert(
                    key.clone(),
                    InFlight {
                        abort: None,
                        attempt: lease.attempt,
                        acking: false,
                    },
                );
                let slot = Arc::new(RunSlot::new(
                    permit,
                    slots.clone(),
                    waiting.clone(),
                    max_waiting,
                ));
                let task = self.attempt(lease, slot, ack_tx.clone(), inflight.clone());
                let handle = jobs.spawn(task);
                if let Some(entry) = inflight.lock().expect("not poisoned").get_mut(&key) {
                    entry.abort = Some(handle);
                }
            }
        }

        // Drain: no more fetches; running jobs get the grace period. Leases the acker fetched as
        // the loop ended never start: they are handed back at once (the attempt not counted).
        draining.store(true, Ordering::SeqCst);
        let handing_back = {
            let (broker, counters) = (self.broker.clone(), self.counters.clone());
            tokio::spawn(async move {
                while let Some((leases, _)) = refilled.recv().await {
                    let keys: Vec<LeaseKey> = leases.into_iter().map(|l| l.key).collect();
                    hand_back(broker.as_ref(), &counters, &keys).await;
                }
            })
        };
        tracing::info!(worker = %config.name, running = jobs.len(), grace = ?config.grace, "shutting down: draining");
        let drained = tokio::time::timeout(config.grace, async {
            while jobs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
            let unfinished: Vec<LeaseKey> = inflight
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|(_, f)| !f.acking)
                .map(|(k, _)| k.clone())
                .collect();
            tracing::warn!(
                count = unfinished.len(),
                "grace period over: handing jobs back"
            );
            hand_back(self.broker.as_ref(), &self.counters, &unfinished).await;
        }
        // Heartbeats ran through the drain; the heartbeat loop holds an ack sender (for
        // cancellations), so it stops before the acker can see its channel close.
        let _ = stop_tx.send(true);
        let _ = heartbeat.await;
        drop(ack_tx);
        let _ = acker.await;
        // The acker's end closed the channel of refills: everything in it was handed back.
        let _ = handing_back.await;
        let _ = progress.await;
        let _ = maintenance.await;
        if let Err(e) = self.broker.worker_gone(&config.name).await {
            tracing::warn!(error = %e, "could not unregister the worker");
        }
        let stats = self.counters.snapshot();
        tracing::info!(worker = %config.name, ?stats, "worker stopped");
        stats
    }

    /// One attempt of one job, as a task: run it, decide what happens next, queue the ack.
    fn attempt(
        &self,
        lease: Lease,
        slot: Arc<RunSlot>,
        acks: mpsc::UnboundedSender<Finished>,
        inflight: InFlightMap,
    ) -> impl Future<Output = ()> + Send + 'static {
        let modules = self.modules.clone();
        let sandbox = self.sandbox.clone();
        let broker = self.broker.clone();
        let config = self.config.clone();
        let counters = self.counters.clone();
        let board = self.progress.clone();
        let secrets: Arc<dyn crate::sandbox::SecretSource> = self.secrets.clone();
        let egress: Arc<dyn crate::sandbox::EgressGate> = Arc::new(self.egress.clone());
        let children = self.children.clone();
        let span = tracing::info_span!("job", id = %lease.key.id, queue = %lease.key.queue, module = %lease.invocation.module, attempt = lease.attempt);
        async move {
            let inv = &lease.invocation;
            let info = JobInfo {
                id: lease.key.id.clone(),
                queue: lease.key.queue.clone(),
                attempt: lease.attempt,
                max_attempts: inv.max_attempts,
            };
            let completion = match prepare(&modules, &sandbox, &lease).await {
                Err(error) => {
                    tracing::warn!(kind = %error.kind, error = %error.message, "job could not start");
                    decide(&config.backoff, &lease, error, None)
                }
                Ok((module, args, grant)) => {
                    let sub_jobs = Arc::new(BrokerSubJobs::new(
                        broker,
                        Intake::new(*sandbox.ceilings(), sandbox.sizes()),
                        config.fan_out,
                        inv.depth,
                        children,
                        Some(slot.clone()),
                    ));
                    let request = RunRequest {
                        info,
                        args,
                        limits: inv.limits(),
                        sub_jobs: sub_jobs.clone(),
                        progress: Some(board.clone()),
                        grant,
                        secrets: secrets.clone(),
                        egress: egress.clone(),
                    };
                    let mut outcome = sandbox.run(&module, request).await;
                    // Sub-jobs still buffered go out before the run is acknowledged; a run
                    // whose sub-jobs were not all written is retried.
                    if let Err(why) = sub_jobs.flush().await
                        && outcome.result.is_ok()
                    {
                        outcome.result = Err(crate::sandbox::Failure::Retry { message: why });
                    }
                    counters
                        .fuel_used
                        .fetch_add(outcome.fuel_used, Ordering::Relaxed);
                    counters.duration.observe(outcome.wall_time.as_secs_f64());
                    counters.fuel.observe(outcome.fuel_used as f64);
                    counters.count_http(&outcome.http);
                    let report = report(&config.name, lease.attempt, &outcome, sub_jobs.ids());
                    match outcome.result {
                        Ok(_) => Completion::Succeeded(report),
                        Err(failure) => {
                            let error = AttemptError::new(
                                lease.attempt,
                                failure.kind(),
                                failure.to_string(),
                                now_ms(),
                            )
                            .cut_to(sandbox.sizes().error_bytes);
                            tracing::info!(kind = %error.kind, error = %error.message, "attempt failed");
                            decide(&config.backoff, &lease, error, Some(report))
                        }
                    }
                }
            };
            if let Some(entry) = inflight.lock().expect("not poisoned").get_mut(&lease.key) {
                entry.acking = true;
            }
            // The acker outlives every job task: a send cannot fail while jobs run. The slot
            // goes with the ack, for the fetch the acker sends with it.
            let _ = acks.send(Finished {
                ack: Ack {
                    lease: lease.key,
                    completion,
                },
                slot: slot.finish(),
            });
        }
        .instrument(span)
    }
}

/// The order one fetch tries the queues in: as given without weights; otherwise a weighted
/// random permutation (each next queue drawn with probability proportional to its weight).
pub fn fetch_order(queues: &[String], weights: &[u32], rng: &mut fastrand::Rng) -> Vec<String> {
    if weights.len() != queues.len() {
        return queues.to_vec();
    }
    let mut left: Vec<(u32, &String)> = weights.iter().copied().zip(queues).collect();
    let mut order = Vec::with_capacity(queues.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|(w, _)| u64::from(*w)).sum();
        let mut pick = rng.u64(0..total.max(1));
        let mut at = 0;
        for (i, (w, _)) in left.iter().enumerate() {
            if pick < u64::from(*w) {
                at = i;
                break;
            }
            pick -= u64::from(*w);
        }
        order.push(left.remove(at).1.clone());
    }
    order
}

/// Fetches (once per process) and compiles the module, checks limits and decodes the arguments.
async fn prepare(
    modules: &ModuleCache,
    sandbox: &Sandbox,
    lease: &Lease,
) -> Result<(crate::sandbox::JobModule, Vec<u8>, Arc<Grant>), AttemptError> {
    let inv = &lease.invocation;
    let error = |kind: FailureKind, message: String| {
        AttemptError::new(lease.attempt, kind, message, now_ms())
            .cut_to(sandbox.sizes().error_bytes)
    };
    // The enqueuer checked its own ceilings; this worker's operator may allow less.
    inv.limits()
        .check(sandbox.ceilings())
        .map_err(|e| error(FailureKind::Limits, format!("refused by this worker: {e}")))?;
    // The enqueuer checked its own args limit, and a producer writing straight into Redis only
    // the script's hard ceiling; this worker's operator may allow less.
    check_args_size(&inv.args, sandbox.sizes().args_bytes)
        .map_err(|e| error(FailureKind::Args, format!("refused by this worker: {e}")))?;
    let args = args_to_bytes(&inv.args).map_err(|e| error(FailureKind::Args, e.to_string()))?;
    let unavailable = |e: modules::ModuleError| {
        error(
            if e.permanent {
                FailureKind::Module
            } else {
                FailureKind::ModuleUnavailable
            },
            e.message,
        )
    };
    let module = modules.get(inv.module).await.map_err(unavailable)?;
    let grant = modules.grant(inv.module).await.map_err(unavailable)?;
    Ok((module, args, grant))
}

fn report(worker: &str, attempt: u32, outcome: &RunOutcome, sub_jobs: Vec<String>) -> RunReport {
    RunReport {
        attempt,
        worker: worker.to_owned(),
        result: outcome.result.as_ref().ok().map(|b| bytes_to_json(b)),
        stdout: outcome.stdout.clone(),
        stderr: outcome.stderr.clone(),
        logs: outcome.logs.clone(),
        logs_dropped: outcome.logs_dropped,
        progress: outcome.progress.clone(),
        fuel_used: outcome.fuel_used,
        wall_ms: outcome.wall_time.as_secs_f64() * 1e3,
        sub_jobs,
        http: outcome.http.clone(),
    }
}

/// Hands leased jobs back without counting the attempt, and counts them as handed back; a
/// failure is logged (their leases expire and they run again).
async fn hand_back(broker: &dyn WorkerBroker, counters: &Counters, keys: &[LeaseKey]) {
    match broker.release(keys).await {
        Ok(()) => {
            counters
                .released
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, "could not hand jobs back; their leases will expire and they will run again")
        }
    }
}

/// Waits for one free slot, then takes as many more as are free, up to `max`.
async fn take_slots(slots: &Arc<Semaphore>, max: usize) -> Vec<OwnedSemaphorePermit> {
    let first = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let mut permits = vec![first];
    while permits.len() < max.max(1) {
        match slots.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    permits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_fetch_order_follows_the_weights() {
        let queues = ["critical", "default", "low"].map(String::from).to_vec();
        let mut rng = fastrand::Rng::with_seed(7);
        assert_eq!(
            fetch_order(&queues, &[], &mut rng),
            queues,
            "strict without weights"
        );
        let mut first = std::collections::HashMap::new();
        for _ in 0..10_000 {
            let order = fetch_order(&queues, &[6, 3, 1], &mut rng);
            assert_eq!(order.len(), 3);
            *first.entry(order[0].clone()).or_insert(0u32) += 1;
        }
        let share = |q: &str| f64::from(first[q]) / 10_000.0;
        assert!((share("critical") - 0.6).abs() < 0.03, "{first:?}");
        assert!((share("default") - 0.3).abs() < 0.03, "{first:?}");
        assert!((share("low") - 0.1).abs() < 0.03, "{first:?}");
    }
}
