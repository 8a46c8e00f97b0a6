//! Write a wasmq job as a plain Rust function.
//!
//! A job is a WebAssembly component built for `wasm32-wasip2` against the `wasmq:job` WIT contract.
//! This crate hides the contract: put [`job`] on a function, build the crate as a `cdylib`, and the
//! result is a component that `wasmq run` and the workers accept.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use wasmq_guest::{JobError, JobInfo};
//!
//! #[derive(Deserialize)]
//! struct Args { name: String }
//!
//! #[derive(Serialize)]
//! struct Greeting { message: String }
//!
//! #[wasmq_guest::job]
//! fn hello(info: &JobInfo, args: Args) -> Result<Greeting, JobError> {
//!     if args.name.is_empty() {
//!         return Err(JobError::fail("`name` must not be empty"));
//!     }
//!     wasmq_guest::log::info(&format!("greeting {} (attempt {})", args.name, info.attempt));
//!     Ok(Greeting { message: format!("Hello, {}!", args.name) })
//! }
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (with `crate-type = ["cdylib"]`)
//! and run it with `wasmq run target/wasm32-wasip2/release/hello.wasm --args '{"name":"Ada"}'`.
//!
//! ## Arguments and results
//!
//! - The argument type is any `serde::de::DeserializeOwned` type, decoded from the invocation's
//!   JSON args, or [`Bytes`] for the raw bytes. Args that do not decode end the job with a
//!   permanent failure naming the problem: retrying cannot fix them.
//! - The `Ok` type is any `serde::Serialize` type, encoded as JSON, or [`Bytes`] for raw bytes.
//! - The `Err` type is [`JobError`] or anything that converts into it. Any `std::error::Error`
//!   converts to [`JobError::Retry`] (so `?` behaves like an exception in Sidekiq or Celery: the
//!   job is tried again with backoff); use [`JobError::fail`] when retrying cannot help.
//! - A panic traps the component. The host reports it as a failure with the panic message and
//!   retries it like any other crash.
//!
//! ## Layout
//!
//! - [`job`]: the attribute that turns a function into the component's `run` export.
//! - [`log`], [`progress`], [`secret`]: what the host offers a running job.
//! - [`enqueue`], [`Handle::join`], [`join_all`], [`wait`]: sub-jobs, and their results.
//! - [`http`]: outbound HTTP to the destinations the operator granted the module.
//! - [`JobInfo`], [`JobError`], [`Bytes`]: the types a job function sees.
#![deny(missing_docs)]

use std::fmt;

// The generated bindings name this crate by its public path, which must resolve inside it too.
extern crate self as wasmq_guest;

pub use wasmq_guest_macros::job;

pub mod http;
mod sub_jobs;

#[doc(hidden)]
#[allow(
    clippy::too_many_arguments,
    reason = "generated code mirrors the WIT signatures"
)]
pub mod bindings {
    //! Generated from `wit/` — private to this crate's users; they see the plain types re-exported
    //! at the crate root.
    wit_bindgen::generate!({
        path: "../wit",
        world: "wasmq:job/job",
        pub_export_macro: true,
        export_macro_name: "__export_job",
        default_bindings_module: "wasmq_guest::bindings",
        runtime_path: "wasmq_guest::__private::wit_bindgen::rt",
    });
}

use bindings::wasmq::job::host as wit_host;

/// What a job knows about the invocation it is running.
pub type JobInfo = bindings::wasmq::job::types::JobInfo;

/// Raw bytes as a job's argument or result, bypassing JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

/// Why a job did not succeed: retry it later, or fail it for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobError {
    /// A transient failure: the host retries the job with backoff while attempts remain.
    Retry(String),
    /// A permanent failure: the job goes straight to the dead set.
    Fail(String),
}

impl JobError {
    /// A transient failure: the host retries the job with backoff while attempts remain.
    pub fn retry(message: impl Into<String>) -> Self {
        JobError::Retry(message.into())
    }

    /// A permanent failure: the job is never retried.
    pub fn fail(message: impl Into<String>) -> Self {
        JobError::Fail(message.into())
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry(m) => write!(f, "retry: {m}"),
            JobError::Fail(m) => write!(f, "fail: {m}"),
        }
    }
}

/// Any error raised with `?` is treated as transient, like an exception in Sidekiq or Celery.
impl<E: std::error::Error> From<E> for JobError {
    fn from(error: E) -> Self {
        JobError::Retry(error.to_string())
    }
}

/// Structured log records, kept in the job's record (bounded by the host).
pub mod log {
    use super::wit_host::{self, Level};

    /// Logs at `trace` level.
    pub fn trace(message: &str) {
        wit_host::log(Level::Trace, message);
    }
    /// Logs at `debug` level.
    pub fn debug(message: &str) {
        wit_host::log(Level::Debug, message);
    }
    /// Logs at `info` level.
    pub fn info(message: &str) {
        wit_host::log(Level::Info, message);
    }
    /// Logs at `warn` level.
    pub fn warn(message: &str) {
        wit_host::log(Level::Warn, message);
    }
    /// Logs at `error` level.
    pub fn error(message: &str) {
        wit_host::log(Level::Error, message);
    }
}

/// Reads secret `name`, which the operator granted this module (`wasmq grant <module> --secret
/// NAME`, or `wasmq run --secret-file NAME=PATH` locally). Returns why when it cannot be read
/// (not granted, not set). The host redacts the value (`[redacted:NAME]`) from everything the run
/// leaves behind — stdout, stderr, logs, progress, the result and error messages — so a value
/// meant for a request header cannot end up in a job record.
pub fn secret(name: &str) -> Result<String, String> {
    wit_host::secret(name)
}

/// Reports progress, 0–100 (larger values are clamped by the host), with an optional note.
pub fn progress(percent: u8, note: Option<&str>) {
    wit_host::progress(percent, note);
}

pub use sub_jobs::{
    Handle, JoinError, Options, Outcome, enqueue, enqueue_bytes, enqueue_with, join_all, wait,
};

#[doc(hidden)]
pub mod __private {
    //! Used by the code `#[job]` generates; not a public API.
    pub use wit_bindgen;

    use super::{Bytes, JobError};
    use std::marker::PhantomData;

    pub use crate::bindings::wasmq::job::types::JobError as WitJobError;
    pub use crate::bindings::{Guest, JobInfo as WitJobInfo};

    /// Picks the codec for a job's argument or result type at compile time: [`Bytes`] is passed
    /// through, anything else goes through JSON ("autoref specialisation": the `Bytes` impls take
    /// `&Codec<Bytes>`, the JSON ones `&&Codec<T>`, and method lookup tries the former first).
    pub struct Codec<T>(PhantomData<T>);

    impl<T> Codec<T> {
        /// A codec for `T`.
        pub const fn new() -> Self {
            Codec(PhantomData)
        }
    }

    impl<T> Default for Codec<T> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// A codec for the type of `value`, so that a result's codec is picked without naming its type.
    pub fn codec_of<T>(_value: &T) -> Codec<T> {
        Codec::new()
    }

    /// Raw-bytes arguments.
    pub trait DecodeBytes {
        /// Wraps the bytes unchanged.
        fn decode(&self, bytes: Vec<u8>) -> Result<Bytes, JobError>;
    }
    impl DecodeBytes for Codec<Bytes> {
        fn decode(&self, bytes: Vec<u8>) -> Result<Bytes, JobError> {
            Ok(Bytes(bytes))
        }
    }

    /// JSON arguments.
    pub trait DecodeJson<T> {
        /// Parses the bytes as JSON into `T`.
        fn decode(&self, bytes: Vec<u8>) -> Result<T, JobError>;
    }
    impl<T: serde::de::DeserializeOwned> DecodeJson<T> for &Codec<T> {
        fn decode(&self, bytes: Vec<u8>) -> Result<T, JobError> {
            serde_json::from_slice(&bytes)
                .map_err(|e| JobError::Fail(format!("invalid job args: {e}")))
        }
    }

    /// Raw-bytes results.
    pub trait EncodeBytes {
        /// Returns the bytes unchanged.
        fn encode(&self, value: Bytes) -> Result<Vec<u8>, JobError>;
    }
    impl EncodeBytes for Codec<Bytes> {
        fn encode(&self, value: Bytes) -> Result<Vec<u8>, JobError> {
            Ok(value.0)
        }
    }

    /// JSON results.
    pub trait EncodeJson<T> {
        /// Serialises `value` as JSON.
        fn encode(&self, value: T) -> Result<Vec<u8>, JobError>;
    }
    impl<T: serde::Serialize> EncodeJson<T> for &Codec<T> {
        fn encode(&self, value: T) -> Result<Vec<u8>, JobError> {
            serde_json::to_vec(&value)
                .map_err(|e| JobError::Fail(format!("failed to encode job result: {e}")))
        }
    }

    /// Converts the SDK's error into the WIT type.
    pub fn into_wit_error(error: JobError) -> WitJobError {
        match error {
            JobError::Retry(m) => WitJobError::Retry(m),
            JobError::Fail(m) => WitJobError::Fail(m),
        }
    }

    /// Sends panic messages to the job's log before the component traps, so that the host can
    /// report why the job crashed rather than a bare `unreachable`.
    pub fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                crate::log::error(&format!("panic: {info}"));
                default(info);
            }));
        });
    }
}
