//! Why an attempt failed, as one closed set of kinds: the sandbox reports the run-time ones, the
//! worker the ones found before or around a run, the broker the ones it finds itself (an invalid
//! stored invocation, an expired lease). Whether a retry can help is decided here, once.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of an attempt's failure: the stable short name kept in job records (`kind`), shown by
/// the CLI and the API, and listed in `docs/openapi.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, …).
    Trap,
    /// The fuel budget ran out.
    OutOfFuel,
    /// The wall-clock deadline passed.
    Timeout,
    /// The guest asked for more linear memory than its cap.
    MemoryLimit,
    /// The wasm stack overflowed.
    StackOverflow,
    /// The guest returned a result larger than the operator's limit (`--max-result-kb`); nothing
    /// of it was kept.
    ResultTooLarge,
    /// The guest returned `job-error::retry`.
    Retry,
    /// The guest returned `job-error::fail`.
    Fail,
    /// The component could not be instantiated (for example the instance pool was exhausted).
    Instantiate,
    /// The module is not a job this host can run (refused when loaded).
    Module,
    /// The module could not be fetched right now (the broker was unreachable).
    ModuleUnavailable,
    /// The job's limits are above what this worker's operator allows.
    Limits,
    /// The job's args could not be handed to the guest.
    Args,
    /// The stored invocation did not parse (written into Redis by something that skipped checks).
    Invocation,
    /// The worker holding the lease stopped renewing it (it died or lost the broker).
    LeaseExpired,
    /// The job was cancelled while it ran.
    Cancelled,
}

impl FailureKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [FailureKind; 16] = [
        FailureKind::Trap,
        FailureKind::OutOfFuel,
        FailureKind::Timeout,
        FailureKind::MemoryLimit,
        FailureKind::StackOverflow,
        FailureKind::ResultTooLarge,
        FailureKind::Retry,
        FailureKind::Fail,
        FailureKind::Instantiate,
        FailureKind::Module,
        FailureKind::ModuleUnavailable,
        FailureKind::Limits,
        FailureKind::Args,
        FailureKind::Invocation,
        FailureKind::LeaseExpired,
        FailureKind::Cancelled,
    ];

    /// Whether running the same invocation again cannot help: the guest said so (`fail`), the
    /// job as enqueued can never run here (module, limits, args, invocation), it finished but its
    /// result cannot be kept (result_too_large: running it again redoes the work to make the
    /// same result), or someone asked for it to stop (cancelled). Everything else — the guest's own resource exhaustion included,
    /// since a flaky input or a busy machine may differ next time — is retried while attempts
    /// remain.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            FailureKind::Fail
                | FailureKind::ResultTooLarge
                | FailureKind::Module
                | FailureKind::Limits
                | FailureKind::Args
                | FailureKind::Invocation
                | FailureKind::Cancelled
        )
    }

    /// The stable short name (`out_of_fuel`, …), as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::ResultTooLarge => "result_too_large",
            FailureKind::Retry => "retry",
            FailureKind::Fail => "fail",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Module => "module",
            FailureKind::ModuleUnavailable => "module_unavailable",
            FailureKind::Limits => "limits",
            FailureKind::Args => "args",
            FailureKind::Invocation => "invocation",
            FailureKind::LeaseExpired => "lease_expired",
            FailureKind::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_serialised_form() {
        for kind in FailureKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
            let back: FailureKind = serde_json::from_value(kind.as_str().into()).unwrap();
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn only_what_a_retry_cannot_change_is_permanent() {
        let permanent: Vec<_> = FailureKind::ALL
            .into_iter()
            .filter(|k| k.is_permanent())
            .map(FailureKind::as_str)
            .collect();
        assert_eq!(
            permanent,
            [
                "result_too_large",
                "fail",
                "module",
                "limits",
                "args",
                "invocation",
                "cancelled"
            ]
        );
    }
}
