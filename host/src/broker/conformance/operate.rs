//! Conformance cases of inspecting and operating: counts, listings, the dead set, run now,
//! cancelling, totals, deleting modules, pausing, the worker registry.

use std::time::{Duration, Instant};

use super::*;
use crate::broker::{
    Ack, BrokerError, CancelOutcome, Completion, Enqueued, ModuleDeletion, NewBatch, QueueLimits,
    WorkerInfo,
};
use crate::job::{FailureKind, JobState};

/// Conformance case `queues_are_separate_and_counted`.
pub async fn queues_are_separate_and_counted(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `jobs_are_listed_by_state_in_order`.
pub async fn jobs_are_listed_by_state_in_order(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    let later = crate::time::now_ms() + 60_000;
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
    // Expired results drop out of the listing (a broker that keeps them briefly).
    let short = Subject::new(store, SHORT_TTL).await;
    let short = short.broker.as_ref();
    let gone = job("gone", |i| i.queue = "short".into());
    put(short, std::slice::from_ref(&gone)).await;
    let q = ["short".to_owned()];
    let lease = short.fetch(&q, 1, LEASE, "w").await.unwrap().remove(0);
    short.ack(&[ok(&lease)]).await.unwrap();
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(500)).await;
    let listed = short
        .jobs("short", JobState::Succeeded, 0, 10)
        .await
        .unwrap();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);
}

/// Conformance case `the_succeeded_listing_keeps_the_newest_10000`.
pub async fn the_succeeded_listing_keeps_the_newest_10000(store: &dyn Store) {
    // The cap, not the TTL, is under test: results outlive however long a slow machine takes to
    // run 10,050 jobs (with a 2 s TTL, one run listed only 7,490).
    let b = Subject::new(store, TTL).await;
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
    assert_eq!(page.total, crate::broker::MAX_FINISHED_LISTED as u64);
    let last = b
        .jobs("default", JobState::Succeeded, 9_999, 5)
        .await
        .unwrap();
    assert_eq!(last.jobs.len(), 1, "the 10,000th is the last listed");
    assert_eq!(counts(b).await.totals.succeeded, 10_050, "all ran");
}

/// Conformance case `scheduled_jobs_can_run_now`.
pub async fn scheduled_jobs_can_run_now(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    let later = crate::time::now_ms() + 3_600_000;
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

/// Conformance case `the_whole_dead_set_can_be_retried_or_deleted`.
pub async fn the_whole_dead_set_can_be_retried_or_deleted(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `module_usage_counts_jobs_not_yet_succeeded`.
pub async fn module_usage_counts_jobs_not_yet_succeeded(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    put(b, &[job("a", |_| {}), job("b", |_| {}), job("c", |_| {})]).await;
    let usage = b.module_usage().await.unwrap();
    assert_eq!(usage.get(&module()), Some(&3));
    let lease = fetch(b, 1).await.remove(0);
    b.ack(&[ok(&lease)]).await.unwrap();
    assert_eq!(b.module_usage().await.unwrap().get(&module()), Some(&2));
}

/// Conformance case `dead_jobs_can_be_retried_or_deleted`.
pub async fn dead_jobs_can_be_retried_or_deleted(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `cancelling_waiting_and_running_jobs`.
pub async fn cancelling_waiting_and_running_jobs(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `a_failing_attempt_of_a_cancelled_job_is_not_retried`.
pub async fn a_failing_attempt_of_a_cancelled_job_is_not_retried(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `totals_count_every_outcome`.
pub async fn totals_count_every_outcome(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `modules_in_use_are_not_deleted`.
pub async fn modules_in_use_are_not_deleted(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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

/// Conformance case `paused_queues_accept_but_hand_out_nothing`.
pub async fn paused_queues_accept_but_hand_out_nothing(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
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
                .wait_for_work(&["default".to_owned()], Duration::from_secs(20))
                .await
                .unwrap();
            start.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.set_paused("default", false).await.unwrap();
    // Woken, not at its 20 s timeout.
    assert!(waiter.await.unwrap() < Duration::from_secs(10));
    assert!(!counts(broker.as_ref()).await.paused);
    assert_eq!(ids(&fetch(broker.as_ref(), 5).await), ["a", "b"]);
}

/// Conformance case `workers_report_and_expire`.
pub async fn workers_report_and_expire(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    let now = crate::time::now_ms();
    let worker = |name: &str, seen: u64| WorkerInfo {
        name: name.into(),
        host: "h".into(),
        pid: 1,
        queues: vec!["default".into()],
        concurrency: 4,
        in_flight: 2,
        waiting: 1,
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

/// Conformance case `a_full_queue_refuses_enqueues_whole`: a queue capped at `max_size` counts
/// its jobs waiting or running; an enqueue whose new jobs would pass the cap is refused whole
/// (ids already there do not count), a batch too; finishing jobs makes room; retries are never
/// refused; without the cap anything goes in.
pub async fn a_full_queue_refuses_enqueues_whole(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    b.put_module(module(), b"x").await.unwrap();
    let capped = QueueLimits {
        max_size: Some(3),
        ..QueueLimits::default()
    };
    b.set_limits("default", &capped).await.unwrap();
    let limits = b.queues().await.unwrap()[0].limits;
    assert_eq!(limits.max_size, Some(3));
    b.enqueue(&[job("a", |_| {}), job("b", |_| {})])
        .await
        .unwrap();
    let full = |e: BrokerError| match e {
        BrokerError::QueueFull { queue, size, max } => (queue, size, max),
        other => panic!("queue full, not {other}"),
    };
    // Two new ids (and one already there): 4 > 3, so neither new one goes in.
    let err = b
        .enqueue(&[job("a", |_| {}), job("c", |_| {}), job("d", |_| {})])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`wasmq limit default --max-size`"),
        "{err}"
    );
    assert_eq!(full(err), ("default".to_owned(), 2, 3));
    assert!(b.job(None, "c").await.unwrap().is_none());
    assert!(b.job(None, "d").await.unwrap().is_none());
    // Repeating an id already there costs no room.
    assert_eq!(
        b.enqueue(&[job("a", |_| {}), job("c", |_| {})])
            .await
            .unwrap(),
        [Enqueued::Existed, Enqueued::Created]
    );
    // Leased jobs count; scheduled ones (a retry) too, and a retry is never refused.
    let leases = fetch(b, 1).await;
    let batch = NewBatch {
        id: "B".into(),
        jobs: vec![job("x", |_| {})],
        callback: job("batch:B:callback", |_| {}),
    };
    assert_eq!(full(b.enqueue_batch(&batch).await.unwrap_err()).1, 3);
    assert!(b.batch("default", "B").await.unwrap().is_none());
    let retry = Ack {
        lease: leases[0].key.clone(),
        completion: Completion::Retry {
            delay: Duration::from_secs(60),
            error: error(&leases[0], FailureKind::Retry),
            report: None,
        },
    };
    b.ack(&[retry]).await.unwrap();
    let retried = b.job(None, &leases[0].key.id).await.unwrap().unwrap();
    assert_eq!(retried.state, JobState::Scheduled);
    assert_eq!(full(b.enqueue(&[job("e", |_| {})]).await.unwrap_err()).1, 3);
    // A job that ends makes room.
    let leases = fetch(b, 1).await;
    b.ack(&[ok(&leases[0])]).await.unwrap();
    b.enqueue(&[job("e", |_| {})]).await.unwrap();
    assert_eq!(full(b.enqueue(&[job("f", |_| {})]).await.unwrap_err()).1, 3);
    // No cap, no refusal.
    b.set_limits("default", &QueueLimits::default())
        .await
        .unwrap();
    b.enqueue(&[job("f", |_| {})]).await.unwrap();
    assert_eq!(b.enqueue_batch(&batch).await.unwrap(), Enqueued::Created);
}
