//! The broker's behaviour, tested the same way against the in-memory broker and a real Redis (each
//! Redis test starts its own `redis-server`).

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use serde_json::json;
use wasmq::broker::memory::MemoryBroker;
use wasmq::broker::redis::RedisBroker;
use wasmq::broker::{
    Ack, ApiBroker, Broker, CancelOutcome, Completion, CronEntry, Enqueued, Lease, ModuleDeletion,
    NewBatch, QueueCounts, WorkerInfo,
};
use wasmq::invocation::{Invocation, NewJob};
use wasmq::job::FailureKind;
use wasmq::job::Limits;
use wasmq::job::{AttemptError, JobState, RunReport};
use wasmq::modules::ModuleHash;
use wasmq::time::TokioClock;

/// A broker under test, plus the Redis server behind it (kept alive for the test).
struct Backend {
    broker: Arc<dyn ApiBroker>,
    _redis: Option<RedisServer>,
}

/// The memory broker reads tokio's clock, and its tests run on paused time: leases, backoff and
/// TTLs expire when the test's sleeps say so, however slow the machine.
async fn memory() -> Backend {
    Backend {
        broker: Arc::new(memory_broker(TTL)),
        _redis: None,
    }
}

fn memory_broker(ttl: Duration) -> MemoryBroker {
    MemoryBroker::new()
        .with_result_ttl(ttl)
        .with_clock(TokioClock::new())
}

impl Backend {
    /// The same backend (the same Redis server), keeping results for `ttl`.
    async fn with_result_ttl(self, ttl: Duration) -> Backend {
        let broker: Arc<dyn ApiBroker> = match &self._redis {
            Some(server) => Arc::new(
                RedisBroker::connect(&server.url())
                    .await
                    .unwrap()
                    .with_result_ttl(ttl),
            ),
            None => Arc::new(memory_broker(ttl)),
        };
        Backend { broker, ..self }
    }
}

async fn redis() -> Backend {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url())
        .await
        .unwrap()
        .with_result_ttl(TTL);
    Backend {
        broker: Arc::new(broker),
        _redis: Some(server),
    }
}

const LEASE: Duration = Duration::from_secs(30);
/// Results are kept this long in these tests (so `results_expire` can watch one go).
const TTL: Duration = Duration::from_secs(2);

fn module() -> ModuleHash {
    ModuleHash::of(b"not really a component: the broker does not look")
}

fn job(id: &str, f: impl FnOnce(&mut Invocation)) -> NewJob {
    let mut inv = Invocation::new(module());
    inv.id = Some(id.to_owned());
    inv.args = json!({ "id": id });
    f(&mut inv);
    inv.prepare(&Limits::default_ceilings()).unwrap()
}

async fn put(b: &dyn ApiBroker, jobs: &[NewJob]) -> Vec<Enqueued> {
    b.put_module(module(), b"x").await.unwrap();
    common::enqueue(b, jobs).await.unwrap()
}

async fn fetch(b: &dyn ApiBroker, max: usize) -> Vec<Lease> {
    b.fetch(&["default".to_owned()], max, LEASE, "w1")
        .await
        .unwrap()
}

fn ids(leases: &[Lease]) -> Vec<&str> {
    leases.iter().map(|l| l.key.id.as_str()).collect()
}

fn ok(lease: &Lease) -> Ack {
    Ack {
        lease: lease.key.clone(),
        completion: Completion::Succeeded(RunReport {
            attempt: lease.attempt,
            worker: "w1".into(),
            result: Some(json!({"done": lease.key.id})),
            fuel_used: 42,
            ..RunReport::default()
        }),
    }
}

fn error(lease: &Lease, kind: FailureKind) -> AttemptError {
    AttemptError {
        attempt: lease.attempt,
        kind,
        message: format!("{kind} on attempt {}", lease.attempt),
        at_ms: 1,
    }
}

fn at(ms: u64) -> String {
    wasmq::time::format_time(ms)
}

async fn state(b: &dyn ApiBroker, id: &str) -> Option<JobState> {
    b.job(None, id).await.unwrap().map(|r| r.state)
}

async fn modules_are_stored_once(b: Backend) {
    let b = b.broker.as_ref();
    assert!(!b.has_module(module()).await.unwrap());
    let first = b.put_module(module(), b"bytes").await.unwrap();
    assert_eq!(first.size, 5);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = b.put_module(module(), b"bytes").await.unwrap();
    assert_eq!(again, first, "re-upload keeps the first upload");
    assert!(b.has_module(module()).await.unwrap());
    assert_eq!(b.module(module()).await.unwrap().unwrap(), b"bytes");
    assert_eq!(b.modules().await.unwrap(), vec![first]);
    let other = ModuleHash::of(b"other");
    assert_eq!(b.module(other).await.unwrap(), None);
}

async fn unknown_modules_are_refused(b: Backend) {
    assert!(
        b.broker.queues().await.unwrap().is_empty(),
        "no queue used yet"
    );
    let err = common::enqueue(b.broker.as_ref(), &[job("a", |_| {})])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was never uploaded"), "{err}");
    assert!(b.broker.job(None, "a").await.unwrap().is_none());
}

async fn a_job_runs_once_and_keeps_its_result(b: Backend) {
    let b = b.broker.as_ref();
    assert_eq!(put(b, &[job("a", |_| {})]).await, vec![Enqueued::Created]);
    assert_eq!(state(b, "a").await, Some(JobState::Ready));
    let leases = fetch(b, 10).await;
    assert_eq!(ids(&leases), ["a"]);
    assert_eq!(leases[0].attempt, 1);
    assert_eq!(leases[0].invocation.args, json!({"id": "a"}));
    assert!(
        fetch(b, 10).await.is_empty(),
        "a leased job is not fetched twice"
    );
    assert_eq!(state(b, "a").await, Some(JobState::Leased));
    assert_eq!(b.ack(&[ok(&leases[0])]).await.unwrap(), 0);
    let record = b.job(Some("default"), "a").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Succeeded);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.worker.as_deref(), Some("w1"));
    let report = record.report.unwrap();
    assert_eq!(report.result, Some(json!({"done": "a"})));
    assert_eq!(report.fuel_used, 42);
    assert!(record.finished_at_ms.unwrap() >= record.enqueued_at_ms);
    // A second ack of the same lease is stale and changes nothing.
    assert_eq!(b.ack(&[ok(&leases[0])]).await.unwrap(), 1);
}

async fn enqueue_is_idempotent_by_id(b: Backend) {
    let b = b.broker.as_ref();
    let jobs = [job("same", |_| {}), job("same", |i| i.args = json!(2))];
    assert_eq!(
        put(b, &jobs).await,
        vec![Enqueued::Created, Enqueued::Existed]
    );
    assert_eq!(put(b, &jobs[..1]).await, vec![Enqueued::Existed]);
    let leases = fetch(b, 10).await;
    assert_eq!(ids(&leases), ["same"]);
    assert_eq!(
        leases[0].invocation.args,
        json!({"id": "same"}),
        "first wins"
    );
    b.ack(&[ok(&leases[0])]).await.unwrap();
    assert_eq!(
        put(b, &jobs[..1]).await,
        vec![Enqueued::Existed],
        "while the result is kept"
    );
}

async fn priority_then_fifo(b: Backend) {
    let b = b.broker.as_ref();
    put(
        b,
        &[
            job("low", |i| i.priority = -5),
            job("first", |_| {}),
            job("urgent", |i| i.priority = 100),
            job("second", |_| {}),
            job("high", |i| i.priority = 3),
        ],
    )
    .await;
    let order: Vec<String> = fetch(b, 10).await.into_iter().map(|l| l.key.id).collect();
    assert_eq!(order, ["urgent", "high", "first", "second", "low"]);
}

async fn queues_are_separate_and_counted(b: Backend) {
    let b = b.broker.as_ref();
    put(
        b,
        &[
            job("m1", |i| i.queue = "mail".into()),
            job("m2", |i| i.queue = "mail".into()),
            job("d1", |_| {}),
            job("later", |i| i.run_at = Some("2999-01-01T00:00:00Z".into())),
        ],
    )
    .await;
    let mail = b.fetch(&["mail".to_owned()], 1, LEASE, "w1").await.unwrap();
    assert_eq!(ids(&mail), ["m1"]);
    let counts = b.queues().await.unwrap();
    let by_name = |q: &str| counts.iter().find(|c| c.queue == q).unwrap().clone();
    let m = by_name("mail");
    assert_eq!((m.ready, m.scheduled, m.leased, m.dead), (1, 0, 1, 0));
    let d = by_name("default");
    assert_eq!((d.ready, d.scheduled, d.leased, d.dead), (1, 1, 0, 0));
    let head = b.job(Some("default"), "d1").await.unwrap().unwrap();
    assert_eq!(
        d.oldest_ready_ms,
        Some(head.enqueued_at_ms),
        "the next job's enqueue time"
    );
    assert_eq!(
        m.oldest_ready_ms,
        Some(
            b.job(Some("mail"), "m2")
                .await
                .unwrap()
                .unwrap()
                .enqueued_at_ms
        )
    );
    // Earlier queues first.
    let both = b
        .fetch(&["default".to_owned(), "mail".to_owned()], 5, LEASE, "w1")
        .await
        .unwrap();
    assert_eq!(ids(&both), ["d1", "m2"]);
}

async fn delayed_jobs_wait_for_their_time(b: Backend) {
    let b = b.broker.as_ref();
    let at = wasmq::time::format_time(wasmq::time::now_ms() + 400);
    put(b, &[job("later", |i| i.run_at = Some(at))]).await;
    assert_eq!(state(b, "later").await, Some(JobState::Scheduled));
    b.maintain("default").await.unwrap();
    assert!(fetch(b, 1).await.is_empty(), "not before its time");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.maintain("default").await.unwrap().promoted, 1);
    assert_eq!(ids(&fetch(b, 1).await), ["later"]);
}

async fn retries_back_off_then_die(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("r", |i| i.max_attempts = 2)]).await;
    let first = fetch(b, 1).await.remove(0);
    let retry = Ack {
        lease: first.key.clone(),
        completion: Completion::Retry {
            delay: Duration::from_millis(150),
            error: error(&first, FailureKind::Trap),
            report: None,
        },
    };
    b.ack(&[retry]).await.unwrap();
    let record = b.job(None, "r").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Scheduled);
    assert_eq!(record.last_error.unwrap().kind, FailureKind::Trap);
    b.maintain("default").await.unwrap();
    assert!(fetch(b, 1).await.is_empty(), "backing off");
    tokio::time::sleep(Duration::from_millis(250)).await;
    b.maintain("default").await.unwrap();
    let second = fetch(b, 1).await.remove(0);
    assert_eq!(second.attempt, 2);
    // The first attempt's lease is gone: its late ack is ignored.
    assert_eq!(b.ack(&[ok(&first)]).await.unwrap(), 1);
    let dead = Ack {
        lease: second.key.clone(),
        completion: Completion::Dead {
            error: error(&second, FailureKind::OutOfFuel),
            report: None,
        },
    };
    b.ack(&[dead]).await.unwrap();
    let record = b.job(None, "r").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Dead);
    assert_eq!(record.attempts, 2);
    assert_eq!(
        record.last_error.unwrap().message,
        "out_of_fuel on attempt 2"
    );
    // Every attempt's failure is kept, oldest first.
    let kinds: Vec<(u32, &str)> = record
        .errors
        .iter()
        .map(|e| (e.attempt, e.kind.as_str()))
        .collect();
    assert_eq!(kinds, [(1, "trap"), (2, "out_of_fuel")]);
}

async fn a_record_keeps_the_last_25_failures(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("f", |i| i.max_attempts = 30)]).await;
    for _ in 0..27 {
        let lease = fetch(b, 1).await.remove(0);
        let retry = Ack {
            completion: Completion::Retry {
                delay: Duration::ZERO,
                error: error(&lease, FailureKind::Trap),
                report: None,
            },
            lease: lease.key,
        };
        b.ack(&[retry]).await.unwrap();
        b.maintain("default").await.unwrap();
    }
    let record = b.job(None, "f").await.unwrap().unwrap();
    let attempts: Vec<u32> = record.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, (3..=27).collect::<Vec<_>>());
    assert_eq!(record.last_error.unwrap().attempt, 27);
}

async fn jobs_are_listed_by_state_in_order(b: Backend) {
    let b = b.broker.as_ref();
    let later = wasmq::time::now_ms() + 60_000;
    put(
        b,
        &[
            job("r1", |_| {}),
            job("r2", |i| i.priority = 5),
            job("r3", |_| {}),
            job("s1", |i| i.run_at = Some(at(later + 1000))),
            job("s2", |i| i.run_at = Some(at(later))),
        ],
    )
    .await;
    let page = |state, offset, limit| async move {
        let p = b.jobs("default", state, offset, limit).await.unwrap();
        let ids: Vec<String> = p.jobs.into_iter().map(|r| r.id).collect();
        (p.total, ids)
    };
    // Ready in fetch order (priority first), paged.
    assert_eq!(
        page(JobState::Ready, 0, 10).await,
        (3, vec!["r2".into(), "r1".into(), "r3".into()])
    );
    assert_eq!(page(JobState::Ready, 1, 1).await, (3, vec!["r1".into()]));
    assert_eq!(page(JobState::Ready, 5, 10).await, (3, vec![]));
    // Scheduled soonest first.
    assert_eq!(
        page(JobState::Scheduled, 0, 10).await,
        (2, vec!["s2".into(), "s1".into()])
    );
    let leases = fetch(b, 2).await;
    assert_eq!(page(JobState::Leased, 0, 10).await.0, 2);
    // Finished ones newest first, each state in its own list.
    b.ack(&[ok(&leases[0])]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.ack(&[ok(&leases[1])]).await.unwrap();
    assert_eq!(
        page(JobState::Succeeded, 0, 10).await,
        (2, vec!["r1".into(), "r2".into()])
    );
    assert_eq!(
        b.cancel("default", "r3").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        page(JobState::Cancelled, 0, 10).await,
        (1, vec!["r3".into()])
    );
    assert_eq!(page(JobState::Ready, 0, 10).await, (0, vec![]));
    assert_eq!(page(JobState::Dead, 0, 10).await, (0, vec![]));
    // Unknown queues list nothing.
    assert_eq!(
        b.jobs("nope", JobState::Ready, 0, 10).await.unwrap().total,
        0
    );
    // Expired results drop out of the listing.
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    assert!(page(JobState::Succeeded, 0, 10).await.1.is_empty());
}

async fn the_succeeded_listing_keeps_the_newest_10000(b: Backend) {
    // The cap, not the TTL, is under test: results outlive however long a slow machine takes to
    // run 10,050 jobs (with the suite's 2 s TTL, one run listed only 7,490).
    let b = b.with_result_ttl(Duration::from_secs(3600)).await;
    let b = b.broker.as_ref();
    let jobs: Vec<NewJob> = (0..10_050)
        .map(|n| job(&format!("j{n:05}"), |_| {}))
        .collect();
    put(b, &jobs).await;
    loop {
        let leases = fetch(b, 256).await;
        if leases.is_empty() {
            break;
        }
        let acks: Vec<Ack> = leases.iter().map(ok).collect();
        b.ack(&acks).await.unwrap();
    }
    let page = b.jobs("default", JobState::Succeeded, 0, 1).await.unwrap();
    assert_eq!(page.total, wasmq::broker::MAX_FINISHED_LISTED as u64);
    let last = b
        .jobs("default", JobState::Succeeded, 9_999, 5)
        .await
        .unwrap();
    assert_eq!(last.jobs.len(), 1, "the 10,000th is the last listed");
    assert_eq!(counts(b).await.totals.succeeded, 10_050, "all ran");
}

async fn scheduled_jobs_can_run_now(b: Backend) {
    let b = b.broker.as_ref();
    let later = wasmq::time::now_ms() + 3_600_000;
    put(
        b,
        &[job("s", |i| i.run_at = Some(at(later))), job("r", |_| {})],
    )
    .await;
    assert!(
        !b.run_now("default", "r").await.unwrap(),
        "ready, not scheduled"
    );
    assert!(!b.run_now("default", "nope").await.unwrap());
    assert_eq!(ids(&fetch(b, 5).await), ["r"]);
    assert!(b.run_now("default", "s").await.unwrap());
    assert_eq!(state(b, "s").await, Some(JobState::Ready));
    assert!(
        !b.run_now("default", "s").await.unwrap(),
        "no longer scheduled"
    );
    assert_eq!(ids(&fetch(b, 5).await), ["s"]);
}

async fn the_whole_dead_set_can_be_retried_or_deleted(b: Backend) {
    let b = b.broker.as_ref();
    let jobs: Vec<NewJob> = (0..5)
        .map(|n| job(&format!("d{n}"), |i| i.max_attempts = 1))
        .collect();
    put(b, &jobs).await;
    let kill = |lease: Lease| Ack {
        completion: Completion::Dead {
            error: error(&lease, FailureKind::Fail),
            report: None,
        },
        lease: lease.key,
    };
    for lease in fetch(b, 5).await {
        b.ack(&[kill(lease)]).await.unwrap();
    }
    assert_eq!(counts(b).await.dead, 5);
    assert_eq!(b.retry_all_dead("default").await.unwrap(), 5);
    assert_eq!(counts(b).await.dead, 0);
    assert_eq!(counts(b).await.ready, 5);
    // They run again from attempt 1; three die again, and deleting all removes their records.
    let again = fetch(b, 5).await;
    assert!(again.iter().all(|l| l.attempt == 1));
    for lease in again.into_iter().take(3) {
        b.ack(&[kill(lease)]).await.unwrap();
    }
    assert_eq!(b.delete_all_dead("default").await.unwrap(), 3);
    assert_eq!(counts(b).await.dead, 0);
    assert_eq!(b.retry_all_dead("default").await.unwrap(), 0);
    let gone = b.jobs("default", JobState::Leased, 0, 10).await.unwrap();
    assert_eq!(gone.total, 2);
}

async fn module_usage_counts_jobs_not_yet_succeeded(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {}), job("b", |_| {}), job("c", |_| {})]).await;
    let usage = b.module_usage().await.unwrap();
    assert_eq!(usage.get(&module()), Some(&3));
    let lease = fetch(b, 1).await.remove(0);
    b.ack(&[ok(&lease)]).await.unwrap();
    assert_eq!(b.module_usage().await.unwrap().get(&module()), Some(&2));
}

async fn expired_leases_are_recovered(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |i| i.max_attempts = 2)]).await;
    let short = Duration::from_millis(100);
    let q = ["default".to_owned()];
    let first = b.fetch(&q, 1, short, "doomed").await.unwrap().remove(0);
    b.maintain("default").await.unwrap();
    assert_eq!(
        state(b, "a").await,
        Some(JobState::Leased),
        "not yet expired"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.maintain("default").await.unwrap().recovered, 1);
    let record = b.job(None, "a").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Ready);
    let err = record.last_error.unwrap();
    assert_eq!(err.kind, FailureKind::LeaseExpired);
    assert!(err.message.contains("`doomed`"), "{}", err.message);
    let second = b.fetch(&q, 1, short, "w2").await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        b.heartbeat(std::slice::from_ref(&first.key), LEASE)
            .await
            .unwrap()
            .lost,
        vec![first.key.clone()],
        "the old holder learns it lost the lease"
    );
    assert_eq!(b.ack(&[ok(&first)]).await.unwrap(), 1);
    // On the last attempt an expired lease is the end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.maintain("default").await.unwrap().expired_dead, 1);
    let record = b.job(None, "a").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Dead);
    assert_eq!(b.dead("default", 10).await.unwrap()[0].id, "a");
}

async fn heartbeats_keep_leases(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {})]).await;
    let q = ["default".to_owned()];
    let lease = b
        .fetch(&q, 1, Duration::from_millis(300), "w1")
        .await
        .unwrap()
        .remove(0);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let beat = b
            .heartbeat(std::slice::from_ref(&lease.key), Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(beat, Default::default());
        assert_eq!(b.maintain("default").await.unwrap().recovered, 0);
    }
    assert_eq!(b.ack(&[ok(&lease)]).await.unwrap(), 0);
}

async fn released_jobs_go_to_the_front_uncounted(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {}), job("b", |_| {})]).await;
    let a = fetch(b, 1).await.remove(0);
    b.release(std::slice::from_ref(&a.key)).await.unwrap();
    let again = fetch(b, 1).await.remove(0);
    assert_eq!(again.key.id, "a", "handed back to the front");
    assert_eq!(again.attempt, 1, "a handed-back attempt does not count");
    // Several handed back at once (a worker draining) all come back: the memory broker once kept
    // only the last of them (found by `tests/all/differential.rs`).
    put(b, &[job("c", |_| {})]).await;
    let mut held = fetch(b, 3).await;
    assert_eq!(ids(&held), ["b", "c"]);
    held.push(again);
    let keys: Vec<_> = held.iter().map(|l| l.key.clone()).collect();
    b.release(&keys).await.unwrap();
    let mut back = ids(&fetch(b, 10).await)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    back.sort();
    assert_eq!(back, ["a", "b", "c"]);
    assert_eq!(counts(b).await.ready, 0);
}

async fn dead_jobs_can_be_retried_or_deleted(b: Backend) {
    let b = b.broker.as_ref();
    put(
        b,
        &[
            job("x", |i| i.max_attempts = 1),
            job("y", |i| i.max_attempts = 1),
        ],
    )
    .await;
    for lease in fetch(b, 2).await {
        let ack = Ack {
            completion: Completion::Dead {
                error: error(&lease, FailureKind::Fail),
                report: None,
            },
            lease: lease.key,
        };
        b.ack(&[ack]).await.unwrap();
    }
    let dead: Vec<String> = b
        .dead("default", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(dead.len(), 2);
    assert!(b.retry_dead("default", "x").await.unwrap());
    assert!(
        !b.retry_dead("default", "x").await.unwrap(),
        "no longer dead"
    );
    let again = fetch(b, 1).await.remove(0);
    assert_eq!((again.key.id.as_str(), again.attempt), ("x", 1));
    assert!(b.delete_dead("default", "y").await.unwrap());
    assert!(b.job(None, "y").await.unwrap().is_none());
    assert!(!b.delete_dead("default", "y").await.unwrap());
    assert!(b.dead("default", 10).await.unwrap().is_empty());
}

async fn waiters_wake_when_a_job_ends(b: Backend) {
    let broker = b.broker.clone();
    put(broker.as_ref(), &[job("a", |_| {})]).await;
    let waiter = tokio::spawn({
        let broker = broker.clone();
        async move {
            let start = Instant::now();
            let r = broker
                .wait_job("default", "a", Duration::from_secs(20))
                .await
                .unwrap();
            (r.unwrap().state, start.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lease = fetch(broker.as_ref(), 1).await.remove(0);
    broker.ack(&[ok(&lease)]).await.unwrap();
    let (state, waited) = waiter.await.unwrap();
    assert_eq!(state, JobState::Succeeded);
    assert!(
        waited < Duration::from_secs(10),
        "woken, not timed out: {waited:?}"
    );
    // Waiting on a job that is not final returns it as it is at the timeout.
    put(broker.as_ref(), &[job("b", |_| {})]).await;
    let r = broker
        .wait_job("default", "b", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, JobState::Ready);
    assert!(
        broker
            .wait_job("default", "nope", Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
}

async fn blocked_fetchers_wake_on_enqueue(b: Backend) {
    let broker = b.broker.clone();
    broker.put_module(module(), b"x").await.unwrap();
    let q = vec!["default".to_owned()];
    let waiter = tokio::spawn({
        let broker = broker.clone();
        async move {
            let start = Instant::now();
            broker
                .wait_for_work(&q, Duration::from_secs(4))
                .await
                .unwrap();
            start.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    put(broker.as_ref(), &[job("a", |_| {})]).await;
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(3),
        "woken by the enqueue: {waited:?}"
    );
}

async fn results_expire(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {})]).await;
    let lease = fetch(b, 1).await.remove(0);
    b.ack(&[ok(&lease)]).await.unwrap();
    assert_eq!(state(b, "a").await, Some(JobState::Succeeded));
    tokio::time::sleep(TTL + Duration::from_millis(200)).await;
    assert_eq!(state(b, "a").await, None);
    assert_eq!(
        put(b, &[job("a", |_| {})]).await,
        vec![Enqueued::Created],
        "the id is free again once the result expired"
    );
}

async fn cancelling_waiting_and_running_jobs(b: Backend) {
    let b = b.broker.as_ref();
    put(
        b,
        &[
            job("waiting", |_| {}),
            job("running", |_| {}),
            job("later", |i| i.run_at = Some("2999-01-01T00:00:00Z".into())),
        ],
    )
    .await;
    let running = b
        .fetch(&["default".to_owned()], 1, LEASE, "w1")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(running.key.id, "waiting", "FIFO: the first job was fetched");
    // `waiting` is the one running now; cancel the other two while they wait.
    assert_eq!(
        b.cancel("default", "running").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        b.cancel("default", "later").await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert!(
        fetch(b, 5).await.is_empty(),
        "cancelled jobs are not fetched"
    );
    assert_eq!(state(b, "later").await, Some(JobState::Cancelled));

    // A running job is flagged; its worker hears it on the next heartbeat and stops it.
    assert_eq!(
        b.cancel("default", "waiting").await.unwrap(),
        CancelOutcome::Cancelling
    );
    let beat = b
        .heartbeat(std::slice::from_ref(&running.key), LEASE)
        .await
        .unwrap();
    assert_eq!(beat.cancel, vec![running.key.clone()]);
    let ack = Ack {
        lease: running.key.clone(),
        completion: Completion::Cancelled {
            error: error(&running, FailureKind::Cancelled),
        },
    };
    assert_eq!(b.ack(&[ack]).await.unwrap(), 0);
    let r = b.job(None, "waiting").await.unwrap().unwrap();
    assert_eq!(r.state, JobState::Cancelled);
    assert_eq!(
        b.cancel("default", "waiting").await.unwrap(),
        CancelOutcome::AlreadyFinal(JobState::Cancelled)
    );
    assert_eq!(
        b.cancel("default", "nope").await.unwrap(),
        CancelOutcome::NotFound
    );
    let c = counts(b).await;
    assert_eq!((c.ready, c.scheduled, c.leased, c.dead), (0, 0, 0, 0));
    assert_eq!(c.totals.cancelled, 3);
}

async fn a_failing_attempt_of_a_cancelled_job_is_not_retried(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {})]).await;
    let lease = fetch(b, 1).await.remove(0);
    assert_eq!(
        b.cancel("default", "a").await.unwrap(),
        CancelOutcome::Cancelling
    );
    let retry = Ack {
        lease: lease.key.clone(),
        completion: Completion::Retry {
            delay: Duration::ZERO,
            error: error(&lease, FailureKind::Trap),
            report: None,
        },
    };
    b.ack(&[retry]).await.unwrap();
    assert_eq!(state(b, "a").await, Some(JobState::Cancelled));
}

async fn totals_count_every_outcome(b: Backend) {
    let b = b.broker.as_ref();
    put(
        b,
        &[
            job("ok", |_| {}),
            job("flaky", |_| {}),
            job("doomed", |i| i.max_attempts = 1),
        ],
    )
    .await;
    put(b, &[job("ok", |_| {})]).await; // an existing id is not counted again
    for lease in fetch(b, 3).await {
        let completion = match lease.key.id.as_str() {
            "ok" => ok(&lease).completion,
            "flaky" => Completion::Retry {
                delay: Duration::ZERO,
                error: error(&lease, FailureKind::Retry),
                report: None,
            },
            _ => Completion::Dead {
                error: error(&lease, FailureKind::Fail),
                report: None,
            },
        };
        b.ack(&[Ack {
            lease: lease.key,
            completion,
        }])
        .await
        .unwrap();
    }
    let t = counts(b).await.totals;
    assert_eq!(
        (
            t.enqueued,
            t.succeeded,
            t.failed,
            t.retried,
            t.dead,
            t.cancelled,
            t.recovered
        ),
        (3, 1, 2, 1, 1, 0, 0)
    );
}

async fn modules_in_use_are_not_deleted(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {}), job("b", |_| {})]).await;
    assert_eq!(
        b.delete_module(module(), false).await.unwrap(),
        ModuleDeletion::InUse(2)
    );
    for lease in fetch(b, 2).await {
        b.ack(&[ok(&lease)]).await.unwrap();
    }
    // Succeeded jobs do not hold a module.
    assert_eq!(
        b.delete_module(module(), false).await.unwrap(),
        ModuleDeletion::Deleted
    );
    assert!(!b.has_module(module()).await.unwrap());
    assert_eq!(
        b.delete_module(module(), false).await.unwrap(),
        ModuleDeletion::NotFound
    );
    // Forced, it goes even while a job names it.
    put(b, &[job("c", |_| {})]).await;
    assert_eq!(
        b.delete_module(module(), true).await.unwrap(),
        ModuleDeletion::Deleted
    );
}

async fn cron_ticks_fire_once(b: Backend) {
    let b = b.broker.as_ref();
    b.put_module(module(), b"x").await.unwrap();
    let entry = CronEntry {
        name: "nightly".into(),
        schedule: "0 3 * * *".into(),
        invocation: Invocation::new(module()),
        next_ms: 1_000,
    };
    b.put_cron(&entry).await.unwrap();
    assert_eq!(b.crons(None).await.unwrap(), vec![entry.clone()]);
    assert_eq!(b.crons(Some("other")).await.unwrap(), vec![]);
    let job = wasmq::scheduler::cron_job(
        &wasmq::intake::Intake::new(Limits::default_ceilings()),
        &entry,
        1_000,
    )
    .unwrap();
    assert_eq!(job.id(), "cron:nightly:1000");
    // Two workers see the same due tick; one fires it.
    assert!(
        b.fire_cron("default", "nightly", 1_000, 2_000, &job)
            .await
            .unwrap()
    );
    assert!(
        !b.fire_cron("default", "nightly", 1_000, 2_000, &job)
            .await
            .unwrap()
    );
    assert_eq!(b.crons(None).await.unwrap()[0].next_ms, 2_000);
    assert_eq!(ids(&fetch(b, 5).await), ["cron:nightly:1000"]);
    assert!(b.remove_cron("default", "nightly").await.unwrap());
    assert!(!b.remove_cron("default", "nightly").await.unwrap());
    let later = wasmq::scheduler::cron_job(
        &wasmq::intake::Intake::new(Limits::default_ceilings()),
        &entry,
        2_000,
    )
    .unwrap();
    assert!(
        !b.fire_cron("default", "nightly", 2_000, 3_000, &later)
            .await
            .unwrap(),
        "removed"
    );
    assert_eq!(counts(b).await.totals.enqueued, 1);
}

async fn paused_queues_accept_but_hand_out_nothing(b: Backend) {
    let broker = b.broker.clone();
    put(broker.as_ref(), &[job("a", |_| {})]).await;
    broker.set_paused("default", true).await.unwrap();
    put(broker.as_ref(), &[job("b", |_| {})]).await;
    assert!(fetch(broker.as_ref(), 5).await.is_empty());
    let c = counts(broker.as_ref()).await;
    assert_eq!((c.paused, c.ready), (true, 2));
    // A fetcher blocked on the paused queue is woken by the resume.
    let waiter = tokio::spawn({
        let broker = broker.clone();
        async move {
            let start = Instant::now();
            broker
                .wait_for_work(&["default".to_owned()], Duration::from_secs(4))
                .await
                .unwrap();
            start.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.set_paused("default", false).await.unwrap();
    assert!(waiter.await.unwrap() < Duration::from_secs(3));
    assert!(!counts(broker.as_ref()).await.paused);
    assert_eq!(ids(&fetch(broker.as_ref(), 5).await), ["a", "b"]);
}

async fn workers_report_and_expire(b: Backend) {
    let b = b.broker.as_ref();
    let now = wasmq::time::now_ms();
    let worker = |name: &str, seen: u64| WorkerInfo {
        name: name.into(),
        host: "h".into(),
        pid: 1,
        queues: vec!["default".into()],
        concurrency: 4,
        in_flight: 2,
        started_at_ms: seen,
        last_seen_ms: seen,
    };
    b.worker_seen(&worker("alive", now)).await.unwrap();
    b.worker_seen(&worker("stale", now - 120_000))
        .await
        .unwrap();
    b.worker_seen(&worker("leaving", now)).await.unwrap();
    b.worker_gone("leaving").await.unwrap();
    assert_eq!(b.workers().await.unwrap(), vec![worker("alive", now)]);
}

async fn a_batch_calls_back_once_when_every_job_ended(b: Backend) {
    let b = b.broker.as_ref();
    b.put_module(module(), b"x").await.unwrap();
    let batch = NewBatch {
        id: "B".into(),
        jobs: vec![
            job("a", |_| {}),
            job("b", |i| i.max_attempts = 1),
            job("c", |_| {}),
        ],
        callback: job("batch:B:callback", |i| i.args = json!({"note": "x"})),
    };
    batch.check().unwrap();
    assert_eq!(b.enqueue_batch(&batch).await.unwrap(), Enqueued::Created);
    assert_eq!(b.enqueue_batch(&batch).await.unwrap(), Enqueued::Existed);
    let info = b.batch("default", "B").await.unwrap().unwrap();
    assert_eq!((info.total, info.pending, info.done_at_ms), (3, 3, None));
    let leases = fetch(b, 2).await;
    assert_eq!(ids(&leases), ["a", "b"]);
    b.ack(&[ok(&leases[0])]).await.unwrap();
    let dead = Ack {
        lease: leases[1].key.clone(),
        completion: Completion::Dead {
            error: error(&leases[1], FailureKind::Fail),
            report: None,
        },
    };
    b.ack(&[dead]).await.unwrap();
    assert_eq!(b.batch("default", "B").await.unwrap().unwrap().pending, 1);
    assert!(
        fetch(b, 5).await.iter().all(|l| l.key.id == "c"),
        "no callback yet"
    );
    // c is leased now; cancelling it is the batch's last end.
    assert_eq!(
        b.cancel("default", "c").await.unwrap(),
        CancelOutcome::Cancelling
    );
    let c = b.job(None, "c").await.unwrap().unwrap();
    let ack = Ack {
        lease: wasmq::broker::LeaseKey {
            queue: "default".into(),
            id: "c".into(),
            token: 1,
        },
        completion: Completion::Cancelled {
            error: AttemptError {
                attempt: c.attempts,
                kind: FailureKind::Cancelled,
                message: "x".into(),
                at_ms: 1,
            },
        },
    };
    b.ack(&[ack]).await.unwrap();
    let info = b.batch("default", "B").await.unwrap().unwrap();
    assert_eq!(info.pending, 0);
    assert!(info.done_at_ms.is_some());
    let callback = fetch(b, 5).await;
    assert_eq!(ids(&callback), ["batch:B:callback"]);
    assert_eq!(
        callback[0].invocation.args,
        json!({"note": "x", "batch": "B", "jobs": [
            {"id": "a", "state": "succeeded"},
            {"id": "b", "state": "dead"},
            {"id": "c", "state": "cancelled"},
        ]})
    );
    // A dead job retried and ending again does not call back a second time.
    assert!(b.retry_dead("default", "b").await.unwrap());
    let again = fetch(b, 5).await;
    assert_eq!(ids(&again), ["b"]);
    b.ack(&[ok(&again[0])]).await.unwrap();
    assert!(fetch(b, 5).await.is_empty());
    assert_eq!(
        counts(b).await.totals.enqueued,
        4,
        "three jobs and one callback"
    );
}

async fn a_batch_is_all_or_nothing(b: Backend) {
    let b = b.broker.as_ref();
    put(b, &[job("taken", |_| {})]).await;
    let batch = NewBatch {
        id: "B".into(),
        jobs: vec![job("fresh", |_| {}), job("taken", |_| {})],
        callback: job("batch:B:callback", |_| {}),
    };
    let err = b.enqueue_batch(&batch).await.unwrap_err().to_string();
    assert!(err.contains("`taken` already exists"), "{err}");
    assert!(b.job(None, "fresh").await.unwrap().is_none());
    assert!(b.batch("default", "B").await.unwrap().is_none());
    let other_queue = NewBatch {
        id: "C".into(),
        jobs: vec![job("x", |i| i.queue = "mail".into())],
        callback: job("batch:C:callback", |_| {}),
    };
    assert!(
        other_queue
            .check()
            .unwrap_err()
            .to_string()
            .contains("callback's queue `default`")
    );
}

async fn counts(b: &dyn ApiBroker) -> QueueCounts {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.queue == "default")
        .unwrap_or_default()
}

/// Only Redis can hold what a careless direct writer put there.
#[tokio::test]
async fn invalid_invocations_written_to_redis_go_dead_with_the_reason() {
    let server = RedisServer::start();
    let broker = RedisBroker::connect(&server.url()).await.unwrap();
    put(&broker, &[job("fine", |_| {})]).await;
    // Damage the stored invocation as a direct writer might.
    server.cmd(&[
        "HSET",
        "wasmq:{default}:job:fine",
        "inv",
        r#"{"module":"sha256:00","extra":1}"#,
    ]);
    assert!(fetch(&broker, 5).await.is_empty(), "not handed to a worker");
    let r = broker.job(None, "fine").await;
    // The record's `inv` no longer parses, so reading it reports corruption by name…
    let err = r.unwrap_err().to_string();
    assert!(err.contains("corrupt record for `default/fine`"), "{err}");
    // …and the job sits in the dead set instead of blocking the queue.
    let c = counts(&broker).await;
    assert_eq!((c.ready, c.leased, c.dead), (0, 0, 1));
    let reason = server.cmd(&["HGET", "wasmq:{default}:job:fine", "err"]);
    let reason: String = redis::from_redis_value(reason).unwrap();
    assert!(reason.contains("\"kind\":\"invocation\""), "{reason}");
    assert!(
        reason.contains("must be `sha256:` followed by 64"),
        "{reason}"
    );
}

/// The enqueue script refuses what would break a worker, for writers that skip the CLI.
#[tokio::test]
async fn the_enqueue_script_checks_direct_writers() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../../docs/redis-enqueue.lua"));
    let keys = wasmq::broker::redis::Keys::new("wasmq").queue("default");
    let good = serde_json::json!({"module": module()}).to_string();
    let call = |id: &str, inv: &str, prio: &str, max: &str| {
        let mut i = script.prepare_invoke();
        for k in &keys.keys {
            i.key(k);
        }
        i.arg(&keys.job_prefix).arg(&keys.done_prefix).arg(1);
        i.arg(id).arg(inv).arg(prio).arg(max).arg(0);
        i
    };
    let cases = [
        (
            call("a", "not json", "0", "5"),
            "invocation is not a JSON object",
        ),
        (
            call("a", r#"{"module":"sha256:AB"}"#, "0", "5"),
            "`module` must be",
        ),
        (call("a", &good, "101", "5"), "priority must be"),
        (call("a", &good, "0", "0"), "max attempts must be"),
        (call("a b", &good, "0", "5"), "id must be"),
    ];
    for (inv, want) in cases {
        let err = inv
            .invoke_async::<Vec<u8>>(&mut conn)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
    }
    let created: Vec<u8> = call("ok", &good, "0", "5")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, [1]);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            use super::*;
            $( #[tokio::test(start_paused = true)] async fn $name() { super::$name(memory().await).await } )*
        }
        mod on_redis {
            use super::*;
            $( #[tokio::test] async fn $name() { super::$name(redis().await).await } )*
        }
    };
}

suite!(
    modules_are_stored_once,
    unknown_modules_are_refused,
    a_job_runs_once_and_keeps_its_result,
    enqueue_is_idempotent_by_id,
    priority_then_fifo,
    queues_are_separate_and_counted,
    delayed_jobs_wait_for_their_time,
    retries_back_off_then_die,
    expired_leases_are_recovered,
    heartbeats_keep_leases,
    released_jobs_go_to_the_front_uncounted,
    dead_jobs_can_be_retried_or_deleted,
    waiters_wake_when_a_job_ends,
    blocked_fetchers_wake_on_enqueue,
    results_expire,
    cancelling_waiting_and_running_jobs,
    a_failing_attempt_of_a_cancelled_job_is_not_retried,
    totals_count_every_outcome,
    modules_in_use_are_not_deleted,
    cron_ticks_fire_once,
    paused_queues_accept_but_hand_out_nothing,
    workers_report_and_expire,
    a_batch_calls_back_once_when_every_job_ended,
    a_batch_is_all_or_nothing,
    a_record_keeps_the_last_25_failures,
    jobs_are_listed_by_state_in_order,
    scheduled_jobs_can_run_now,
    the_whole_dead_set_can_be_retried_or_deleted,
    module_usage_counts_jobs_not_yet_succeeded,
    the_succeeded_listing_keeps_the_newest_10000,
);
