//! A broker for a test that runs on every backend — the in-memory one, a private Redis or a
//! private Redis Cluster — and
//! the sample-job helpers such tests share: upload a module, describe a job, one test per
//! backend (`backend_suite!`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use wasmq::broker::memory::MemoryBroker;
use wasmq::broker::redis::RedisBroker;
use wasmq::broker::{ApiBroker, JobRecord};
use wasmq::invocation::{Invocation, NewJob};
use wasmq::job::Limits;
use wasmq::modules::ModuleHash;
use wasmq::worker::{Worker, WorkerConfig, WorkerStats};

use super::cluster::RedisCluster;
use super::redis::RedisServer;

/// A broker, and the Redis or Redis Cluster behind it when there is one.
pub struct Backend {
    pub broker: Arc<dyn ApiBroker>,
    pub redis: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
}

impl Backend {
    /// Whether the broker is on Redis (single or cluster).
    pub fn is_redis(&self) -> bool {
        self.redis.is_some() || self.cluster.is_some()
    }

    /// The Redis URL (a cluster's: its masters', comma-separated).
    pub fn url(&self) -> Option<String> {
        match (&self.redis, &self.cluster) {
            (Some(server), _) => Some(server.url()),
            (_, Some(cluster)) => Some(cluster.url()),
            _ => None,
        }
    }

    /// The Redis node holding `key`.
    pub fn node_for(&self, key: &str) -> Option<&RedisServer> {
        match (&self.redis, &self.cluster) {
            (Some(server), _) => Some(server),
            (_, Some(cluster)) => Some(cluster.owner_of(key)),
            _ => None,
        }
    }

    /// What Redis holds in keys (every master's, on a cluster).
    pub fn stored_bytes(&self) -> Option<u64> {
        match (&self.redis, &self.cluster) {
            (Some(server), _) => Some(server.stored_bytes()),
            (_, Some(cluster)) => Some(
                cluster
                    .masters()
                    .iter()
                    .map(RedisServer::stored_bytes)
                    .sum(),
            ),
            _ => None,
        }
    }

    /// The same broker through a separate connection (Redis), or shared (memory): what another
    /// worker process would have.
    pub async fn another_connection(&self) -> Arc<dyn ApiBroker> {
        match self.url() {
            Some(url) => Arc::new(RedisBroker::connect(&url).await.unwrap()),
            None => self.broker.clone(),
        }
    }
}

/// The in-memory broker.
pub async fn memory() -> Backend {
    Backend {
        broker: Arc::new(MemoryBroker::new()),
        redis: None,
        cluster: None,
    }
}

/// A broker on a private Redis.
pub async fn redis() -> Backend {
    let server = RedisServer::start();
    Backend {
        broker: Arc::new(RedisBroker::connect(&server.url()).await.unwrap()),
        redis: Some(server),
        cluster: None,
    }
}

/// A broker on a private Redis Cluster (three masters, each with a replica).
pub async fn cluster() -> Backend {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    Backend {
        broker: Arc::new(RedisBroker::connect(&cluster.url()).await.unwrap()),
        redis: None,
        cluster: Some(cluster),
    }
}

/// Stores `bytes` as a module; returns its hash.
pub async fn upload_bytes(b: &dyn ApiBroker, bytes: &[u8]) -> ModuleHash {
    let hash = ModuleHash::of(bytes);
    b.put_module(hash, bytes).await.unwrap();
    hash
}

/// Stores sample job `name`; returns its hash.
pub async fn upload(b: &dyn ApiBroker, name: &str) -> ModuleHash {
    upload_bytes(b, &super::job(name)).await
}

/// A checked job of `module` with `id` and `args`, the rest of its invocation set by `f`.
pub fn job(module: ModuleHash, id: &str, args: Value, f: impl FnOnce(&mut Invocation)) -> NewJob {
    let mut inv = Invocation::new(module);
    inv.id = Some(id.to_owned());
    inv.args = args;
    f(&mut inv);
    inv.prepare(&Limits::default_ceilings()).unwrap()
}

/// Enqueues `jobs`, runs one worker with `config` until each is final (each waited for up to
/// `limit`), stops it, and returns their records and the worker's counts.
pub async fn run_until_final(
    b: &Arc<dyn ApiBroker>,
    config: WorkerConfig,
    jobs: &[NewJob],
    limit: Duration,
) -> (Vec<JobRecord>, WorkerStats) {
    super::enqueue(b.as_ref(), jobs).await.unwrap();
    let worker = Worker::new(b.clone(), super::sandbox().clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let mut records = Vec::new();
    for j in jobs {
        let r = b.wait_job(j.queue(), j.id(), limit).await.unwrap().unwrap();
        assert!(r.state.is_final(), "{} still {:?}", r.id, r.state);
        records.push(r);
    }
    let _ = stop.send(());
    (records, running.await.unwrap())
}

/// One test per backend for each `async fn name(b: Backend)` of the calling module:
/// `on_memory::name`, `on_redis::name` and `on_cluster::name`.
macro_rules! backend_suite {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::backend::memory().await).await } )*
        }
        mod on_redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::backend::redis().await).await } )*
        }
        mod on_cluster {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name($crate::common::backend::cluster().await).await } )*
        }
    };
}
pub(crate) use backend_suite;
