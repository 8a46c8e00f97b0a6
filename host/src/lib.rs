//! wasmq: a background job executor in which every job is a sandboxed WebAssembly component.
//!
//! A job is a component built against the `wasmq:job` WIT contract (`wit/`). Its bytes are
//! addressed by their SHA-256; the host compiles each module once, caches the compiled artifact on
//! disk, and runs every invocation in a fresh wasmtime instance with a fuel budget, a memory cap,
//! a wall-clock deadline and captured, bounded output.
//!
//! # Layout
//!
//! - [`modules`]: content addresses, first validation of uploaded bytes, the artifact cache.
//! - [`invocation`]: how `args` and results travel as JSON (`{"$bytes": …}` for raw bytes).
//! - [`sandbox`]: the only place that configures wasmtime — engine, compile, limits, one run.
//! - [`cli`]: the `wasmq` command line (`run`, `demo`, `bench`).
//!
//! Data flows one way: cli → sandbox → outcome.

pub mod broker;
pub mod cli;
pub mod invocation;
pub mod modules;
pub mod sandbox;
pub mod scheduler;
pub mod worker;
