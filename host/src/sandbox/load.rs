//! Loading a module: bytes checked against the `job` world (`world`), then made runnable from
//! this process's memory, the artifact cache, or a compile — in the compiler child under the
//! operator's budget (`compile`) for untrusted bytes — and kept as a [`JobModule`]. Concurrent
//! loads of the same bytes share one compile; refusals that a retry cannot change are
//! remembered.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::host::RunState;
use super::world::{LoadError, check_before_compiling, check_world};
use super::{Sandbox, bindings};
use crate::modules::{CacheLookup, ModuleHash};

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
                        let artifact = super::compile::in_child(
                            program,
                            &self.inner.budget,
                            self.inner.memory_reservation,
                            &bytes,
                        )
                        .await?;
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
