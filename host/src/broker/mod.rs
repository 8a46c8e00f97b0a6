//! The broker: where accepted jobs and uploaded modules live until a worker is done with them.
//!
//! [`Broker`] is what every backend must do; [`redis::RedisBroker`] is the shared one (many workers
//! on many machines) and [`memory::MemoryBroker`] the embedded one (the demo, tests, single-process
//! use). Both keep the same state machine:
//!
//! ```text
//!  enqueue ──► ready ◄──────── scheduled ◄── enqueue with run_at
//!               │  ▲  promote (due) ▲
//!         fetch │  │ lease expired  │ retryable failure (backoff)
//!               ▼  │ / hand back    │
//!              leased ──────────────┘
//!               │  └──────────────► dead ──► (retry: ready, delete: gone)
//!               ▼   fail / attempts used up / lease expired on the last attempt
//!           succeeded (kept for the result TTL)
//! ```
//!
//! Each arrow is one atomic step. A lease carries a token; a worker's late acknowledgement of a
//! lease that expired (and was handed to someone else) is ignored, so a job is never completed
//! twice by different attempts. What a broker must not do: run jobs or decide retry policy — the
//! worker computes the backoff and passes it in.

pub mod memory;
pub mod redis;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::invocation::{Invocation, InvocationError, NewJob};
use crate::modules::ModuleHash;
use crate::sandbox::{Captured, LogRecord, Progress};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be fetched.
    Ready,
    /// Waiting for its `run_at` or its retry backoff.
    Scheduled,
    /// Fetched by a worker that holds the lease.
    Leased,
    /// Done; kept for the result TTL.
    Succeeded,
    /// Failed for good; kept until retried or deleted.
    Dead,
    /// Cancelled before it ended; kept for the result TTL, never retried.
    Cancelled,
}

impl JobState {
    /// Whether the job will not change any more on its own.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }

    /// The lowercase name stored in Redis and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Scheduled => "scheduled",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ready" => JobState::Ready,
            "scheduled" => JobState::Scheduled,
            "leased" => JobState::Leased,
            "succeeded" => JobState::Succeeded,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

/// A fetched job: the worker holds it until it acknowledges or the lease expires.
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// Which lease this is.
    pub key: LeaseKey,
    /// The attempt this run is, from 1.
    pub attempt: u32,
    /// The invocation as enqueued.
    pub invocation: Invocation,
}

/// Names one lease of one job: the acknowledgement and the heartbeat must present it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    /// The queue.
    pub queue: String,
    /// The job id.
    pub id: String,
    /// Counts the job's leases; only the newest may acknowledge.
    pub token: u64,
}

/// Why one attempt failed, as kept in the job's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt, from 1.
    pub attempt: u32,
    /// A short stable name: `trap`, `out_of_fuel`, `timeout`, `memory_limit`, `stack_overflow`,
    /// `retry`, `fail`, `instantiate`, `module` (could not be loaded) or `lease_expired`.
    pub kind: String,
    /// The full reason.
    pub message: String,
    /// When it happened (Unix ms).
    pub at_ms: u64,
}

/// What the last attempt produced, kept in the job's record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The attempt this describes.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// The job's result (success only), as JSON (`{"$bytes": …}` for non-JSON bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Log records, oldest first.
    pub logs: Vec<LogRecord>,
    /// Records dropped over the cap.
    pub logs_dropped: u64,
    /// The last progress reported.
    pub progress: Option<Progress>,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// Wall time of the run, in milliseconds.
    pub wall_ms: f64,
    /// Ids of the sub-jobs it enqueued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_jobs: Vec<String>,
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    /// Store the result and keep it for the TTL.
    Succeeded(RunReport),
    /// Run again after `delay`.
    Retry {
        /// The backoff.
        delay: Duration,
        /// Why this attempt failed.
        error: AttemptError,
        /// What it produced (may be empty when it never ran).
        report: Option<RunReport>,
    },
    /// Move to the dead set.
    Dead {
        /// Why the last attempt failed.
        error: AttemptError,
        /// What it produced.
        report: Option<RunReport>,
    },
    /// Stopped because its cancellation was requested; never retried.
    Cancelled {
        /// What the interrupted attempt looked like.
        error: AttemptError,
    },
}

/// One acknowledgement.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    /// The lease being acknowledged.
    pub lease: LeaseKey,
    /// How the attempt ended.
    pub completion: Completion,
}

/// Everything the broker knows about one job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// The queue.
    pub queue: String,
    /// Where it is.
    pub state: JobState,
    /// The invocation as enqueued.
    pub invocation: Invocation,
    /// Attempts started so far.
    pub attempts: u32,
    /// When it was accepted (Unix ms).
    pub enqueued_at_ms: u64,
    /// When the latest attempt started.
    pub started_at_ms: Option<u64>,
    /// When it succeeded or died.
    pub finished_at_ms: Option<u64>,
    /// The worker that ran the latest attempt.
    pub worker: Option<String>,
    /// The latest failure.
    pub last_error: Option<AttemptError>,
    /// Every failure, oldest first (the last [`MAX_ERRORS`]).
    pub errors: Vec<AttemptError>,
    /// The latest progress the guest reported, updated while it runs.
    pub progress: Option<Progress>,
    /// What the latest finished attempt produced.
    pub report: Option<RunReport>,
}

/// How many failures a job record keeps (the oldest are dropped). Mirrored in `lua/common.lua`.
pub const MAX_ERRORS: usize = 25;

/// How many succeeded (and, apart, cancelled) jobs a queue lists, newest first, within the result
/// TTL. Mirrored in `lua/common.lua`.
pub const MAX_FINISHED_LISTED: usize = 10_000;

/// One page of a queue's jobs in one state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobPage {
    /// How many jobs the queue has in that state.
    pub total: u64,
    /// The page, in the state's order (see [`Broker::jobs`]).
    pub jobs: Vec<JobRecord>,
}

/// Whether an enqueue created the job or found it already there (same id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enqueued {
    /// A new job.
    Created,
    /// A job with this id exists; nothing changed.
    Existed,
}

/// Job counts of one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    /// The queue.
    pub queue: String,
    /// Waiting to be fetched.
    pub ready: u64,
    /// Waiting for a time (delayed or backing off).
    pub scheduled: u64,
    /// Held by workers.
    pub leased: u64,
    /// In the dead set.
    pub dead: u64,
    /// Paused: accepting jobs, handing none out.
    pub paused: bool,
    /// Limits for all workers together.
    pub limits: QueueLimits,
    /// When the job at the head of `ready` (the next to run) was enqueued, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_ready_ms: Option<u64>,
    /// Running totals since the queue was first used.
    pub totals: QueueTotals,
}

/// A queue's limits, enforced by the broker for every worker together — so that fanning work
/// out cannot overload a partner API or a database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// At most this many of the queue's jobs run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// At most `rate.0` jobs start per window of `rate.1` milliseconds (fixed windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<(u32, u64)>,
}

/// Running totals of one queue, kept by the broker for every worker together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTotals {
    /// Jobs accepted (repeated ids not counted).
    pub enqueued: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Attempts that failed (each retry and each death counts one).
    pub failed: u64,
    /// Attempts scheduled again after a failure.
    pub retried: u64,
    /// Jobs moved to the dead set.
    pub dead: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Expired leases returned to ready (a worker died or lost Redis).
    pub recovered: u64,
}

/// What a heartbeat learned about the leases it extended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Leases this worker no longer holds (expired and moved on).
    pub lost: Vec<LeaseKey>,
    /// Leases whose job someone asked to cancel.
    pub cancel: Vec<LeaseKey>,
}

/// What a cancel request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The job was waiting; it is cancelled now.
    Cancelled,
    /// The job is running; its worker will stop it and it will end cancelled.
    Cancelling,
    /// The job had already ended in this state.
    AlreadyFinal(JobState),
    /// No such job.
    NotFound,
}

/// What deleting a module did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleDeletion {
    /// Deleted.
    Deleted,
    /// Refused: this many jobs that have not succeeded still name it.
    InUse(u64),
    /// No such module.
    NotFound,
}

/// A recurring job: an invocation enqueued at each tick of a cron schedule.
///
/// Missed ticks (no worker serving the queue was running) are coalesced: the first worker back
/// enqueues one job for them, then the schedule continues from the present.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CronEntry {
    /// Unique within its queue.
    pub name: String,
    /// A cron expression: 5 fields, or 6 with seconds first (`*/10 * * * * *`), UTC.
    pub schedule: String,
    /// What each tick enqueues (its `queue` is the entry's queue; `id` is left empty — each job's
    /// id is `cron:<name>:<tick in Unix ms>`).
    pub invocation: Invocation,
    /// The next tick, Unix ms (filled in by the broker when listing).
    #[serde(default)]
    pub next_ms: u64,
}

/// A worker process as it last reported itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// `host:pid:random`.
    pub name: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Queues it takes jobs from.
    pub queues: Vec<String>,
    /// Jobs it runs at once.
    pub concurrency: usize,
    /// Jobs it held at its last report.
    pub in_flight: usize,
    /// When it started (Unix ms).
    pub started_at_ms: u64,
    /// Its last report (Unix ms).
    pub last_seen_ms: u64,
}

/// A worker not heard from for this long is presumed gone: it reports every second, so a minute
/// rides out a long Redis failover without flapping.
pub const WORKER_TTL: Duration = Duration::from_secs(60);

/// A group of jobs on one queue with a callback job that is enqueued exactly once, when every
/// job of the group has ended (succeeded, dead or cancelled).
#[derive(Clone, Debug, PartialEq)]
pub struct NewBatch {
    /// The batch id (also its idempotency key).
    pub id: String,
    /// The jobs, all on the batch's queue.
    pub jobs: Vec<NewJob>,
    /// The callback, on the same queue. Its args, when an object, get `batch` (the id) and `jobs`
    /// (each job's `id` and final `state`) added; otherwise they are replaced by those two.
    pub callback: NewJob,
}

impl NewBatch {
    /// Checks that the batch is not empty and that every job shares the callback's queue.
    pub fn check(&self) -> Result<(), InvocationError> {
        let field = |reason: String| InvocationError::Field {
            field: "jobs",
            reason,
        };
        if self.jobs.is_empty() {
            return Err(field("must hold at least one job".into()));
        }
        let queue = self.callback.queue();
        if let Some(other) = self.jobs.iter().find(|j| j.queue() != queue) {
            return Err(field(format!(
                "must all be on the callback's queue `{queue}`; `{}` is on `{}`",
                other.id(),
                other.queue()
            )));
        }
        Ok(())
    }
}

/// A batch's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchInfo {
    /// The batch id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Jobs in it.
    pub total: u64,
    /// Jobs that have not ended yet.
    pub pending: u64,
    /// The callback job's id (`batch:<id>:callback`).
    pub callback_id: String,
    /// When it was enqueued (Unix ms).
    pub created_at_ms: u64,
    /// When its last job ended and the callback was enqueued.
    pub done_at_ms: Option<u64>,
}

/// How long a broker keeps the records of jobs that succeeded or were cancelled. A day, like
/// Celery's result expiry: long enough to look a job up the next morning.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// An uploaded module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Its content address.
    pub hash: ModuleHash,
    /// Size in bytes.
    pub size: u64,
    /// When it was first uploaded (Unix ms).
    pub uploaded_at_ms: u64,
}

/// What one maintenance pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Scheduled jobs that came due and became ready.
    pub promoted: u64,
    /// Expired leases returned to ready.
    pub recovered: u64,
    /// Expired leases on a last attempt, moved to the dead set.
    pub expired_dead: u64,
}

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis could not be reached or refused the command (after the client's own retries).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The invocation was refused.
    #[error(transparent)]
    Invocation(#[from] InvocationError),
    /// Stored data did not parse: written by something other than wasmq, or damaged.
    #[error("corrupt record for `{what}`: {reason}")]
    Corrupt {
        /// The key or id.
        what: String,
        /// What did not parse.
        reason: String,
    },
}

/// What every backend must do. All methods are safe to call from many workers at once.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Checks that the broker answers (a round trip to Redis).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// Stores module bytes under `hash` (already checked by the caller). Idempotent: a second
    /// upload keeps the first upload's time.
    async fn put_module(&self, hash: ModuleHash, bytes: &[u8]) -> Result<ModuleInfo, BrokerError>;

    /// The module's bytes, if it was uploaded.
    async fn module(&self, hash: ModuleHash) -> Result<Option<Vec<u8>>, BrokerError>;

    /// Whether the module was uploaded.
    async fn has_module(&self, hash: ModuleHash) -> Result<bool, BrokerError>;

    /// Every uploaded module, oldest first.
    async fn modules(&self) -> Result<Vec<ModuleInfo>, BrokerError>;

    /// Accepts checked jobs, in order; a job whose id exists is left alone. Does not check that
    /// the modules exist: use [`enqueue_checked`].
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError>;

    /// Accepts a batch (checked with [`NewBatch::check`] and [`check_modules`] by the caller):
    /// all its jobs or none. `Existed` if a batch with this id exists.
    async fn enqueue_batch(&self, batch: &NewBatch) -> Result<Enqueued, BrokerError>;

    /// A batch's progress.
    async fn batch(&self, queue: &str, id: &str) -> Result<Option<BatchInfo>, BrokerError>;

    /// Moves up to `max` ready jobs from `queues` (earlier queues first) to leased, with a lease of
    /// `lease` held by `worker`.
    async fn fetch(
        &self,
        queues: &[String],
        max: usize,
        lease: Duration,
        worker: &str,
    ) -> Result<Vec<Lease>, BrokerError>;

    /// Returns when one of `queues` may have a ready job, or after `timeout`.
    async fn wait_for_work(&self, queues: &[String], timeout: Duration) -> Result<(), BrokerError>;

    /// Extends `leases` to `lease` from now; reports the ones this worker no longer holds and the
    /// ones to cancel.
    async fn heartbeat(
        &self,
        leases: &[LeaseKey],
        lease: Duration,
    ) -> Result<Heartbeat, BrokerError>;

    /// Applies acknowledgements, each atomically (state, result, output and lease in one step).
    /// Succeeded jobs are kept for the broker's result TTL. Returns how many were stale (the lease
    /// had expired and moved on) and so ignored.
    async fn complete(&self, acks: &[Ack]) -> Result<usize, BrokerError>;

    /// Records running jobs' latest progress (ignored for leases that moved on).
    async fn report_progress(&self, updates: &[(LeaseKey, Progress)]) -> Result<(), BrokerError>;

    /// Hands leased jobs back to the front of ready without counting the attempt (shutdown).
    async fn release(&self, leases: &[LeaseKey]) -> Result<(), BrokerError>;

    /// Promotes due scheduled jobs and recovers expired leases of `queue`. Safe to run in every
    /// worker at once.
    async fn maintain(&self, queue: &str) -> Result<Maintenance, BrokerError>;

    /// The job's record; with no `queue`, every known queue is searched.
    async fn job(&self, queue: Option<&str>, id: &str) -> Result<Option<JobRecord>, BrokerError>;

    /// Waits until the job is final or `timeout` passes, then returns its record.
    async fn wait_job(
        &self,
        queue: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, BrokerError>;

    /// Counts per queue, for every queue that was ever used.
    async fn queues(&self) -> Result<Vec<QueueCounts>, BrokerError>;

    /// A page of `queue`'s jobs in `state`: ready ones in the order they will be fetched,
    /// scheduled ones soonest first, leased ones by lease deadline, and succeeded, cancelled and
    /// dead ones newest first. Succeeded and cancelled jobs are listed while their records are
    /// kept (the result TTL), the newest [`MAX_FINISHED_LISTED`] of each.
    async fn jobs(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        limit: usize,
    ) -> Result<JobPage, BrokerError>;

    /// The newest `limit` dead jobs of `queue`, newest first.
    async fn dead(&self, queue: &str, limit: usize) -> Result<Vec<JobRecord>, BrokerError> {
        Ok(self.jobs(queue, JobState::Dead, 0, limit).await?.jobs)
    }

    /// Moves a dead job back to ready with a fresh set of attempts. False if it is not dead.
    async fn retry_dead(&self, queue: &str, id: &str) -> Result<bool, BrokerError>;

    /// Deletes a dead job. False if it is not dead.
    async fn delete_dead(&self, queue: &str, id: &str) -> Result<bool, BrokerError>;

    /// Retries every job that was in `queue`'s dead set when the call began (jobs that die again
    /// meanwhile stay dead). Returns how many.
    async fn retry_all_dead(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Deletes every job that was in `queue`'s dead set when the call began. Returns how many.
    async fn delete_all_dead(&self, queue: &str) -> Result<u64, BrokerError>;

    /// Makes a scheduled job (a delayed job or one waiting out a retry backoff) ready now. False
    /// if it is not scheduled.
    async fn run_now(&self, queue: &str, id: &str) -> Result<bool, BrokerError>;

    /// Sets a queue's limits (replacing the previous ones).
    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> Result<(), BrokerError>;

    /// Pauses (`true`) or resumes a queue. A paused queue accepts jobs but hands none out;
    /// running jobs finish.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<(), BrokerError>;

    /// Records that a worker is alive (and what it is doing).
    async fn worker_seen(&self, info: &WorkerInfo) -> Result<(), BrokerError>;

    /// Removes a worker that stopped cleanly.
    async fn worker_gone(&self, name: &str) -> Result<(), BrokerError>;

    /// Workers heard from within [`WORKER_TTL`], by name; older entries are dropped.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError>;

    /// Cancels a job: at once if it is waiting, through its worker if it is running.
    async fn cancel(&self, queue: &str, id: &str) -> Result<CancelOutcome, BrokerError>;

    /// Adds or replaces a cron entry (on `entry.invocation.queue`), next firing at `entry.next_ms`.
    async fn put_cron(&self, entry: &CronEntry) -> Result<(), BrokerError>;

    /// Cron entries of `queue`, or of every queue.
    async fn crons(&self, queue: Option<&str>) -> Result<Vec<CronEntry>, BrokerError>;

    /// Removes a cron entry. False if there was none.
    async fn remove_cron(&self, queue: &str, name: &str) -> Result<bool, BrokerError>;

    /// Enqueues `job` for the entry's tick `tick_ms` and moves the entry to `next_ms` — only if
    /// its next tick is still `tick_ms`, so that each tick fires once however many workers try.
    /// True if this call fired it.
    async fn fire_cron(
        &self,
        queue: &str,
        name: &str,
        tick_ms: u64,
        next_ms: u64,
        job: &NewJob,
    ) -> Result<bool, BrokerError>;

    /// How many jobs that are waiting, running or dead name each module (modules no job names
    /// are left out). A scan of every queue: for the modules page, not for a hot path.
    async fn module_usage(&self) -> Result<HashMap<ModuleHash, u64>, BrokerError>;

    /// Deletes a module; refused while jobs that have not succeeded name it, unless `force`.
    async fn delete_module(
        &self,
        hash: ModuleHash,
        force: bool,
    ) -> Result<ModuleDeletion, BrokerError>;
}

/// Enqueues after checking that every module named was uploaded: an unknown module is refused here,
/// never discovered later by a worker.
pub async fn enqueue_checked(
    broker: &dyn Broker,
    jobs: &[NewJob],
) -> Result<Vec<Enqueued>, BrokerError> {
    check_modules(broker, jobs).await?;
    broker.enqueue(jobs).await
}

/// Refuses jobs whose module was never uploaded.
pub async fn check_modules(broker: &dyn Broker, jobs: &[NewJob]) -> Result<(), BrokerError> {
    let mut seen = HashSet::new();
    for job in jobs {
        let hash = job.invocation.module;
        if seen.insert(hash) && !broker.has_module(hash).await? {
            return Err(InvocationError::UnknownModule(hash).into());
        }
    }
    Ok(())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
