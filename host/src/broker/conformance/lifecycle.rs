//! Conformance cases of the core: modules, enqueue, fetch order, leases and heartbeats,
//! acknowledgements, retries, waiting for work and for jobs, result expiry.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::broker::{Ack, Completion, Enqueued};
use crate::job::{FailureKind, JobState};
use crate::modules::ModuleHash;

/// Conformance case `modules_are_stored_once`.
pub async fn modules_are_stored_once(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `a_job_runs_once_and_keeps_its_result`.
pub async fn a_job_runs_once_and_keeps_its_result(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `enqueue_is_idempotent_by_id`.
pub async fn enqueue_is_idempotent_by_id(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `priority_then_fifo`.
pub async fn priority_then_fifo(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `delayed_jobs_wait_for_their_time`.
pub async fn delayed_jobs_wait_for_their_time(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    // Two seconds ahead: "not yet" is asserted only while it is still true by this machine's
    // clock, so a slow machine skips the check instead of failing it.
    let due = std::time::Instant::now() + Duration::from_secs(2);
    let at = crate::time::format_time(crate::time::now_ms() + 2000);
    put(b, &[job("later", |i| i.run_at = Some(at))]).await;
    assert_eq!(state(b, "later").await, Some(JobState::Scheduled));
    b.maintain("default", &[]).await.unwrap();
    let early = fetch(b, 1).await;
    if std::time::Instant::now() < due {
        assert!(early.is_empty(), "not before its time");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(b.maintain("default", &[]).await.unwrap().promoted, 1);
    assert_eq!(ids(&fetch(b, 1).await), ["later"]);
}

/// Conformance case `one_ack_ends_each_job_its_own_way`: a batch of acks mixing outcomes, in
/// any order, ends each job as its own ack says; a stale one among them changes nothing.
pub async fn one_ack_ends_each_job_its_own_way(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    put(b, &["r", "s1", "d", "x", "s2"].map(|id| job(id, |_| {}))).await;
    let leases = fetch(b, 5).await;
    let lease = |id: &str| leases.iter().find(|l| l.key.id == id).unwrap();
    let mut stale = ok(lease("x"));
    stale.lease.token += 1;
    let acks = [
        Ack {
            lease: lease("r").key.clone(),
            completion: Completion::Retry {
                delay: Duration::from_secs(3600),
                error: error(lease("r"), FailureKind::Trap),
                report: None,
            },
        },
        ok(lease("s1")),
        Ack {
            lease: lease("d").key.clone(),
            completion: Completion::Dead {
                error: error(lease("d"), FailureKind::OutOfFuel),
                report: None,
            },
        },
        stale,
        ok(lease("s2")),
    ];
    assert_eq!(b.ack(&acks).await.unwrap(), 1, "the wrong token is stale");
    for (id, want) in [
        ("r", JobState::Scheduled),
        ("s1", JobState::Succeeded),
        ("d", JobState::Dead),
        ("x", JobState::Leased),
        ("s2", JobState::Succeeded),
    ] {
        assert_eq!(state(b, id).await, Some(want), "{id}");
    }
    let record = |id: &'static str| async move { b.job(None, id).await.unwrap().unwrap() };
    for id in ["s1", "s2"] {
        let report = record(id).await.report.unwrap();
        assert_eq!(report.result, Some(json!({"done": id})));
        assert_eq!(report.fuel_used, 42);
    }
    let last = |r: crate::broker::JobRecord| r.last_error.unwrap().kind;
    assert_eq!(last(record("r").await), FailureKind::Trap);
    assert_eq!(last(record("d").await), FailureKind::OutOfFuel);
    let totals = counts(b).await.totals;
    assert_eq!(
        (totals.succeeded, totals.retried, totals.dead, totals.failed),
        (2, 1, 1, 2)
    );
}

/// Conformance case `retries_back_off_then_die`.
pub async fn retries_back_off_then_die(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    put(b, &[job("r", |i| i.max_attempts = 2)]).await;
    let first = fetch(b, 1).await.remove(0);
    let retry = Ack {
        lease: first.key.clone(),
        completion: Completion::Retry {
            delay: Duration::from_secs(2),
            error: error(&first, FailureKind::Trap),
            report: None,
        },
    };
    // "Backing off" is asserted only while the delay has surely not passed (see
    // `delayed_jobs_wait_for_their_time`).
    let due = std::time::Instant::now() + Duration::from_secs(2);
    b.ack(&[retry]).await.unwrap();
    let record = b.job(None, "r").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Scheduled);
    assert_eq!(record.last_error.unwrap().kind, FailureKind::Trap);
    b.maintain("default", &[]).await.unwrap();
    let early = fetch(b, 1).await;
    if std::time::Instant::now() < due {
        assert!(early.is_empty(), "backing off");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    b.maintain("default", &[]).await.unwrap();
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

/// Conformance case `a_record_keeps_the_last_25_failures`.
pub async fn a_record_keeps_the_last_25_failures(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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
        b.maintain("default", &[]).await.unwrap();
    }
    let record = b.job(None, "f").await.unwrap().unwrap();
    let attempts: Vec<u32> = record.errors.iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, (3..=27).collect::<Vec<_>>());
    assert_eq!(record.last_error.unwrap().attempt, 27);
}

/// Conformance case `expired_leases_are_recovered`.
pub async fn expired_leases_are_recovered(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    put(b, &[job("a", |i| i.max_attempts = 2)]).await;
    // Leases are taken long (a slow machine cannot outlast them) and cut short by a heartbeat
    // asking for a millisecond when the case wants them expired.
    let expire = |key: &crate::broker::LeaseKey| {
        let key = key.clone();
        async move {
            b.heartbeat(&[key], Duration::from_millis(1)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let q = ["default".to_owned()];
    let first = b.fetch(&q, 1, LEASE, "doomed").await.unwrap().remove(0);
    b.maintain("default", &[]).await.unwrap();
    assert_eq!(
        state(b, "a").await,
        Some(JobState::Leased),
        "not yet expired"
    );
    expire(&first.key).await;
    assert_eq!(b.maintain("default", &[]).await.unwrap().recovered, 1);
    let record = b.job(None, "a").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Ready);
    let err = record.last_error.unwrap();
    assert_eq!(err.kind, FailureKind::LeaseExpired);
    assert!(err.message.contains("`doomed`"), "{}", err.message);
    let second = b.fetch(&q, 1, LEASE, "w2").await.unwrap().remove(0);
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
    expire(&second.key).await;
    assert_eq!(b.maintain("default", &[]).await.unwrap().expired_dead, 1);
    let record = b.job(None, "a").await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Dead);
    assert_eq!(b.dead("default", 10).await.unwrap()[0].id, "a");
}

/// Conformance case `a_workers_own_expired_leases_are_left_to_it`: a worker slow to heartbeat
/// (after a stall) does not lose the jobs it is running to its own recovery pass; anyone else's
/// pass still recovers them.
pub async fn a_workers_own_expired_leases_are_left_to_it(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    put(b, &[job("a", |i| i.max_attempts = 1)]).await;
    let short = Duration::from_millis(100);
    let q = ["default".to_owned()];
    let mine = b.fetch(&q, 1, short, "slow").await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A key with another token is not the caller's lease.
    let stale = crate::broker::LeaseKey {
        token: mine.key.token + 1,
        ..mine.key.clone()
    };
    let own = [mine.key.clone()];
    assert_eq!(b.maintain("default", &own).await.unwrap().expired_dead, 0);
    assert_eq!(state(b, "a").await, Some(JobState::Leased));
    let beat = b.heartbeat(&own, LEASE).await.unwrap();
    assert_eq!(beat, Default::default(), "its heartbeat renews it");
    assert_eq!(b.ack(&[ok(&mine)]).await.unwrap(), 0);
    assert_eq!(state(b, "a").await, Some(JobState::Succeeded));
    // Another worker's pass (or a key that is not the lease) recovers an expired one.
    put(b, &[job("b", |i| i.max_attempts = 1)]).await;
    let theirs = b.fetch(&q, 1, short, "slow").await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let not_it = crate::broker::LeaseKey {
        id: theirs.key.id.clone(),
        ..stale
    };
    assert_eq!(
        b.maintain("default", &[not_it]).await.unwrap().expired_dead,
        1
    );
    assert_eq!(state(b, "b").await, Some(JobState::Dead));
}

/// Conformance case `heartbeats_keep_leases`.
pub async fn heartbeats_keep_leases(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {})]).await;
    let q = ["default".to_owned()];
    // Each round the lease has expired (a heartbeat asked for a millisecond) but is not yet
    // recovered: a heartbeat then renews it, and the recovery pass leaves it alone.
    let lease = b
        .fetch(&q, 1, Duration::from_millis(1), "w1")
        .await
        .unwrap()
        .remove(0);
    let key = std::slice::from_ref(&lease.key);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let beat = b.heartbeat(key, LEASE).await.unwrap();
        assert_eq!(beat, Default::default());
        assert_eq!(b.maintain("default", &[]).await.unwrap().recovered, 0);
        b.heartbeat(key, Duration::from_millis(1)).await.unwrap();
    }
    b.heartbeat(key, LEASE).await.unwrap();
    assert_eq!(b.ack(&[ok(&lease)]).await.unwrap(), 0);
}

/// Conformance case `released_jobs_go_to_the_front_uncounted`.
pub async fn released_jobs_go_to_the_front_uncounted(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `waiters_wake_when_a_job_ends`.
pub async fn waiters_wake_when_a_job_ends(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `blocked_fetchers_wake_on_enqueue`.
pub async fn blocked_fetchers_wake_on_enqueue(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let broker = b.broker.clone();
    broker.put_module(module(), b"x").await.unwrap();
    let q = vec!["default".to_owned()];
    let waiter = tokio::spawn({
        let broker = broker.clone();
        async move {
            let start = Instant::now();
            broker
                .wait_for_work(&q, Duration::from_secs(20))
                .await
                .unwrap();
            start.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    put(broker.as_ref(), &[job("a", |_| {})]).await;
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woken by the enqueue, not at its 20 s timeout: {waited:?}"
    );
}

/// Conformance case `results_expire`.
pub async fn results_expire(store: &dyn Store) {
    let b = Subject::new(store, SHORT_TTL).await;
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {})]).await;
    let lease = fetch(b, 1).await.remove(0);
    let kept_until = std::time::Instant::now() + SHORT_TTL;
    b.ack(&[ok(&lease)]).await.unwrap();
    let kept = state(b, "a").await;
    // Asserted only while the result surely has not expired, so a slow machine skips it.
    if std::time::Instant::now() < kept_until {
        assert_eq!(kept, Some(JobState::Succeeded));
    }
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(200)).await;
    assert_eq!(state(b, "a").await, None);
    assert_eq!(
        put(b, &[job("a", |_| {})]).await,
        vec![Enqueued::Created],
        "the id is free again once the result expired"
    );
}
