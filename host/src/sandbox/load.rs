//! Loading a module: bytes checked against the `job` world (imports, the `run` export), then
//! made runnable from this process's memory, the artifact cache, or a compile — whichever is
//! cheapest — and kept as a [`JobModule`].

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::host::RunState;
use super::{Sandbox, bindings};
use crate::modules::{CacheLookup, FormatError, ModuleHash, check_component_header};

/// Why a module was refused at load.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component at all.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A component that wasmtime could not parse, validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component that does not fit the `wasmq:job/job` world.
    #[error("component does not fit the `wasmq:job/job` world: {0}")]
    World(String),
    /// Compiling took longer than the operator allows.
    #[error(
        "compiling the component took longer than the limit of {} s (--compile-timeout)",
        limit.as_secs_f64()
    )]
    TimeBudget {
        /// The limit.
        limit: Duration,
    },
    /// Compiling needed more memory than the operator allows.
    #[error(
        "compiling the component needed more than the limit of {} MiB of memory (--compile-memory-mb)",
        limit_bytes >> 20
    )]
    MemoryBudget {
        /// The limit.
        limit_bytes: u64,
    },
    /// The compiler process could not be run: nothing is known about the component.
    #[error("{0}")]
    Compiler(String),
}

impl LoadError {
    /// Whether loading the same bytes again would fail the same way. A compile that ran out of
    /// time may fit on a less busy machine, and a compiler that could not start says nothing
    /// about the component.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, LoadError::TimeBudget { .. } | LoadError::Compiler(_))
    }
}

/// Where a loaded module's compiled code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleOrigin {
    /// Compiled now.
    Compiled,
    /// Loaded from the on-disk artifact cache.
    DiskCache,
    /// Already loaded by this process.
    Memory,
}

/// A compiled module, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct JobModule {
    hash: ModuleHash,
    pub(super) pre: bindings::JobPre<RunState>,
    origin: ModuleOrigin,
    load_time: Duration,
}

impl fmt::Debug for JobModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobModule")
            .field("hash", &self.hash)
            .field("origin", &self.origin)
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

impl JobModule {
    /// The module's content address.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// Where the compiled code came from when this handle was produced.
    pub fn origin(&self) -> ModuleOrigin {
        self.origin
    }

    /// How long producing it took (compile, or cache read and load).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }
}

impl Sandbox {
    /// Validates `bytes` as a job component and makes it runnable, in this process and without
    /// a compile budget: for trusted bytes (benchmarks of the sample jobs). Untrusted bytes go
    /// through [`Sandbox::load_async`]. CPU-heavy on a miss: call it from a blocking context.
    pub fn load(&self, bytes: &[u8]) -> Result<JobModule, LoadError> {
        let started = Instant::now();
        let hash = ModuleHash::of(bytes);
        if let Some(module) = self.loaded(hash, started) {
            return Ok(module);
        }
        check_before_compiling(bytes, &self.inner.refused_imports)?;
        let (component, origin) = match self.cached(&hash) {
            Some(component) => (component, ModuleOrigin::DiskCache),
            None => {
                self.inner
                    .compiled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    Component::new(&self.inner.engine, bytes)
                        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?,
                    ModuleOrigin::Compiled,
                )
            }
        };
        self.finish(hash, component, origin, started)
    }

    /// Validates `bytes` as a job component and makes it runnable: from this process's memory,
    /// from the artifact cache, or by compiling it under the operator's budget
    /// ([`CompileBudget`](super::CompileBudget)) in a child process. The names of its imports and
    /// exports are checked before anything is compiled. Concurrent loads of the same bytes share
    /// one compile, and at most the budget's `concurrency` compiles run at once; a refusal is
    /// remembered (unless a retry could pass), so the same bytes are not compiled again.
    pub async fn load_async(&self, bytes: Vec<u8>) -> Result<JobModule, LoadError> {
        let started = Instant::now();
        let hash = ModuleHash::of(&bytes);
        if let Some(module) = self.loaded(hash, started) {
            return Ok(module);
        }
        if let Some(refused) = self.inner.refused.lock().unwrap().get(&hash) {
            return Err(refused.clone());
        }
        let load = self
            .inner
            .loading
            .lock()
            .unwrap()
            .entry(hash)
            .or_insert_with(|| {
                let sandbox = self.clone();
                async move { sandbox.load_untrusted(hash, bytes, started).await }
                    .boxed()
                    .shared()
            })
            .clone();
        let loaded = load.await;
        self.inner.loading.lock().unwrap().remove(&hash);
        if let Err(e) = &loaded
            && e.is_permanent()
        {
            let mut refused = self.inner.refused.lock().unwrap();
            // Bounded: forgetting refusals only costs compiles.
            if refused.len() >= MAX_REMEMBERED_REFUSALS {
                refused.clear();
            }
            refused.insert(hash, e.clone());
        }
        loaded
    }

    async fn load_untrusted(
        &self,
        hash: ModuleHash,
        bytes: Vec<u8>,
        started: Instant,
    ) -> Result<JobModule, LoadError> {
        check_before_compiling(&bytes, &self.inner.refused_imports)?;
        let sandbox = self.clone();
        let cached = blocking(move || sandbox.cached(&hash)).await;
        let (component, origin) = match cached {
            Some(component) => (component, ModuleOrigin::DiskCache),
            None => {
                let _turn = self
                    .inner
                    .compiles
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.inner
                    .compiled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let engine = self.inner.engine.clone();
                let component = match &self.inner.budget.program {
                    Some(program) => {
                        let artifact =
                            super::compile::in_child(program, &self.inner.budget, &bytes).await?;
                        blocking(move || {
                            deserialize_artifact(&engine, &artifact).map_err(|e| {
                                LoadError::Compiler(format!("loading the compiled artifact: {e:#}"))
                            })
                        })
                        .await?
                    }
                    None => {
                        blocking(move || {
                            Component::new(&engine, &bytes)
                                .map_err(|e| LoadError::Invalid(format!("{e:#}")))
                        })
                        .await?
                    }
                };
                (component, ModuleOrigin::Compiled)
            }
        };
        let sandbox = self.clone();
        blocking(move || sandbox.finish(hash, component, origin, started)).await
    }

    /// The module, if this process has it loaded.
    fn loaded(&self, hash: ModuleHash, started: Instant) -> Option<JobModule> {
        let modules = self.inner.modules.lock().unwrap();
        modules.get(&hash).map(|module| JobModule {
            origin: ModuleOrigin::Memory,
            load_time: started.elapsed(),
            ..module.clone()
        })
    }

    /// Checks a compiled component against the job world, caches a fresh compile's artifact
    /// (only now: a refused component leaves nothing in the cache) and keeps the module.
    fn finish(
        &self,
        hash: ModuleHash,
        component: Component,
        origin: ModuleOrigin,
        started: Instant,
    ) -> Result<JobModule, LoadError> {
        let pre = check_world(&self.inner.engine, &self.inner.linker, &component)?;
        if origin == ModuleOrigin::Compiled
            && let Some(cache) = &self.inner.cache
        {
            let written = component
                .serialize()
                .map_err(std::io::Error::other)
                .and_then(|artifact| cache.write(&hash, &self.inner.engine_key, &artifact));
            if let Err(e) = written {
                tracing::warn!(module = %hash, error = %e, "could not cache the compiled artifact");
            }
        }
        let module = JobModule {
            hash,
            pre,
            origin,
            load_time: started.elapsed(),
        };
        self.inner
            .modules
            .lock()
            .unwrap()
            .insert(hash, module.clone());
        Ok(module)
    }

    /// Whether this process has the module loaded (so a run needs no compile or cache read).
    pub fn is_loaded(&self, hash: ModuleHash) -> bool {
        self.inner.modules.lock().unwrap().contains_key(&hash)
    }

    /// Forgets every module loaded in this process (the artifact cache keeps its files).
    pub fn forget_loaded(&self) {
        self.inner.modules.lock().unwrap().clear();
    }

    /// The compiled component from the artifact cache, if it holds a good one.
    fn cached(&self, hash: &ModuleHash) -> Option<Component> {
        let key = &self.inner.engine_key;
        let cache = self.inner.cache.as_ref()?;
        match cache.read(hash, key) {
            CacheLookup::Hit(artifact) => match deserialize_artifact(&self.inner.engine, &artifact)
            {
                Ok(component) => return Some(component),
                Err(e) => {
                    tracing::warn!(module = %hash, error = %format!("{e:#}"), "wasmtime refused a cached artifact; recompiling");
                    cache.discard(hash, key);
                }
            },
            CacheLookup::Rejected(reason) => {
                tracing::warn!(module = %hash, "{reason}; recompiling")
            }
            CacheLookup::Miss => {}
        }
        None
    }
}

/// A load under way, which every caller asking for the same bytes meanwhile awaits.
pub(super) type SharedLoad = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<JobModule, LoadError>>,
>;

/// Refusals remembered per process (see [`Sandbox::load_async`]).
const MAX_REMEMBERED_REFUSALS: usize = 1024;

/// Runs CPU-heavy work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// What can be checked without compiling: the header, then the names of the component's own
/// imports and exports, read with `wasmparser` (nested modules and components are skipped), and
/// the operator's refused interfaces.
fn check_before_compiling(bytes: &[u8], refused: &[String]) -> Result<(), LoadError> {
    check_component_header(bytes)?;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid(e.to_string());
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(invalid)?;
                    // A world's `use` of a type is imported as a type: nothing to link.
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        imports.push(import.name.name);
                    }
                }
            }
            wasmparser::Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    exports.push(export.map_err(invalid)?.name.name);
                }
            }
            _ => {}
        }
    }
    check_import_names(&imports)?;
    for name in &imports {
        if let Some(interface) = refused.iter().find(|r| is_within(name, r)) {
            return Err(LoadError::World(format!(
                "imports `{name}`, which this host's operator refuses (--refuse-imports {interface})"
            )));
        }
    }
    check_export_names(&exports)
}

/// Whether import `name` (`wasi:sockets/tcp@0.2.6`) is within `prefix` (`wasi:sockets`,
/// `wasi:sockets/tcp`).
fn is_within(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '@']))
}

/// Checks a compiled component's imports, exports and `run`'s type against the job world (the
/// linker's imports included); returns it ready to instantiate.
pub(super) fn check_world(
    engine: &Engine,
    linker: &wasmtime::component::Linker<RunState>,
    component: &Component,
) -> Result<bindings::JobPre<RunState>, LoadError> {
    let ty = component.component_type();
    // Imports first (ours, then what the linker grants), exports next, types last: each
    // error names the first item that does not fit.
    let imports: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    check_import_names(&imports)?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::World(format!("{e:#}")))?;
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    check_export_names(&exports)?;
    bindings::JobPre::new(pre).map_err(|e| LoadError::World(format!("export `run`: {e:#}")))
}

/// Refuses imports outside WASI and the `wasmq:job` package, naming the first one. (The linker
/// then refuses WASI interfaces the sandbox does not grant.)
fn check_import_names(imports: &[&str]) -> Result<(), LoadError> {
    for name in imports {
        if !(name.starts_with("wasi:") || name.starts_with("wasmq:job/")) {
            return Err(LoadError::World(format!(
                "imports `{name}`, which the host does not provide"
            )));
        }
    }
    Ok(())
}

/// Requires the `run` export, naming what the component exports instead when it is missing.
/// (`JobPre::new` then checks its type.) Other exports are allowed and never called: guest
/// toolchains add their own (componentize-py exports `exports`, the hook its build-time
/// pre-initialisation calls).
fn check_export_names(exports: &[&str]) -> Result<(), LoadError> {
    if !exports.contains(&"run") {
        return Err(LoadError::World(
            if let Some(cmd) = exports.iter().find(|e| e.starts_with("wasi:cli/run")) {
                format!(
                    "missing export `run`; it exports `{cmd}`, so it is a command (a `main`), not a \
                     job: build a `cdylib` whose job function carries `#[wasmq_guest::job]`"
                )
            } else {
                format!(
                    "missing export `run` (it exports: {})",
                    list_or_none(exports)
                )
            },
        ));
    }
    Ok(())
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The one place that turns bytes into executable code without compiling them.
#[allow(unsafe_code)]
pub(super) fn deserialize_artifact(
    engine: &Engine,
    artifact: &[u8],
) -> wasmtime::Result<Component> {
    // SAFETY: `artifact` comes only from two places, both `Component::serialize` output of this
    // host's own wasmtime: `ArtifactCache::read`, which returns bytes this host wrote into its
    // own private directory and whose SHA-256 still matches the digest written beside them; and
    // the stdout pipe of the compiler child this host started itself (`compile::in_child`,
    // running this binary's `compile-module`). wasmtime then checks the engine compatibility
    // header itself. Bytes from anywhere else never reach this function.
    unsafe { Component::deserialize(engine, artifact) }
}
