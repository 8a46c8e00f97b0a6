//! The broker: where accepted jobs and uploaded modules live until a worker is done with them.
//!
//! [`Broker`] is what every backend must do for a worker loop (modules, enqueue, fetch, heartbeat,
//! ack, progress, release, maintain, the job record); rarer abilities are traits beside it —
//! [`Inspect`], [`Admin`], [`Cron`], [`Batches`], [`Registry`], [`Grants`], [`Secrets`], [`EgressLimits`], [`Lineage`] — and [`WorkerBroker`] and
//! [`ApiBroker`] name what a worker and the API/CLI need. [`redis::RedisBroker`] is the shared
//! backend (many workers on many machines) and [`memory::MemoryBroker`] the embedded one (the demo,
//! tests, single-process use); each is a folder with one file per trait. Both keep the same state
//! machine, held to it by the conformance suite (`conformance`, with the `testing` feature):
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

#[cfg(feature = "testing")]
pub mod conformance;
pub mod memory;
pub mod redis;
mod types;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::grant::Grant;
use crate::invocation::{InvocationError, NewJob};
use crate::job::{JobState, Progress};
use crate::modules::ModuleHash;
pub use types::{
    Ack, BatchInfo, CancelOutcome, Completion, CronEntry, DEFAULT_RESULT_TTL, Durability,
    EGRESS_SLOT_POLL, EgressLimit, EgressTry, Enqueued, Heartbeat, JobPage, JobRecord, JobRef,
    Lease, LeaseKey, MAX_BATCH_RESULTS_BYTES, MAX_CHILDREN_LISTED, MAX_ERRORS, MAX_FINISHED_LISTED,
    Maintenance, ModuleDeletion, ModuleInfo, NewBatch, QueueCounts, QueueLimits, QueueTotals,
    WORKER_TTL, WorkerInfo,
};

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backend could not be reached or refused the command (after its own retries): the
    /// backend's name and its reason.
    #[error("{backend}: {reason}")]
    Unavailable {
        /// Which backend (`redis`).
        backend: &'static str,
        /// What it said.
        reason: String,
    },
    /// The invocation was refused.
    #[error(transparent)]
    Invocation(#[from] InvocationError),
    /// The queue is at its size limit (`wasmq limit Q --max-size`): the jobs of the refused call
    /// (up to 5,000 per queue) were not enqueued.
    #[error(
        "queue `{queue}` is full: it holds {size} jobs waiting or running and its limit is {max} (`wasmq limit {queue} --max-size`); the refused jobs were not enqueued — send them again once workers have caught up"
    )]
    QueueFull {
        /// The queue.
        queue: String,
        /// Jobs it held.
        size: u64,
        /// Its limit.
        max: u64,
    },
    /// A grant was refused (a bad destination or secret name, too many of them, or nothing).
    #[error(transparent)]
    Grant(#[from] crate::grant::GrantError),
    /// The broker holds as many secrets as it may.
    #[error("the broker holds {0} secrets, the most it may; delete some first")]
    TooManySecrets(usize),
    /// The module was never uploaded.
    #[error("module `{0}` was never uploaded: upload it before granting it anything")]
    UnknownModule(ModuleHash),
    /// Another upload or deletion of the module was under way for as long as this one could
    /// wait.
    #[error(
        "module `{0}`: another upload or deletion of it is under way; try again when it has ended"
    )]
    ModuleBusy(ModuleHash),
    /// Stored data did not parse: written by something other than wasmq, or damaged.
    #[error("corrupt record for `{what}`: {reason}")]
    Corrupt {
        /// The key or id.
        what: String,
        /// What did not parse.
        reason: String,
    },
}

/// What every backend must do: the worker loop's needs, and nothing else. All methods are safe to
/// call from many workers at once.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Stores module bytes under `hash` (already checked by the caller). Idempotent: a second
    /// upload keeps the first upload's time.
    async fn put_module(&self, hash: ModuleHash, bytes: &[u8]) -> Result<ModuleInfo, BrokerError>;

    /// The module's bytes, if it was uploaded.
    async fn module(&self, hash: ModuleHash) -> Result<Option<Vec<u8>>, BrokerError>;

    /// Whether the module was uploaded. Asked for every enqueue, so a broker may answer from
    /// what it saw a moment ago: the Redis broker says yes for up to 5 s after a deletion by
    /// another process (or one racing the question), and a job enqueued then ends dead naming
    /// the missing module.
    async fn has_module(&self, hash: ModuleHash) -> Result<bool, BrokerError>;

    /// Accepts checked jobs, in order; a job whose id exists is left alone. Does not check that
    /// the modules exist: the intake (`intake::Intake::enqueue`) does.
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, BrokerError>;

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
    async fn ack(&self, acks: &[Ack]) -> Result<usize, BrokerError>;

    /// Records running jobs' latest progress (ignored for leases that moved on).
    async fn report_progress(&self, updates: &[(LeaseKey, Progress)]) -> Result<(), BrokerError>;

    /// Hands leased jobs back to the front of ready without counting the attempt (shutdown).
    async fn release(&self, leases: &[LeaseKey]) -> Result<(), BrokerError>;

    /// Promotes due scheduled jobs and recovers expired leases of `queue`. Safe to run in every
    /// worker at once. `own` are the caller's own leases on `queue`: those it leaves alone even
    /// when expired — the caller is alive and running them, only slow to heartbeat (after a Redis
    /// stall, say), and its next heartbeat renews them; any other worker's pass still recovers
    /// them if that heartbeat never comes.
    async fn maintain(&self, queue: &str, own: &[LeaseKey]) -> Result<Maintenance, BrokerError>;

    /// The job's record; with no `queue`, every known queue is searched.
    async fn job(&self, queue: Option<&str>, id: &str) -> Result<Option<JobRecord>, BrokerError>;

    /// Waits until the job is final or `timeout` passes, then returns its record.
    async fn wait_job(
        &self,
        queue: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<JobRecord>, BrokerError>;
}

/// Looking at the queues without changing them: counts, job listings, workers, modules.
#[async_trait]
pub trait Inspect: Broker {
    /// Checks that the broker answers (a round trip to Redis).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// What the store is set to do with accepted data (see [`Durability`]).
    async fn durability(&self) -> Durability;

    /// Every uploaded module, oldest first.
    async fn modules(&self) -> Result<Vec<ModuleInfo>, BrokerError>;

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

    /// The records of several jobs of `queue` at once, in the order of `ids` (`None` where there
    /// is none): one round trip, for a parent joining its sub-jobs.
    async fn job_records(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<Option<JobRecord>>, BrokerError>;

    /// The records of jobs on any queues, in the order of `jobs` (`None` where there is none):
    /// one [`Inspect::job_records`] call per queue and thousand jobs.
    async fn records_of(&self, jobs: &[JobRef]) -> Result<Vec<Option<JobRecord>>, BrokerError> {
        let mut records = vec![None; jobs.len()];
        let mut by_queue: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, job) in jobs.iter().enumerate() {
            by_queue.entry(job.queue.as_str()).or_default().push(i);
        }
        for (queue, positions) in by_queue {
            for chunk in positions.chunks(1000) {
                let ids: Vec<String> = chunk.iter().map(|&i| jobs[i].id.clone()).collect();
                for (&i, record) in chunk.iter().zip(self.job_records(queue, &ids).await?) {
                    records[i] = record;
                }
            }
        }
        Ok(records)
    }

    /// Workers heard from within [`WORKER_TTL`], by name; older entries are dropped.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError>;

    /// How many jobs that are waiting, running or dead name each module (modules no job names
    /// are left out). A scan of every queue: for the modules page, not for a hot path.
    async fn module_usage(&self) -> Result<HashMap<ModuleHash, u64>, BrokerError>;
}

/// The operator's changes: the dead set, running a scheduled job now, limits, pause, cancel and
/// deleting modules.
#[async_trait]
pub trait Admin: Broker {
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

    /// Cancels a job: at once if it is waiting, through its worker if it is running.
    async fn cancel(&self, queue: &str, id: &str) -> Result<CancelOutcome, BrokerError>;

    /// Deletes a module; refused while jobs that have not succeeded name it, unless `force`.
    async fn delete_module(
        &self,
        hash: ModuleHash,
        force: bool,
    ) -> Result<ModuleDeletion, BrokerError>;
}

/// Recurring jobs: entries kept per queue, each tick fired exactly once by whichever worker's
/// maintenance pass gets there first.
#[async_trait]
pub trait Cron: Broker {
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
}

/// Groups of jobs with a callback enqueued exactly once when all of them have ended.
#[async_trait]
pub trait Batches: Broker {
    /// Accepts a batch (assembled and checked by the intake):
    /// all its jobs or none. `Existed` if a batch with this id exists.
    async fn enqueue_batch(&self, batch: &NewBatch) -> Result<Enqueued, BrokerError>;

    /// A batch's progress.
    async fn batch(&self, queue: &str, id: &str) -> Result<Option<BatchInfo>, BrokerError>;
}

/// Workers reporting themselves, so that operators can see who is serving which queues.
#[async_trait]
pub trait Registry: Broker {
    /// Records that a worker is alive (and what it is doing).
    async fn worker_seen(&self, info: &WorkerInfo) -> Result<(), BrokerError>;

    /// Removes a worker that stopped cleanly.
    async fn worker_gone(&self, name: &str) -> Result<(), BrokerError>;
}

/// What operators grant modules ([`crate::grant`]), stored beside them. Adding and removing
/// are atomic per item, so two operators granting at once both take effect.
#[async_trait]
pub trait Grants: Broker {
    /// The grant of `module` (empty when it has none).
    async fn grant(&self, module: ModuleHash) -> Result<Grant, BrokerError>;

    /// Adds `grant`'s destinations and secrets to `module`'s grant; returns the whole grant.
    async fn add_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError>;

    /// Removes `grant`'s destinations and secrets from `module`'s grant, or all of it when
    /// `grant` is empty; returns what is left.
    async fn remove_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError>;

    /// Every module that has a grant, with it, by hash.
    async fn grants(&self) -> Result<Vec<(ModuleHash, Grant)>, BrokerError>;

    /// [`Grants::add_grant`] for an operator: the grant must name something, the module must
    /// have been uploaded, and the whole grant must stay within its bounds
    /// ([`Grant::check`]).
    async fn extend_grant(&self, module: ModuleHash, grant: &Grant) -> Result<Grant, BrokerError> {
        grant.check()?;
        if grant.is_empty() {
            return Err(crate::grant::GrantError::new(
                "the grant names no HTTP destination and no secret",
            )
            .into());
        }
        if !self.has_module(module).await? {
            return Err(BrokerError::UnknownModule(module));
        }
        let mut whole = self.grant(module).await?;
        whole.merge(grant);
        whole.check()?;
        self.add_grant(module, grant).await
    }
}

/// Secrets, sealed by the caller ([`crate::secret`]): the broker stores and returns opaque bytes
/// and never sees a value.
#[async_trait]
pub trait Secrets: Broker {
    /// Stores `sealed` under `name`, replacing what was there. Refused past
    /// [`crate::secret::MAX_SECRETS`] names.
    async fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<(), BrokerError>;

    /// The sealed value of `name`.
    async fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, BrokerError>;

    /// Every secret's name, sorted.
    async fn secret_names(&self) -> Result<Vec<String>, BrokerError>;

    /// Deletes `name`; whether it existed.
    async fn delete_secret(&self, name: &str) -> Result<bool, BrokerError>;
}

/// Fleet-wide limits on HTTP destinations. A call takes a concurrency slot under a lease (so a
/// worker killed mid-call frees it when the lease runs out) and a place in the destination's
/// sliding rate window, in one atomic step.
#[async_trait]
pub trait EgressLimits: Broker {
    /// Sets `host`'s limit; an empty one removes it.
    async fn set_egress_limit(&self, host: &str, limit: &EgressLimit) -> Result<(), BrokerError>;

    /// Every limited destination and its limit, by host.
    async fn egress_limits(&self) -> Result<Vec<(String, EgressLimit)>, BrokerError>;

    /// `host`'s limit (empty when it has none).
    async fn egress_limit(&self, host: &str) -> Result<EgressLimit, BrokerError>;

    /// Takes room for one call to `host` under `token` (unique per call): a concurrency slot
    /// held until [`EgressLimits::release_egress`] or until `lease` passes without a renewal,
    /// and a start in the rate window, which counts for the window plus `guard` (so that
    /// network jitter between this host and the destination cannot show it more than the
    /// limit in any window).
    async fn acquire_egress(
        &self,
        host: &str,
        token: &str,
        lease: Duration,
        guard: Duration,
    ) -> Result<EgressTry, BrokerError>;

    /// Extends a held slot's lease; false when it had already expired.
    async fn renew_egress(
        &self,
        host: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, BrokerError>;

    /// Frees a held slot.
    async fn release_egress(&self, host: &str, token: &str) -> Result<(), BrokerError>;
}

/// Parents and their sub-jobs: each parent's list of children, and the children's records kept
/// until their parent has ended, whatever the result TTL — so that a parent that runs again
/// (after its worker died, or a retry much later) finds the results its children stored.
#[async_trait]
pub trait Lineage: Broker {
    /// Notes that `parent` enqueued `children` (which exist): lists them on the parent (once
    /// each, at most [`MAX_CHILDREN_LISTED`]), names the parent on each child, and holds each
    /// child's record — not expired, even once it ended — until [`Lineage::release_children`].
    async fn adopt(&self, parent: &JobRef, children: &[JobRef]) -> Result<(), BrokerError>;

    /// `parent` has ended for good: its children's records are kept for the result TTL from now
    /// (or from their own end, when that comes later).
    async fn release_children(&self, parent: &JobRef) -> Result<(), BrokerError>;
}

/// What a worker uses: the core, cron ticks and module listing (its maintenance pass and
/// precompiling), reporting itself, the grants and secrets of the modules it runs, the
/// destinations' egress limits, and its jobs' sub-jobs.
pub trait WorkerBroker:
    Broker + Inspect + Cron + Registry + Grants + Secrets + EgressLimits + Lineage
{
}

impl<T: Broker + Inspect + Cron + Registry + Grants + Secrets + EgressLimits + Lineage + ?Sized>
    WorkerBroker for T
{
}

/// What the HTTP API and the operator's CLI use: every ability (a server also runs workers).
pub trait ApiBroker: WorkerBroker + Admin + Batches {}

/// Cancels a job ([`Admin::cancel`]). One that was waiting has now ended for good, so the
/// sub-jobs its earlier attempts enqueued are released to the result TTL ([`Lineage`]); a
/// running one's worker releases them when it stops it.
pub async fn cancel_job(
    broker: &dyn ApiBroker,
    queue: &str,
    id: &str,
) -> Result<CancelOutcome, BrokerError> {
    let outcome = broker.cancel(queue, id).await?;
    if outcome == CancelOutcome::Cancelled {
        broker
            .release_children(&JobRef {
                queue: queue.to_owned(),
                id: id.to_owned(),
            })
            .await?;
    }
    Ok(outcome)
}

impl<T: WorkerBroker + Admin + Batches + ?Sized> ApiBroker for T {}
