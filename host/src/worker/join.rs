//! Joining sub-jobs: a guest's `join` waits for its sub-jobs' outcomes without holding what it
//! does not use.
//!
//! - **No slot, no thread, no fuel.** A run that has to wait gives its worker slot back
//!   ([`RunSlot::park`]) so that the worker can fetch other jobs — its own sub-jobs among them, so
//!   a worker of concurrency 1 completes a parent that awaits ten children on its queue. Its
//!   instance stays in memory, suspended in an async host call (no thread, no fuel). Waiting runs
//!   are counted apart and bounded (`--max-waiting`); past the bound `join` returns an error the
//!   guest sees. When the wait ends the run takes a slot again before it goes on.
//! - **Woken, not only polling.** The worker's acker tells the [`ChildWatch`] about every job it
//!   ended — with the outcome it stored, when the whole batch of acks was applied — and a run
//!   waiting for that job takes that outcome, or re-reads just its record; sub-jobs ended by
//!   other workers (or cancelled through the API) are found by re-reading every pending record,
//!   25 ms after the wait starts and then twice as long each time, up to every second.
//! - **Outcomes are the stored records**, so a parent that runs again after its worker died reads
//!   the results its sub-jobs already stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::broker::{BrokerError, Completion, JobRecord, JobRef, WorkerBroker};
use crate::invocation::args_to_bytes;
use crate::job::{AttemptError, JobState, RunReport};
use crate::sandbox::{JoinOptions, SubJobOutcome};

/// Waiting runs a worker keeps by default: each is a suspended instance in memory (the pool is
/// sized for `concurrency` plus this), so a few hundred cost little and cover a wide fan-out of
/// parents.
pub const DEFAULT_MAX_WAITING: usize = 256;

/// The first and the longest pause between re-reads of every pending sub-job.
const FIRST_POLL: Duration = Duration::from_millis(25);
const LONGEST_POLL: Duration = Duration::from_secs(1);

/// A job, by queue and id.
type JobKey = (String, String);

/// A job that ended, with its outcome when the teller knows it for sure.
type Ended = (JobKey, Option<SubJobOutcome>);

/// The runs waiting for one job: (registration id, where to tell it).
type Waiters = Vec<(u64, mpsc::UnboundedSender<Ended>)>;

/// One run's hold on a worker slot, which it gives back while it waits for sub-jobs.
pub struct RunSlot {
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    slots: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    max_waiting: usize,
}

/// A run that gave its slot back: holds one of the worker's waiting places until it resumes.
pub struct Parked {
    _waiting: OwnedSemaphorePermit,
}

impl RunSlot {
    /// A run holding `permit` from `slots`; `waiting` bounds the runs waiting at once.
    pub fn new(
        permit: OwnedSemaphorePermit,
        slots: Arc<Semaphore>,
        waiting: Arc<Semaphore>,
        max_waiting: usize,
    ) -> Self {
        RunSlot {
            permit: Mutex::new(Some(permit)),
            slots,
            waiting,
            max_waiting,
        }
    }

    /// Gives the slot back and takes a waiting place, or says why it cannot.
    pub fn park(&self) -> Result<Parked, String> {
        let waiting = self.waiting.clone().try_acquire_owned().map_err(|_| {
            format!(
                "this worker already holds {} jobs waiting for sub-jobs, the most it may (--max-waiting)",
                self.max_waiting
            )
        })?;
        drop(self.permit.lock().expect("not poisoned").take());
        Ok(Parked { _waiting: waiting })
    }

    /// Takes a slot again (waiting behind the worker's fetches), then frees the waiting place.
    pub async fn resume(&self, parked: Parked) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        *self.permit.lock().expect("not poisoned") = Some(permit);
        drop(parked);
    }

    /// Gives up the slot: the run has ended. The worker's acker passes it on to the fetch it
    /// sends with the run's acknowledgement (dropped, it goes back to the worker's slots).
    pub fn finish(&self) -> Option<OwnedSemaphorePermit> {
        self.permit.lock().expect("not poisoned").take()
    }
}

/// Who waits for which jobs in this worker, so that the acker can wake them.
#[derive(Default)]
pub struct ChildWatch {
    waiters: Mutex<HashMap<JobKey, Waiters>>,
    next: AtomicU64,
}

/// A registration with the [`ChildWatch`]; unregisters when dropped.
struct Watching {
    watch: Arc<ChildWatch>,
    id: u64,
    keys: Vec<JobKey>,
    ended: mpsc::UnboundedReceiver<Ended>,
}

impl ChildWatch {
    /// Tells whoever waits for these jobs that they ended, with the outcome each one stored
    /// when the teller knows it (its acknowledgement was applied); without it the waiting run
    /// reads the job's record.
    pub fn ended<'a>(
        &self,
        jobs: impl IntoIterator<Item = (&'a str, &'a str, Option<SubJobOutcome>)>,
    ) {
        let waiters = self.waiters.lock().expect("not poisoned");
        if waiters.is_empty() {
            return;
        }
        for (queue, id, outcome) in jobs {
            let key = (queue.to_owned(), id.to_owned());
            for (_, tx) in waiters.get(&key).into_iter().flatten() {
                let _ = tx.send((key.clone(), outcome.clone()));
            }
        }
    }

    fn watch(self: &Arc<Self>, keys: &[JobKey]) -> Watching {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut waiters = self.waiters.lock().expect("not poisoned");
        for key in keys {
            waiters
                .entry(key.clone())
                .or_default()
                .push((id, tx.clone()));
        }
        Watching {
            watch: self.clone(),
            id,
            keys: keys.to_vec(),
            ended: rx,
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut waiters = self.watch.waiters.lock().expect("not poisoned");
        for key in &self.keys {
            if let Some(list) = waiters.get_mut(key) {
                list.retain(|(id, _)| *id != self.id);
                if list.is_empty() {
                    waiters.remove(key);
                }
            }
        }
    }
}

/// Waits for `jobs` as `options` say, parking `slot` while it waits; returns their outcomes in
/// order.
pub(super) async fn join(
    broker: &dyn WorkerBroker,
    watch: &Arc<ChildWatch>,
    slot: Option<&RunSlot>,
    jobs: &[JobKey],
    options: JoinOptions,
) -> Result<Vec<SubJobOutcome>, String> {
    let want = options
        .first
        .map_or(jobs.len(), |n| (n as usize).min(jobs.len()));
    let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
    // Registered before the first read: a job that ends in between still wakes this run.
    let mut watching = watch.watch(jobs);
    let mut outcomes = vec![SubJobOutcome::Pending; jobs.len()];
    let all: Vec<usize> = (0..jobs.len()).collect();
    read(broker, jobs, &all, &mut outcomes)
        .await
        .map_err(|e| format!("could not read the sub-jobs: {e}"))?;
    let done = |o: &[SubJobOutcome]| o.iter().filter(|o| o.ended()).count() >= want;
    if done(&outcomes) || deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
        return Ok(outcomes);
    }

    let parked = slot.map(RunSlot::park).transpose()?;
    let mut poll = FIRST_POLL;
    let mut woken = Vec::new();
    let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut positions: HashMap<&JobKey, Vec<usize>> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        positions.entry(job).or_default().push(i);
    }
    loop {
        let which: Vec<usize> = tokio::select! {
            n = watching.ended.recv_many(&mut woken, 1024) => {
                if n == 0 {
                    break;
                }
                // Outcomes told are taken as they are; the others are read.
                let mut unread = Vec::new();
                for (key, told) in woken.drain(..) {
                    for &i in positions.get(&key).into_iter().flatten() {
                        match &told {
                            Some(o) => outcomes[i] = o.clone(),
                            None if !outcomes[i].ended() => unread.push(i),
                            None => {}
                        }
                    }
                }
                unread
            }
            _ = tokio::time::sleep(poll) => {
                poll = (poll * 2).min(LONGEST_POLL);
                pending(&outcomes).collect()
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => break,
        };
        if which.is_empty() {
            // Every outcome told: nothing to read.
        } else if let Err(e) = read(broker, jobs, &which, &mut outcomes).await {
            // The next poll reads them again.
            tracing::warn!(error = %e, "could not read sub-jobs; trying again");
        }
        if done(&outcomes) {
            break;
        }
    }
    if let (Some(slot), Some(parked)) = (slot, parked) {
        slot.resume(parked).await;
    }
    Ok(outcomes)
}

fn pending(outcomes: &[SubJobOutcome]) -> impl Iterator<Item = usize> + '_ {
    outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.ended())
        .map(|(i, _)| i)
}

/// Reads the records of `jobs[which]` into `outcomes`.
async fn read(
    broker: &dyn WorkerBroker,
    jobs: &[JobKey],
    which: &[usize],
    outcomes: &mut [SubJobOutcome],
) -> Result<(), BrokerError> {
    let wanted: Vec<JobRef> = which
        .iter()
        .map(|&i| JobRef {
            queue: jobs[i].0.clone(),
            id: jobs[i].1.clone(),
        })
        .collect();
    for (&i, record) in which.iter().zip(broker.records_of(&wanted).await?) {
        outcomes[i] = outcome(record.as_ref());
    }
    Ok(())
}

/// What a job's record says of its outcome.
fn outcome(record: Option<&JobRecord>) -> SubJobOutcome {
    let Some(record) = record else {
        return SubJobOutcome::Dead {
            kind: "missing".to_owned(),
            message:
                "the sub-job's record no longer exists (deleted, or trimmed past the result TTL)"
                    .to_owned(),
        };
    };
    match record.state {
        JobState::Succeeded => done(record.report.as_ref()),
        JobState::Dead => match &record.last_error {
            Some(e) => dead(e),
            None => SubJobOutcome::Dead {
                kind: "unknown".to_owned(),
                message: "dead without a recorded error".to_owned(),
            },
        },
        JobState::Cancelled => SubJobOutcome::Cancelled,
        JobState::Ready | JobState::Scheduled | JobState::Leased => SubJobOutcome::Pending,
    }
}

/// A success's outcome: its result's bytes.
fn done(report: Option<&RunReport>) -> SubJobOutcome {
    let result = report.and_then(|r| r.result.as_ref());
    SubJobOutcome::Done(result.map_or_else(Vec::new, |v| {
        args_to_bytes(v).unwrap_or_else(|_| serde_json::to_vec(v).unwrap_or_default())
    }))
}

fn dead(error: &AttemptError) -> SubJobOutcome {
    SubJobOutcome::Dead {
        kind: error.kind.as_str().to_owned(),
        message: error.message.clone(),
    }
}

/// The outcome an applied acknowledgement stored, or `None` when it did not end the job (a
/// retry — which the broker ends as cancelled when a cancel was asked for, so the parent reads
/// that one).
pub(super) fn acked_outcome(completion: &Completion) -> Option<SubJobOutcome> {
    match completion {
        Completion::Succeeded(report) => Some(done(Some(report))),
        Completion::Dead { error, .. } => Some(dead(error)),
        Completion::Cancelled { .. } => Some(SubJobOutcome::Cancelled),
        Completion::Retry { .. } => None,
    }
}
