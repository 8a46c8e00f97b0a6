//! Sub-jobs: a running job's `enqueue` calls, put on the broker for real, and its `join`s
//! (`join.rs`).
//!
//! A sub-job goes on its parent's queue (or the one its options name) with default limits but
//! for the attempts, priority and delay the options give. Its id is the parent's id and the
//! call's position (`<parent>.1`, `<parent>.2`, …) or the key the guest chose
//! (`<parent>.<key>`), so a parent that runs again after fanning out enqueues the same ids again,
//! creates no duplicates, and joins the sub-jobs it made before. A run may join only sub-jobs it
//! enqueued itself (a guest cannot read other jobs' results by naming them). Fan-out is bounded by the operator
//! ([`FanOut`]): sub-jobs per run, and the depth of a tree of sub-jobs (each sub-job's
//! invocation carries its `depth`); past either the guest's `enqueue` returns an error naming
//! the limit, and the run goes on. Its args are held to the operator's args limit like a
//! client's (`--max-args-kb`), measured as the bytes the guest handed over.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::broker::{JobRef, WorkerBroker};
use crate::intake::Intake;
use crate::invocation::{Invocation, InvocationError, NewJob, bytes_to_json};
use crate::job::JobInfo;
use crate::modules::ModuleHash;
use crate::sandbox::{EnqueueFuture, JoinFuture, JoinOptions, SubJobOptions, SubJobSink};
use crate::time::now_ms;

use super::join::{self, ChildWatch, RunSlot};

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

/// Longest `key` a guest may give a sub-job, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// A sub-job's id: `<parent>.<key>`, or `<parent>.<position>` without a key. A key is 1–64
/// printable ASCII characters and not all digits (those name the sub-jobs enqueued without one).
pub fn sub_job_id(parent: &str, position: u32, key: Option<&str>) -> Result<String, String> {
    let Some(key) = key else {
        return Ok(format!("{parent}.{position}"));
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "sub-job refused: its key must be 1 to {MAX_KEY_LEN} printable ASCII characters without spaces, not `{}`",
            key.escape_debug()
        ));
    }
    if key.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "sub-job refused: key `{key}` is all digits, which names the sub-jobs enqueued without a key; add a letter"
        ));
    }
    Ok(format!("{parent}.{key}"))
}

/// Sub-jobs written to the broker in one call at most; a guest's `enqueue` that fills the buffer
/// to this waits for the write.
const FLUSH_AT: usize = 256;

/// How long a sub-job may wait in the buffer for others to join it in one write.
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(2);

/// Enqueues a run's sub-jobs on the broker, remembers them, and joins them.
///
/// Writes are batched: a sub-job that passed every check is buffered and its handle returned at
/// once; the buffer goes to the broker in one call when it holds `FLUSH_AT` jobs, `FLUSH_AFTER`
/// after its first job, before a `join` and — through [`BrokerSubJobs::flush`], which the worker
/// calls before it acknowledges the run — at the end. A failed write fails every later `enqueue`
/// and `join` of the run, and the worker retries a run whose sub-jobs were not all written, so
/// an acknowledged parent's sub-jobs are always in the broker.
pub struct BrokerSubJobs {
    shared: Arc<Shared>,
    intake: Intake,
    fan_out: FanOut,
    /// The parent's depth.
    depth: u32,
    calls: AtomicU32,
    watch: Arc<ChildWatch>,
    slot: Option<Arc<RunSlot>>,
}

struct Shared {
    broker: Arc<dyn WorkerBroker>,
    intake: Intake,
    /// Ids handed out, in call order, with their queues.
    enqueued: Mutex<Vec<(String, String)>>,
    /// Sub-jobs not written yet.
    buffer: tokio::sync::Mutex<Vec<NewJob>>,
    /// Modules found uploaded (asked once per run).
    checked: Mutex<HashSet<ModuleHash>>,
    /// Why a write failed, once one did.
    failed: Mutex<Option<String>>,
    /// The run's job, named on each sub-job (set by the first `enqueue`).
    parent: std::sync::OnceLock<JobRef>,
}

impl Shared {
    fn failed(&self) -> Result<(), String> {
        match &*self.failed.lock().expect("not poisoned") {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    async fn flush(&self) -> Result<(), String> {
        let mut buffer = self.buffer.lock().await;
        self.failed()?;
        if buffer.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::take(&mut *buffer);
        let written = match self
            .intake
            .enqueue_checked(self.broker.as_ref(), &jobs)
            .await
        {
            Err(e) => Err(e.to_string()),
            // Listed on the parent and held for it: kept until it ends, whatever the TTL.
            Ok(_) => match self.parent.get() {
                Some(parent) => {
                    let children: Vec<JobRef> = jobs
                        .iter()
                        .map(|j| JobRef {
                            queue: j.queue().to_owned(),
                            id: j.id().to_owned(),
                        })
                        .collect();
                    self.broker
                        .adopt(parent, &children)
                        .await
                        .map_err(|e| e.to_string())
                }
                None => Ok(()),
            },
        };
        if let Err(e) = written {
            let why = format!("sub-jobs could not be enqueued: {e}");
            *self.failed.lock().expect("not poisoned") = Some(why.clone());
            return Err(why);
        }
        Ok(())
    }
}

impl BrokerSubJobs {
    /// A sink for one run of a job at `depth`, checking sub-jobs with `intake`. `watch` wakes
    /// its joins; `slot`, if any, is given back while a join waits.
    pub fn new(
        broker: Arc<dyn WorkerBroker>,
        intake: Intake,
        fan_out: FanOut,
        depth: u32,
        watch: Arc<ChildWatch>,
        slot: Option<Arc<RunSlot>>,
    ) -> Self {
        BrokerSubJobs {
            shared: Arc::new(Shared {
                broker,
                intake,
                enqueued: Mutex::default(),
                buffer: tokio::sync::Mutex::default(),
                checked: Mutex::default(),
                failed: Mutex::default(),
                parent: std::sync::OnceLock::new(),
            }),
            intake,
            fan_out,
            depth,
            calls: AtomicU32::new(0),
            watch,
            slot,
        }
    }

    /// Ids handed out so far, in call order.
    pub fn ids(&self) -> Vec<String> {
        let enqueued = self.shared.enqueued.lock().expect("not poisoned");
        enqueued.iter().map(|(_, id)| id.clone()).collect()
    }

    /// Writes the sub-jobs still buffered; `Err` (with the reason) when some were never
    /// written, now or before — the run must then be retried.
    pub async fn flush(&self) -> Result<(), String> {
        self.shared.flush().await
    }
}

impl SubJobSink for BrokerSubJobs {
    fn enqueue(
        &self,
        parent: &JobInfo,
        module: String,
        args: Vec<u8>,
        options: SubJobOptions,
    ) -> EnqueueFuture {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = self.shared.clone();
        let intake = self.intake;
        let parent = parent.clone();
        let FanOut { per_run, depth } = self.fan_out;
        let child_depth = self.depth.saturating_add(1);
        Box::pin(async move {
            shared.failed()?;
            shared.parent.get_or_init(|| JobRef {
                queue: parent.queue.clone(),
                id: parent.id.clone(),
            });
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
            inv.queue = options.queue.unwrap_or_else(|| parent.queue.clone());
            inv.id = Some(sub_job_id(&parent.id, n, options.key.as_deref())?);
            inv.depth = child_depth;
            if let Some(attempts) = options.max_attempts {
                inv.max_attempts = attempts;
            }
            if let Some(priority) = options.priority {
                inv.priority = priority;
            }
            let mut job = intake
                .job(inv)
                .map_err(|e| format!("sub-job refused: {e}"))?;
            if let Some(delay) = options.delay_ms {
                job.run_at_ms = Some(now_ms().saturating_add(delay));
            }
            let known = shared.checked.lock().expect("not poisoned").contains(&hash);
            if !known {
                intake
                    .check_modules(shared.broker.as_ref(), std::slice::from_ref(&job))
                    .await
                    .map_err(|e| e.to_string())?;
                shared.checked.lock().expect("not poisoned").insert(hash);
            }
            let id = job.id().to_owned();
            shared
                .enqueued
                .lock()
                .expect("not poisoned")
                .push((job.queue().to_owned(), id.clone()));
            let buffered = {
                let mut buffer = shared.buffer.lock().await;
                buffer.push(job);
                buffer.len()
            };
            if buffered >= FLUSH_AT {
                shared.flush().await?;
            } else if buffered == 1 {
                let shared = shared.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(FLUSH_AFTER).await;
                    // A failure is kept for the run's next call and its end.
                    let _ = shared.flush().await;
                });
            }
            Ok(id)
        })
    }

    fn join(&self, _parent: &JobInfo, handles: Vec<String>, options: JoinOptions) -> JoinFuture {
        let shared = self.shared.clone();
        let watch = self.watch.clone();
        let slot = self.slot.clone();
        let jobs: Result<Vec<(String, String)>, String> = {
            let enqueued = shared.enqueued.lock().expect("not poisoned");
            let by_id: std::collections::HashMap<&str, &str> = enqueued
                .iter()
                .map(|(q, id)| (id.as_str(), q.as_str()))
                .collect();
            handles
                .into_iter()
                .map(|h| match by_id.get(h.as_str()) {
                    Some(q) => Ok(((*q).to_owned(), h)),
                    None => Err(format!(
                        "`{}` is not a sub-job this run enqueued (enqueue it again: the same call names the same sub-job, which is not enqueued twice)",
                        h.escape_debug()
                    )),
                })
                .collect()
        };
        Box::pin(async move {
            let jobs = jobs?;
            shared.flush().await?;
            join::join(
                shared.broker.as_ref(),
                &watch,
                slot.as_deref(),
                &jobs,
                options,
            )
            .await
        })
    }
}
