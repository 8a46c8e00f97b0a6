//! wasmq: a background job executor in which every job is a sandboxed WebAssembly component.
//!
//! A job is a component built against the `wasmq:job` WIT contract (`wit/`). Its bytes are
//! addressed by their SHA-256; the host compiles each module once, caches the compiled artifact on
//! disk, and runs every invocation in a fresh wasmtime instance with a fuel budget, a memory cap,
//! a wall-clock deadline and captured, bounded output.
//!
//! # Layout
//!
//! - [`job`]: the job's own vocabulary — state, failure kinds, run report, limits (ground floor).
//! - [`grant`]: what an operator grants a module — HTTP destinations, secrets (ground floor).
//! - [`secret`]: sealing secrets under the operator's key, redacting them from output (ground floor).
//! - [`time`]: Unix milliseconds, RFC 3339 times, durations and the [`time::Clock`] (ground floor).
//! - [`modules`]: content addresses, first validation of uploaded bytes, the artifact cache.
//! - [`invocation`]: the wire format of a job (JSON, `docs/invocation.schema.json`) and its checks.
//! - [`intake`]: the one way in for new jobs — parsing, ceilings, module checks, batches.
//! - [`broker`]: the core `Broker` trait, the capability traits beside it and the job state
//!   machine; `redis` and `memory` backends (and, with `testing`, the conformance suite).
//! - [`worker`]: fetch → run → acknowledge, heartbeats, retry policy, sub-jobs, graceful drain.
//! - [`scheduler`]: cron, and the promote-and-recover loop every worker runs.
//! - [`sandbox`]: the only place that configures wasmtime — engine, compile, limits, one run.
//! - [`partner`]: a local partner API and sink, for the demo, `bench io` and the tests.
//! - [`api`]: the HTTP API, one file per resource, and the dashboard.
//! - [`cli`]: the `wasmq` command line.
//!
//! Data flows one way: api/cli → intake → broker → worker → sandbox → broker. `job`, `grant`,
//! `secret` and `time` are the ground floor every layer stands on; nothing imports upwards.

pub mod api;
pub mod broker;
pub mod cli;
pub mod grant;
pub mod intake;
pub mod invocation;
pub mod job;
pub mod modules;
pub mod partner;
pub mod sandbox;
pub mod scheduler;
pub mod secret;
pub mod time;
pub mod worker;
