//! The `wasmq` binary against a private Redis or Redis Cluster: a [`Rig`] holds the Redis server and a directory
//! (artifact cache, files, logs), runs commands and starts worker processes, each a [`Process`]
//! that is killed when dropped.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};

use serde_json::{Value, json};
use wasmq::broker::redis::RedisBroker;

use super::cluster::RedisCluster;
use super::redis::RedisServer;
use super::{job_path, wasmq_cmd};

/// A test's Redis (or Redis Cluster), artifact cache and log directory.
pub struct Rig {
    /// The private Redis, or none on a cluster rig.
    redis: Option<RedisServer>,
    /// The private Redis Cluster of a cluster rig.
    cluster: Option<RedisCluster>,
    /// The artifact cache, and where files and logs go.
    pub dir: tempfile::TempDir,
}

/// A running `wasmq` process, killed when dropped.
pub struct Process(Option<Child>);

impl Process {
    /// The child, to signal or wait on.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// The most memory it has had resident (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kb << 10
    }

    /// Kills it now (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl From<Child> for Process {
    fn from(child: Child) -> Self {
        Process(Some(child))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Rig {
    /// A new Redis and directory.
    pub fn new() -> Self {
        Rig {
            redis: Some(RedisServer::start()),
            cluster: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A new Redis Cluster (three masters, each with a replica) and directory.
    pub fn on_cluster() -> Self {
        Rig {
            redis: None,
            cluster: Some(RedisCluster::start()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The single Redis of a rig made by [`Rig::new`].
    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("a single-Redis rig")
    }

    /// The single Redis, to stop and start.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        self.redis.as_mut().expect("a single-Redis rig")
    }

    /// The cluster of a rig made by [`Rig::on_cluster`].
    pub fn cluster(&self) -> &RedisCluster {
        self.cluster.as_ref().expect("a cluster rig")
    }

    /// The cluster, to stop and start its nodes.
    pub fn cluster_mut(&mut self) -> &mut RedisCluster {
        self.cluster.as_mut().expect("a cluster rig")
    }

    /// What `--redis` takes for this rig's Redis or cluster.
    pub fn url(&self) -> String {
        match (&self.redis, &self.cluster) {
            (Some(server), _) => server.url(),
            (_, Some(cluster)) => cluster.url(),
            _ => unreachable!("a rig has a Redis or a cluster"),
        }
    }

    /// Runs `wasmq ARGS` to completion.
    pub fn cmd(&self, args: &[&str]) -> Output {
        wasmq_cmd(&self.url(), self.dir.path())
            .args(args)
            .output()
            .expect("wasmq runs")
    }

    /// Runs `wasmq ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "wasmq {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Uploads a sample job; returns its `sha256:…`.
    pub fn upload(&self, name: &str) -> String {
        self.ok(&["upload", &job_path(name)]).trim().to_owned()
    }

    /// Enqueues `n` invocations through `wasmq enqueue --file` (one pipelined bulk call) and
    /// returns their ids `<tag>-<i>`; the command's success is the acknowledgement.
    pub fn enqueue_many(&self, n: usize, tag: &str, module: &str, args: Value) -> Vec<String> {
        self.enqueue_many_like(n, tag, json!({"module": module, "args": args}))
    }

    /// As [`Self::enqueue_many`], each job the invocation `fields` (a JSON object) with its id
    /// added.
    pub fn enqueue_many_like(&self, n: usize, tag: &str, fields: Value) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        let lines: String = ids
            .iter()
            .map(|id| {
                let mut line = fields.clone();
                line["id"] = json!(id);
                line.to_string() + "\n"
            })
            .collect();
        let file = self.dir.path().join(format!("{tag}.jsonl"));
        std::fs::write(&file, lines).unwrap();
        let out = self.ok(&["enqueue", "--file", file.to_str().unwrap()]);
        assert_eq!(out.lines().count(), n);
        ids
    }

    /// Starts `wasmq worker` with quick retries and maintenance passes (50 ms) and `extra` flags,
    /// logging at `info` to `<name>.log` in the rig's directory.
    pub fn worker(&self, name: &str, extra: &[&str]) -> Process {
        let log = File::create(self.log_path(name)).unwrap();
        let child = wasmq_cmd(&self.url(), self.dir.path())
            .args([
                "worker",
                "--backoff-base",
                "50ms",
                "--maintain-every",
                "50ms",
            ])
            .args(extra)
            .env("WASMQ_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the worker starts");
        Process(Some(child))
    }

    /// Where the process `name` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// What the process `name` has logged so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// A broker client on the rig's Redis.
    pub async fn broker(&self) -> RedisBroker {
        RedisBroker::connect(&self.url()).await.unwrap()
    }
}
