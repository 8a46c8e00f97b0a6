//! The per-run limits a job gets, the operator's ceilings that bound them, and the operator's
//! limits on the sizes of what clients and guests hand over ([`Sizes`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one run may use. Every field is enforced by the sandbox; see `Sandbox::run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel budget: roughly one unit per WebAssembly instruction executed.
    pub fuel: u64,
    /// Wall-clock deadline for instantiation plus the call, including time blocked in host calls.
    #[serde(with = "duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// Cap on the guest's linear memory, summed over all its memories, in bytes.
    pub memory_bytes: u64,
    /// How many bytes of stdout, and separately of stderr, are kept.
    pub output_bytes: usize,
}

impl Default for Limits {
    /// The defaults of the invocation format (design.md): generous for real jobs, small enough that
    /// a runaway one is stopped in seconds.
    fn default() -> Self {
        Limits {
            // ~1 s of straight-line guest code on this class of machine; a real job that needs
            // more asks for it per invocation.
            fuel: 1_000_000_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 64 << 20,
            // Enough for a stack trace and a page of diagnostics, small enough to keep per job.
            output_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// The operator ceilings used when none are configured: no invocation may ask for more.
    pub fn default_ceilings() -> Self {
        Limits {
            fuel: 100_000_000_000,
            timeout: Duration::from_secs(15 * 60),
            // Also the pooling allocator's per-memory slot size, so it bounds reserved (virtual,
            // not resident) address space per instance.
            memory_bytes: 1 << 30,
            output_bytes: 1 << 20,
        }
    }

    /// Checks these limits against `ceilings`, naming the first field that is out of range.
    pub fn check(&self, ceilings: &Limits) -> Result<(), LimitError> {
        let fields = [
            ("fuel", self.fuel as u128, ceilings.fuel as u128),
            (
                "timeout_ms",
                self.timeout.as_millis(),
                ceilings.timeout.as_millis(),
            ),
            (
                "memory_mb",
                u128::from(self.memory_bytes >> 20),
                u128::from(ceilings.memory_bytes >> 20),
            ),
            (
                "output_bytes",
                self.output_bytes as u128,
                ceilings.output_bytes as u128,
            ),
        ];
        for (field, value, max) in fields {
            if value == 0 {
                return Err(LimitError::Zero { field });
            }
            if value > max {
                return Err(LimitError::AboveCeiling { field, value, max });
            }
        }
        Ok(())
    }
}

/// The hard ceiling on a job's args, in bytes of compact JSON: the most `--max-args-kb` may allow.
/// The Redis enqueue script refuses an invocation longer than this plus
/// [`INVOCATION_OVERHEAD_BYTES`], so a producer writing straight into Redis cannot store more.
/// Args are a job's parameters, not its data: like a cloud task queue's 1 MB, a bigger input
/// belongs in a store the job reads, named by the args.
pub const MAX_ARGS_BYTES: usize = 1 << 20;

/// Room for an invocation's other fields beside its args (id ≤ 200 bytes, queue ≤ 64, module,
/// numbers, `run_at`): the Redis enqueue script's limit is `MAX_ARGS_BYTES` plus this
/// (`MAX_INVOCATION_BYTES` in `common.lua`).
pub const INVOCATION_OVERHEAD_BYTES: usize = 4 << 10;

/// The operator's limits on sizes that a client or a guest chooses, each checked on every path
/// that takes it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Largest args, as compact JSON: refused at enqueue (HTTP, CLI, cron, a guest's sub-jobs)
    /// naming `args`; a worker with a lower limit ends a larger job dead with `args`.
    pub args_bytes: usize,
    /// Largest result a run may return: past it the attempt fails with `result_too_large` and
    /// nothing of the result is kept.
    pub result_bytes: usize,
    /// Longest error message kept per attempt (in the job's last error and its history): longer
    /// ones are cut at a character boundary and flagged `truncated`.
    pub error_bytes: usize,
}

impl Default for Sizes {
    /// Args up to the 1 MiB ceiling; a 1 MiB result, like args a value rather than a data set,
    /// which the result TTL keeps per job; 8 KiB of error message, room for a guest's message
    /// and a wasm backtrace (the full stderr is kept beside it), 200 KiB over the 25 failures a
    /// job record keeps.
    fn default() -> Self {
        Sizes {
            args_bytes: MAX_ARGS_BYTES,
            result_bytes: 1 << 20,
            error_bytes: 8 << 10,
        }
    }
}

/// A limit that an invocation may not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    /// The limit is zero: nothing could run.
    #[error("`{field}` must be greater than zero")]
    Zero {
        /// The invocation field.
        field: &'static str,
    },
    /// The limit is above what the operator allows.
    #[error("`{field}` is {value}, above the operator's ceiling of {max}")]
    AboveCeiling {
        /// The invocation field.
        field: &'static str,
        /// What was asked for.
        value: u128,
        /// The ceiling.
        max: u128,
    },
}

impl LimitError {
    /// The invocation field that is out of range.
    pub fn field(&self) -> &'static str {
        match self {
            LimitError::Zero { field } | LimitError::AboveCeiling { field, .. } => field,
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_default_ceilings() {
        Limits::default()
            .check(&Limits::default_ceilings())
            .unwrap();
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let ceilings = Limits::default_ceilings();
        let zero = Limits {
            fuel: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.check(&ceilings),
            Err(LimitError::Zero { field: "fuel" })
        );
        let big = Limits {
            memory_bytes: 4 << 30,
            ..Limits::default()
        };
        let err = big.check(&ceilings).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`memory_mb` is 4096, above the operator's ceiling of 1024"
        );
    }
}
