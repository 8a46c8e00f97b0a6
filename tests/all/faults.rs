//! Fault injection against the real binary and a real Redis: each test breaks something — a worker
//! SIGKILLed mid-batch, Redis killed and restarted, every connection dropped under a worker — and
//! then counts that every accepted job still ended, exactly once in the results.

use crate::common;

use std::time::{Duration, Instant};

use common::rig::{Process, Rig};
use serde_json::json;
use wasmq::broker::conformance::counts;
use wasmq::broker::{ApiBroker, Broker};
use wasmq::job::FailureKind;
use wasmq::job::JobState;

/// Workers here hold 32 jobs at once on a 2 s lease, so that a killed one leaves many orphans
/// and they come back quickly.
const WORKER: &[&str] = &["--concurrency", "32", "--lease", "2s"];

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_no_job() {
    a_sigkilled_worker_loses_no_job_on(Rig::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_loses_no_job_on_a_cluster() {
    let rig = tokio::task::spawn_blocking(Rig::on_cluster).await.unwrap();
    a_sigkilled_worker_loses_no_job_on(rig).await
}

async fn a_sigkilled_worker_loses_no_job_on(rig: Rig) {
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue_many(600, "k", &chaos, json!({"mode": "sleep", "ms": 20}));
    let b = rig.broker().await;

    let doomed = rig.worker("doomed", WORKER);
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
    doomed.kill();
    let after_kill = counts(&b).await;
    let pending = after_kill.ready + after_kill.leased + after_kill.scheduled;
    assert!(
        pending >= 500,
        "only {pending} jobs were in flight or queued at the kill: {at_kill:?}"
    );
    let orphaned = after_kill.leased;
    assert!(orphaned > 0);

    let rescuer = rig.worker("rescuer", WORKER);
    all_succeed(&b, &ids, Duration::from_secs(120), || rig.log("rescuer")).await;
    rescuer.kill();

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

/// The counts of `queue`.
async fn counts_of(b: &dyn ApiBroker, queue: &str) -> wasmq::broker::QueueCounts {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.queue == queue)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_worker_dies_while_it_waits_re_attaches_to_its_children() {
    let rig = Rig::new();
    let counter = rig.upload("word-count");
    let map_reduce = rig.upload("map-reduce");
    let b = rig.broker().await;
    // Parents on one queue and worker, children on another: killing the parent's worker leaves
    // the children running, so each must run exactly once.
    let text: String = (0..500).map(|i| format!("w{} ", i % 25)).collect();
    let parent = json!({"module": map_reduce, "id": "p", "queue": "parents", "timeout_ms": 600_000,
        "args": {"text": text, "chunks": 50, "counter": counter, "queue": "counts", "pause_ms": 3000}});
    let file = rig.dir.path().join("parent.json");
    std::fs::write(&file, parent.to_string()).unwrap();
    rig.ok(&["enqueue", "--file", file.to_str().unwrap()]);

    let doomed = rig.worker("doomed", &["--queues", "parents", "--lease", "2s"]);
    let children = rig.worker("children", &["--queues", "counts", "--concurrency", "50"]);
    // Kill the parent's worker once all 50 children were enqueued and taken (each runs for
    // 3 s, so they are running then — or, on a machine slow enough, some have ended, which the
    // parent must handle alike).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let c = counts_of(&b, "counts").await;
        if c.totals.enqueued == 50 && c.ready == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the children never all ran:\n{}\n{}",
            rig.log("doomed"),
            rig.log("children")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill();
    let rescuer = rig.worker("rescuer", &["--queues", "parents", "--lease", "2s"]);
    let r = b
        .wait_job("parents", "p", Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    rescuer.kill();
    children.kill();

    assert_eq!(
        r.state,
        JobState::Succeeded,
        "{:?}\n{}",
        r.last_error,
        rig.log("rescuer")
    );
    assert_eq!(r.attempts, 2, "the parent ran again after its worker died");
    assert_eq!(r.last_error.unwrap().kind, FailureKind::LeaseExpired);
    let counts = r.report.unwrap().result.unwrap()["counts"].clone();
    let expected: serde_json::Map<String, serde_json::Value> =
        (0..25).map(|i| (format!("w{i}"), json!(20))).collect();
    assert_eq!(
        counts,
        serde_json::Value::Object(expected),
        "merged exactly"
    );
    // Exactly the 50 children, each run once.
    let c = counts_of(&b, "counts").await;
    assert_eq!(
        (c.totals.succeeded, c.ready, c.scheduled, c.leased, c.dead),
        (50, 0, 0, 0, 0),
        "{c:?}"
    );
    for i in 0..50 {
        let child = b
            .job(Some("counts"), &format!("p.chunk-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (child.state, child.attempts),
            (JobState::Succeeded, 1),
            "chunk {i}"
        );
    }
}

/// A Redis stall under a busy worker: `n` one-attempt `chaos` jobs sleeping `ms` each, run by a
/// worker on `--lease lease`; once `busy` holds of the queue's counts (`what` says what it
/// waits for), Redis pauses every client for `pause_ms`. Every job must then succeed, having run
/// once: a job leased to nobody, or taken back from its running worker, would end dead as
/// `lease_expired`.
async fn one_attempt_jobs_survive_a_stall(
    n: usize,
    ms: u64,
    lease: &str,
    busy: impl Fn(&wasmq::broker::QueueCounts) -> bool,
    what: &str,
    pause_ms: &str,
) {
    let rig = Rig::new();
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue_many_like(
        n,
        "s",
        json!({"module": chaos, "max_attempts": 1, "args": {"mode": "sleep", "ms": ms}}),
    );
    let b = rig.broker().await;
    let worker = rig.worker("w", &["--concurrency", "64", "--lease", lease]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !busy(&counts(&b).await) {
        assert!(Instant::now() < deadline, "{what}:\n{}", rig.log("w"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.redis().cmd(&["CLIENT", "PAUSE", pause_ms, "ALL"]);
    all_succeed(&b, &ids, Duration::from_secs(600), || rig.log("w")).await;
    worker.kill();
    for id in &ids {
        let r = b.job(Some("default"), id).await.unwrap().unwrap();
        assert_eq!(r.attempts, 1, "{id} ran more than once");
    }
}

/// Redis stalled while the worker is busy fetching: its fetch times out on the client (10 s)
/// and is sent again; both run when Redis wakes, and the second gets the first one's leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_loses_no_job_to_a_resent_fetch() {
    one_attempt_jobs_survive_a_stall(
        400,
        5,
        "30s",
        |c| c.totals.succeeded >= 20,
        "no progress",
        "15000",
    )
    .await;
}

/// A Redis stall longer than the lease: when Redis wakes, the worker's own recovery pass must
/// not take back the leases of jobs it is still running (their heartbeats were held up by the
/// same stall).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_keeps_its_leases_through_its_own_recovery_pass() {
    // Every job leased and running (6 s each), then Redis stalls for longer than the 2 s lease.
    one_attempt_jobs_survive_a_stall(64, 6000, "2s", |c| c.leased >= 64, "not all leased", "5000")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enqueues_survive_a_redis_restart() {
    let mut rig = Rig::new();
    let hello = rig.upload("hello");
    let ids = rig.enqueue_many(300, "r", &hello, json!({"name": "durable"}));
    // SIGKILL: no shutdown save; only the append-only file can bring the jobs back.
    rig.redis_mut().kill();
    rig.redis_mut().restart();
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
    let worker = rig.worker("after-restart", WORKER);
    all_succeed(&b, &ids, Duration::from_secs(60), || {
        rig.log("after-restart")
    })
    .await;
    worker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_after_its_connections_are_killed() {
    let mut rig = Rig::new();
    let chaos = rig.upload("chaos");
    let b = rig.broker().await;
    let worker = rig.worker("reconnect", WORKER);

    // While the worker is idle (blocked in BLPOP), and again while it is busy.
    let first = rig.enqueue_many(50, "a", &chaos, json!({"mode": "ok"}));
    all_succeed(&b, &first, Duration::from_secs(60), || rig.log("reconnect")).await;
    rig.redis().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    // 400 jobs of 50 ms at concurrency 32 keep the worker busy for well over a second.
    let second = rig.enqueue_many(400, "b", &chaos, json!({"mode": "sleep", "ms": 50}));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rig.redis().cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    }
    // And Redis itself going away and coming back under a busy worker.
    let busy = counts(&b).await;
    assert!(
        busy.ready + busy.leased > 0,
        "still working when Redis goes: {busy:?}"
    );
    rig.redis_mut().kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.redis_mut().restart();
    let b = rig.broker().await;
    all_succeed(&b, &second, Duration::from_secs(90), || {
        rig.log("reconnect")
    })
    .await;
    assert!(!worker_exited(&mut rig, worker), "the worker kept running");
}

fn worker_exited(rig: &mut Rig, mut worker: Process) -> bool {
    let exited = worker.child().try_wait().unwrap().is_some();
    if exited {
        eprintln!("{}", rig.log("reconnect"));
    }
    exited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish() {
    let rig = Rig::new();
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue_many(4, "t", &chaos, json!({"mode": "sleep", "ms": 1500}));
    let b = rig.broker().await;
    let mut worker = rig.worker("term", &[WORKER, &["--grace", "20s"]].concat());
    let deadline = Instant::now() + Duration::from_secs(60);
    while counts(&b).await.leased < 4 {
        assert!(Instant::now() < deadline, "{}", rig.log("term"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.child().id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = worker.child().wait().unwrap();
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

/// Every slot of a worker running a CPU-bound guest: 200 at once on a 5 s lease, each spinning
/// for about 80 ms of CPU (735 M fuel, under the default budget), so all of them are leased for several lease periods
/// while two cores share them. Heartbeats run apart from the guests, so no lease expires: every
/// job ran once, and no failure is `lease_expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_hold_while_every_slot_spins() {
    let rig = Rig::new();
    let chaos = rig.upload("chaos");
    let ids = rig.enqueue_many(
        200,
        "spin",
        &chaos,
        json!({"mode": "spin", "iterations": 60_000_000u64}),
    );
    let b = rig.broker().await;
    let started = Instant::now();
    let _worker = rig.worker(
        "spin",
        &[
            "--concurrency",
            "200",
            "--lease",
            "5s",
            "--max-timeout",
            "15m",
        ],
    );
    all_succeed(&b, &ids, Duration::from_secs(600), || rig.log("spin")).await;
    let mut expired = Vec::new();
    for id in &ids {
        let r = b.job(Some("default"), id).await.unwrap().unwrap();
        if r.attempts != 1 || r.errors.iter().any(|e| e.kind == FailureKind::LeaseExpired) {
            expired.push((id.clone(), r.attempts, r.errors));
        }
    }
    println!(
        "200 spinning jobs on a 5 s lease ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(expired.is_empty(), "leases lost: {expired:?}");
}
