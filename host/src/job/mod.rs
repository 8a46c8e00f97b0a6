//! The job's own vocabulary, shared by every layer: where a job is ([`JobState`]), how an attempt
//! failed ([`FailureKind`], [`AttemptError`]), what a run produced ([`RunReport`] with its
//! [`Captured`] output, [`LogRecord`]s and [`Progress`]), who the guest is told it is
//! ([`JobInfo`]) and what a run may use ([`Limits`]).
//!
//! These are plain data: serialised into job records (Redis, the HTTP API) and read by the CLI.
//! What it must not do: depend on any other module of the crate — it is the ground floor.

mod failure;
mod limits;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use failure::FailureKind;
pub use limits::{INVOCATION_OVERHEAD_BYTES, LimitError, Limits, MAX_ARGS_BYTES, Sizes};

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be fetched.
    Ready,
    /// Waiting for its `run_at` or its retry backoff.
    Scheduled,
    /// Fetched by a worker that holds the lease.
    Leased,
    /// Done; kept for the result TTL.
    Succeeded,
    /// Failed for good; kept until retried or deleted.
    Dead,
    /// Cancelled before it ended; kept for the result TTL, never retried.
    Cancelled,
}

impl JobState {
    /// Whether the job will not change any more on its own.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }

    /// The lowercase name stored in Redis and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Ready => "ready",
            JobState::Scheduled => "scheduled",
            JobState::Leased => "leased",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ready" => JobState::Ready,
            "scheduled" => JobState::Scheduled,
            "leased" => JobState::Leased,
            "succeeded" => JobState::Succeeded,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

/// Why one attempt failed, as kept in the job's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt, from 1.
    pub attempt: u32,
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The reason, cut to the operator's error size limit (see `truncated`).
    pub message: String,
    /// When it happened (Unix ms).
    pub at_ms: u64,
    /// Whether `message` was cut to the operator's limit (`--max-error-kb`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl AttemptError {
    /// Attempt `attempt` failed with `kind` at `at_ms` (Unix ms) for `message`.
    pub fn new(attempt: u32, kind: FailureKind, message: String, at_ms: u64) -> Self {
        AttemptError {
            attempt,
            kind,
            message,
            at_ms,
            truncated: false,
        }
    }

    /// Cuts the message to at most `max` bytes, at a character boundary, and flags it.
    pub fn cut_to(mut self, max: usize) -> Self {
        if self.message.len() > max {
            let mut end = max;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.truncated = true;
        }
        self
    }
}

/// What the last attempt produced, kept in the job's record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The attempt this describes.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// The job's result (success only), as JSON (`{"$bytes": …}` for non-JSON bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Captured stdout.
    #[serde(default)]
    pub stdout: Captured,
    /// Captured stderr.
    #[serde(default)]
    pub stderr: Captured,
    /// Log records, oldest first.
    #[serde(default)]
    pub logs: Vec<LogRecord>,
    /// Records dropped over the cap.
    #[serde(default)]
    pub logs_dropped: u64,
    /// The last progress reported.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// Fuel consumed.
    pub fuel_used: u64,
    /// Wall time of the run, in milliseconds.
    pub wall_ms: f64,
    /// Ids of the sub-jobs it enqueued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_jobs: Vec<String>,
    /// Outbound HTTP, per destination called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpUse>,
}

/// One destination's outbound HTTP during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpUse {
    /// `scheme://host:port` (`other` for calls past the first 32 destinations of a run).
    pub destination: String,
    /// Requests sent (allowed by the grant).
    pub calls: u64,
    /// Of those, how many ended in an error (connect, timeout, body over the cap, …).
    pub failed: u64,
    /// Request body bytes sent.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
    /// Time spent waiting on these calls, from sending to the end of the response body.
    pub wait_ms: u64,
}

impl RunReport {
    /// The report as a job's record keeps it: this report's JSON without the fields that hold
    /// nothing (no output, no logs, no progress), which parsing fills back in. A record is
    /// written for every job and kept for the result TTL: a `hello` job's report is 111 bytes
    /// instead of 264.
    pub fn to_stored_json(&self) -> String {
        fn empty(c: &&Captured) -> bool {
            **c == Captured::default()
        }
        fn none<T>(v: &&[T]) -> bool {
            v.is_empty()
        }
        fn zero(n: &u64) -> bool {
            *n == 0
        }
        #[derive(Serialize)]
        struct Stored<'a> {
            attempt: u32,
            worker: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            result: Option<&'a Value>,
            #[serde(skip_serializing_if = "empty")]
            stdout: &'a Captured,
            #[serde(skip_serializing_if = "empty")]
            stderr: &'a Captured,
            #[serde(skip_serializing_if = "none")]
            logs: &'a [LogRecord],
            #[serde(skip_serializing_if = "zero")]
            logs_dropped: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            progress: Option<&'a Progress>,
            fuel_used: u64,
            wall_ms: f64,
            #[serde(skip_serializing_if = "none")]
            sub_jobs: &'a [String],
            #[serde(skip_serializing_if = "none")]
            http: &'a [HttpUse],
        }
        let RunReport {
            attempt,
            worker,
            result,
            stdout,
            stderr,
            logs,
            logs_dropped,
            progress,
            fuel_used,
            wall_ms,
            sub_jobs,
            http,
        } = self;
        serde_json::to_string(&Stored {
            attempt: *attempt,
            worker,
            result: result.as_ref(),
            stdout,
            stderr,
            logs,
            logs_dropped: *logs_dropped,
            progress: progress.as_ref(),
            fuel_used: *fuel_used,
            wall_ms: *wall_ms,
            sub_jobs,
            http,
        })
        .expect("plain data serialises")
    }
}

/// The identity of a job run, as the guest sees it in `job-info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub id: String,
    /// Queue the job came from.
    pub queue: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Attempts the job gets in all.
    pub max_attempts: u32,
}

/// Severity of a guest log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

/// A record the guest logged through the `host.log` import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The message (cut to 4 KiB).
    pub message: String,
    /// Milliseconds since the run started.
    pub at_ms: u64,
}

/// The last progress the guest reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0–100.
    pub percent: u8,
    /// Optional note.
    pub note: Option<String>,
}

/// A captured output stream, as stored in a job's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Captured {
    /// The first bytes written, up to the cap (invalid UTF-8 replaced).
    pub text: String,
    /// How many bytes the guest wrote in all.
    pub total_bytes: u64,
    /// Whether bytes beyond the cap were dropped.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A `hello` job's report as a worker writes it.
    fn hello() -> RunReport {
        RunReport {
            attempt: 1,
            worker: "vm:11727:fbdd".into(),
            result: Some(json!({"message": "Hello, n8514!"})),
            fuel_used: 4785,
            wall_ms: 0.007471,
            ..RunReport::default()
        }
    }

    #[test]
    fn the_stored_report_leaves_out_empty_fields_and_reads_back_whole() {
        let report = hello();
        let full = serde_json::to_string(&report).unwrap();
        let stored = report.to_stored_json();
        println!(
            "{} bytes in full, {} stored: {stored}",
            full.len(),
            stored.len()
        );
        assert_eq!((full.len(), stored.len()), (264, 111));
        assert_eq!(serde_json::from_str::<RunReport>(&stored).unwrap(), report);
        // Parsed back, it serialises as the API always showed it.
        let back: RunReport = serde_json::from_str(&stored).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), full);
    }

    #[test]
    fn a_stored_report_keeps_every_field_that_holds_something() {
        let report = RunReport {
            stdout: Captured {
                text: "out".into(),
                total_bytes: 3,
                truncated: false,
            },
            stderr: Captured {
                text: String::new(),
                total_bytes: 9,
                truncated: true,
            },
            logs: vec![LogRecord {
                level: LogLevel::Info,
                message: "m".into(),
                at_ms: 1,
            }],
            logs_dropped: 2,
            progress: Some(Progress {
                percent: 50,
                note: None,
            }),
            sub_jobs: vec!["c".into()],
            http: vec![HttpUse::default()],
            ..hello()
        };
        let stored = report.to_stored_json();
        assert_eq!(serde_json::from_str::<RunReport>(&stored).unwrap(), report);
        assert_eq!(stored.len(), serde_json::to_string(&report).unwrap().len());
    }
}
