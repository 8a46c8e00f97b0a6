//! What a run may ask of the queue behind it: enqueue sub-jobs (`enqueue`, with options) and
//! wait for their outcomes (`join`). The sandbox only passes the calls through a [`SubJobSink`];
//! the worker's sink puts them on the broker (`worker/sub_jobs.rs`), `wasmq run` records them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::job::JobInfo;

/// A boxed future returned by [`SubJobSink::enqueue`].
pub type EnqueueFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// A boxed future returned by [`SubJobSink::join`].
pub type JoinFuture = Pin<Box<dyn Future<Output = Result<Vec<SubJobOutcome>, String>> + Send>>;

/// How a guest asked for a sub-job (`enqueue`'s options); every field may be left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubJobOptions {
    /// Names the sub-job (`<parent>.<key>`) instead of the call's position.
    pub key: Option<String>,
    /// Its queue (the parent's when left out).
    pub queue: Option<String>,
    /// Run no earlier than this many milliseconds from now.
    pub delay_ms: Option<u64>,
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Higher runs first within its queue.
    pub priority: Option<i32>,
}

/// How long a guest's `join` waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// Return once this many have ended (all of them when `None`).
    pub first: Option<u32>,
    /// Return after this long even if fewer have ended.
    pub timeout: Option<Duration>,
}

/// Where a sub-job stands, as `join` tells the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubJobOutcome {
    /// It succeeded with these result bytes.
    Done(Vec<u8>),
    /// It failed for good.
    Dead {
        /// The failure's kind (`fail`, `retry`, `trap`, `timeout`, …).
        kind: String,
        /// What happened.
        message: String,
    },
    /// It was cancelled.
    Cancelled,
    /// It has not ended yet.
    Pending,
}

impl SubJobOutcome {
    /// Whether the sub-job has ended (any outcome but [`SubJobOutcome::Pending`]).
    pub fn ended(&self) -> bool {
        !matches!(self, SubJobOutcome::Pending)
    }
}

/// Where a guest's `enqueue` and `join` calls go: the broker in a worker, a recorder in
/// `wasmq run`.
pub trait SubJobSink: Send + Sync {
    /// Enqueues a sub-job of `module` (as the guest wrote it) with `args` for `parent`; returns
    /// the new job's id, or a reason the guest sees.
    fn enqueue(
        &self,
        parent: &JobInfo,
        module: String,
        args: Vec<u8>,
        options: SubJobOptions,
    ) -> EnqueueFuture;

    /// Waits for sub-jobs this run enqueued (by id) and returns each one's outcome, in order;
    /// or a reason the guest sees.
    fn join(&self, parent: &JobInfo, handles: Vec<String>, options: JoinOptions) -> JoinFuture;
}

/// Refuses every sub-job: for runs that have no queue behind them.
#[derive(Debug, Default)]
pub struct NoSubJobs;

impl SubJobSink for NoSubJobs {
    fn enqueue(&self, _: &JobInfo, _: String, _: Vec<u8>, _: SubJobOptions) -> EnqueueFuture {
        Box::pin(async { Err("this run has no queue to enqueue sub-jobs on".to_owned()) })
    }

    fn join(&self, _: &JobInfo, _: Vec<String>, _: JoinOptions) -> JoinFuture {
        Box::pin(async { Err("this run has no sub-jobs to join".to_owned()) })
    }
}
