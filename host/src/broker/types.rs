//! The records the broker traits take and return: leases and acknowledgements, job records and
//! pages, queue counts, limits and totals, cron entries, workers, batches and modules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::invocation::{Invocation, InvocationError, NewJob};
use crate::job::{AttemptError, JobState, Progress, RunReport};
use crate::modules::ModuleHash;

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
    /// The job that enqueued this one as a sub-job, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobRef>,
    /// The sub-jobs it enqueued, over all its attempts, each once, in the order they were first
    /// enqueued (at most [`MAX_CHILDREN_LISTED`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<JobRef>,
}

/// A job, by queue and id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct JobRef {
    /// The queue.
    pub queue: String,
    /// The job id.
    pub id: String,
}

/// Bytes of results and errors a batch's callback receives in all: each job's entry carries its
/// result (succeeded) or last error (dead) while they fit, and says `result_omitted` or
/// `error_omitted` past it (read those from the job's record). Mirrored in `lua/common.lua`.
pub const MAX_BATCH_RESULTS_BYTES: usize = 256 << 10;

/// How many sub-jobs a job's record lists; later ones are still held and joined, only not
/// listed. Mirrored in `lua/lineage.lua`.
pub const MAX_CHILDREN_LISTED: usize = 10_000;

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
    /// The page, in the state's order (see [`Inspect::jobs`](super::Inspect::jobs)).
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
    /// At most this many of its jobs waiting or running (ready, scheduled and leased) at once:
    /// an enqueue that would go past it is refused whole. Retries and a batch's callback are
    /// jobs the queue already took on and are never refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
}

/// A fleet-wide limit on one HTTP destination (a host), enforced by the host on every call that
/// any job on any worker makes to it (`wasmq egress-limit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLimit {
    /// At most this many calls in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// At most `rate.0` calls started in any window of `rate.1` milliseconds (a sliding window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<(u32, u64)>,
}

impl EgressLimit {
    /// Refuses zero limits (leaving a limit out is how it is removed).
    pub fn check(&self) -> Result<(), String> {
        if self.concurrency == Some(0) || self.rate.is_some_and(|(n, per)| n == 0 || per == 0) {
            return Err("egress limits must be at least 1 (and the window at least 1 ms); leave a limit out to remove it".into());
        }
        Ok(())
    }

    /// Whether it limits nothing.
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }
}

/// How long a call told that every concurrency slot is held waits before asking again (a slot
/// may free sooner: a worker's own freed slots wake its waiting calls at once).
pub const EGRESS_SLOT_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// What [`crate::broker::EgressLimits::acquire_egress`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressTry {
    /// The call may start; its concurrency slot (if limited) is held under the token.
    Acquired,
    /// No room now; try again after this long (a hint: a freed slot may come sooner).
    Wait(std::time::Duration),
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

/// What the broker's store is set to do with accepted data: whether an acknowledged job can be
/// lost, and how. `None` where the store does not say (a managed Redis may refuse `CONFIG GET`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Durability {
    /// `redis`, or `memory` (everything is gone when the process ends).
    pub backend: &'static str,
    /// Redis's `maxmemory-policy`: anything but `noeviction` drops keys — accepted jobs — under
    /// memory pressure, without an error.
    pub eviction: Option<String>,
    /// Redis's `appendonly`: without it a restart loses everything since the last snapshot.
    pub appendonly: Option<bool>,
    /// Redis's `appendfsync`: `always` loses nothing acknowledged on a power cut, `everysec` up
    /// to a second of it.
    pub appendfsync: Option<String>,
    /// Replicas that confirm each job-state change before it is acknowledged (`--durable-writes`,
    /// Redis's `WAIT`); `None` when writes are acknowledged by the master alone, so a failover
    /// can lose the last ones.
    pub durable_writes: Option<u32>,
}

impl Durability {
    /// The eviction policy, when it is one that drops keys.
    pub fn evicting(&self) -> Option<&str> {
        self.eviction.as_deref().filter(|p| *p != "noeviction")
    }
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
    /// Jobs it held at its last report (running, or waiting for their sub-jobs).
    pub in_flight: usize,
    /// Of those, jobs waiting for their sub-jobs (`join`), which hold no slot.
    #[serde(default)]
    pub waiting: usize,
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
