//! The worker's modules: fetched from the broker once per process, checked against their hash,
//! compiled (or loaded from the artifact cache) once, shared by every job that uses them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::broker::WorkerBroker;
use crate::modules::ModuleHash;
use crate::sandbox::{JobModule, Sandbox};

/// Why a module could not be had.
#[derive(Clone, Debug)]
pub struct ModuleError {
    /// Fetching again cannot help (missing, damaged or invalid); otherwise the broker failed.
    pub permanent: bool,
    /// What went wrong.
    pub message: String,
}

/// Loaded modules by hash. Concurrent first uses of one module wait for a single fetch and
/// compile. Cheap to clone.
#[derive(Clone)]
pub struct ModuleCache {
    broker: Arc<dyn WorkerBroker>,
    sandbox: Sandbox,
    cells: Arc<Mutex<HashMap<ModuleHash, Arc<Slot>>>>,
}

/// One module's load, done once: the module or a permanent failure.
type Slot = OnceCell<Result<JobModule, ModuleError>>;

impl ModuleCache {
    /// An empty cache over `broker`, compiling with `sandbox`.
    pub fn new(broker: Arc<dyn WorkerBroker>, sandbox: Sandbox) -> Self {
        ModuleCache {
            broker,
            sandbox,
            cells: Arc::default(),
        }
    }

    /// The loaded module. Permanent failures are remembered; a broker error is retried next time.
    pub async fn get(&self, hash: ModuleHash) -> Result<JobModule, ModuleError> {
        let cell = self
            .cells
            .lock()
            .expect("not poisoned")
            .entry(hash)
            .or_default()
            .clone();
        let loaded = cell
            .get_or_try_init(|| async {
                match self.load(hash).await {
                    Err(e) if !e.permanent => Err(e),
                    done => Ok(done),
                }
            })
            .await;
        match loaded {
            Ok(done) => done.clone(),
            Err(e) => Err(e),
        }
    }

    async fn load(&self, hash: ModuleHash) -> Result<JobModule, ModuleError> {
        let bytes = match self.broker.module(hash).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(ModuleError {
                    permanent: true,
                    message: format!("module `{hash}` is not in the module store"),
                });
            }
            Err(e) => {
                return Err(ModuleError {
                    permanent: false,
                    message: format!("failed to fetch module `{hash}`: {e}"),
                });
            }
        };
        let actual = ModuleHash::of(&bytes);
        if actual != hash {
            return Err(ModuleError {
                permanent: true,
                message: format!("module store holds bytes hashing to `{actual}` under `{hash}`"),
            });
        }
        self.sandbox
            .load_async(bytes)
            .await
            .map_err(|e| ModuleError {
                permanent: e.is_permanent(),
                message: format!("failed to load module `{hash}`: {e}"),
            })
    }
}
