//! Sub-jobs: enqueue them, then join them for their results.
//!
//! ```ignore
//! let handles = chunks
//!     .iter()
//!     .map(|c| wasmq_guest::enqueue(&counter, &json!({ "text": c })))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let counts: Vec<Counts> = wasmq_guest::join_all(&handles)?; // a dead one retries this job
//! ```
//!
//! A sub-job's id comes from this job's id and the call's position (or the [`Options::key`]), so
//! when this job runs again — a retry, or a worker that died — the same calls name the same
//! sub-jobs: they are not enqueued twice, and joining them returns what they already stored.
//! While a join waits the job holds no worker slot, no thread and no fuel; its deadline still
//! runs.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::wit_host;

/// How to enqueue a sub-job: every field may be left out (`Options::default()`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Names the sub-job (`<this job's id>.<key>`) instead of the call's position: 1–64
    /// printable ASCII characters, not all digits.
    pub key: Option<String>,
    /// The queue (this job's own when left out).
    pub queue: Option<String>,
    /// Run no earlier than this from now.
    pub delay: Option<Duration>,
    /// Attempts in all (the host's default when left out).
    pub max_attempts: Option<u32>,
    /// Higher runs first within its queue (-100 to 100).
    pub priority: Option<i32>,
}

impl Options {
    /// Options naming the sub-job by `key`.
    pub fn key(key: impl Into<String>) -> Self {
        Options {
            key: Some(key.into()),
            ..Options::default()
        }
    }
}

/// A sub-job this run enqueued, to join.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    id: String,
}

impl Handle {
    /// The sub-job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the sub-job and decodes its JSON result. A sub-job that died or was cancelled
    /// (or a result that does not decode) is an error; with `?` it becomes a retry of this job
    /// naming the sub-job's reason — which, once this job is out of attempts, is why it died.
    pub fn join<T: DeserializeOwned>(&self) -> Result<T, JoinError> {
        let mut all = join_all(std::slice::from_ref(self))?;
        Ok(all.pop().expect("one outcome per handle"))
    }
}

/// Where a sub-job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded with these result bytes (JSON unless it returned raw bytes).
    Done(Vec<u8>),
    /// It failed for good.
    Dead {
        /// What kind of failure (`fail`, `retry`, `trap`, `out_of_fuel`, `timeout`, …).
        kind: String,
        /// What happened.
        message: String,
    },
    /// It was cancelled.
    Cancelled,
    /// It has not ended yet (only when [`wait`] returned early).
    Pending,
}

/// Why joining a sub-job gave no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The host refused the join (a handle from elsewhere, or the worker holds as many waiting
    /// jobs as it may).
    Refused(String),
    /// The sub-job died.
    Dead {
        /// The sub-job's id.
        id: String,
        /// Its failure's kind.
        kind: String,
        /// Its failure's message.
        message: String,
    },
    /// The sub-job was cancelled.
    Cancelled {
        /// The sub-job's id.
        id: String,
    },
    /// Its result did not decode as the type asked for.
    Decode {
        /// The sub-job's id.
        id: String,
        /// The decoder's reason.
        reason: String,
    },
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Refused(why) => write!(f, "join refused: {why}"),
            JoinError::Dead { id, kind, message } => {
                write!(f, "sub-job {id} died ({kind}): {message}")
            }
            JoinError::Cancelled { id } => write!(f, "sub-job {id} was cancelled"),
            JoinError::Decode { id, reason } => {
                write!(f, "sub-job {id}'s result did not decode: {reason}")
            }
        }
    }
}

impl std::error::Error for JoinError {}

/// Enqueues a sub-job of `module` (`sha256:<64 hex>`) with JSON `args` on this job's queue.
/// Returns its handle, or the host's reason for refusing it.
pub fn enqueue<T: serde::Serialize + ?Sized>(module: &str, args: &T) -> Result<Handle, String> {
    enqueue_with(module, args, &Options::default())
}

/// Enqueues a sub-job of `module` with JSON `args` and `options`.
pub fn enqueue_with<T: serde::Serialize + ?Sized>(
    module: &str,
    args: &T,
    options: &Options,
) -> Result<Handle, String> {
    let bytes = serde_json::to_vec(args).map_err(|e| format!("failed to encode args: {e}"))?;
    enqueue_bytes(module, &bytes, options)
}

/// Enqueues a sub-job of `module` with raw argument bytes and `options`.
pub fn enqueue_bytes(module: &str, args: &[u8], options: &Options) -> Result<Handle, String> {
    let options = wit_host::EnqueueOptions {
        key: options.key.clone(),
        queue: options.queue.clone(),
        delay_ms: options
            .delay
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        max_attempts: options.max_attempts,
        priority: options.priority,
    };
    wit_host::enqueue(module, args, &options).map(|id| Handle { id })
}

/// Waits for all of `handles` and decodes each JSON result, in order; the first sub-job that
/// died or was cancelled is the error (see [`Handle::join`]).
pub fn join_all<T: DeserializeOwned>(handles: &[Handle]) -> Result<Vec<T>, JoinError> {
    let outcomes = wait(handles, None, None).map_err(JoinError::Refused)?;
    handles
        .iter()
        .zip(outcomes)
        .map(|(h, outcome)| {
            let id = h.id.clone();
            match outcome {
                Outcome::Done(bytes) => {
                    serde_json::from_slice(&bytes).map_err(|e| JoinError::Decode {
                        id,
                        reason: e.to_string(),
                    })
                }
                Outcome::Dead { kind, message } => Err(JoinError::Dead { id, kind, message }),
                Outcome::Cancelled => Err(JoinError::Cancelled { id }),
                Outcome::Pending => Err(JoinError::Refused(format!(
                    "the host returned before sub-job {id} ended"
                ))),
            }
        })
        .collect()
}

/// Waits until `first` of `handles` have ended (all of them when `None`) or `timeout` passes,
/// and returns every one's [`Outcome`] in order — the ones not ended yet as
/// [`Outcome::Pending`]. Nothing here fails this job: the caller decides.
pub fn wait(
    handles: &[Handle],
    first: Option<u32>,
    timeout: Option<Duration>,
) -> Result<Vec<Outcome>, String> {
    let ids: Vec<String> = handles.iter().map(|h| h.id.clone()).collect();
    let options = wit_host::JoinOptions {
        first,
        timeout_ms: timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let outcomes = wit_host::join(&ids, options)?;
    Ok(outcomes
        .into_iter()
        .map(|o| match o {
            wit_host::Outcome::Done(bytes) => Outcome::Done(bytes),
            wit_host::Outcome::Dead(f) => Outcome::Dead {
                kind: f.kind,
                message: f.message,
            },
            wit_host::Outcome::Cancelled => Outcome::Cancelled,
            wit_host::Outcome::Pending => Outcome::Pending,
        })
        .collect())
}
