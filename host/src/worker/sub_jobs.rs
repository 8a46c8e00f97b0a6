//! Sub-jobs: a running job's `enqueue` calls, put on the broker for real.
//!
//! A sub-job goes on its parent's queue with default limits. Its id is the parent's id and the
//! call's position (`<parent>.1`, `<parent>.2`, …), so a parent that is retried after fanning
//! out enqueues the same ids again and creates no duplicates. Fan-out is bounded by the operator
//! ([`FanOut`]): sub-jobs per run, and the depth of a tree of sub-jobs (each sub-job's
//! invocation carries its `depth`); past either the guest's `enqueue` returns an error naming
//! the limit, and the run goes on. Its args are held to the operator's args limit like a
//! client's (`--max-args-kb`), measured as the bytes the guest handed over.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::broker::WorkerBroker;
use crate::intake::Intake;
use crate::invocation::{Invocation, InvocationError, bytes_to_json};
use crate::job::JobInfo;
use crate::modules::ModuleHash;
use crate::sandbox::{EnqueueFuture, SubJobSink};

/// How far jobs may fan out, set by the operator (`--max-sub-jobs`, `--max-depth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanOut {
    /// Sub-jobs one run may enqueue.
    pub per_run: u32,
    /// Generations of sub-jobs below a job a client enqueued.
    pub depth: u32,
}

impl Default for FanOut {
    /// A thousand sub-jobs per run: a fan-out wider than that is better split in stages (a
    /// batch of batches), and it bounds what one run can add to a queue. Eight generations: real
    /// pipelines nest two or three deep, and a job that enqueues copies of itself stops after
    /// eight.
    fn default() -> Self {
        FanOut {
            per_run: 1000,
            depth: 8,
        }
    }
}

/// Enqueues a run's sub-jobs on the broker and remembers their ids.
pub struct BrokerSubJobs {
    broker: Arc<dyn WorkerBroker>,
    intake: Intake,
    fan_out: FanOut,
    /// The parent's depth.
    depth: u32,
    calls: AtomicU32,
    ids: Arc<Mutex<Vec<String>>>,
}

impl BrokerSubJobs {
    /// A sink for one run of a job at `depth`, checking sub-jobs with `intake`.
    pub fn new(broker: Arc<dyn WorkerBroker>, intake: Intake, fan_out: FanOut, depth: u32) -> Self {
        BrokerSubJobs {
            broker,
            intake,
            fan_out,
            depth,
            calls: AtomicU32::new(0),
            ids: Arc::default(),
        }
    }

    /// Ids enqueued so far, in call order.
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().expect("not poisoned").clone()
    }
}

impl SubJobSink for BrokerSubJobs {
    fn enqueue(&self, parent: &JobInfo, module: String, args: Vec<u8>) -> EnqueueFuture {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let broker = self.broker.clone();
        let ids = self.ids.clone();
        let intake = self.intake;
        let parent = parent.clone();
        let FanOut { per_run, depth } = self.fan_out;
        let child_depth = self.depth.saturating_add(1);
        Box::pin(async move {
            if n > per_run {
                return Err(format!(
                    "sub-job refused: this run has enqueued {per_run}, the most one run may (--max-sub-jobs)"
                ));
            }
            if child_depth > depth {
                return Err(format!(
                    "sub-job refused: it would be {child_depth} generations below the job a client enqueued, past the limit of {depth} (--max-depth)"
                ));
            }
            // Before turning the bytes into JSON: a guest may hand over as much as its memory.
            if args.len() > intake.args_bytes() {
                let error = InvocationError::args_too_large(args.len(), intake.args_bytes());
                return Err(format!("sub-job refused: {error}"));
            }
            let hash: ModuleHash = module.parse().map_err(|e| format!("{e}"))?;
            let mut inv = Invocation::new(hash);
            inv.args = bytes_to_json(&args);
            inv.queue = parent.queue.clone();
            inv.id = Some(format!("{}.{n}", parent.id));
            inv.depth = child_depth;
            let job = intake.job(inv).map_err(|e| e.to_string())?;
            intake
                .enqueue(broker.as_ref(), std::slice::from_ref(&job))
                .await
                .map_err(|e| e.to_string())?;
            let id = job.id().to_owned();
            ids.lock().expect("not poisoned").push(id.clone());
            Ok(id)
        })
    }
}
