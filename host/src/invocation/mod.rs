//! The invocation: the public wire format of one job, identical over HTTP, on the CLI and in Redis.
//!
//! ```json
//! { "module": "sha256:<64 hex>", "args": {"any": "json"}, "queue": "default",
//!   "id": "client id, also the idempotency key", "max_attempts": 5, "timeout_ms": 30000,
//!   "fuel": 1000000000, "memory_mb": 64, "run_at": "2026-11-23T17:00:00Z", "priority": 0 }
//! ```
//!
//! Everything but `module` has a default; unknown fields are refused. `docs/invocation.schema.json`
//! is the same format as a JSON Schema (a test keeps the two in agreement). This module owns parsing
//! and every check that can be made without a broker; whether the module was ever uploaded is the
//! broker's check at enqueue.

mod payload;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::Limits;
use crate::modules::ModuleHash;
use crate::time::parse_time;
pub use payload::{BYTES_KEY, PayloadError, args_to_bytes, bytes_to_json, json_len};

/// The queue used when an invocation names none.
pub const DEFAULT_QUEUE: &str = "default";

/// Attempts a job gets when the invocation does not say: enough to ride out a flaky dependency for
/// a few minutes of backoff, few enough that a broken job reaches the dead set the same hour.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// The most attempts an invocation may ask for.
pub const MAX_ATTEMPTS_CEILING: u32 = 100;

/// Priorities run from `-PRIORITY_RANGE` to `PRIORITY_RANGE`; higher runs first within a queue.
pub const PRIORITY_RANGE: i32 = 100;

/// Longest queue name, in bytes.
const MAX_QUEUE_NAME: usize = 64;

/// Longest job id, in bytes.
const MAX_ID_LEN: usize = 200;

/// One job as a client writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    /// The job module's content address.
    pub module: ModuleHash,
    /// Handed to `run` as its JSON bytes, or raw bytes with `{"$bytes": "<base64>"}`.
    #[serde(default)]
    pub args: Value,
    /// The queue to put the job on.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// The job id; also the idempotency key. Generated (a UUIDv7) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Attempts in all, including the first.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wall-clock deadline of one attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Fuel budget of one attempt.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Linear-memory cap of one attempt, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Run no earlier than this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Higher runs first within a queue.
    #[serde(default)]
    pub priority: i32,
    /// How many sub-job generations separate this job from the job a client enqueued (0): set by
    /// the host on each sub-job, so that a job enqueuing copies of itself stops at the
    /// operator's `--max-depth`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_timeout_ms() -> u64 {
    Limits::default().timeout.as_millis() as u64
}
fn default_fuel() -> u64 {
    Limits::default().fuel
}
fn default_memory_mb() -> u64 {
    Limits::default().memory_bytes >> 20
}

/// Why an invocation was refused. Every message names the field.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvocationError {
    /// Not JSON, an unknown or missing field, a wrong type or a malformed module hash.
    #[error("invalid invocation: {reason}")]
    Parse {
        /// The field at fault, when the refusal is about one.
        field: Option<String>,
        /// What did not parse.
        reason: String,
    },
    /// A field has a value out of range.
    #[error("invalid invocation: `{field}` {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit is zero or above the operator's ceiling.
    #[error("invalid invocation: {0}")]
    Limit(#[from] crate::job::LimitError),
    /// The module was never uploaded (checked by the broker).
    #[error(
        "invalid invocation: `module` `{0}` was never uploaded (upload it with `wasmq upload`)"
    )]
    UnknownModule(ModuleHash),
}

impl InvocationError {
    /// The job's args are larger than `max` bytes of compact JSON (`len`).
    pub fn args_too_large(len: usize, max: usize) -> Self {
        InvocationError::field(
            "args",
            format!("is {len} bytes of JSON, above the limit of {max} bytes (--max-args-kb)"),
        )
    }

    fn field(field: &'static str, reason: impl Into<String>) -> Self {
        InvocationError::Field {
            field,
            reason: reason.into(),
        }
    }

    /// The field a refusal is about, when it is about one field.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            InvocationError::Field { field, .. } => Some(field),
            InvocationError::Limit(l) => Some(l.field()),
            InvocationError::UnknownModule(_) => Some("module"),
            InvocationError::Parse { field, .. } => field.as_deref(),
        }
    }
}

/// A checked invocation with its id filled in, ready for a broker.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    /// The invocation; `id` is always `Some`.
    pub invocation: Invocation,
    /// `run_at` as Unix milliseconds.
    pub run_at_ms: Option<u64>,
}

impl NewJob {
    /// The job id.
    pub fn id(&self) -> &str {
        self.invocation
            .id
            .as_deref()
            .expect("NewJob always has an id")
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.invocation.queue
    }
}

/// Refuses `args` longer than `max` bytes of compact JSON (as stored), naming the field and the
/// limit: the intake's check, and a worker's for jobs that reached it some other way.
pub fn check_args_size(args: &Value, max: usize) -> Result<(), InvocationError> {
    let len = json_len(args);
    if len > max {
        return Err(InvocationError::args_too_large(len, max));
    }
    Ok(())
}

impl Invocation {
    /// An invocation of `module` with every other field at its default.
    pub fn new(module: ModuleHash) -> Self {
        Invocation {
            module,
            args: Value::Null,
            queue: default_queue(),
            id: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout_ms: default_timeout_ms(),
            fuel: default_fuel(),
            memory_mb: default_memory_mb(),
            run_at: None,
            priority: 0,
            depth: 0,
        }
    }

    /// Parses one invocation from JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, InvocationError> {
        Self::from_value_or_json(&mut serde_json::Deserializer::from_slice(json))
    }

    /// Parses one invocation from a JSON value (one element of a bulk request).
    pub fn from_value(value: Value) -> Result<Self, InvocationError> {
        Self::from_value_or_json(value)
    }

    fn from_value_or_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, InvocationError>
    where
        D::Error: std::fmt::Display,
    {
        serde_path_to_error::deserialize(d).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            if path == "." {
                // Serde names an unknown or missing field first, in backticks; a document that is
                // not an object at all names none.
                let field = ["unknown field `", "missing field `"]
                    .iter()
                    .find_map(|p| inner.strip_prefix(p))
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_owned);
                InvocationError::Parse {
                    field,
                    reason: inner,
                }
            } else {
                // A path into an array (`[0]`) names no field.
                let field = path
                    .split(['.', '['])
                    .next()
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned);
                InvocationError::Parse {
                    field,
                    reason: format!("`{path}`: {inner}"),
                }
            }
        })
    }

    /// The sandbox limits of one attempt.
    pub fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            timeout: std::time::Duration::from_millis(self.timeout_ms),
            memory_bytes: self.memory_mb.saturating_mul(1 << 20),
            output_bytes: Limits::default().output_bytes,
        }
    }

    /// Checks every field against the format and the operator's `ceilings`, fills in a generated
    /// id when there is none, and returns the job to hand to a broker.
    pub fn prepare(mut self, ceilings: &Limits) -> Result<NewJob, InvocationError> {
        check_queue_name(&self.queue)?;
        match &self.id {
            Some(id) => check_name("id", id, MAX_ID_LEN, |c| c.is_ascii_graphic())?,
            None => self.id = Some(uuid::Uuid::now_v7().to_string()),
        }
        if !(1..=MAX_ATTEMPTS_CEILING).contains(&self.max_attempts) {
            return Err(InvocationError::field(
                "max_attempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS_CEILING}, got {}",
                    self.max_attempts
                ),
            ));
        }
        if !(-PRIORITY_RANGE..=PRIORITY_RANGE).contains(&self.priority) {
            return Err(InvocationError::field(
                "priority",
                format!(
                    "must be between -{PRIORITY_RANGE} and {PRIORITY_RANGE}, got {}",
                    self.priority
                ),
            ));
        }
        self.limits()
            .check(ceilings)
            .map_err(InvocationError::Limit)?;
        args_to_bytes(&self.args).map_err(|e| InvocationError::field("args", e.to_string()))?;
        let run_at_ms = match &self.run_at {
            None => None,
            Some(text) => Some(parse_time(text).map_err(|e| InvocationError::field("run_at", e))?),
        };
        Ok(NewJob {
            invocation: self,
            run_at_ms,
        })
    }
}

/// Checks a queue name: 1 to 64 ASCII letters, digits, `_`, `-` or `.` (no `{}`: queue names
/// become Redis hash tags).
pub fn check_queue_name(name: &str) -> Result<(), InvocationError> {
    check_name("queue", name, MAX_QUEUE_NAME, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
    })
}

fn check_name(
    field: &'static str,
    value: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), InvocationError> {
    if value.is_empty() || value.len() > max {
        return Err(InvocationError::field(
            field,
            format!("must be 1 to {max} bytes long, got {}", value.len()),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(InvocationError::field(
            field,
            format!(
                "`{value}` contains `{}`, which is not allowed",
                bad.escape_default()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn parse(v: Value) -> Result<NewJob, InvocationError> {
        Invocation::from_json(v.to_string().as_bytes())?.prepare(&Limits::default_ceilings())
    }

    #[test]
    fn only_module_is_required() {
        let job = parse(json!({ "module": HASH })).unwrap();
        let inv = &job.invocation;
        assert_eq!(inv.queue, "default");
        assert_eq!(inv.max_attempts, 5);
        assert_eq!(inv.limits(), Limits::default());
        assert_eq!(inv.args, Value::Null);
        assert_eq!(job.id().len(), 36, "a UUID is generated");
        assert_eq!(job.run_at_ms, None);
    }

    #[test]
    fn each_refusal_names_its_field() {
        let cases = [
            (json!({}), "missing field `module`"),
            (json!({"module": "sha1:abc"}), "must start with `sha256:`"),
            (
                json!({"module": HASH, "colour": 1}),
                "unknown field `colour`",
            ),
            (
                json!({"module": HASH, "queue": "a b"}),
                "`queue` `a b` contains ` `",
            ),
            (
                json!({"module": HASH, "queue": ""}),
                "`queue` must be 1 to 64",
            ),
            (
                json!({"module": HASH, "id": "x\ny"}),
                "`id` `x\ny` contains `\\n`",
            ),
            (
                json!({"module": HASH, "max_attempts": 0}),
                "`max_attempts` must be",
            ),
            (
                json!({"module": HASH, "priority": 101}),
                "`priority` must be",
            ),
            (json!({"module": HASH, "fuel": 1u64 << 60}), "`fuel`"),
            (json!({"module": HASH, "memory_mb": 4096}), "`memory_mb`"),
            (json!({"module": HASH, "timeout_ms": 0}), "`timeout_ms`"),
            (
                json!({"module": HASH, "run_at": "tomorrow"}),
                "`run_at` must be an RFC 3339",
            ),
            (json!({"module": HASH, "args": {"$bytes": 3}}), "`args`"),
            (
                json!({"module": HASH, "fuel": -1}),
                "invalid value: integer `-1`",
            ),
        ];
        for (input, want) in cases {
            let err = parse(input.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: got `{err}`, want `{want}`");
        }
    }

    #[test]
    fn refusals_name_their_field_for_the_api() {
        let cases = [
            (json!({}), Some("module")),
            (json!({"module": "sha1:abc"}), Some("module")),
            (json!({"module": HASH, "colour": 1}), Some("colour")),
            (json!({"module": HASH, "fuel": "lots"}), Some("fuel")),
            (json!({"module": HASH, "fuel": 0}), Some("fuel")),
            (
                json!({"module": HASH, "memory_mb": 4096}),
                Some("memory_mb"),
            ),
            (json!({"module": HASH, "queue": "a b"}), Some("queue")),
            (json!({"module": HASH, "run_at": 5}), Some("run_at")),
            (json!([1]), None),
        ];
        for (input, want) in cases {
            let err = parse(input.clone()).unwrap_err();
            assert_eq!(err.field_name(), want, "{input}: {err}");
        }
        let err = parse(json!({"module": HASH, "fuel": "lots"})).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid invocation: `fuel`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn run_at_takes_offsets() {
        let a = parse(json!({"module": HASH, "run_at": "2026-11-23T17:00:00Z"})).unwrap();
        let b = parse(json!({"module": HASH, "run_at": "2026-11-23T19:00:00+02:00"})).unwrap();
        assert_eq!(a.run_at_ms, Some(1_795_453_200_000));
        assert_eq!(a.run_at_ms, b.run_at_ms);
    }

    /// Found by the `invocation` fuzz target: without exact float parsing, a number a client
    /// wrote as an integer literal came back one bit off after the trip through Redis's JSON.
    #[test]
    fn numbers_in_args_survive_the_trip_through_json() {
        let sent =
            json!({"module": HASH, "args": {"x": [1e49, 0.1, 123456789.12345678, -2.5e-300]}});
        let text = format!(
            r#"{{"module":"{HASH}","args":{{"x":[10000000000000000000000000000000000000000000000000,0.1,123456789.12345678,-2.5e-300]}}}}"#
        );
        let first = Invocation::from_json(text.as_bytes()).unwrap();
        assert_eq!(first.args, sent["args"]);
        let stored = serde_json::to_vec(&first).unwrap();
        let again = Invocation::from_json(&stored).unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn round_trips_through_json() {
        let job = parse(json!({"module": HASH, "args": [1], "id": "a", "priority": -3})).unwrap();
        let text = serde_json::to_string(&job.invocation).unwrap();
        assert_eq!(
            Invocation::from_json(text.as_bytes()).unwrap(),
            job.invocation
        );
    }

    /// The JSON Schema in `docs/` and these types must accept and refuse the same documents, name
    /// the same fields and carry the same defaults.
    #[test]
    fn schema_agrees_with_the_types() {
        let schema: Value =
            serde_json::from_str(include_str!("../../../docs/invocation.schema.json")).unwrap();
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        // The schema cannot know an operator's ceilings: compare with none.
        let no_ceilings = Limits {
            fuel: u64::MAX,
            timeout: std::time::Duration::from_millis(u64::MAX),
            memory_bytes: u64::MAX,
            output_bytes: usize::MAX,
        };
        let corpus = [
            json!({"module": HASH}),
            json!({"module": HASH, "args": {"x": [1, "two"]}, "queue": "mail.high-2",
                   "id": "order-17/email", "max_attempts": 100, "timeout_ms": 1, "fuel": 5,
                   "memory_mb": 1, "run_at": "2026-11-23T17:00:00+02:00", "priority": -100}),
            json!({"module": HASH, "args": {"$bytes": "AAEC/w=="}}),
            json!({"module": HASH, "args": {"$bytes": "AAEC/w==", "other": 1}}),
            json!({"module": HASH, "args": {"$bytes": 7}}),
            json!({"module": HASH, "args": {"$bytes": "not base64!"}}),
            json!({"module": HASH, "args": null, "priority": 100}),
            json!({}),
            json!([]),
            json!({"module": HASH.to_uppercase()}),
            json!({"module": "sha256:abc"}),
            json!({"module": HASH, "extra": true}),
            json!({"module": HASH, "queue": ""}),
            json!({"module": HASH, "queue": "has space"}),
            json!({"module": HASH, "queue": "x".repeat(65)}),
            json!({"module": HASH, "queue": "{tag}"}),
            json!({"module": HASH, "id": ""}),
            json!({"module": HASH, "id": "tab\there"}),
            json!({"module": HASH, "id": "é"}),
            json!({"module": HASH, "id": "x".repeat(201)}),
            json!({"module": HASH, "id": 5}),
            json!({"module": HASH, "max_attempts": 0}),
            json!({"module": HASH, "max_attempts": 101}),
            json!({"module": HASH, "max_attempts": 1.5}),
            json!({"module": HASH, "timeout_ms": 0}),
            json!({"module": HASH, "fuel": -1}),
            json!({"module": HASH, "memory_mb": 0}),
            json!({"module": HASH, "run_at": "2026-11-23 17:00"}),
            json!({"module": HASH, "run_at": 1_700_000_000}),
            json!({"module": HASH, "priority": 101}),
            json!({"module": HASH, "priority": "high"}),
            json!({"module": HASH, "depth": 3}),
            json!({"module": HASH, "depth": -1}),
            json!({"module": HASH, "depth": 4_294_967_296_u64}),
        ];
        for doc in &corpus {
            let by_schema = validator.is_valid(doc);
            let by_types = Invocation::from_json(doc.to_string().as_bytes())
                .and_then(|inv| inv.prepare(&no_ceilings));
            assert_eq!(
                by_schema,
                by_types.is_ok(),
                "schema and types disagree on {doc}: {by_types:?}"
            );
        }

        // Same field names, same defaults.
        let props = schema["properties"].as_object().unwrap();
        let mut full = Invocation::new(HASH.parse().unwrap());
        full.id = Some("i".into());
        full.run_at = Some("2026-11-23T17:00:00Z".into());
        full.depth = 1;
        let full = serde_json::to_value(&full).unwrap();
        let mut type_fields: Vec<_> = full.as_object().unwrap().keys().collect();
        let mut schema_fields: Vec<_> = props.keys().collect();
        type_fields.sort();
        schema_fields.sort();
        assert_eq!(type_fields, schema_fields);
        let defaults = serde_json::to_value(Invocation::new(HASH.parse().unwrap())).unwrap();
        // `depth` is left out while 0, so that jobs a client enqueued stay readable by workers
        // that predate the field.
        assert_eq!(defaults.get("depth"), None);
        assert_eq!(Invocation::new(HASH.parse().unwrap()).depth, 0);
        assert_eq!(props["depth"]["default"], 0);
        for (field, prop) in props {
            if let Some(default) = prop.get("default")
                && field != "depth"
            {
                assert_eq!(&defaults[field], default, "default of `{field}`");
            }
        }
    }
}
