//! The intake: the one way in for new jobs, whoever sends them — HTTP (one job, a bulk request,
//! a batch), the CLI (`--file` too), a guest's sub-jobs and cron ticks. It parses, checks every
//! field against the operator's ceilings and the size of the args against the operator's limit,
//! fills in ids, checks that each module named was uploaded
//! (once per module per request, before anything is enqueued) and assembles batches.
//!
//! Every refusal says where it is ([`Place`]: which job of a list, or the callback) and which
//! field ([`InvocationError::field_name`]), so each caller can word it for its users — `jobs[3].fuel`
//! over HTTP, `line 7` for a file — without picking apart a message.
//!
//! What it must not do: write anything before every job of a request has been checked. A request
//! is all or nothing.

use std::collections::HashMap;

use serde_json::Value;

use crate::broker::{Batches, Broker, BrokerError, Enqueued, NewBatch};
use crate::invocation::{Invocation, InvocationError, NewJob, check_args_size};
use crate::job::{Limits, Sizes};

/// Jobs handed to the broker per call: bounds one call's size, while every job of the request is
/// still checked before the first call.
const ENQUEUE_CHUNK: usize = 5000;

/// Where in a request a refused job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The request held one job.
    Only,
    /// The `n`th job (from 0) of a list: a bulk request, a batch's jobs, a file's lines.
    Job(usize),
    /// A batch's callback.
    Callback,
}

/// A job refused, and where it was.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Refusal {
    /// Which job of the request.
    pub place: Place,
    /// Why.
    pub error: InvocationError,
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// A job was refused; nothing was enqueued.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The broker failed; nothing of a refused batch was enqueued, and what an enqueue accepted
    /// before the failure stays accepted (enqueues are idempotent by id: send it again).
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The intake, with the operator's ceilings that every job's limits must fit and the largest
/// args it takes.
#[derive(Clone, Copy, Debug)]
pub struct Intake {
    ceilings: Limits,
    args_bytes: usize,
}

impl Default for Intake {
    /// The default ceilings and sizes.
    fn default() -> Self {
        Intake::new(Limits::default_ceilings(), &Sizes::default())
    }
}

impl Intake {
    /// An intake refusing limits above `ceilings` and args larger than `sizes.args_bytes`.
    pub fn new(ceilings: Limits, sizes: &Sizes) -> Self {
        Intake {
            ceilings,
            args_bytes: sizes.args_bytes,
        }
    }

    /// The ceilings it checks against.
    pub fn ceilings(&self) -> &Limits {
        &self.ceilings
    }

    /// The largest args it takes, in bytes of compact JSON.
    pub fn args_bytes(&self) -> usize {
        self.args_bytes
    }

    /// Checks one invocation.
    pub fn job(&self, invocation: Invocation) -> Result<NewJob, Refusal> {
        self.prepare(invocation).map_err(|error| Refusal {
            place: Place::Only,
            error,
        })
    }

    /// Checks one invocation's fields and the size of its args.
    fn prepare(&self, invocation: Invocation) -> Result<NewJob, InvocationError> {
        check_args_size(&invocation.args, self.args_bytes)?;
        invocation.prepare(&self.ceilings)
    }

    /// Checks a list of parsed (or refused) invocations, in order; the first refusal names its
    /// place in the list.
    pub fn jobs(
        &self,
        items: impl IntoIterator<Item = Result<Invocation, InvocationError>>,
    ) -> Result<Vec<NewJob>, Refusal> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                item.and_then(|inv| self.prepare(inv))
                    .map_err(|error| Refusal {
                        place: Place::Job(i),
                        error,
                    })
            })
            .collect()
    }

    /// Assembles a batch: its jobs and its callback (whose id is `batch:<id>:callback`, so a
    /// callback that names an id is refused), all on the callback's queue. A batch without an id
    /// gets a UUIDv7.
    pub fn batch(
        &self,
        id: Option<String>,
        jobs: Vec<Value>,
        callback: Value,
    ) -> Result<NewBatch, Refusal> {
        let at_callback = |error| Refusal {
            place: Place::Callback,
            error,
        };
        let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut callback = Invocation::from_value(callback).map_err(at_callback)?;
        if callback.id.is_some() {
            return Err(at_callback(InvocationError::Field {
                field: "id",
                reason: "is `batch:<id>:callback`; leave it out".to_owned(),
            }));
        }
        callback.id = Some(format!("batch:{id}:callback"));
        let callback = self.prepare(callback).map_err(at_callback)?;
        let jobs = self.jobs(jobs.into_iter().map(Invocation::from_value))?;
        let batch = NewBatch { id, jobs, callback };
        batch.check().map_err(|error| Refusal {
            place: Place::Only,
            error,
        })?;
        Ok(batch)
    }

    /// Enqueues checked jobs after checking that every module they name was uploaded — each
    /// module once, all of them before the first job is enqueued — however many jobs there are.
    /// A refusal names the job by its place in `jobs`.
    pub async fn enqueue(
        &self,
        broker: &dyn Broker,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, IntakeError> {
        self.check_modules(broker, jobs).await?;
        self.enqueue_checked(broker, jobs).await
    }

    /// Enqueues jobs whose modules the caller has already checked ([`Intake::check_modules`]),
    /// in chunks, like [`Intake::enqueue`] without the check.
    pub async fn enqueue_checked(
        &self,
        broker: &dyn Broker,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, IntakeError> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(ENQUEUE_CHUNK) {
            outcomes.extend(broker.enqueue(chunk).await?);
        }
        Ok(outcomes)
    }

    /// Enqueues an assembled batch after checking its modules: all its jobs and its callback, or
    /// none. `Existed` when a batch with this id was enqueued before.
    pub async fn enqueue_batch<B: Batches + ?Sized>(
        &self,
        broker: &B,
        batch: &NewBatch,
    ) -> Result<Enqueued, IntakeError> {
        let n = batch.jobs.len();
        let mut all = batch.jobs.clone();
        all.push(batch.callback.clone());
        check_modules(broker, &all, |i| {
            if i == n {
                Place::Callback
            } else {
                Place::Job(i)
            }
        })
        .await?;
        Ok(broker.enqueue_batch(batch).await?)
    }

    /// Refuses jobs whose module was never uploaded (the refusal names the first job that uses
    /// it), asking the broker once per module. [`Intake::enqueue`] does this first; callers that
    /// store jobs some other way (a cron entry's template) call it themselves.
    pub async fn check_modules<B: Broker + ?Sized>(
        &self,
        broker: &B,
        jobs: &[NewJob],
    ) -> Result<(), IntakeError> {
        check_modules(broker, jobs, Place::Job).await
    }
}

/// Refuses jobs whose module was never uploaded, asking the broker once per module; the refusal
/// names the first job that uses it.
async fn check_modules<B: Broker + ?Sized>(
    broker: &B,
    jobs: &[NewJob],
    place: impl Fn(usize) -> Place,
) -> Result<(), IntakeError> {
    let mut first_use = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        first_use.entry(job.invocation.module).or_insert(i);
    }
    let mut modules: Vec<_> = first_use.into_iter().collect();
    modules.sort_by_key(|(_, i)| *i);
    for (hash, i) in modules {
        if !broker.has_module(hash).await? {
            return Err(Refusal {
                place: place(i),
                error: InvocationError::UnknownModule(hash),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::modules::ModuleHash;

    fn hash(byte: u8) -> ModuleHash {
        format!("sha256:{}", format!("{byte:02x}").repeat(32))
            .parse()
            .unwrap()
    }

    fn inv(module: ModuleHash) -> Result<Invocation, InvocationError> {
        Ok(Invocation::new(module))
    }

    #[tokio::test]
    async fn a_list_is_refused_whole_naming_the_first_bad_job_and_its_field() {
        let intake = Intake::default();
        let mut bad = Invocation::new(hash(1));
        bad.fuel = 0;
        let err = intake
            .jobs([inv(hash(1)), inv(hash(1)), Ok(bad)])
            .unwrap_err();
        assert_eq!(err.place, Place::Job(2));
        assert_eq!(err.error.field_name(), Some("fuel"));
    }

    #[tokio::test]
    async fn an_unknown_module_anywhere_refuses_everything_and_names_its_first_job() {
        let broker = MemoryBroker::new();
        broker.put_module(hash(1), b"bytes").await.unwrap();
        let intake = Intake::default();
        // Far more jobs than one broker call takes, the unknown module only at the end.
        let mut items: Vec<_> = (0..ENQUEUE_CHUNK * 2 + 10).map(|_| inv(hash(1))).collect();
        items.push(inv(hash(2)));
        items.push(inv(hash(2)));
        let jobs = intake.jobs(items).unwrap();
        let err = intake.enqueue(&broker, &jobs).await.unwrap_err();
        let IntakeError::Refused(refusal) = err else {
            panic!("refused, not {err:?}");
        };
        assert_eq!(refusal.place, Place::Job(ENQUEUE_CHUNK * 2 + 10));
        assert_eq!(refusal.error, InvocationError::UnknownModule(hash(2)));
        assert!(
            broker.job(None, jobs[0].id()).await.unwrap().is_none(),
            "nothing was enqueued"
        );
    }

    #[test]
    fn a_batch_callback_may_not_name_its_id() {
        let intake = Intake::default();
        let module = hash(1).to_string();
        let err = intake
            .batch(
                Some("b".into()),
                vec![json!({"module": module})],
                json!({"module": module, "id": "mine"}),
            )
            .unwrap_err();
        assert_eq!(err.place, Place::Callback);
        assert_eq!(err.error.field_name(), Some("id"));
        let batch = intake
            .batch(
                Some("b".into()),
                vec![json!({"module": module})],
                json!({"module": module}),
            )
            .unwrap();
        assert_eq!(batch.callback.id(), "batch:b:callback");
    }
}
