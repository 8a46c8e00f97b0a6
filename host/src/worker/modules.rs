//! The worker's modules: fetched from the broker once per process, checked against their hash,
//! compiled (or loaded from the artifact cache) once, shared by every job that uses them; and
//! their grants, read again once they are older than the grant TTL (so that a revoke reaches
//! every worker within it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::broker::WorkerBroker;
use crate::grant::Grant;
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
    grants: Arc<Mutex<HashMap<ModuleHash, ReadGrant>>>,
    /// Held while a grant is read from the broker, so that runs starting together read it once.
    reading_grant: Arc<tokio::sync::Mutex<()>>,
    grant_ttl: Duration,
}

/// How long a worker uses a grant it read before reading it again: a revoke or a new grant
/// reaches runs that start later than this.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(1);

/// A grant and when it was read.
type ReadGrant = (Arc<Grant>, Instant);

/// One module's load, done once: the module or a permanent failure.
type Slot = OnceCell<Result<JobModule, ModuleError>>;

impl ModuleCache {
    /// An empty cache over `broker`, compiling with `sandbox`.
    pub fn new(broker: Arc<dyn WorkerBroker>, sandbox: Sandbox) -> Self {
        ModuleCache {
            broker,
            sandbox,
            cells: Arc::default(),
            grants: Arc::default(),
            reading_grant: Arc::default(),
            grant_ttl: DEFAULT_GRANT_TTL,
        }
    }

    /// Reads grants again once they are older than `ttl` (zero: for every run).
    pub fn with_grant_ttl(mut self, ttl: Duration) -> Self {
        self.grant_ttl = ttl;
        self
    }

    /// What the operator granted `hash`, at most the grant TTL old.
    pub async fn grant(&self, hash: ModuleHash) -> Result<Arc<Grant>, ModuleError> {
        let cached = || {
            self.grants
                .lock()
                .expect("not poisoned")
                .get(&hash)
                .filter(|(_, at)| at.elapsed() < self.grant_ttl)
                .map(|(grant, _)| grant.clone())
        };
        if let Some(grant) = cached() {
            return Ok(grant);
        }
        let _reading = self.reading_grant.lock().await;
        if let Some(grant) = cached() {
            return Ok(grant);
        }
        let grant = Arc::new(self.broker.grant(hash).await.map_err(|e| ModuleError {
            permanent: false,
            message: format!("failed to read the grant of module `{hash}`: {e}"),
        })?);
        self.grants
            .lock()
            .expect("not poisoned")
            .insert(hash, (grant.clone(), Instant::now()));
        Ok(grant)
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
