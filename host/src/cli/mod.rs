//! The `wasmq` command line: argument parsing and the commands built on the library.
//!
//! Commands print for people by default and one JSON object with `--json`. Errors are returned as
//! `anyhow` chains for `main` to print; job failures are not errors but outcomes (exit code 1).

mod bench;
mod bench_fanout;
mod bench_io;
mod bench_queue;
mod cron;
mod demo;
mod egress;
mod enqueue;
mod grant;
pub mod private_redis;
mod queue;
mod report;
mod run;
mod secret;
mod serve;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::intake::Intake;
use crate::job::{Limits, MAX_ARGS_BYTES, Sizes};
use crate::sandbox::{CompileBudget, HttpLimits, Sandbox, SandboxConfig};
use crate::worker::FanOut;

/// wasmq — background jobs as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wasmq", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Where compiled artifacts are cached [default: $XDG_CACHE_HOME/wasmq or ~/.cache/wasmq].
    #[arg(long, global = true, env = "WASMQ_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile every module afresh; neither read nor write the artifact cache.
    #[arg(long, global = true)]
    no_cache: bool,

    /// The most the artifact cache may hold, in MiB; the least recently used artifacts are
    /// deleted past it (a Python or JavaScript job's is about 40 MB).
    #[arg(
        long,
        global = true,
        env = "WASMQ_CACHE_MAX_MB",
        default_value_t = 2048
    )]
    cache_max_mb: u64,

    /// MiB at the start of each pooled memory slot kept resident and reset in place between
    /// runs: more makes memory-hungry jobs faster (no page faults) and keeps up to that much
    /// resident per slot.
    #[arg(
        long,
        global = true,
        env = "WASMQ_KEEP_RESIDENT_MB",
        default_value_t = 2
    )]
    keep_resident_mb: usize,

    #[command(flatten)]
    redis: queue::RedisArgs,

    #[command(flatten)]
    ceilings: CeilingArgs,

    /// Log format on stderr (`WASMQ_LOG` sets the level, e.g. `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The operator's ceilings: no job may ask for more. The API and `enqueue` refuse jobs above
/// them, a worker refuses to run one above its own (the job dies with `limits`), and the
/// sandbox sizes its memory slots by them. The defaults suit trusted jobs; lower them for
/// customer code.
#[derive(Debug, Args)]
struct CeilingArgs {
    /// Most fuel one attempt may ask for (≈ wasm instructions).
    #[arg(long, global = true, env = "WASMQ_MAX_FUEL", default_value_t = Limits::default_ceilings().fuel)]
    max_fuel: u64,
    /// Most linear memory one attempt may ask for, in MiB.
    #[arg(long, global = true, env = "WASMQ_MAX_MEMORY_MB", default_value_t = Limits::default_ceilings().memory_bytes >> 20)]
    max_memory_mb: u64,
    /// Longest deadline one attempt may ask for.
    #[arg(long, global = true, env = "WASMQ_MAX_TIMEOUT", value_parser = crate::time::parse_duration, default_value = "15m")]
    max_timeout: std::time::Duration,
    /// Most sub-jobs one run may enqueue; past it the guest's `enqueue` returns an error.
    #[arg(long, global = true, env = "WASMQ_MAX_SUB_JOBS", default_value_t = FanOut::default().per_run)]
    max_sub_jobs: u32,
    /// Most generations of sub-jobs below a job a client enqueued (a job that enqueues copies of
    /// itself stops here).
    #[arg(long, global = true, env = "WASMQ_MAX_DEPTH", default_value_t = FanOut::default().depth)]
    max_depth: u32,
    /// Largest module `upload` (CLI) and `POST /v1/modules` accept, in MiB. 64: a Python or
    /// JavaScript component is 12–19 MB.
    #[arg(long, global = true, env = "WASMQ_MAX_MODULE_MB", default_value_t = 64)]
    max_module_mb: u64,
    /// Largest args a job may have, in KiB of compact JSON (at most 1024: the Redis enqueue
    /// script's own limit); refused at enqueue, and by a worker with a lower limit.
    #[arg(long, global = true, env = "WASMQ_MAX_ARGS_KB", default_value_t = (Sizes::default().args_bytes >> 10) as u64,
          value_parser = clap::value_parser!(u64).range(1..=(MAX_ARGS_BYTES >> 10) as u64))]
    max_args_kb: u64,
    /// Largest result a run may return, in KiB; past it the attempt fails with
    /// `result_too_large` and nothing of it is kept.
    #[arg(long, global = true, env = "WASMQ_MAX_RESULT_KB", default_value_t = (Sizes::default().result_bytes >> 10) as u64,
          value_parser = clap::value_parser!(u64).range(1..=64 << 10))]
    max_result_kb: u64,
    /// Longest time compiling one uploaded component may take (in a child process); past it
    /// the upload is refused naming the limit.
    #[arg(long, global = true, env = "WASMQ_COMPILE_TIMEOUT", value_parser = crate::time::parse_duration, default_value = "60s")]
    compile_timeout: std::time::Duration,
    /// Most memory compiling one uploaded component may use, in MiB; past it the upload is
    /// refused naming the limit.
    #[arg(long, global = true, env = "WASMQ_COMPILE_MEMORY_MB", default_value_t = CompileBudget::default().memory_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(64..))]
    compile_memory_mb: u64,
    /// Compiles at once in one process; further uploads and module loads wait their turn.
    #[arg(long, global = true, env = "WASMQ_MAX_COMPILES", default_value_t = CompileBudget::default().concurrency as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_compiles: u32,
    /// Interfaces a job component may not import at all, used or not (e.g.
    /// `wasi:sockets,wasi:filesystem`): refused at upload naming the import. Python and
    /// JavaScript jobs import both whether they use them or not.
    #[arg(
        long,
        global = true,
        env = "WASMQ_REFUSE_IMPORTS",
        value_delimiter = ','
    )]
    refuse_imports: Vec<String>,
    /// Longest error message kept per attempt, in KiB; longer ones are cut and flagged
    /// `truncated`.
    #[arg(long, global = true, env = "WASMQ_MAX_ERROR_KB", default_value_t = (Sizes::default().error_bytes >> 10) as u64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_error_kb: u64,
    /// Longest a granted HTTP call may take to resolve its host and connect (TLS included).
    #[arg(long, global = true, env = "WASMQ_HTTP_CONNECT_TIMEOUT", value_parser = crate::time::parse_duration, default_value = "10s")]
    http_connect_timeout: std::time::Duration,
    /// Longest a granted HTTP call may wait, once sent, for its response to begin.
    #[arg(long, global = true, env = "WASMQ_HTTP_FIRST_BYTE_TIMEOUT", value_parser = crate::time::parse_duration, default_value = "60s")]
    http_first_byte_timeout: std::time::Duration,
    /// Largest request body and largest response body of one granted HTTP call, in MiB (each);
    /// past it the call ends with an error the guest sees.
    #[arg(long, global = true, env = "WASMQ_HTTP_MAX_BODY_MB", default_value_t = HttpLimits::default().max_response_body >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    http_max_body_mb: u64,
}

/// The operator's limits beyond the per-attempt ceilings, as the flags set them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OperatorLimits {
    /// Sub-jobs per run and depth of a sub-job tree.
    pub(crate) fan_out: FanOut,
    /// Largest module accepted, in bytes.
    pub(crate) module_bytes: u64,
}

impl CeilingArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        let ceilings = Limits {
            fuel: self.max_fuel,
            timeout: self.max_timeout,
            memory_bytes: self.max_memory_mb.saturating_mul(1 << 20),
            ..Limits::default_ceilings()
        };
        for (flag, zero) in [
            ("--max-fuel", ceilings.fuel == 0),
            ("--max-memory-mb", ceilings.memory_bytes == 0),
            ("--max-timeout", ceilings.timeout.is_zero()),
        ] {
            anyhow::ensure!(!zero, "`{flag}` must be greater than zero");
        }
        Ok(ceilings)
    }

    fn http(&self) -> anyhow::Result<HttpLimits> {
        anyhow::ensure!(
            !self.http_connect_timeout.is_zero() && !self.http_first_byte_timeout.is_zero(),
            "`--http-connect-timeout` and `--http-first-byte-timeout` must be greater than zero"
        );
        Ok(HttpLimits {
            connect_timeout: self.http_connect_timeout,
            first_byte_timeout: self.http_first_byte_timeout,
            max_request_body: self.http_max_body_mb << 20,
            max_response_body: self.http_max_body_mb << 20,
        })
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            args_bytes: (self.max_args_kb << 10) as usize,
            result_bytes: (self.max_result_kb << 10) as usize,
            error_bytes: (self.max_error_kb << 10) as usize,
        }
    }

    /// The compile budget, with this very binary as the compiler child.
    fn compile(&self) -> anyhow::Result<CompileBudget> {
        anyhow::ensure!(
            !self.compile_timeout.is_zero(),
            "`--compile-timeout` must be greater than zero"
        );
        let program = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the wasmq binary to compile with: {e}"))?;
        Ok(CompileBudget {
            program: Some(program),
            timeout: self.compile_timeout,
            memory_bytes: self.compile_memory_mb << 20,
            concurrency: self.max_compiles as usize,
        })
    }

    fn operator(&self) -> anyhow::Result<OperatorLimits> {
        anyhow::ensure!(
            self.max_module_mb > 0,
            "`--max-module-mb` must be greater than zero"
        );
        Ok(OperatorLimits {
            fan_out: FanOut {
                per_run: self.max_sub_jobs,
                depth: self.max_depth,
            },
            module_bytes: self.max_module_mb.saturating_mul(1 << 20),
        })
    }
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one invocation of a job component locally and print its outcome.
    Run(run::RunArgs),
    /// Run the sample jobs through a worker on the embedded broker and summarise what happened.
    Demo(demo::DemoArgs),
    /// Measure the sandbox or the queue and print the figures.
    Bench(bench::BenchArgs),
    /// Validate job components and store them in Redis; prints each one's `sha256:…`.
    Upload(queue::UploadArgs),
    /// List the uploaded modules.
    Modules(queue::JsonArgs),
    /// Enqueue a job (or a JSON-lines file of invocations); prints the job ids.
    Enqueue(enqueue::EnqueueArgs),
    /// Run jobs from Redis until SIGTERM/SIGINT.
    Worker(worker::WorkerArgs),
    /// Serve the HTTP API (and optionally run a worker in the same process).
    Serve(serve::ServeArgs),
    /// Show one job: state, attempts, result, output, failure.
    Job(queue::JobArgs),
    /// Cancel a job: at once if it is waiting, through its worker if it is running.
    Cancel(queue::CancelArgs),
    /// Job counts and running totals per queue.
    Queues(queue::JsonArgs),
    /// Workers heard from in the last minute.
    Workers(queue::JsonArgs),
    /// Let a module call HTTP destinations and read secrets (adds to what it has).
    Grant(grant::GrantArgs),
    /// Show what modules are granted.
    Grants(grant::GrantsArgs),
    /// Take HTTP destinations or secrets (or, with `--all`, everything) away from a module.
    Revoke(grant::RevokeArgs),
    /// Limit calls to an HTTP destination for every worker together; with no flags, remove
    /// its limit.
    EgressLimit(egress::EgressLimitArgs),
    /// List the egress limits.
    EgressLimits(queue::JsonArgs),
    /// Set, list or delete secrets (sealed with WASMQ_SECRET_KEY), or make a key.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Limit a queue for all workers together; with no flags, remove its limits.
    Limit(queue::LimitArgs),
    /// Pause a queue: it accepts jobs but workers take none until it is resumed.
    Pause {
        /// The queue.
        queue: String,
    },
    /// Resume a paused queue.
    Resume {
        /// The queue.
        queue: String,
    },
    /// List, retry or delete dead jobs.
    #[command(subcommand)]
    Dead(queue::DeadCommand),
    /// Add, list or remove recurring (cron) jobs.
    #[command(subcommand)]
    Cron(cron::CronCommand),
    /// The compiler child: reads a component on stdin, writes its compiled artifact to stdout
    /// (run by wasmq itself, under the `--compile-*` limits).
    #[command(hide = true)]
    CompileModule {
        /// The data segment limit to set on itself.
        #[arg(long)]
        memory_bytes: u64,
        /// The CPU time limit to set on itself.
        #[arg(long)]
        cpu_seconds: u64,
        /// Compile for this per-memory reservation (an unpooled sandbox's).
        #[arg(long)]
        memory_reservation: Option<u64>,
    },
}

/// Flags shared by commands that look for the sample jobs.
#[derive(Debug, Args)]
pub(crate) struct JobsDir {
    /// Directory holding the sample job components.
    #[arg(long, default_value = "sample-jobs/target/wasm32-wasip2/release")]
    jobs_dir: PathBuf,
}

/// The per-attempt limits of a job, as flags of `run`, `enqueue` and `cron add`; each left out
/// takes the invocation format's default.
#[derive(Debug, Args)]
pub(crate) struct AttemptLimits {
    /// Fuel budget (about one unit per wasm instruction) [default: 1000000000].
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock deadline in milliseconds [default: 30000].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Linear memory cap in MiB [default: 64].
    #[arg(long)]
    memory_mb: Option<u64>,
}

impl AttemptLimits {
    /// The limits of one run: these flags over the defaults.
    pub(crate) fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            fuel: self.fuel.unwrap_or(d.fuel),
            timeout: self
                .timeout_ms
                .map_or(d.timeout, std::time::Duration::from_millis),
            memory_bytes: self
                .memory_mb
                .map_or(d.memory_bytes, |mb| mb.saturating_mul(1 << 20)),
            ..d
        }
    }

    /// Sets the limits given on `inv`.
    pub(crate) fn apply(&self, inv: &mut crate::invocation::Invocation) {
        inv.fuel = self.fuel.unwrap_or(inv.fuel);
        inv.timeout_ms = self.timeout_ms.unwrap_or(inv.timeout_ms);
        inv.memory_mb = self.memory_mb.unwrap_or(inv.memory_mb);
    }
}

impl JobsDir {
    /// Reads `<name>.wasm` from the jobs directory, with a hint when it was never built.
    pub(crate) fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self
            .jobs_dir
            .join(format!("{}.wasm", name.replace('-', "_")));
        std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "failed to read sample job `{}`: {e} (build the sample jobs with `sample-jobs/build.sh`)",
                path.display()
            )
        })
    }
}

impl Cli {
    /// Whether logs should be JSON lines.
    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }

    /// Runs the parsed command; `Ok` carries the process exit code.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Command::CompileModule {
            memory_bytes,
            cpu_seconds,
            memory_reservation,
        } = self.command
        {
            return Ok(crate::sandbox::compile_module_main(
                memory_bytes,
                cpu_seconds,
                memory_reservation,
            ));
        }
        let base = SandboxConfig {
            cache_dir: if self.no_cache {
                None
            } else {
                Some(self.cache_dir.unwrap_or_else(default_cache_dir))
            },
            cache_max_bytes: self.cache_max_mb << 20,
            keep_resident_bytes: self.keep_resident_mb << 20,
            ceilings: self.ceilings.limits()?,
            sizes: self.ceilings.sizes(),
            compile: self.ceilings.compile()?,
            refused_imports: self.ceilings.refuse_imports.clone(),
            http: self.ceilings.http()?,
            ..SandboxConfig::default()
        };
        let intake = Intake::new(base.ceilings, &base.sizes);
        let operator = self.ceilings.operator()?;
        let redis = self.redis;
        match self.command {
            Command::Run(args) => run::run(sandbox(&base, 0)?, args).await,
            Command::Demo(args) => demo::run(sandbox(&base, 0)?, args).await,
            Command::Bench(args) => bench::run(args, redis, base).await,
            Command::Upload(args) => {
                let broker = redis.connect().await?;
                let sandbox = sandbox(&base, 0)?;
                queue::upload(broker.as_ref(), &sandbox, args, operator.module_bytes).await
            }
            Command::Modules(args) => queue::modules(redis.connect().await?.as_ref(), args).await,
            Command::Enqueue(args) => enqueue::enqueue(&intake, redis.connect().await?, args).await,
            Command::Worker(args) => {
                let sandbox = sandbox(&base, args.instances())?;
                let broker = redis.connect_with_ttl(args.result_ttl()).await?;
                redis.check_settings(&broker).await?;
                worker::run(broker, sandbox, args, operator.fan_out).await
            }
            Command::Serve(args) => {
                let sandbox = sandbox(&base, args.workers())?;
                serve::run(redis, sandbox, args, operator).await
            }
            Command::Job(args) => queue::job(redis.connect().await?.as_ref(), args).await,
            Command::Cancel(args) => queue::cancel(redis.connect().await?.as_ref(), args).await,
            Command::Queues(args) => queue::queues(redis.connect().await?.as_ref(), args).await,
            Command::Dead(command) => queue::dead(redis.connect().await?.as_ref(), command).await,
            Command::Workers(args) => queue::workers(redis.connect().await?.as_ref(), args).await,
            Command::Limit(args) => queue::limit(redis.connect().await?.as_ref(), args).await,
            Command::EgressLimit(args) => egress::set(redis.connect().await?.as_ref(), args).await,
            Command::EgressLimits(args) => {
                egress::list(redis.connect().await?.as_ref(), args.json).await
            }
            Command::Secret(secret::SecretCommand::NewKey) => secret::new_key(),
            Command::Secret(command) => secret::run(redis.connect().await?.as_ref(), command).await,
            Command::Grant(args) => grant::grant(redis.connect().await?.as_ref(), args).await,
            Command::Grants(args) => grant::grants(redis.connect().await?.as_ref(), args).await,
            Command::Revoke(args) => grant::revoke(redis.connect().await?.as_ref(), args).await,
            Command::Pause { queue } => {
                queue::set_paused(redis.connect().await?.as_ref(), &queue, true).await
            }
            Command::Resume { queue } => {
                queue::set_paused(redis.connect().await?.as_ref(), &queue, false).await
            }
            Command::Cron(command) => {
                cron::run(&intake, redis.connect().await?.as_ref(), command).await
            }
            Command::CompileModule { .. } => unreachable!("handled first"),
        }
    }
}

/// The sandbox configured by `base`, with room for at least `concurrency` instances at once.
pub(crate) fn sandbox(base: &SandboxConfig, concurrency: usize) -> anyhow::Result<Sandbox> {
    Sandbox::new(SandboxConfig {
        max_instances: base.max_instances.max(concurrency as u32),
        ..base.clone()
    })
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wasmq")
}
