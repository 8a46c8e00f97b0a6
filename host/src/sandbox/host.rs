//! What a guest can reach while it runs: the per-run state behind the `wasmq:job/host` imports
//! (log, progress, enqueue, join, secret — in both contract versions), WASI with nothing granted, `wasi:http` behind the module's grant
//! (`http.rs`), and the memory cap that refuses growth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::http::Egress;
use super::{JoinOptions, SubJobOptions, SubJobOutcome, bindings, bindings_v1};
use super::{MAX_LOG_MESSAGE_BYTES, MAX_LOG_RECORDS, ProgressSink, SecretSource, SubJobSink};
use crate::grant::Grant;
use crate::job::{JobInfo, LogLevel, LogRecord, Progress};

/// The memory cap: total linear memory across the instance's memories.
pub(super) struct MemoryCap {
    pub(super) limit: u64,
    pub(super) used: u64,
    pub(super) refused: Option<u64>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired - current) as u64;
        let total = self.used + grow;
        if total > self.limit {
            self.refused = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far past any real guest.
        Ok(desired <= 1_000_000)
    }
}

/// Everything one run's store holds.
pub(super) struct RunState {
    pub(super) wasi: WasiCtx,
    pub(super) http: WasiHttpCtx,
    pub(super) egress: Egress,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryCap,
    pub(super) logs: Vec<LogRecord>,
    pub(super) logs_dropped: u64,
    pub(super) progress: Option<Progress>,
    pub(super) info: JobInfo,
    pub(super) sub_jobs: Arc<dyn SubJobSink>,
    pub(super) progress_sink: Option<Arc<dyn ProgressSink>>,
    pub(super) grant: Arc<Grant>,
    pub(super) secrets: Arc<dyn SecretSource>,
    /// (name, value) of every secret this run read: redacted from what it leaves behind.
    pub(super) secrets_read: Vec<(String, String)>,
    pub(super) started: Instant,
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl RunState {
    /// Keeps a log record, or counts it past the cap.
    pub(super) fn log_record(&mut self, record: LogRecord) {
        if self.logs.len() >= MAX_LOG_RECORDS {
            self.logs_dropped += 1;
        } else {
            self.logs.push(record);
        }
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_LOG_MESSAGE_BYTES {
        let mut end = MAX_LOG_MESSAGE_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl bindings::wasmq::job::types::Host for RunState {}

impl bindings::wasmq::job::host::Host for RunState {
    fn log(&mut self, level: bindings::wasmq::job::host::Level, message: String) {
        use bindings::wasmq::job::host::Level as L;
        let level = match level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        };
        self.log_at(level, message);
    }

    fn progress(&mut self, percent: u8, note: Option<String>) {
        self.progress_to(percent, note);
    }

    async fn enqueue(
        &mut self,
        module: String,
        args: Vec<u8>,
        options: bindings::wasmq::job::host::EnqueueOptions,
    ) -> Result<String, String> {
        let options = SubJobOptions {
            key: options.key,
            queue: options.queue,
            delay_ms: options.delay_ms,
            max_attempts: options.max_attempts,
            priority: options.priority,
        };
        self.sub_jobs
            .enqueue(&self.info, module, args, options)
            .await
    }

    async fn join(
        &mut self,
        handles: Vec<String>,
        options: bindings::wasmq::job::host::JoinOptions,
    ) -> Result<Vec<bindings::wasmq::job::host::Outcome>, String> {
        use bindings::wasmq::job::host::{Failure, Outcome};
        let options = JoinOptions {
            first: options.first,
            timeout: options.timeout_ms.map(Duration::from_millis),
        };
        let outcomes = self.sub_jobs.join(&self.info, handles, options).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                SubJobOutcome::Done(bytes) => Outcome::Done(bytes),
                SubJobOutcome::Dead { kind, message } => Outcome::Dead(Failure { kind, message }),
                SubJobOutcome::Cancelled => Outcome::Cancelled,
                SubJobOutcome::Pending => Outcome::Pending,
            })
            .collect())
    }

    async fn secret(&mut self, name: String) -> Result<String, String> {
        self.read_secret(name).await
    }
}

// Components built against 0.1.0: the same host, `enqueue` without options.
impl bindings_v1::wasmq::job::types::Host for RunState {}

impl bindings_v1::wasmq::job::host::Host for RunState {
    fn log(&mut self, level: bindings_v1::wasmq::job::host::Level, message: String) {
        use bindings_v1::wasmq::job::host::Level as L;
        let level = match level {
            L::Trace => LogLevel::Trace,
            L::Debug => LogLevel::Debug,
            L::Info => LogLevel::Info,
            L::Warn => LogLevel::Warn,
            L::Error => LogLevel::Error,
        };
        self.log_at(level, message);
    }

    fn progress(&mut self, percent: u8, note: Option<String>) {
        self.progress_to(percent, note);
    }

    async fn enqueue(&mut self, module: String, args: Vec<u8>) -> Result<String, String> {
        self.sub_jobs
            .enqueue(&self.info, module, args, SubJobOptions::default())
            .await
    }

    async fn secret(&mut self, name: String) -> Result<String, String> {
        self.read_secret(name).await
    }
}

impl RunState {
    fn log_at(&mut self, level: LogLevel, message: String) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.log_record(LogRecord {
            level,
            message: cut(message),
            at_ms,
        });
    }

    fn progress_to(&mut self, percent: u8, note: Option<String>) {
        let progress = Progress {
            percent: percent.min(100),
            note: note.map(|n| crate::secret::redact(&cut(n), &self.secrets_read)),
        };
        if let Some(sink) = &self.progress_sink {
            sink.progress(&self.info, &progress);
        }
        self.progress = Some(progress);
    }

    async fn read_secret(&mut self, name: String) -> Result<String, String> {
        if !self.grant.secrets.contains(&name) {
            return Err(format!(
                "secret `{}` is not granted to this module (`wasmq grant <module> --secret NAME`)",
                name.escape_debug()
            ));
        }
        if let Some((_, value)) = self.secrets_read.iter().find(|(n, _)| *n == name) {
            return Ok(value.clone());
        }
        let value = self.secrets.secret(&name).await?;
        self.secrets_read.push((name, value.clone()));
        Ok(value)
    }
}
