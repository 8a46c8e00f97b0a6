//! Conformance cases of cron ticks (each fired once) and batches (a callback once, all or
//! nothing).

use serde_json::json;

use super::*;
use crate::broker::{Ack, CancelOutcome, Completion, CronEntry, Enqueued, NewBatch};
use crate::job::FailureKind;

/// Conformance case `cron_ticks_fire_once`.
pub async fn cron_ticks_fire_once(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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
    // The job of the 1,000 ms tick, as the scheduler names it.
    let tick = job("cron:nightly:1000", |_| {});
    // Two workers see the same due tick; one fires it.
    assert!(
        b.fire_cron("default", "nightly", 1_000, 2_000, &tick)
            .await
            .unwrap()
    );
    assert!(
        !b.fire_cron("default", "nightly", 1_000, 2_000, &tick)
            .await
            .unwrap()
    );
    assert_eq!(b.crons(None).await.unwrap()[0].next_ms, 2_000);
    assert_eq!(ids(&fetch(b, 5).await), ["cron:nightly:1000"]);
    assert!(b.remove_cron("default", "nightly").await.unwrap());
    assert!(!b.remove_cron("default", "nightly").await.unwrap());
    let later = job("cron:nightly:2000", |_| {});
    assert!(
        !b.fire_cron("default", "nightly", 2_000, 3_000, &later)
            .await
            .unwrap(),
        "removed"
    );
    assert_eq!(counts(b).await.totals.enqueued, 1);
}

/// Conformance case `a_batch_calls_back_once_when_every_job_ended`.
pub async fn a_batch_calls_back_once_when_every_job_ended(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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
    // A result whose text is hard to carry over: an empty array, quotes, brackets and commas in
    // a string, an integer past 2^53.
    let result = json!({"n": [], "s": "a,\"result\":}]{[", "big": 12_345_678_901_234_567_890_u64});
    let mut a = ok(&leases[0]);
    if let Completion::Succeeded(report) = &mut a.completion {
        report.result = Some(result.clone());
    }
    b.ack(&[a]).await.unwrap();
    let died = error(&leases[1], FailureKind::Fail);
    let dead = Ack {
        lease: leases[1].key.clone(),
        completion: Completion::Dead {
            error: died.clone(),
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
        lease: crate::broker::LeaseKey {
            queue: "default".into(),
            id: "c".into(),
            token: 1,
        },
        completion: Completion::Cancelled {
            error: AttemptError::new(c.attempts, FailureKind::Cancelled, "x".into(), 1),
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
            {"id": "a", "state": "succeeded", "result": result},
            {"id": "b", "state": "dead", "error": died},
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

/// Conformance case `batch_callbacks_carry_results_within_a_budget`.
pub async fn batch_callbacks_carry_results_within_a_budget(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    let batch = NewBatch {
        id: "R".into(),
        jobs: vec![job("big", |_| {}), job("small", |_| {})],
        callback: job("batch:R:callback", |_| {}),
    };
    b.enqueue_batch(&batch).await.unwrap();
    let leases = fetch(b, 2).await;
    // The first result takes more than the whole budget; the second fits.
    let big = json!("x".repeat(crate::broker::MAX_BATCH_RESULTS_BYTES));
    let acks: Vec<Ack> = leases
        .iter()
        .map(|l| {
            let mut a = ok(l);
            if let Completion::Succeeded(report) = &mut a.completion
                && l.key.id == "big"
            {
                report.result = Some(big.clone());
            }
            a
        })
        .collect();
    b.ack(&acks).await.unwrap();
    let callback = fetch(b, 5).await;
    assert_eq!(ids(&callback), ["batch:R:callback"]);
    assert_eq!(
        callback[0].invocation.args,
        json!({"id": "batch:R:callback", "batch": "R", "jobs": [
            {"id": "big", "state": "succeeded", "result_omitted": true},
            {"id": "small", "state": "succeeded", "result": {"done": "small"}},
        ]})
    );
}

/// Conformance case `a_batch_is_all_or_nothing`.
pub async fn a_batch_is_all_or_nothing(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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
