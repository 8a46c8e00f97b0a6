//! Loading a module: bytes checked against the `job` world (imports, the `run` export), then
//! made runnable from this process's memory, the artifact cache, or a compile — whichever is
//! cheapest — and kept as a [`JobModule`].

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::host::RunState;
use super::{Sandbox, bindings};
use crate::modules::{CacheLookup, FormatError, ModuleHash, check_component_header};

/// Why a module was refused at load.
#[derive(Debug, thiserror::Error)]
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
    /// Validates `bytes` as a job component and makes it runnable: from this process's memory,
    /// from the artifact cache, or by compiling it (then caching the artifact). CPU-heavy on a
    /// miss: call it from a blocking context.
    pub fn load(&self, bytes: &[u8]) -> Result<JobModule, LoadError> {
        let started = Instant::now();
        let hash = ModuleHash::of(bytes);
        if let Some(module) = self.inner.modules.lock().unwrap().get(&hash) {
            return Ok(JobModule {
                origin: ModuleOrigin::Memory,
                load_time: started.elapsed(),
                ..module.clone()
            });
        }
        check_component_header(bytes)?;
        let (component, origin) = self.compile_or_load_cached(&hash, bytes)?;
        // Imports first (ours, then what the linker grants), exports next, types last: each
        // error names the first item that does not fit.
        check_imports(&self.inner.engine, &component)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::World(format!("{e:#}")))?;
        check_exports(&self.inner.engine, &component)?;
        let pre = bindings::JobPre::new(pre)
            .map_err(|e| LoadError::World(format!("export `run`: {e:#}")))?;
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

    /// [`Sandbox::load`] on tokio's blocking pool, so that compiling never stalls the async
    /// threads that other jobs run on.
    pub async fn load_async(&self, bytes: Vec<u8>) -> Result<JobModule, LoadError> {
        let sandbox = self.clone();
        match tokio::task::spawn_blocking(move || sandbox.load(&bytes)).await {
            Ok(loaded) => loaded,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// Whether this process has the module loaded (so a run needs no compile or cache read).
    pub fn is_loaded(&self, hash: ModuleHash) -> bool {
        self.inner.modules.lock().unwrap().contains_key(&hash)
    }

    /// Forgets every module loaded in this process (the artifact cache keeps its files).
    pub fn forget_loaded(&self) {
        self.inner.modules.lock().unwrap().clear();
    }

    fn compile_or_load_cached(
        &self,
        hash: &ModuleHash,
        bytes: &[u8],
    ) -> Result<(Component, ModuleOrigin), LoadError> {
        let key = &self.inner.engine_key;
        if let Some(cache) = &self.inner.cache {
            match cache.read(hash, key) {
                CacheLookup::Hit(artifact) => {
                    match deserialize_artifact(&self.inner.engine, &artifact) {
                        Ok(component) => return Ok((component, ModuleOrigin::DiskCache)),
                        Err(e) => {
                            tracing::warn!(module = %hash, error = %format!("{e:#}"), "wasmtime refused a cached artifact; recompiling");
                            cache.discard(hash, key);
                        }
                    }
                }
                CacheLookup::Rejected(reason) => {
                    tracing::warn!(module = %hash, "{reason}; recompiling")
                }
                CacheLookup::Miss => {}
            }
        }
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        if let Some(cache) = &self.inner.cache {
            let written = component
                .serialize()
                .map_err(std::io::Error::other)
                .and_then(|artifact| cache.write(hash, key, &artifact));
            if let Err(e) = written {
                tracing::warn!(module = %hash, error = %e, "could not cache the compiled artifact");
            }
        }
        Ok((component, ModuleOrigin::Compiled))
    }
}

/// Refuses imports outside WASI and the `wasmq:job` package, naming the first one. (The linker
/// then refuses WASI interfaces the sandbox does not grant.)
fn check_imports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    for (name, _) in component.component_type().imports(engine) {
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
fn check_exports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
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
                    list_or_none(&exports)
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
    // SAFETY: `artifact` comes only from `ArtifactCache::read`, which returns bytes this host
    // wrote with `Component::serialize` into its own private directory and whose SHA-256 still
    // matches the digest written beside them; wasmtime then checks the engine compatibility
    // header itself. Bytes from anywhere else never reach this function.
    unsafe { Component::deserialize(engine, artifact) }
}
