//! Fault injection against the real binary and a real Redis: each test breaks something — a worker
//! SIGKILLed mid-batch, Redis killed and restarted, every connection dropped under a worker — and
//! then counts that every accepted job still ended, exactly once in the results.

use crate::common;

use std::fs::File;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use serde_json::json;
use wasmq::broker::redis::RedisBroker;
use wasmq::broker::{ApiBroker, Broker, QueueCounts};
use wasmq::job::FailureKind;
use wasmq::job::JobState;

/// A test's Redis, artifact cache and log directory.
struct Rig {
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        Rig {
            redis: RedisServer::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        common::wasmq_cmd(&self.redis.url(), self.dir.path())
            .args(args)
            .output()
            .expect("wasmq runs")
    }

    fn upload(&self, name: &str) -> String {
        let out = self.cmd(&["upload", &common::job_path(name)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Enqueues `n` invocations through `wasmq enqueue --file` (one pipelined bulk call) and
    /// returns their ids; the command's success is the acknowledgement.
    fn enqueue(&self, n: usize, tag: &str, module: &str, args: serde_json::Value) -> Vec<String> {
        let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
        let lines: String = ids
            .iter()
            .map(|id| json!({"module": module, "id": id, "args": args}).to_string() + "\n")
            .collect();
        let file = self.dir.path().join(format!("{tag}.jsonl"));
        std::fs::write(&file, lines).unwrap();
        let out = self.cmd(&["enqueue", "--file", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), n);
        ids
    }

    /// Starts `wasmq worker` with a short lease, logging to `<name>.log`.
    fn worker(&self, name: &str, extra: &[&str]) -> Child {
        let log = File::create(self.log_path(name)).unwrap();
        common::wasmq_cmd(&self.redis.url(), self.dir.path())
            .args([
                "worker",
                "--concurrency",
                "32",
                "--lease",
                "2s",
                "--maintain-every",
                "200ms",
            ])
            .args(["--backoff-base", "50ms"])
            .args(extra)
            .env("WASMQ_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the worker starts")
    }

    fn log_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    async fn broker(&self) -> RedisBroker {
        RedisBroker::connect(&self.redis.url()).await.unwrap()
    }
}

async fn counts(b: &dyn ApiBroker) -> QueueCounts {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.queue == "default")
        .unwrap_or_default()
}

/// Waits until every id has succeeded; panics (with `log`) after `limit`.
async fn all_succeed(b: &dyn ApiBroker, ids: &[String], limit: Duration, log: impl Fn() -> String) {
    let deadline = Instant::now() + limit;
    for id in ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = b.wait_job("default", id, left).await.unwrap();
        let state = r.as_ref().map(|r| r.state);
        assert_eq!(
            state,
            Some(JobState::Succeeded),
            "job {id}: {r:?}\nworker log:\n{}",
            log()
        );
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_no_job() {
    let rig = Rig::new();
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue(600, "k", &chaos, json!({"mode": "sleep", "ms": 20}));
    let b = rig.broker().await;

    let doomed = rig.worker("doomed", &[]);
    // Kill it as soon as it holds a full set of leases.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let c = counts(&b).await;
        if c.leased >= 32 {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never fetched:\n{}",
            rig.log("doomed")
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    stop(doomed);
    let after_kill = counts(&b).await;
    let pending = after_kill.ready + after_kill.leased + after_kill.scheduled;
    assert!(
        pending >= 500,
        "only {pending} jobs were in flight or queued at the kill: {at_kill:?}"
    );
    let orphaned = after_kill.leased;
    assert!(orphaned > 0);

    let rescuer = rig.worker("rescuer", &[]);
    all_succeed(&b, &ids, Duration::from_secs(120), || rig.log("rescuer")).await;
    stop(rescuer);

    let end = counts(&b).await;
    assert_eq!(
        (end.ready, end.scheduled, end.leased, end.dead),
        (0, 0, 0, 0),
        "nothing left over"
    );
    // The orphaned leases expired and their jobs ran again: at-least-once, and nothing lost.
    let mut recovered = 0;
    for id in &ids {
        let r = b.job(Some("default"), id).await.unwrap().unwrap();
        if r.last_error
            .as_ref()
            .is_some_and(|e| e.kind == FailureKind::LeaseExpired)
        {
            assert_eq!(r.attempts, 2, "{id}");
            recovered += 1;
        }
    }
    assert_eq!(
        recovered, orphaned,
        "every job the dead worker held was recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enqueues_survive_a_redis_restart() {
    let mut rig = Rig::new();
    let hello = rig.upload("hello");
    let ids = rig.enqueue(300, "r", &hello, json!({"name": "durable"}));
    // SIGKILL: no shutdown save; only the append-only file can bring the jobs back.
    rig.redis.kill();
    rig.redis.restart();
    let b = rig.broker().await;
    assert_eq!(
        counts(&b).await.ready,
        300,
        "every acknowledged job is back"
    );
    assert!(
        b.has_module(hello.parse().unwrap()).await.unwrap(),
        "and so is the module"
    );
    let worker = rig.worker("after-restart", &[]);
    all_succeed(&b, &ids, Duration::from_secs(60), || {
        rig.log("after-restart")
    })
    .await;
    stop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_after_its_connections_are_killed() {
    let mut rig = Rig::new();
    let chaos = rig.upload("chaos");
    let b = rig.broker().await;
    let worker = rig.worker("reconnect", &[]);

    // While the worker is idle (blocked in BLPOP), and again while it is busy.
    let first = rig.enqueue(50, "a", &chaos, json!({"mode": "ok"}));
    all_succeed(&b, &first, Duration::from_secs(60), || rig.log("reconnect")).await;
    rig.redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    // 400 jobs of 50 ms at concurrency 32 keep the worker busy for well over a second.
    let second = rig.enqueue(400, "b", &chaos, json!({"mode": "sleep", "ms": 50}));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    }
    // And Redis itself going away and coming back under a busy worker.
    let busy = counts(&b).await;
    assert!(
        busy.ready + busy.leased > 0,
        "still working when Redis goes: {busy:?}"
    );
    rig.redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.redis.restart();
    let b = rig.broker().await;
    all_succeed(&b, &second, Duration::from_secs(90), || {
        rig.log("reconnect")
    })
    .await;
    assert!(!worker_exited(&mut rig, worker), "the worker kept running");
}

fn worker_exited(rig: &mut Rig, mut worker: Child) -> bool {
    let exited = worker.try_wait().unwrap().is_some();
    if exited {
        eprintln!("{}", rig.log("reconnect"));
    }
    stop(worker);
    exited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish() {
    let rig = Rig::new();
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue(4, "t", &chaos, json!({"mode": "sleep", "ms": 1500}));
    let b = rig.broker().await;
    let mut worker = rig.worker("term", &["--grace", "20s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&b).await.leased < 4 {
        assert!(Instant::now() < deadline, "{}", rig.log("term"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", rig.log("term"));
    for id in &ids {
        let r = b.job(Some("default"), id).await.unwrap().unwrap();
        assert_eq!(
            r.state,
            JobState::Succeeded,
            "{id} finished before the worker exited"
        );
    }
    assert!(rig.log("term").contains("draining"), "{}", rig.log("term"));
}
