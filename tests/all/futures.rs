//! Futures across jobs: a parent enqueues sub-jobs, awaits them (`join`) and uses their results —
//! on both brokers. Each test counts: results merged exactly, the children that exist, the
//! outcomes the parent saw.

use crate::common;
use crate::common::backend::{Backend, backend_suite, job, upload, upload_bytes};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wasmq::broker::memory::MemoryBroker;
use wasmq::broker::{Ack, ApiBroker, Completion, JobRecord, JobRef};
use wasmq::invocation::NewJob;
use wasmq::job::{FailureKind, JobState, RunReport};
use wasmq::worker::{Backoff, Worker, WorkerConfig};

fn config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        maintain_every: Duration::from_millis(20),
        // Children left sleeping when a test has what it needs are not waited for.
        grace: Duration::from_millis(100),
        ..WorkerConfig::default()
    }
}

/// Enqueues `jobs`, runs one worker with `config` until each is final (waiting up to ten
/// minutes: a loaded machine is slow, not wrong), stops it and returns their records.
async fn run(b: &Arc<dyn ApiBroker>, config: WorkerConfig, jobs: &[NewJob]) -> Vec<JobRecord> {
    common::backend::run_until_final(b, config, jobs, Duration::from_secs(600))
        .await
        .0
}

/// A text whose word counts are known: word `w<i>` appears `i + 1` times, and `Mixed` in three
/// spellings of case.
fn text() -> (String, BTreeMap<String, u64>) {
    let mut words = Vec::new();
    let mut counts = BTreeMap::new();
    for i in 0..60u64 {
        for _ in 0..=i {
            words.push(format!("w{i}"));
        }
        counts.insert(format!("w{i}"), i + 1);
    }
    // Interleave, so that each chunk holds many different words.
    words.sort_by_key(|w| w.len() * 7 + w.as_bytes()[w.len() - 1] as usize);
    for w in ["Mixed", "mixed", "MIXED"] {
        words.insert(words.len() / 2, w.to_owned());
    }
    counts.insert("mixed".to_owned(), 3);
    (words.join(" "), counts)
}

fn counts_of(v: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(v["counts"].clone()).unwrap()
}

async fn a_hundred_children_are_awaited_and_merged_exactly(b: Backend) {
    let counter = upload(b.broker.as_ref(), "word-count").await;
    let map_reduce = upload(b.broker.as_ref(), "map-reduce").await;
    let (text, expected) = text();
    let parent = job(
        map_reduce,
        "mr",
        json!({"text": text, "chunks": 100, "counter": counter}),
        |_| {},
    );
    let records = run(&b.broker, config(8), &[parent]).await;
    let r = &records[0];
    assert_eq!(r.state, JobState::Succeeded, "{:?}", r.last_error);
    assert_eq!(
        counts_of(r.report.as_ref().unwrap().result.as_ref().unwrap()),
        expected
    );
    // Exactly the hundred children, named by their keys, each run once.
    let children = &r.report.as_ref().unwrap().sub_jobs;
    assert_eq!(children.len(), 100);
    for (i, child) in children.iter().enumerate() {
        let id = format!("mr.chunk-{i}");
        assert_eq!(*child, id);
        let child = b.broker.job(Some("default"), &id).await.unwrap().unwrap();
        assert_eq!(
            (child.state, child.attempts),
            (JobState::Succeeded, 1),
            "{id}"
        );
    }
    assert!(
        b.broker
            .job(Some("default"), "mr.chunk-100")
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_parent_on_a_worker_of_one_slot_awaits_ten_children_on_its_own_queue(b: Backend) {
    let counter = upload(b.broker.as_ref(), "word-count").await;
    let map_reduce = upload(b.broker.as_ref(), "map-reduce").await;
    let (text, expected) = text();
    let parent = job(
        map_reduce,
        "one-slot",
        json!({"text": text, "chunks": 10, "counter": counter}),
        |_| {},
    );
    // One slot: the parent gives it back while it waits, or its children could never run.
    let records = run(&b.broker, config(1), &[parent]).await;
    assert_eq!(
        records[0].state,
        JobState::Succeeded,
        "{:?}",
        records[0].last_error
    );
    assert_eq!(records[0].attempts, 1);
    assert_eq!(
        counts_of(records[0].report.as_ref().unwrap().result.as_ref().unwrap()),
        expected
    );
}

async fn python_awaits_javascript_and_javascript_awaits_python(b: Backend) {
    let py_parent = upload(b.broker.as_ref(), "python-map-reduce").await;
    let js_parent = upload(b.broker.as_ref(), "js-map-reduce").await;
    let py_counter = upload(b.broker.as_ref(), "python-word-count").await;
    let js_counter = upload(b.broker.as_ref(), "js-word-count").await;
    let (text, expected) = text();
    let parents = [
        job(
            py_parent,
            "py",
            json!({"text": text, "chunks": 4, "counter": js_counter}),
            |i| i.timeout_ms = 600_000,
        ),
        job(
            js_parent,
            "js",
            json!({"text": text, "chunks": 4, "counter": py_counter}),
            |i| i.timeout_ms = 600_000,
        ),
    ];
    let records = run(&b.broker, config(4), &parents).await;
    for r in &records {
        assert_eq!(r.state, JobState::Succeeded, "{}: {:?}", r.id, r.last_error);
        assert_eq!(
            counts_of(r.report.as_ref().unwrap().result.as_ref().unwrap()),
            expected,
            "{}",
            r.id
        );
        assert_eq!(
            r.report.as_ref().unwrap().sub_jobs,
            (0..4)
                .map(|i| format!("{}.chunk-{i}", r.id))
                .collect::<Vec<_>>()
        );
    }
}

async fn a_dead_child_is_seen_by_its_parent_which_decides(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let child_args = json!({"mode": "fail", "message": "the partner said no"});
    // Handled: the parent sees dead, with the kind and the message, and succeeds.
    let handled = job(
        chaos,
        "handled",
        json!({"mode": "join", "module": chaos, "args": child_args}),
        |_| {},
    );
    // With `?`: the dead child retries the parent with its reason; out of attempts, the parent
    // dies with it.
    let propagated = job(
        chaos,
        "propagated",
        json!({"mode": "join", "module": chaos, "args": child_args, "propagate": true}),
        |i| i.max_attempts = 2,
    );
    let records = run(&b.broker, config(2), &[handled, propagated]).await;

    let h = &records[0];
    assert_eq!(h.state, JobState::Succeeded, "{:?}", h.last_error);
    assert_eq!(
        h.report.as_ref().unwrap().result,
        Some(
            json!({"outcomes": [{"state": "dead", "kind": "fail", "message": "job failed: the partner said no"}]})
        )
    );

    let p = &records[1];
    assert_eq!((p.state, p.attempts), (JobState::Dead, 2));
    let error = p.last_error.as_ref().unwrap();
    assert_eq!(error.kind, FailureKind::Retry);
    assert_eq!(
        error.message,
        "job asked to be retried: sub-job propagated.1 died (fail): job failed: the partner said no"
    );
    // Its second attempt re-attached to the same child: one child, which ran once.
    let child = b
        .broker
        .job(Some("default"), "propagated.1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((child.state, child.attempts), (JobState::Dead, 1));
    assert!(
        b.broker
            .job(Some("default"), "propagated.2")
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_join_with_a_timeout_returns_the_unfinished_as_pending(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    // A child that sleeps far past the join's timeout.
    let parent = job(
        chaos,
        "timed",
        json!({"mode": "join", "module": chaos, "args": {"mode": "sleep", "ms": 120_000},
               "count": 1, "timeout_ms": 300}),
        |_| {},
    );
    let records = run(&b.broker, config(4), &[parent]).await;
    assert_eq!(
        records[0].state,
        JobState::Succeeded,
        "{:?}",
        records[0].last_error
    );
    assert_eq!(
        records[0].report.as_ref().unwrap().result,
        Some(json!({"outcomes": [{"state": "pending"}]}))
    );
}

async fn a_waiting_parent_is_reported_by_its_worker(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    // The child sleeps far longer than the test looks: its parent waits all along.
    let parent = job(
        chaos,
        "reported",
        json!({"mode": "join", "module": chaos, "args": {"mode": "sleep", "ms": 600_000},
               "timeout_ms": 600_000}),
        |i| i.timeout_ms = 900_000,
    );
    common::enqueue(b.broker.as_ref(), &[parent]).await.unwrap();
    let worker = Worker::new(b.broker.clone(), common::sandbox().clone(), config(2));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let workers = b.broker.workers().await.unwrap();
        if workers.iter().any(|w| w.waiting == 1 && w.in_flight == 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported one waiting: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.unwrap();
}

async fn first_n_returns_once_that_many_ended(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let hello = upload(b.broker.as_ref(), "hello").await;
    // Three children that end at once; `first: 2` returns when at least two did.
    let parent = job(
        chaos,
        "firsts",
        json!({"mode": "join", "module": hello, "args": {"name": "x"}, "count": 3, "first": 2}),
        |_| {},
    );
    let records = run(&b.broker, config(4), &[parent]).await;
    let result = records[0].report.as_ref().unwrap().result.clone().unwrap();
    let outcomes = result["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    let done = outcomes.iter().filter(|o| o["state"] == "done").count();
    assert!(done >= 2, "{outcomes:?}");
    for o in outcomes.iter().filter(|o| o["state"] == "done") {
        assert_eq!(o["result"], json!({"message": "Hello, x!"}));
    }
}

async fn waiting_parents_past_the_bound_are_told_so(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    let parent = job(
        chaos,
        "unbounded",
        json!({"mode": "join", "module": chaos, "args": {"mode": "sleep", "ms": 60_000}}),
        |i| i.max_attempts = 1,
    );
    // No waiting places: the join is refused with the reason, and the parent (which turns a
    // refused wait into a retry) dies with it.
    let records = run(
        &b.broker,
        WorkerConfig {
            max_waiting: 0,
            ..config(2)
        },
        &[parent],
    )
    .await;
    let error = records[0].last_error.as_ref().unwrap();
    assert_eq!(records[0].state, JobState::Dead);
    assert!(
        error.message.contains(
            "this worker already holds 0 jobs waiting for sub-jobs, the most it may (--max-waiting)"
        ),
        "{}",
        error.message
    );
}

async fn a_refused_sub_job_write_retries_the_parent_and_stores_nothing(b: Backend) {
    let chaos = upload(b.broker.as_ref(), "chaos").await;
    // The queue holds at most 3: the parent (running) and five buffered children do not fit, so
    // the write of the children is refused whole.
    b.broker
        .set_limits(
            "default",
            &wasmq::broker::QueueLimits {
                max_size: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let parent = job(
        chaos,
        "full",
        json!({"mode": "join", "module": chaos, "args": {"mode": "ok"}, "count": 5}),
        |i| i.max_attempts = 2,
    );
    let records = run(&b.broker, config(2), &[parent]).await;
    let r = &records[0];
    assert_eq!((r.state, r.attempts), (JobState::Dead, 2));
    let error = r.last_error.as_ref().unwrap();
    assert_eq!(error.kind, FailureKind::Retry);
    assert!(
        error.message.contains("sub-jobs could not be enqueued") && error.message.contains("full"),
        "{}",
        error.message
    );
    for n in 1..=5 {
        assert!(
            b.broker
                .job(Some("default"), &format!("full.{n}"))
                .await
                .unwrap()
                .is_none(),
            "full.{n} was stored"
        );
    }
}

/// Whether `queue`/`id`'s record will expire: `Some(true)` with a TTL, `Some(false)` without,
/// `None` when it is gone. Redis reads the key's TTL; the memory broker has no TTL to read, so it
/// is asked whether the record outlives `ttl` (its result TTL) — `wait` past it.
async fn expiring(b: &Backend, queue: &str, id: &str) -> Option<bool> {
    let key = wasmq::broker::redis::Keys::new("wasmq").job(queue, id);
    match b.node_for(&key) {
        Some(server) => match server.cmd(&["TTL", &key]) {
            redis::Value::Int(-2) => None,
            redis::Value::Int(-1) => Some(false),
            redis::Value::Int(_) => Some(true),
            other => panic!("TTL said {other:?}"),
        },
        None => {
            tokio::time::sleep(MEMORY_TTL * 20).await;
            b.broker.job(Some(queue), id).await.unwrap().map(|_| false)
        }
    }
}

/// The memory broker's result TTL in the lineage tests: short, so that a record not held is
/// gone by the time it is looked at again.
const MEMORY_TTL: Duration = Duration::from_millis(5);

async fn children_are_listed_and_kept_until_their_parent_ends(b: Backend) {
    let b = if b.is_redis() {
        b
    } else {
        Backend {
            broker: Arc::new(MemoryBroker::new().with_result_ttl(MEMORY_TTL)),
            redis: None,
            cluster: None,
        }
    };
    let hello = upload(b.broker.as_ref(), "hello").await;
    let parent = job(hello, "p", json!({}), |_| {});
    let child = job(hello, "p.1", json!({"name": "kid"}), |_| {});
    common::enqueue(b.broker.as_ref(), &[parent, child])
        .await
        .unwrap();
    let (p, c) = (
        JobRef {
            queue: "default".into(),
            id: "p".into(),
        },
        JobRef {
            queue: "default".into(),
            id: "p.1".into(),
        },
    );
    b.broker.adopt(&p, std::slice::from_ref(&c)).await.unwrap();
    b.broker.adopt(&p, std::slice::from_ref(&c)).await.unwrap();
    let record = b.broker.job(Some("default"), "p").await.unwrap().unwrap();
    assert_eq!(record.children, std::slice::from_ref(&c), "listed once");
    let record = b.broker.job(Some("default"), "p.1").await.unwrap().unwrap();
    assert_eq!(record.parent, Some(p.clone()));

    // The child ends; held, its record outlives the result TTL.
    let leases = b
        .broker
        .fetch(&["default".into()], 2, Duration::from_secs(30), "w")
        .await
        .unwrap();
    let acks: Vec<Ack> = leases
        .iter()
        .filter(|l| l.key.id == "p.1")
        .map(|l| Ack {
            lease: l.key.clone(),
            completion: Completion::Succeeded(RunReport::default()),
        })
        .collect();
    assert_eq!(acks.len(), 1);
    b.broker.ack(&acks).await.unwrap();
    assert_eq!(expiring(&b, "default", "p.1").await, Some(false), "held");
    // Its parent ends: the child's record expires after the TTL from now.
    b.broker.release_children(&p).await.unwrap();
    assert_ne!(
        expiring(&b, "default", "p.1").await,
        Some(false),
        "released"
    );
}

async fn cancelling_a_waiting_parent_releases_its_children(b: Backend) {
    let b = if b.is_redis() {
        b
    } else {
        Backend {
            broker: Arc::new(MemoryBroker::new().with_result_ttl(MEMORY_TTL)),
            redis: None,
            cluster: None,
        }
    };
    let hello = upload(b.broker.as_ref(), "hello").await;
    // The parent waits on a queue no worker takes; its child (from an earlier attempt, say)
    // ended and is held.
    let parent = job(hello, "waiting", json!({}), |i| i.queue = "parents".into());
    let child = job(hello, "waiting.1", json!({}), |_| {});
    common::enqueue(b.broker.as_ref(), &[parent, child])
        .await
        .unwrap();
    let p = JobRef {
        queue: "parents".into(),
        id: "waiting".into(),
    };
    let c = JobRef {
        queue: "default".into(),
        id: "waiting.1".into(),
    };
    b.broker.adopt(&p, std::slice::from_ref(&c)).await.unwrap();
    let leases = b
        .broker
        .fetch(&["default".into()], 1, Duration::from_secs(30), "w")
        .await
        .unwrap();
    b.broker
        .ack(&[Ack {
            lease: leases[0].key.clone(),
            completion: Completion::Succeeded(RunReport::default()),
        }])
        .await
        .unwrap();
    assert_eq!(
        expiring(&b, "default", "waiting.1").await,
        Some(false),
        "held"
    );
    assert_eq!(
        wasmq::broker::cancel_job(b.broker.as_ref(), "parents", "waiting")
            .await
            .unwrap(),
        wasmq::broker::CancelOutcome::Cancelled
    );
    assert_ne!(
        expiring(&b, "default", "waiting.1").await,
        Some(false),
        "released"
    );
}

async fn a_parents_record_names_its_children_and_releases_them(b: Backend) {
    let counter = upload(b.broker.as_ref(), "word-count").await;
    let map_reduce = upload(b.broker.as_ref(), "map-reduce").await;
    let parent = job(
        map_reduce,
        "named",
        json!({"text": "a b c d e f", "chunks": 3, "counter": counter}),
        |_| {},
    );
    let records = run(&b.broker, config(2), &[parent]).await;
    let expected: Vec<JobRef> = (0..3)
        .map(|i| JobRef {
            queue: "default".into(),
            id: format!("named.chunk-{i}"),
        })
        .collect();
    assert_eq!(
        records[0].state,
        JobState::Succeeded,
        "{:?}",
        records[0].last_error
    );
    assert_eq!(records[0].children, expected);
    for child in &expected {
        let r = b
            .broker
            .job(Some("default"), &child.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.parent,
            Some(JobRef {
                queue: "default".into(),
                id: "named".into()
            })
        );
    }
    // Released once the parent ended (off the ack path: waited for).
    if b.is_redis() {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for child in &expected {
            while expiring(&b, "default", &child.id).await == Some(false) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} still held",
                    child.id
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn a_component_built_against_0_1_0_still_runs(b: Backend) {
    let fixture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/fanout-0.1.0.wasm"
    ))
    .unwrap();
    let old = upload_bytes(b.broker.as_ref(), &fixture).await;
    let hello = upload(b.broker.as_ref(), "hello").await;
    let parent = job(
        old,
        "old",
        json!({"module": hello, "count": 2, "args": {"name": "old"}}),
        |_| {},
    );
    let child = |n: u32| job(hello, &format!("old.{n}"), json!({}), |_| {});
    let records = run(&b.broker, config(2), &[parent]).await;
    assert_eq!(
        records[0].state,
        JobState::Succeeded,
        "{:?}",
        records[0].last_error
    );
    assert_eq!(
        records[0].report.as_ref().unwrap().result,
        Some(json!({"enqueued": ["old.1", "old.2"]}))
    );
    // Its sub-jobs (enqueued through 0.1.0's `enqueue`) are real jobs that run.
    let records = run(&b.broker, config(2), &[child(1), child(2)]).await;
    for r in records {
        assert_eq!(r.state, JobState::Succeeded);
        assert_eq!(
            r.report.unwrap().result,
            Some(json!({"message": "Hello, old!"}))
        );
    }
}

backend_suite!(
    a_hundred_children_are_awaited_and_merged_exactly,
    a_parent_on_a_worker_of_one_slot_awaits_ten_children_on_its_own_queue,
    a_dead_child_is_seen_by_its_parent_which_decides,
    python_awaits_javascript_and_javascript_awaits_python,
    a_join_with_a_timeout_returns_the_unfinished_as_pending,
    first_n_returns_once_that_many_ended,
    a_waiting_parent_is_reported_by_its_worker,
    waiting_parents_past_the_bound_are_told_so,
    a_refused_sub_job_write_retries_the_parent_and_stores_nothing,
    children_are_listed_and_kept_until_their_parent_ends,
    cancelling_a_waiting_parent_releases_its_children,
    a_parents_record_names_its_children_and_releases_them,
    a_component_built_against_0_1_0_still_runs,
);
