//! The worker end to end with the real sample jobs, on the in-memory broker and on a real Redis:
//! retries with backoff, the dead set, fan-out, the worker's own ceilings, graceful shutdown.

use crate::common;
use crate::common::backend::{Backend, backend_suite, job, memory, redis, upload};

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wasmq::broker::{ApiBroker, JobRecord};
use wasmq::invocation::{Invocation, NewJob};
use wasmq::job::FailureKind;
use wasmq::job::JobState;
use wasmq::job::Limits;
use wasmq::worker::{Backoff, FanOut, Worker, WorkerConfig, WorkerStats};
/// Fast retries and maintenance, so tests take milliseconds, not minutes.
fn config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        maintain_every: Duration::from_millis(20),
        ..WorkerConfig::default()
    }
}

/// Runs a worker until every job in `jobs` is final (or 60 s pass), then stops it.
async fn run_until_final(
    b: &Arc<dyn ApiBroker>,
    config: WorkerConfig,
    jobs: &[NewJob],
) -> (Vec<JobRecord>, WorkerStats) {
    common::backend::run_until_final(b, config, jobs, Duration::from_secs(60)).await
}

async fn flaky_jobs_succeed_on_a_later_attempt(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let flaky = job(
        chaos,
        "flaky",
        json!({"mode": "flaky", "failures": 2}),
        |i| i.max_attempts = 3,
    );
    let (records, stats) = run_until_final(&b.broker, config(), &[flaky]).await;
    let r = &records[0];
    assert_eq!(r.state, JobState::Succeeded);
    assert_eq!(r.attempts, 3);
    assert_eq!(
        r.report.as_ref().unwrap().result,
        Some(json!({"succeeded_on_attempt": 3}))
    );
    assert_eq!(
        r.last_error.as_ref().unwrap().kind,
        FailureKind::Retry,
        "the earlier failure is kept"
    );
    assert_eq!((stats.retried, stats.succeeded, stats.dead), (2, 1, 0));
}

async fn always_failing_jobs_die_with_their_last_error(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let jobs = [
        job(
            chaos,
            "retry",
            json!({"mode": "retry", "message": "upstream 503"}),
            |i| i.max_attempts = 4,
        ),
        job(chaos, "fuel", json!({"mode": "spin"}), |i| {
            i.max_attempts = 2;
            i.fuel = 5_000_000;
        }),
        job(
            chaos,
            "fail",
            json!({"mode": "fail", "message": "bad input"}),
            |i| i.max_attempts = 5,
        ),
    ];
    let (records, _) = run_until_final(&b.broker, config(), &jobs).await;
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            let e = r.last_error.as_ref().unwrap();
            (r.state, r.attempts, e.kind.as_str(), e.attempt)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (JobState::Dead, 4, "retry", 4),
            (JobState::Dead, 2, "out_of_fuel", 2),
            (JobState::Dead, 1, "fail", 1),
        ],
        "`fail` is never retried"
    );
    assert!(
        records[0]
            .last_error
            .as_ref()
            .unwrap()
            .message
            .contains("upstream 503")
    );
    let dead = b.broker.dead("default", 10).await.unwrap();
    assert_eq!(dead.len(), 3);
}

async fn fan_out_enqueues_real_sub_jobs(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    let fanout = upload(b.broker.as_ref(), "fanout").await;
    let parent = job(
        fanout,
        "parent",
        json!({"module": hello, "count": 3, "args": {"name": "kid"}}),
        |_| {},
    );
    let (records, _) = run_until_final(&b.broker, config(), &[parent]).await;
    let report = records[0].report.clone().unwrap();
    assert_eq!(report.sub_jobs, ["parent.1", "parent.2", "parent.3"]);
    // The sub-jobs ran (the worker ran until the parent ended; they may still be finishing).
    let worker = Worker::new(b.broker.clone(), common::sandbox().clone(), config());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    for id in &report.sub_jobs {
        let r = b
            .broker
            .wait_job("default", id, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, JobState::Succeeded, "{id}");
        assert_eq!(r.invocation.module, hello);
        assert_eq!(r.invocation.args["name"], "kid");
    }
    let _ = stop.send(());
    running.await.unwrap();
}

async fn a_retried_parent_does_not_duplicate_sub_jobs(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    // Attempts 1 and 2 enqueue a sub-job and then fail; attempt 3 enqueues it and succeeds.
    let parent = job(
        chaos,
        "p",
        json!({"mode": "enqueue", "module": hello, "args": {"name": "once"}, "retry_attempts": 2}),
        |_| {},
    );
    let (records, _) = run_until_final(&b.broker, config(), &[parent]).await;
    assert_eq!(
        (records[0].state, records[0].attempts),
        (JobState::Succeeded, 3)
    );
    assert_eq!(
        records[0].report.as_ref().unwrap().result,
        Some(json!({"enqueued": "p.1"})),
        "every attempt got the same sub-job id"
    );
    let counts = b.broker.queues().await.unwrap();
    let total: u64 = counts
        .iter()
        .map(|c| c.ready + c.scheduled + c.leased + c.dead)
        .sum();
    let sub = b.broker.job(None, "p.1").await.unwrap().unwrap();
    assert!(
        total == 0 && sub.state == JobState::Succeeded
            || total == 1 && sub.state == JobState::Ready,
        "exactly one sub-job: {counts:?}, {:?}",
        sub.state
    );
    assert!(b.broker.job(None, "p.2").await.unwrap().is_none());
}

async fn the_worker_enforces_its_own_ceilings(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    // Accepted by an enqueuer with the default ceilings, above this worker's.
    let big = job(hello, "big", json!({"name": "x"}), |i| i.memory_mb = 512);
    common::enqueue(b.broker.as_ref(), &[big]).await.unwrap();
    let strict = wasmq::sandbox::Sandbox::new(wasmq::sandbox::SandboxConfig {
        ceilings: Limits {
            memory_bytes: 128 << 20,
            ..Limits::default_ceilings()
        },
        ..Default::default()
    })
    .unwrap();
    let worker = Worker::new(b.broker.clone(), strict, config());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let r = b
        .broker
        .wait_job("default", "big", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let _ = stop.send(());
    running.await.unwrap();
    assert_eq!(r.state, JobState::Dead);
    assert_eq!(r.attempts, 1, "a limit no retry can fix is not retried");
    let e = r.last_error.unwrap();
    assert_eq!(e.kind, FailureKind::Limits);
    assert!(e.message.contains("`memory_mb` is 512"), "{}", e.message);
}

async fn shutdown_finishes_short_jobs_and_hands_back_long_ones(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let jobs = [
        job(chaos, "short", json!({"mode": "sleep", "ms": 300}), |_| {}),
        job(
            chaos,
            "long",
            json!({"mode": "sleep", "ms": 20_000}),
            |_| {},
        ),
    ];
    common::enqueue(b.broker.as_ref(), &jobs).await.unwrap();
    let worker = Worker::new(
        b.broker.clone(),
        common::sandbox().clone(),
        WorkerConfig {
            grace: Duration::from_secs(2),
            ..config()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    // Both running, then the signal.
    for _ in 0..200 {
        let q = b.broker.queues().await.unwrap();
        if q.iter().map(|q| q.leased).sum::<u64>() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    let stats = running.await.unwrap();
    assert_eq!((stats.succeeded, stats.released), (1, 1));
    let short = b.broker.job(None, "short").await.unwrap().unwrap();
    assert_eq!(
        short.state,
        JobState::Succeeded,
        "finished within the grace period"
    );
    let long = b.broker.job(None, "long").await.unwrap().unwrap();
    assert_eq!(long.state, JobState::Ready, "handed back, not lost");
    assert_eq!(
        long.attempts, 0,
        "and the interrupted attempt is not counted"
    );
}

async fn heartbeats_keep_a_long_job_from_running_twice(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    // The job outlives its lease three times over; heartbeats (every lease/3) keep it.
    let long = job(chaos, "long", json!({"mode": "sleep", "ms": 1800}), |_| {});
    let config = WorkerConfig {
        lease: Duration::from_millis(600),
        ..config()
    };
    let (records, stats) = run_until_final(&b.broker, config, &[long]).await;
    assert_eq!(records[0].state, JobState::Succeeded);
    assert_eq!(
        records[0].attempts, 1,
        "never recovered while its worker was alive"
    );
    assert!(records[0].last_error.is_none());
    assert_eq!((stats.fetched, stats.stale), (1, 0));
}

async fn waiting_and_spinning_guests_do_not_hold_up_the_rest(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let hello = upload(b.broker.as_ref(), "hello").await;
    // One guest that spins until its 3 s deadline, eight that sleep in a host call, and quick
    // ones — on a runtime with a single thread (see the test attribute).
    let mut jobs = vec![job(chaos, "spin", json!({"mode": "spin"}), |i| {
        i.fuel = 100_000_000_000;
        i.timeout_ms = 3000;
        i.max_attempts = 1;
    })];
    for n in 0..8 {
        jobs.push(job(
            chaos,
            &format!("sleep-{n}"),
            json!({"mode": "sleep", "ms": 400}),
            |_| {},
        ));
    }
    for n in 0..8 {
        jobs.push(job(
            hello,
            &format!("quick-{n}"),
            json!({"name": n.to_string()}),
            |_| {},
        ));
    }
    let config = WorkerConfig {
        concurrency: 32,
        ..config()
    };
    let (records, _) = run_until_final(&b.broker, config, &jobs).await;
    let spin = &records[0];
    assert_eq!(spin.last_error.as_ref().unwrap().kind, FailureKind::Timeout);
    let spin_end = spin.finished_at_ms.unwrap();
    for r in &records[1..] {
        assert_eq!(r.state, JobState::Succeeded, "{}: {:?}", r.id, r.last_error);
        assert!(
            r.finished_at_ms.unwrap() < spin_end,
            "{} finished while the spinning guest was still running",
            r.id
        );
    }
    // The sleepers overlapped: every one started before any finished.
    let sleepers = &records[1..9];
    let last_start = sleepers
        .iter()
        .map(|r| r.started_at_ms.unwrap())
        .max()
        .unwrap();
    let first_end = sleepers
        .iter()
        .map(|r| r.finished_at_ms.unwrap())
        .min()
        .unwrap();
    assert!(last_start <= first_end, "sleeping guests held the thread");
}

async fn a_running_job_can_be_cancelled(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let long = job(
        chaos,
        "long",
        json!({"mode": "sleep", "ms": 20_000}),
        |_| {},
    );
    common::enqueue(b.broker.as_ref(), &[long]).await.unwrap();
    let worker = Worker::new(
        b.broker.clone(),
        common::sandbox().clone(),
        WorkerConfig {
            lease: Duration::from_millis(600),
            ..config()
        },
    );
    let counters = worker.counters();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    while b.broker.job(None, "long").await.unwrap().unwrap().state != JobState::Leased {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = b.broker.cancel("default", "long").await.unwrap();
    assert_eq!(outcome, wasmq::broker::CancelOutcome::Cancelling);
    let r = b
        .broker
        .wait_job("default", "long", Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.state,
        JobState::Cancelled,
        "stopped long before its 20 s sleep ended"
    );
    assert_eq!(r.attempts, 1, "and not retried");
    assert_eq!(r.last_error.unwrap().kind, FailureKind::Cancelled);
    let _ = stop.send(());
    let stats = running.await.unwrap();
    assert_eq!((stats.cancelled, stats.succeeded), (1, 0));
    assert_eq!(counters.snapshot().cancelled, 1);
}

/// Three workers (each with its own broker connection on Redis) run one every-second schedule:
/// every tick in the window produces exactly one job — none missing, none doubled.
async fn a_cron_tick_enqueues_exactly_one_job_across_workers(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    let mut inv = Invocation::new(hello);
    inv.args = json!({"name": "cron"});
    let entry = wasmq::scheduler::add_cron(
        &wasmq::intake::Intake::default(),
        b.broker.as_ref(),
        "every",
        "* * * * * *",
        inv,
    )
    .await
    .unwrap();
    let first = entry.next_ms;
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for _ in 0..3 {
        let broker = b.another_connection().await;
        let worker = Worker::new(
            broker,
            common::sandbox().clone(),
            WorkerConfig {
                maintain_every: Duration::from_millis(50),
                ..config()
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        running.push(tokio::spawn(worker.run(async {
            let _ = stopped.await;
        })));
    }
    tokio::time::sleep(Duration::from_millis(3600)).await;
    for stop in stops {
        let _ = stop.send(());
    }
    for r in running {
        r.await.unwrap();
    }
    let last = b.broker.crons(None).await.unwrap()[0].next_ms;
    let ticks: Vec<u64> = (first..last).step_by(1000).collect();
    assert!(ticks.len() >= 3, "{} ticks in 3.6 s", ticks.len());
    for tick in &ticks {
        let id = format!("cron:every:{tick}");
        let r = b.broker.job(None, &id).await.unwrap();
        assert!(r.is_some(), "tick {tick} has no job");
    }
    let totals = b.broker.queues().await.unwrap()[0].totals.clone();
    assert_eq!(
        totals.enqueued,
        ticks.len() as u64,
        "one job per tick, no more"
    );
}

/// With no worker running, ticks pass unfired; the first worker back enqueues one job for them.
async fn missed_cron_ticks_are_coalesced(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    let entry = wasmq::scheduler::add_cron(
        &wasmq::intake::Intake::default(),
        b.broker.as_ref(),
        "m",
        "* * * * * *",
        Invocation::new(hello),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let back = wasmq::time::now_ms();
    let fired = wasmq::scheduler::fire_due_crons(
        &wasmq::intake::Intake::default(),
        b.broker.as_ref(),
        "default",
    )
    .await
    .unwrap();
    assert_eq!(fired, 1, "one job for the missed ticks");
    assert!(
        b.broker
            .job(None, &format!("cron:m:{}", entry.next_ms))
            .await
            .unwrap()
            .is_some()
    );
    let next = b.broker.crons(None).await.unwrap()[0].next_ms;
    assert!(next > back, "the schedule continues from the present");
    assert_eq!(b.broker.queues().await.unwrap()[0].totals.enqueued, 1);
    // Firing again finds no missed tick. On a loaded machine a second may pass before it runs,
    // so the present tick may have come due: then that one fires, and only that one.
    let again = wasmq::scheduler::fire_due_crons(
        &wasmq::intake::Intake::default(),
        b.broker.as_ref(),
        "default",
    )
    .await
    .unwrap();
    assert!(again <= 1, "{again} jobs fired for one present tick");
    if again == 1 {
        assert!(
            b.broker
                .job(None, &format!("cron:m:{next}"))
                .await
                .unwrap()
                .is_some(),
            "the job fired is not the present tick's"
        );
    }
}

/// A guest's progress reports are visible in its record while it runs.
async fn progress_is_visible_while_a_job_runs(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let job = job(
        chaos,
        "slow",
        json!({"mode": "steps", "steps": 5, "ms": 300}),
        |_| {},
    );
    common::enqueue(b.broker.as_ref(), &[job]).await.unwrap();
    let worker = Worker::new(b.broker.clone(), common::sandbox().clone(), config());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let mut seen_while_running = Vec::new();
    loop {
        let r = b.broker.job(None, "slow").await.unwrap().unwrap();
        if r.state.is_final() {
            assert_eq!(r.state, JobState::Succeeded);
            let last = r.report.unwrap().progress.unwrap();
            assert_eq!(
                (last.percent, last.note.as_deref()),
                (100, Some("step 5 of 5"))
            );
            break;
        }
        if r.state == JobState::Leased
            && let Some(p) = r.progress
            && !seen_while_running.contains(&p.percent)
        {
            seen_while_running.push(p.percent);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
    assert!(
        seen_while_running.iter().filter(|p| **p < 100).count() >= 2,
        "saw {seen_while_running:?} while it ran"
    );
}

/// A running worker is listed with what it holds; one that stopped is not.
async fn workers_are_listed_while_they_run(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let slow = job(chaos, "slow", json!({"mode": "sleep", "ms": 1500}), |_| {});
    common::enqueue(b.broker.as_ref(), &[slow]).await.unwrap();
    let config = WorkerConfig {
        lease: Duration::from_millis(600),
        ..config()
    };
    let name = config.name.clone();
    let worker = Worker::new(b.broker.clone(), common::sandbox().clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let mut saw_busy = false;
    for _ in 0..100 {
        let workers = b.broker.workers().await.unwrap();
        assert!(workers.len() <= 1);
        if let Some(w) = workers.first()
            && w.in_flight == 1
        {
            assert_eq!(
                (w.name.as_str(), w.pid),
                (name.as_str(), std::process::id())
            );
            saw_busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_busy, "the report shows the job in flight");
    let _ = stop.send(());
    running.await.unwrap();
    assert!(
        b.broker.workers().await.unwrap().is_empty(),
        "gone after a clean stop"
    );
}

async fn precompile_loads_every_module_before_any_job_needs_it(b: Backend) {
    let hashes = [
        upload(b.broker.as_ref(), "hello").await,
        upload(b.broker.as_ref(), "markdown").await,
    ];
    for precompile in [false, true] {
        // A sandbox of its own: nothing loaded yet.
        let sandbox =
            wasmq::sandbox::Sandbox::new(wasmq::sandbox::SandboxConfig::default()).unwrap();
        let worker = Worker::new(
            b.broker.clone(),
            sandbox.clone(),
            WorkerConfig {
                precompile,
                ..config()
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        let loaded = || hashes.iter().all(|h| sandbox.is_loaded(*h));
        // Loading takes well under 30 s; without precompile, one second shows that none starts.
        let wait = Duration::from_secs(if precompile { 30 } else { 1 });
        let deadline = tokio::time::Instant::now() + wait;
        while !loaded() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(loaded(), precompile, "precompile = {precompile}");
        assert!(
            hashes.iter().all(|h| sandbox.is_loaded(*h) == precompile),
            "all or none"
        );
        let _ = stop.send(());
        running.await.unwrap();
    }
}

/// Runs `jobs` with `n` workers (separate connections on Redis) until all are final.
async fn run_with_workers(b: &Backend, n: usize, jobs: &[NewJob]) -> Vec<JobRecord> {
    common::enqueue(b.broker.as_ref(), jobs).await.unwrap();
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for _ in 0..n {
        let worker = Worker::new(
            b.another_connection().await,
            common::sandbox().clone(),
            config(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        running.push(tokio::spawn(worker.run(async {
            let _ = stopped.await;
        })));
    }
    let mut records = Vec::new();
    for j in jobs {
        let r = b
            .broker
            .wait_job(j.queue(), j.id(), Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.state, JobState::Succeeded, "{}", r.id);
        records.push(r);
    }
    for stop in stops {
        let _ = stop.send(());
    }
    for r in running {
        r.await.unwrap();
    }
    records
}

/// Three workers, 12 slots between them, a queue limited to 2 at once: never more than 2 ran.
async fn a_concurrency_limit_holds_across_workers(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let limits = wasmq::broker::QueueLimits {
        concurrency: Some(2),
        ..Default::default()
    };
    b.broker.set_limits("default", &limits).await.unwrap();
    let jobs: Vec<NewJob> = (0..8)
        .map(|i| {
            job(
                chaos,
                &format!("c{i}"),
                json!({"mode": "sleep", "ms": 250}),
                |_| {},
            )
        })
        .collect();
    let records = run_with_workers(&b, 3, &jobs).await;
    let mut events: Vec<(u64, i32)> = records
        .iter()
        .flat_map(|r| {
            [
                (r.started_at_ms.unwrap(), 1),
                (r.finished_at_ms.unwrap(), -1),
            ]
        })
        .collect();
    events.sort(); // an end (-1) sorts before a start (+1) at the same millisecond
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2, "at most two at once, and the limit was used");
    let counts = b.broker.queues().await.unwrap();
    assert_eq!(counts[0].limits, limits);
}

/// Two workers, a queue limited to 4 starts per second: no second window saw more than 4.
async fn a_rate_limit_holds_across_workers(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    let limits = wasmq::broker::QueueLimits {
        rate: Some((4, 1000)),
        ..Default::default()
    };
    b.broker.set_limits("default", &limits).await.unwrap();
    let jobs: Vec<NewJob> = (0..10)
        .map(|i| job(hello, &format!("r{i}"), json!({"name": "r"}), |_| {}))
        .collect();
    let records = run_with_workers(&b, 2, &jobs).await;
    let mut per_window = std::collections::BTreeMap::new();
    for r in &records {
        *per_window
            .entry(r.started_at_ms.unwrap() / 1000)
            .or_insert(0) += 1;
    }
    assert!(per_window.values().all(|n| *n <= 4), "{per_window:?}");
    assert!(
        per_window.len() >= 3,
        "10 jobs at 4 per second take three windows: {per_window:?}"
    );
}

/// Waits (60 s at most) until job `id` exists and is final.
async fn final_record(b: &dyn ApiBroker, id: &str) -> JobRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = b
            .wait_job("default", id, Duration::from_secs(1))
            .await
            .unwrap()
            && r.state.is_final()
        {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Past the operator's sub-jobs per run, the guest's `enqueue` gets an error naming the limit
/// (the fan-out job treats it as a failure) and no further sub-job exists.
async fn sub_jobs_per_run_are_bounded(b: Backend) {
    let hello = upload(b.broker.as_ref(), "hello").await;
    let fanout = upload(b.broker.as_ref(), "fanout").await;
    let parent = job(
        fanout,
        "wide",
        json!({"module": hello, "count": 5, "args": {"name": "kid"}}),
        |i| i.max_attempts = 1,
    );
    let config = WorkerConfig {
        fan_out: FanOut {
            per_run: 3,
            depth: 8,
        },
        ..config()
    };
    let (records, _) = run_until_final(&b.broker, config, &[parent]).await;
    let r = &records[0];
    assert_eq!(r.state, JobState::Dead);
    let error = r.last_error.as_ref().unwrap();
    assert!(
        error
            .message
            .contains("sub-job 3 was not enqueued: sub-job refused: this run has enqueued 3, the most one run may (--max-sub-jobs)"),
        "{}",
        error.message
    );
    assert_eq!(
        r.report.as_ref().unwrap().sub_jobs,
        ["wide.1", "wide.2", "wide.3"]
    );
    assert!(b.broker.job(None, "wide.4").await.unwrap().is_none());
    let totals = b.broker.queues().await.unwrap()[0].totals.clone();
    assert_eq!(totals.enqueued, 4, "the parent and three sub-jobs, no more");
}

/// A job that enqueues copies of itself stops at the operator's depth: every generation up to
/// the limit runs, the last one's enqueue is refused, and nothing else was ever enqueued.
async fn a_self_enqueuing_job_stops_at_the_depth_limit(b: Backend) {
    let fanout = upload(b.broker.as_ref(), "fanout").await;
    // Args that would go on for 20 generations: each level enqueues one copy with the next.
    let mut args = json!({"module": fanout, "count": 1, "args": "end"});
    for _ in 0..20 {
        args = json!({"module": fanout, "count": 1, "args": args});
    }
    let root = job(fanout, "loop", args, |i| i.max_attempts = 1);
    let config = WorkerConfig {
        fan_out: FanOut {
            per_run: 10,
            depth: 3,
        },
        ..config()
    };
    common::enqueue(b.broker.as_ref(), &[root]).await.unwrap();
    let worker = Worker::new(b.broker.clone(), common::sandbox().clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let mut id = "loop".to_owned();
    for depth in 0..=3u32 {
        let r = final_record(b.broker.as_ref(), &id).await;
        assert_eq!(r.invocation.depth, depth, "{id}");
        if depth < 3 {
            assert_eq!(r.state, JobState::Succeeded, "{id}: {:?}", r.last_error);
        } else {
            assert_eq!(r.state, JobState::Dead, "{id}");
            let message = &r.last_error.as_ref().unwrap().message;
            assert!(
                message.contains("4 generations below the job a client enqueued, past the limit of 3 (--max-depth)"),
                "{message}"
            );
        }
        id.push_str(".1");
    }
    let _ = stop.send(());
    running.await.unwrap();
    assert!(b.broker.job(None, &id).await.unwrap().is_none(), "{id}");
    let totals = b.broker.queues().await.unwrap()[0].totals.clone();
    assert_eq!(
        totals.enqueued, 4,
        "four generations, every one accounted for"
    );
}

/// What a guest chooses the size of is cut or refused before it is stored: a result over the
/// limit fails the job (`result_too_large`, nothing of it kept), error messages are cut and
/// flagged in the last error and in the history, and sub-job args over the args limit are
/// refused. On Redis, the store grows by no more than the caps allow.
async fn sizes_a_guest_chooses_are_bounded_before_they_are_stored(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let before = b.stored_bytes();
    let sizes = wasmq::job::Sizes::default();
    let jobs = [
        job(
            chaos,
            "fits",
            json!({"mode": "big", "bytes": sizes.result_bytes}),
            |_| {},
        ),
        job(
            chaos,
            "huge",
            json!({"mode": "big", "bytes": 8 << 20}),
            |i| i.max_attempts = 3,
        ),
        // 400 KB of two-byte characters per attempt, three attempts.
        job(
            chaos,
            "loud",
            json!({"mode": "retry", "message": "é", "repeat": 200_000}),
            |i| i.max_attempts = 3,
        ),
        job(
            chaos,
            "wide",
            json!({"mode": "enqueue", "module": chaos, "pad": sizes.args_bytes + 1}),
            |i| i.max_attempts = 1,
        ),
    ];
    let (records, _) = run_until_final(&b.broker, config(), &jobs).await;

    let fits = &records[0];
    assert_eq!(fits.state, JobState::Succeeded, "{:?}", fits.last_error);
    let result = fits.report.as_ref().unwrap().result.as_ref().unwrap();
    assert_eq!(result.as_str().unwrap().len(), sizes.result_bytes - 2);

    let huge = &records[1];
    assert_eq!(huge.state, JobState::Dead);
    let error = huge.last_error.as_ref().unwrap();
    assert_eq!(
        huge.attempts, 1,
        "the same run makes the same result: {error:?}"
    );
    assert_eq!(error.kind, FailureKind::ResultTooLarge);
    assert_eq!(
        error.message,
        format!(
            "result too large: the job returned {} bytes, above the limit of {} (--max-result-kb)",
            8 << 20,
            sizes.result_bytes
        )
    );
    assert_eq!(huge.report.as_ref().unwrap().result, None);

    let loud = &records[2];
    assert_eq!(loud.state, JobState::Dead);
    assert_eq!(loud.errors.len(), 3);
    for e in loud.errors.iter().chain(&loud.last_error) {
        assert!(e.truncated, "attempt {} flagged", e.attempt);
        assert!(e.message.len() <= sizes.error_bytes, "{}", e.message.len());
        assert!(e.message.len() > sizes.error_bytes - 4, "cut at the limit");
        assert!(e.message.starts_with("job asked to be retried: éé"));
    }

    let wide = &records[3];
    assert_eq!(wide.state, JobState::Dead);
    let message = &wide.last_error.as_ref().unwrap().message;
    assert!(
        message.contains(&format!(
            "sub-job refused: invalid invocation: `args` is {} bytes of JSON, above the limit of {} bytes (--max-args-kb)",
            sizes.args_bytes + 1,
            sizes.args_bytes
        )),
        "{message}"
    );
    assert!(b.broker.job(None, "wide.1").await.unwrap().is_none());

    if let (Some(before), Some(after)) = (before, b.stored_bytes()) {
        // The 1 MiB result that fits (in jemalloc's 1.25 MiB size class), 6 error copies of
        // 8 KiB (last error and history) and the records; without the caps: 8 MiB of result,
        // 2.4 MB of messages, 1 MiB of sub-job.
        let grew = after.saturating_sub(before);
        let bound = sizes.result_bytes as u64 * 5 / 4 + 6 * sizes.error_bytes as u64 + (128 << 10);
        assert!(grew < bound, "Redis grew by {grew} bytes, bound {bound}");
        println!("Redis grew by {grew} bytes for these jobs (bound {bound})");
    }
}

backend_suite!(
    precompile_loads_every_module_before_any_job_needs_it,
    flaky_jobs_succeed_on_a_later_attempt,
    always_failing_jobs_die_with_their_last_error,
    fan_out_enqueues_real_sub_jobs,
    sub_jobs_per_run_are_bounded,
    a_self_enqueuing_job_stops_at_the_depth_limit,
    a_retried_parent_does_not_duplicate_sub_jobs,
    the_worker_enforces_its_own_ceilings,
    sizes_a_guest_chooses_are_bounded_before_they_are_stored,
    shutdown_finishes_short_jobs_and_hands_back_long_ones,
    heartbeats_keep_a_long_job_from_running_twice,
    a_running_job_can_be_cancelled,
    a_cron_tick_enqueues_exactly_one_job_across_workers,
    missed_cron_ticks_are_coalesced,
    progress_is_visible_while_a_job_runs,
    workers_are_listed_while_they_run,
    a_concurrency_limit_holds_across_workers,
    a_rate_limit_holds_across_workers,
);

/// On a single-threaded runtime, so a guest that held the thread would show.
mod one_thread {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn on_memory() {
        waiting_and_spinning_guests_do_not_hold_up_the_rest(memory().await).await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn onredis() {
        waiting_and_spinning_guests_do_not_hold_up_the_rest(redis().await).await
    }
}

/// What a worker asked of Redis, as the server's log shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Asked {
    /// A read of the ready set's head: a fetch without candidates starts with it, and ends with
    /// it when the set is empty.
    Head,
    /// The fetch script (it declares a `…:fetch:<request>` key).
    Fetch,
    /// The ack script (its eighth key is the queue's `…:succeeded` listing).
    Ack,
    /// The enqueue script (its arguments hold an invocation).
    Enqueue,
}

/// What workers asked since logging began (or the last call), in order; commands scripts send
/// are left out.
fn asked(server: &common::redis::RedisServer) -> Vec<Asked> {
    server
        .logged()
        .into_iter()
        .filter(|c| !c.by_script)
        .filter_map(|c| {
            let args = &c.args;
            match args.first()?.to_ascii_lowercase().as_str() {
                "zrange" => args.get(1)?.ends_with(":ready").then_some(Asked::Head),
                "evalsha" if args.iter().any(|a| a.contains(":fetch:")) => Some(Asked::Fetch),
                "evalsha" if args.iter().any(|a| a.contains("\"module\":\"sha256:")) => {
                    Some(Asked::Enqueue)
                }
                "evalsha" => args.get(10)?.ends_with(":succeeded").then_some(Asked::Ack),
                _ => None,
            }
        })
        .collect()
}

/// A worker's slots are refilled by a fetch its acker sends right behind the acks that freed
/// them (one round trip for both), and a fetch that comes back short sends the worker to wait
/// for work instead of fetching again at once: one job at a time through an idle worker costs
/// two fetches (the one that takes it, the acker's that finds nothing), not three, and no new
/// connection.
#[tokio::test]
async fn acks_carry_the_fetch_for_their_slots_and_a_dry_queue_is_not_asked_twice() {
    let b = redis().await;
    let server = b.redis.as_ref().unwrap();
    server.log_commands(4096);
    let hello = upload(b.broker.as_ref(), "hello").await;
    let config = WorkerConfig {
        // Waits for work end on a wake-up, not on their timeout (5 s at most).
        maintain_every: Duration::from_secs(60),
        ..config()
    };
    let worker = Worker::new(b.broker.clone(), common::sandbox().clone(), config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let run = |id: String| {
        let b = b.broker.clone();
        async move {
            let one = job(hello, &id, json!({"name": "n"}), |_| {});
            common::enqueue(b.as_ref(), &[one]).await.unwrap();
            let r = b
                .wait_job("default", &id, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r.state, JobState::Succeeded, "{id}");
        }
    };
    // Warm up: the module loaded, the worker waiting for work.
    run("warm".to_owned()).await;
    asked(server);
    // Connections received so far (this question's own among them).
    let connections = || -> u64 {
        let info: String = redis::from_redis_value(server.cmd(&["INFO", "stats"])).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    let connected = connections();

    const JOBS: usize = 8;
    for i in 0..JOBS {
        run(format!("j{i}")).await;
    }
    // The wait for work outlives the acker's fetches: a wait given up would close its blocked
    // connection, and the next one open another.
    let opened = connections() - connected - 1;
    // The last ack's fetch may still be on its way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut calls = Vec::new();
    loop {
        calls.extend(asked(server));
        let acks = calls.iter().filter(|c| **c == Asked::Ack).count();
        if acks == JOBS && calls.last() != Some(&Asked::Ack)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
    assert!(opened <= 2, "{opened} connections opened for {JOBS} jobs");
    assert_eq!(
        calls.iter().filter(|c| **c == Asked::Ack).count(),
        JOBS,
        "{calls:?}"
    );
    // Each ack is followed by its slot's fetch (here it finds the queue empty: a read alone),
    // before the next job is enqueued: the acker sent it, not the worker's loop.
    for (i, _) in calls.iter().enumerate().filter(|(_, c)| **c == Asked::Ack) {
        assert!(
            matches!(calls.get(i + 1), Some(Asked::Head | Asked::Fetch)),
            "no fetch behind ack {i}: {calls:?}"
        );
    }
    // A fetch is its script call, or a read of the head not followed by one.
    let fetches = calls
        .iter()
        .enumerate()
        .filter(|(i, c)| match c {
            Asked::Fetch => true,
            Asked::Head => calls.get(i + 1) != Some(&Asked::Fetch),
            Asked::Ack | Asked::Enqueue => false,
        })
        .count();
    // Two fetches a job (a wait for work that timed out would add one: allowed twice).
    assert!(
        fetches <= 2 * JOBS + 2,
        "{fetches} fetches for {JOBS} jobs: {calls:?}"
    );
}
