//! What a run produced ([`RunOutcome`]) and, when it did not succeed, the precise reason
//! ([`Failure`]): each sandbox limit is its own variant, told apart from wasmtime's error here.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::Trap;

use super::WASM_STACK_BYTES;
use super::host::RunState;
use crate::job::{Captured, FailureKind, HttpUse, Limits, LogRecord, Progress};

/// Why a run did not succeed. Each sandbox limit is its own variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Failure {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, …).
    #[error("trapped: {message}")]
    Trap {
        /// The trap, with the guest's panic message when it left one.
        message: String,
    },
    /// The fuel budget ran out.
    #[error("out of fuel: used the whole budget of {budget} fuel")]
    OutOfFuel {
        /// The budget.
        budget: u64,
    },
    /// The wall-clock deadline passed (in guest code or blocked in a host call).
    #[error("timed out after {timeout_ms} ms")]
    Timeout {
        /// The deadline.
        timeout_ms: u64,
    },
    /// The guest asked for more linear memory than its cap.
    #[error(
        "memory limit: asked for {requested_bytes} bytes of linear memory, cap is {limit_bytes}"
    )]
    MemoryLimit {
        /// The cap.
        limit_bytes: u64,
        /// The total the refused growth asked for.
        requested_bytes: u64,
    },
    /// The wasm stack overflowed.
    #[error("stack overflow: exhausted the {stack_bytes}-byte wasm stack")]
    StackOverflow {
        /// The stack size.
        stack_bytes: u64,
    },
    /// The guest returned a result larger than the operator's limit; nothing of it is kept.
    #[error(
        "result too large: the job returned {bytes} bytes, above the limit of {limit_bytes} (--max-result-kb)"
    )]
    ResultTooLarge {
        /// The result's size.
        bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The guest returned `job-error::retry`.
    #[error("job asked to be retried: {message}")]
    Retry {
        /// The guest's message.
        message: String,
    },
    /// The guest returned `job-error::fail`: never retried.
    #[error("job failed: {message}")]
    Fail {
        /// The guest's message.
        message: String,
    },
    /// The component could not be instantiated (for example the pool is exhausted).
    #[error("could not instantiate: {message}")]
    Instantiate {
        /// Wasmtime's reason.
        message: String,
    },
}

impl Failure {
    /// Whether a retry could help: everything but the guest's own `fail`.
    pub fn is_retryable(&self) -> bool {
        !self.kind().is_permanent()
    }

    /// Its kind, as in the JSON `kind` field.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Trap { .. } => FailureKind::Trap,
            Failure::OutOfFuel { .. } => FailureKind::OutOfFuel,
            Failure::Timeout { .. } => FailureKind::Timeout,
            Failure::MemoryLimit { .. } => FailureKind::MemoryLimit,
            Failure::StackOverflow { .. } => FailureKind::StackOverflow,
            Failure::ResultTooLarge { .. } => FailureKind::ResultTooLarge,
            Failure::Retry { .. } => FailureKind::Retry,
            Failure::Fail { .. } => FailureKind::Fail,
            Failure::Instantiate { .. } => FailureKind::Instantiate,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The result bytes, or why there are none.
    pub result: Result<Vec<u8>, Failure>,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// The budget the run had.
    pub fuel_budget: u64,
    /// Wall time from the start of instantiation to the end of the call.
    pub wall_time: Duration,
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
    /// Outbound HTTP, per destination called.
    pub http: Vec<HttpUse>,
}

impl RunOutcome {
    /// The outcome with every value in `secrets` (name, value) replaced by `[redacted:NAME]`
    /// wherever the run could have written it: stdout, stderr, logs, progress, the result and
    /// the failure's message.
    pub(super) fn redacted(mut self, secrets: &[(String, String)]) -> RunOutcome {
        if secrets.is_empty() {
            return self;
        }
        let r = |text: &mut String| *text = crate::secret::redact(text, secrets);
        r(&mut self.stdout.text);
        r(&mut self.stderr.text);
        for record in &mut self.logs {
            r(&mut record.message);
        }
        if let Some(note) = self.progress.as_mut().and_then(|p| p.note.as_mut()) {
            r(note);
        }
        match &mut self.result {
            Ok(bytes) => {
                // Redacted as text: a result that is not UTF-8 has its invalid bytes replaced.
                let text = String::from_utf8_lossy(bytes);
                let clean = crate::secret::redact(&text, secrets);
                if clean != text {
                    *bytes = clean.into_bytes();
                }
            }
            Err(
                Failure::Trap { message }
                | Failure::Retry { message }
                | Failure::Fail { message }
                | Failure::Instantiate { message },
            ) => r(message),
            Err(_) => {}
        }
        self
    }
}

/// Turns a wasmtime error into the precise failure. The memory cap is checked before the trap
/// code: a refused `memory.grow` surfaces as whatever the guest does next (Rust aborts through
/// `unreachable`), so the limiter's record is the real cause.
pub(super) fn classify(
    error: &wasmtime::Error,
    instantiating: bool,
    state: &RunState,
    limits: &Limits,
    timeout: Failure,
) -> Failure {
    if let Some(requested) = state.memory.refused {
        return Failure::MemoryLimit {
            limit_bytes: limits.memory_bytes,
            requested_bytes: requested,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::OutOfFuel {
            budget: limits.fuel,
        },
        Some(Trap::Interrupt) => timeout,
        Some(Trap::StackOverflow) => Failure::StackOverflow {
            stack_bytes: WASM_STACK_BYTES as u64,
        },
        Some(trap) => {
            let panic = state
                .logs
                .iter()
                .rev()
                .find_map(|r| r.message.strip_prefix("panic: "));
            let message = match panic {
                Some(p) => format!("{trap}: guest panicked: {p}"),
                None => trap.to_string(),
            };
            Failure::Trap { message }
        }
        None if instantiating => Failure::Instantiate {
            message: format!("{error:#}"),
        },
        None => Failure::Trap {
            message: format!("{error:#}"),
        },
    }
}
