//! The sandbox: the only place that configures wasmtime.
//!
//! It builds the process's one [`Engine`] (fuel, epoch interruption, the pooling allocator, a
//! bounded wasm stack), compiles each module once — or loads its compiled artifact from the
//! host-owned cache — and keeps an `InstancePre` per module. Each run gets a fresh `Store` with:
//!
//! - a fuel budget (out of fuel is a distinct failure);
//! - a memory cap enforced by a `ResourceLimiter` (a refused growth is reported as the cause);
//! - a wall-clock deadline covering instantiation, guest code (epoch ticks) and time blocked in host
//!   calls (a tokio timeout around the whole run);
//! - stdout/stderr captured into bounded buffers;
//! - WASI with no preopened directories, no environment, no arguments and no sockets;
//! - `wasi:http` outbound requests to the destinations the module's grant names, and nowhere
//!   else (`http.rs`).
//!
//! Runs happen on the sandbox's own guest threads (a tokio runtime of one thread per core), not
//! on the caller's: CPU-bound guests share those threads with each other only, so a worker's
//! heartbeats, acknowledgements and Redis I/O on the caller's runtime keep their share of the
//! CPU however many guests spin.
//!
//! What it must not do: know about queues, retries or Redis. A run returns a [`RunOutcome`];
//! deciding what happens next is the caller's job.

mod bindings {
    //! Generated from `wit/` (the current contract, 0.2.0); the rest of the host sees the plain
    //! types in `sandbox`.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmq:job/job@0.2.0",
        imports: {
            "wasmq:job/host.enqueue": async,
            "wasmq:job/host.join": async,
            "wasmq:job/host.secret": async,
            default: tracing,
        },
        exports: { default: async },
    });
}
mod bindings_v1 {
    //! Generated from `wit/v0.1.0/`: the host imports of components built against 0.1.0, linked
    //! beside the current ones. (Their `run` export has the same type as 0.2.0's, which the
    //! current bindings call.)
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "wasmq:job/job@0.1.0",
        imports: {
            "wasmq:job/host.enqueue": async,
            "wasmq:job/host.secret": async,
            default: tracing,
        },
        exports: { default: async },
    });
}
mod compile;
mod host;
mod http;
mod load;
mod outcome;
mod output;
mod sub_jobs;
mod world;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hasher;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store,
    UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;

use crate::grant::Grant;
use crate::job::{JobInfo, Limits, Progress, Sizes};
use crate::modules::{ArtifactCache, ModuleHash};
pub use compile::{CompileBudget, child_main as compile_module_main};
use host::{MemoryCap, RunState};
pub use http::HttpLimits;
pub use load::{JobModule, ModuleOrigin};
use outcome::classify;
pub use outcome::{Failure, RunOutcome};
pub use sub_jobs::{
    EnqueueFuture, JoinFuture, JoinOptions, NoSubJobs, SubJobOptions, SubJobOutcome, SubJobSink,
};
pub use world::LoadError;

/// What is checked of uploaded bytes before anything is compiled — the header and the names of
/// the component's imports and exports — as a load does it (without an operator's refused
/// interfaces). For fuzzing and for tools that vet a component without a sandbox.
pub fn precheck(bytes: &[u8]) -> Result<(), LoadError> {
    world::check_before_compiling(bytes, &[])
}

/// Every job runs on a wasm stack of this size. 1 MiB is twice wasmtime's default: deep but sane
/// recursion (parsers, tree walks) fits, a runaway recursion still stops in well under a second.
const WASM_STACK_BYTES: usize = 1 << 20;

/// The async fiber stack must hold the wasm stack plus the host functions called from it.
const ASYNC_STACK_BYTES: usize = WASM_STACK_BYTES + (512 << 10);

/// How often the epoch advances. Each tick a running guest yields to the tokio scheduler (so a
/// CPU-bound guest cannot starve other jobs on its thread) and checks its deadline, so this is
/// also the resolution of timeouts: 10 ms is an OS-like time slice.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Log records kept per run; further records are counted in `logs_dropped`.
const MAX_LOG_RECORDS: usize = 1000;

/// Longest log message or progress note kept, in bytes; longer ones are cut at a char boundary.
const MAX_LOG_MESSAGE_BYTES: usize = 4096;

/// Core instances a component may create. Rust components use a handful; componentize-py and
/// StarlingMonkey (JavaScript) components use more, and 32 leaves room for both.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// Linear memories (and tables) per component: one for Rust guests; a few for Python and JS.
const MEMORIES_PER_COMPONENT: u32 = 4;

/// The most runs alive at once that the pooling allocator is sized for. Its slots are reserved
/// address space up front (each memory slot as large as the memory ceiling), so a pool for ten
/// thousand runs cannot be reserved at all; past this the sandbox allocates each run's memories
/// and stacks when it starts instead (slower to instantiate by tens of microseconds, which a
/// run that waits on the network does not notice), with a smaller address-space reservation
/// per memory.
pub const MAX_POOLED_INSTANCES: u32 = 1000;

/// How the sandbox is sized. Built once per process.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The most any invocation may ask for; also sizes the pooling allocator's slots.
    pub ceilings: Limits,
    /// The operator's size limits: the sandbox enforces the result's; the worker and the intake
    /// read the others from here.
    pub sizes: Sizes,
    /// How uploaded components are compiled: in a child process under a time and memory
    /// limit, a bounded number at once.
    pub compile: CompileBudget,
    /// Interfaces (`wasi:sockets`, `wasi:filesystem/preopens`, …) a component may not import,
    /// used or not: refused at load, before compiling, naming the import. Empty by default: the
    /// Python and JavaScript toolchains import `wasi:filesystem` and `wasi:sockets` whether a
    /// job uses them or not, and the host links them with no directories and no network.
    pub refused_imports: Vec<String>,
    /// Limits on each outbound HTTP call a granted module makes.
    pub http: HttpLimits,
    /// How many runs may be alive at once (the pool's capacity).
    pub max_instances: u32,
    /// Where compiled artifacts are cached; `None` compiles every module at load.
    pub cache_dir: Option<PathBuf>,
    /// The most the artifact cache directory may hold; the least recently used artifacts are
    /// deleted past it. 2 GiB by default.
    pub cache_max_bytes: u64,
    /// Bytes at the start of each pooled linear-memory slot that are reset in place between
    /// runs instead of being returned to the kernel. Pages a run touched within this budget stay
    /// resident, so the next run in the slot does not fault them in again: faster for jobs that
    /// use that much memory (`markdown` on 1 MiB: 49 ms at 2 MiB, 39 ms at 32 MiB), at the cost
    /// of up to this much resident memory per slot after such jobs. 2 MiB by default.
    pub keep_resident_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            ceilings: Limits::default_ceilings(),
            sizes: Sizes::default(),
            compile: CompileBudget::default(),
            refused_imports: Vec::new(),
            http: HttpLimits::default(),
            // Matches a worker's default concurrency with room for the CLI's own runs.
            max_instances: 64,
            cache_dir: None,
            cache_max_bytes: crate::modules::DEFAULT_CACHE_MAX_BYTES,
            keep_resident_bytes: 2 << 20,
        }
    }
}

/// A boxed future returned by [`SecretSource::secret`].
pub type SecretFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where a guest's `secret` calls are answered, once the sandbox has checked the name against
/// the module's grant: the broker (opened with the operator's key) in a worker, files in
/// `wasmq run`.
pub trait SecretSource: Send + Sync {
    /// The value of `name`, or a reason the guest sees (never the value of anything else).
    fn secret(&self, name: &str) -> SecretFuture;
}

/// Has no secrets: for runs without a store behind them.
#[derive(Debug, Default)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret(&self, name: &str) -> SecretFuture {
        let message = format!("secret `{name}` is not set on this host");
        Box::pin(async move { Err(message) })
    }
}

/// Room for one outbound call under the fleet's limit on its destination, held until dropped.
pub type EgressPermit = Option<Box<dyn Send + Sync>>;

/// A boxed future returned by [`EgressGate::enter`].
pub type GateFuture = Pin<Box<dyn Future<Output = Result<EgressPermit, String>> + Send>>;

/// Where an outbound call waits for room under its destination's egress limit, after the
/// grant allowed it and before it connects: the broker's fleet-wide limits in a worker.
pub trait EgressGate: Send + Sync {
    /// Waits (parked: no thread, no fuel) until a call to `host` may start; the permit holds
    /// its room until dropped. The run's deadline bounds the wait.
    fn enter(&self, host: &str) -> GateFuture;
}

/// No egress limits: every call starts at once.
#[derive(Debug, Default)]
pub struct NoEgressLimits;

impl EgressGate for NoEgressLimits {
    fn enter(&self, _: &str) -> GateFuture {
        Box::pin(async { Ok(None) })
    }
}

/// Where a guest's `progress` calls go while it runs (the final progress is also in the outcome).
/// Called on the guest's thread: it must be cheap and must not block.
pub trait ProgressSink: Send + Sync {
    /// The guest reported `progress`.
    fn progress(&self, job: &JobInfo, progress: &Progress);
}

/// One run's request.
#[derive(Clone)]
pub struct RunRequest {
    /// What the guest sees as `job-info`.
    pub info: JobInfo,
    /// The argument bytes handed to `run`.
    pub args: Vec<u8>,
    /// This run's limits (already checked against the ceilings by the caller).
    pub limits: Limits,
    /// Where `enqueue` calls go.
    pub sub_jobs: Arc<dyn SubJobSink>,
    /// Where progress reports go as they happen, if anywhere.
    pub progress: Option<Arc<dyn ProgressSink>>,
    /// What the operator granted the module (nothing, by default).
    pub grant: Arc<Grant>,
    /// Where granted secrets are read from.
    pub secrets: Arc<dyn SecretSource>,
    /// Where outbound calls wait for room under their destination's limit.
    pub egress: Arc<dyn EgressGate>,
}

impl fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRequest")
            .field("info", &self.info)
            .field("args_len", &self.args.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The per-process sandbox: one engine, one linker, the compiled modules. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<RunState>,
    engine_key: String,
    cache: Option<ArtifactCache>,
    ceilings: Limits,
    sizes: Sizes,
    http: HttpLimits,
    guests: GuestRuntime,
    budget: CompileBudget,
    /// The per-memory reservation when runs are not pooled (see [`MAX_POOLED_INSTANCES`]).
    memory_reservation: Option<u64>,
    /// Runs that may be alive at once.
    max_instances: u32,
    /// Turns to compile: at most `budget.concurrency` at once.
    compiles: tokio::sync::Semaphore,
    /// Compiles started, in this process or in children.
    compiled: std::sync::atomic::AtomicU64,
    modules: Mutex<HashMap<ModuleHash, JobModule>>,
    /// Interfaces refused at load (see [`SandboxConfig::refused_imports`]).
    refused_imports: Vec<String>,
    /// Loads under way, shared by everyone asking for the same bytes meanwhile.
    loading: Mutex<HashMap<ModuleHash, load::SharedLoad>>,
    /// Bytes refused for good, remembered so that they are not compiled again.
    refused: Mutex<HashMap<ModuleHash, LoadError>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("engine_key", &self.inner.engine_key)
            .field("cache", &self.inner.cache)
            .field("ceilings", &self.inner.ceilings)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Builds the engine, the linker and the epoch ticker.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let n = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .total_memories(n * MEMORIES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .total_tables(n * MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MEMORIES_PER_COMPONENT)
            .total_stacks(n)
            .max_memory_size(usize::try_from(config.ceilings.memory_bytes)?)
            // Between runs, reset a slot's dirty pages in place rather than returning them to
            // the kernel and faulting them back in on the next run. With PAGEMAP_SCAN (Linux
            // 6.7+, used when available) only pages the guest actually touched are reset, so a
            // generous budget costs nothing for small jobs; without it the first bytes up to
            // the budget are memset, so the budget stays near a small job's footprint.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(64 << 10);

        // Past the pool's size, each memory reserves only its ceiling (not 4 GiB plus guards),
        // so ten thousand live runs fit the address space; the compiler child must compile
        // for the same reservation.
        let memory_reservation = (n > MAX_POOLED_INSTANCES).then_some(config.ceilings.memory_bytes);
        let mut wasm = engine_config(memory_reservation);
        wasm.allocation_strategy(match memory_reservation {
            None => InstanceAllocationStrategy::Pooling(pool),
            Some(_) => InstanceAllocationStrategy::OnDemand,
        });
        let engine = Engine::new(&wasm)?;
        let linker = job_linker(&engine)?;

        let engine_key = {
            let mut h = Sha256Hasher(Sha256::new());
            std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
            hex::encode(&h.0.finalize()[..8])
        };
        let cache = config
            .cache_dir
            .map(|dir| ArtifactCache::open(dir).map(|c| c.with_max_bytes(config.cache_max_bytes)))
            .transpose()?;
        spawn_epoch_ticker(&engine);

        Ok(Sandbox {
            inner: Arc::new(Inner {
                engine,
                linker,
                engine_key,
                cache,
                ceilings: config.ceilings,
                sizes: config.sizes,
                http: config.http,
                guests: GuestRuntime::new()?,
                compiles: tokio::sync::Semaphore::new(config.compile.concurrency.max(1)),
                budget: config.compile,
                memory_reservation,
                max_instances: n,
                compiled: Default::default(),
                modules: Mutex::default(),
                loading: Mutex::default(),
                refused_imports: config.refused_imports,
                refused: Mutex::default(),
            }),
        })
    }

    /// How many runs may be alive at once (running or suspended).
    pub fn max_instances(&self) -> usize {
        self.inner.max_instances as usize
    }

    /// The operator ceilings this sandbox was built with.
    pub fn ceilings(&self) -> &Limits {
        &self.inner.ceilings
    }

    /// How many compiles this sandbox has started (a load from memory or from the artifact
    /// cache starts none; concurrent loads of the same bytes share one).
    pub fn compiles_started(&self) -> u64 {
        self.inner
            .compiled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The operator's size limits this sandbox was built with.
    pub fn sizes(&self) -> &Sizes {
        &self.inner.sizes
    }

    /// Identifies the engine's compiled-code compatibility (part of each cache file name).
    pub fn engine_key(&self) -> &str {
        &self.inner.engine_key
    }

    /// The artifact cache, if configured.
    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.inner.cache.as_ref()
    }

    /// Runs `module` once in a fresh store with `request.limits`, on the sandbox's own guest
    /// threads: a guest that burns CPU shares them with other guests only, never with the
    /// caller's runtime, where a worker's heartbeats and acknowledgements run. Dropping the
    /// returned future stops the run.
    pub async fn run(&self, module: &JobModule, request: RunRequest) -> RunOutcome {
        let engine = self.inner.engine.clone();
        let (sizes, http) = (self.inner.sizes, self.inner.http);
        let module = module.clone();
        let task = self
            .inner
            .guests
            .handle()
            .spawn(async move { run_in_store(engine, sizes, http, &module, request).await });
        let _stop_if_dropped = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("a guest task is only cancelled by its caller's drop: {e}"),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime guests run on, shut down without waiting when the sandbox goes (a guest still
/// running is stopped at its next epoch tick).
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    /// One thread per core: guests are CPU work, and each yields every epoch tick so that
    /// they share the threads fairly.
    fn new() -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasmq-guest")
            .enable_all()
            .build()?;
        Ok(GuestRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// One run in a fresh store (see [`Sandbox::run`]).
async fn run_in_store(
    engine: Engine,
    sizes: Sizes,
    http: HttpLimits,
    module: &JobModule,
    request: RunRequest,
) -> RunOutcome {
    let limits = request.limits;
    let stdout = output::CapturedPipe::new(limits.output_bytes);
    let stderr = output::CapturedPipe::new(limits.output_bytes);
    let wasi = WasiCtxBuilder::new()
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let state = RunState {
        wasi,
        http: wasmtime_wasi_http::WasiHttpCtx::new(),
        egress: http::Egress::new(request.grant.clone(), http, started, request.egress.clone()),
        table: ResourceTable::new(),
        memory: MemoryCap {
            limit: limits.memory_bytes,
            used: 0,
            refused: None,
        },
        logs: Vec::new(),
        logs_dropped: 0,
        progress: None,
        info: request.info.clone(),
        sub_jobs: request.sub_jobs.clone(),
        progress_sink: request.progress.clone(),
        grant: request.grant.clone(),
        secrets: request.secrets.clone(),
        secrets_read: Vec::new(),
        started,
    };
    let mut store = Store::new(&engine, state);
    store.limiter(|s| &mut s.memory);
    store
        .set_fuel(limits.fuel)
        .expect("fuel is enabled on the engine");
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });

    let info = bindings::wasmq::job::types::JobInfo {
        id: request.info.id,
        queue: request.info.queue,
        attempt: request.info.attempt,
        max_attempts: request.info.max_attempts,
    };
    let call = async {
        let job = module
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| (true, e))?;
        job.call_run(&mut store, &info, &request.args)
            .await
            .map_err(|e| (false, e))
    };
    let raw = tokio::time::timeout_at(deadline.into(), call).await;
    let wall_time = started.elapsed();

    let fuel_left = store.get_fuel().unwrap_or(0);
    let mut state = store.into_data();
    let (http_uses, denials) = state.egress.finish();
    for denial in denials {
        state.log_record(denial);
    }
    let timeout = Failure::Timeout {
        timeout_ms: limits.timeout.as_millis() as u64,
    };
    let result = match raw {
        Err(_elapsed) => Err(timeout),
        Ok(Ok(Ok(bytes))) if bytes.len() > sizes.result_bytes => Err(Failure::ResultTooLarge {
            bytes: bytes.len() as u64,
            limit_bytes: sizes.result_bytes as u64,
        }),
        Ok(Ok(Ok(bytes))) => Ok(bytes),
        // A guest whose runtime survives a refused `memory.grow` (Python's MemoryError,
        // JavaScript's "out of memory") reports a plain error: the limiter knows the cause.
        Ok(Ok(Err(bindings::wasmq::job::types::JobError::Retry(_))))
            if let Some(requested) = state.memory.refused =>
        {
            Err(Failure::MemoryLimit {
                limit_bytes: limits.memory_bytes,
                requested_bytes: requested,
            })
        }
        Ok(Ok(Err(bindings::wasmq::job::types::JobError::Retry(message)))) => {
            Err(Failure::Retry { message })
        }
        Ok(Ok(Err(bindings::wasmq::job::types::JobError::Fail(message)))) => {
            Err(Failure::Fail { message })
        }
        Ok(Err((instantiating, error))) => {
            Err(classify(&error, instantiating, &state, &limits, timeout))
        }
    };
    let outcome = RunOutcome {
        result,
        fuel_used: limits.fuel.saturating_sub(fuel_left),
        fuel_budget: limits.fuel,
        wall_time,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
        logs: state.logs,
        logs_dropped: state.logs_dropped,
        progress: state.progress,
        http: http_uses,
    };
    outcome.redacted(&state.secrets_read)
}

/// The engine settings that shape compiled code: the same in this process and in the compiler
/// child (which adds no pooling allocator), so that an artifact compiled there loads here.
/// `memory_reservation` is the smaller per-memory reservation of an unpooled sandbox.
fn engine_config(memory_reservation: Option<u64>) -> Config {
    let mut wasm = Config::new();
    wasm.consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(WASM_STACK_BYTES)
        .async_stack_size(ASYNC_STACK_BYTES)
        .cranelift_opt_level(OptLevel::Speed);
    if let Some(bytes) = memory_reservation {
        wasm.memory_reservation(bytes)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0);
    }
    wasm
}

/// The linker with everything a job may import: WASI (without ambient authority, see
/// [`Sandbox::run`]) and the `wasmq:job` host interface.
fn job_linker(engine: &Engine) -> anyhow::Result<Linker<RunState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::Job::add_to_linker::<_, HasSelf<RunState>>(&mut linker, |s| s)?;
    bindings_v1::Job::add_to_linker::<_, HasSelf<RunState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasmq-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("failed to spawn the epoch ticker thread");
}

/// Feeds `Hash` output into SHA-256, for a stable engine key.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_matches_the_serialized_tag() {
        let all = [
            Failure::Trap {
                message: "m".into(),
            },
            Failure::OutOfFuel { budget: 1 },
            Failure::Timeout { timeout_ms: 1 },
            Failure::MemoryLimit {
                limit_bytes: 1,
                requested_bytes: 2,
            },
            Failure::StackOverflow { stack_bytes: 1 },
            Failure::ResultTooLarge {
                bytes: 2,
                limit_bytes: 1,
            },
            Failure::Retry {
                message: "m".into(),
            },
            Failure::Fail {
                message: "m".into(),
            },
            Failure::Instantiate {
                message: "m".into(),
            },
        ];
        for f in all {
            assert_eq!(serde_json::to_value(&f).unwrap()["kind"], f.kind().as_str());
        }
    }
}
