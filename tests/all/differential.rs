//! The memory broker against the Redis broker: the same random sequence of operations — enqueue
//! (some delayed, some with priorities), fetch, succeed, retry, fail, release, cancel, retry or
//! delete from the dead set, run now, pause — driven into both, and every observable result
//! compared after each step: what each call returned, each job's state, attempts and failures,
//! every queue's counts and totals, and each state's listing in order.
//!
//! Time is kept out of it on purpose: leases, delays and backoffs are an hour long, so nothing
//! expires or comes due by itself while the sequence runs, and both brokers see the same state
//! machine however slow the machine is. Seeds are fixed so that a failure replays; set
//! `WASMQ_DIFF_SEED` to try another.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use wasmq::broker::memory::MemoryBroker;
use wasmq::broker::redis::RedisBroker;
use wasmq::broker::{Ack, ApiBroker, CancelOutcome, Completion, Enqueued, Lease};
use wasmq::invocation::{Invocation, NewJob};
use wasmq::job::{AttemptError, FailureKind, JobState, Limits, RunReport};
use wasmq::modules::ModuleHash;

use crate::common::redis::RedisServer;

/// Operations per seed: enough to reach the dead set, retries of dead jobs and re-deaths.
const STEPS: usize = 400;
/// Job ids are drawn from a small set, so that repeats (idempotent enqueue, acting on a job in
/// every state) are common.
const IDS: u32 = 24;
const QUEUES: [&str; 2] = ["default", "mail"];
const HOUR: Duration = Duration::from_secs(3600);

/// One side of the comparison: a broker and the leases it handed out, by job id.
struct Side {
    broker: Arc<dyn ApiBroker>,
    held: Vec<Lease>,
}

fn module() -> ModuleHash {
    ModuleHash::of(b"differential: the broker does not look inside")
}

fn new_job(rng: &mut fastrand::Rng) -> NewJob {
    let id = format!("j{}", rng.u32(0..IDS));
    let mut inv = Invocation::new(module());
    inv.queue = QUEUES[rng.usize(0..QUEUES.len())].to_owned();
    inv.id = Some(format!("{}-{id}", inv.queue));
    inv.priority = [0, 0, 0, 5, -5][rng.usize(0..5)];
    inv.max_attempts = rng.u32(1..4);
    inv.args = json!({ "id": id });
    if rng.u8(0..6) == 0 {
        inv.run_at = Some(wasmq::time::format_time(wasmq::time::now_ms() + 3_600_000));
    }
    inv.prepare(&Limits::default_ceilings()).unwrap()
}

/// One step, decided by the random draw, applied to both sides in the same way.
#[derive(Debug, Clone)]
enum Op {
    Enqueue(Vec<NewJob>),
    Fetch(&'static str, usize),
    /// Acknowledge the `n`th held lease (modulo how many are held) with outcome `how`.
    Ack(usize, u8),
    Release(usize),
    Cancel(&'static str, String),
    RetryDead(&'static str, String),
    DeleteDead(&'static str, String),
    RunNow(&'static str, String),
    Pause(&'static str, bool),
}

fn draw(rng: &mut fastrand::Rng) -> Op {
    let queue = QUEUES[rng.usize(0..QUEUES.len())];
    let id = format!("{queue}-j{}", rng.u32(0..IDS));
    match rng.u8(0..100) {
        0..25 => Op::Enqueue((0..rng.usize(1..4)).map(|_| new_job(rng)).collect()),
        25..45 => Op::Fetch(queue, rng.usize(1..4)),
        45..70 => Op::Ack(rng.usize(0..64), rng.u8(0..4)),
        70..75 => Op::Release(rng.usize(0..64)),
        75..81 => Op::Cancel(queue, id),
        81..87 => Op::RetryDead(queue, id),
        87..91 => Op::DeleteDead(queue, id),
        91..96 => Op::RunNow(queue, id),
        _ => Op::Pause(queue, rng.bool()),
    }
}

fn report(lease: &Lease) -> RunReport {
    RunReport {
        attempt: lease.attempt,
        worker: "w".into(),
        result: Some(json!({ "id": lease.key.id })),
        ..RunReport::default()
    }
}

fn failure(lease: &Lease, kind: FailureKind) -> AttemptError {
    AttemptError::new(
        lease.attempt,
        kind,
        format!("{kind} on attempt {}", lease.attempt),
        1,
    )
}

impl Side {
    /// Applies `op` and returns what an observer saw, as text both sides must agree on.
    async fn apply(&mut self, op: &Op) -> String {
        let b = self.broker.as_ref();
        match op {
            Op::Enqueue(jobs) => {
                let out: Vec<Enqueued> = b.enqueue(jobs).await.unwrap();
                format!("{out:?}")
            }
            Op::Fetch(queue, max) => {
                let leases = b
                    .fetch(&[(*queue).to_owned()], *max, HOUR, "w")
                    .await
                    .unwrap();
                let seen: Vec<_> = leases
                    .iter()
                    .map(|l| (l.key.id.clone(), l.attempt))
                    .collect();
                self.held.extend(leases);
                format!("{seen:?}")
            }
            Op::Ack(n, how) => {
                if self.held.is_empty() {
                    return "none held".into();
                }
                let lease = self.held.remove(n % self.held.len());
                let completion = match how {
                    0 => Completion::Succeeded(report(&lease)),
                    1 => Completion::Retry {
                        delay: HOUR,
                        error: failure(&lease, FailureKind::Trap),
                        report: Some(report(&lease)),
                    },
                    2 => Completion::Dead {
                        error: failure(&lease, FailureKind::Fail),
                        report: None,
                    },
                    _ => Completion::Cancelled {
                        error: failure(&lease, FailureKind::Cancelled),
                    },
                };
                let stale = b
                    .ack(&[Ack {
                        lease: lease.key.clone(),
                        completion,
                    }])
                    .await
                    .unwrap();
                format!("{} stale {stale}", lease.key.id)
            }
            Op::Release(n) => {
                if self.held.is_empty() {
                    return "none held".into();
                }
                let lease = self.held.remove(n % self.held.len());
                b.release(std::slice::from_ref(&lease.key)).await.unwrap();
                format!("released {}", lease.key.id)
            }
            Op::Cancel(queue, id) => {
                let out: CancelOutcome = b.cancel(queue, id).await.unwrap();
                format!("{out:?}")
            }
            Op::RetryDead(queue, id) => format!("{}", b.retry_dead(queue, id).await.unwrap()),
            Op::DeleteDead(queue, id) => format!("{}", b.delete_dead(queue, id).await.unwrap()),
            Op::RunNow(queue, id) => format!("{}", b.run_now(queue, id).await.unwrap()),
            Op::Pause(queue, paused) => {
                b.set_paused(queue, *paused).await.unwrap();
                String::new()
            }
        }
    }

    /// Everything an observer can see of the queues, without times (each side has its own clock).
    async fn observe(&self) -> String {
        let b = self.broker.as_ref();
        let mut out = String::new();
        for counts in b.queues().await.unwrap() {
            out += &format!(
                "{} ready {} scheduled {} leased {} dead {} paused {} totals {:?}\n",
                counts.queue,
                counts.ready,
                counts.scheduled,
                counts.leased,
                counts.dead,
                counts.paused,
                counts.totals
            );
            for state in [
                JobState::Ready,
                JobState::Scheduled,
                JobState::Leased,
                JobState::Succeeded,
                JobState::Dead,
                JobState::Cancelled,
            ] {
                let page = b.jobs(&counts.queue, state, 0, 100).await.unwrap();
                let mut ids: Vec<&str> = page.jobs.iter().map(|r| r.id.as_str()).collect();
                // Lists ordered by a time (due, deadline, death, end) are read on each broker's own
                // clock, so jobs moved in the same millisecond may order either way: compare their
                // membership. The ready list's order (priority, then FIFO) must agree exactly.
                if state != JobState::Ready {
                    ids.sort_unstable();
                }
                out += &format!("  {state:?} {} {ids:?}\n", page.total);
            }
        }
        for queue in QUEUES {
            for n in 0..IDS {
                let id = format!("{queue}-j{n}");
                if let Some(r) = b.job(Some(queue), &id).await.unwrap() {
                    let errors: Vec<_> = r
                        .errors
                        .iter()
                        .map(|e| (e.attempt, e.kind, e.message.clone()))
                        .collect();
                    out += &format!(
                        "{id}: {:?} attempts {} max {} prio {} errors {errors:?} result {:?}\n",
                        r.state,
                        r.attempts,
                        r.invocation.max_attempts,
                        r.invocation.priority,
                        r.report.as_ref().and_then(|p| p.result.clone()),
                    );
                }
            }
        }
        out
    }
}

async fn run_seed(seed: u64, server: &RedisServer) {
    let redis = RedisBroker::connect_with_prefix(&server.url(), &format!("diff{seed}"))
        .await
        .unwrap()
        .with_result_ttl(HOUR);
    let mut sides = [
        Side {
            broker: Arc::new(MemoryBroker::new().with_result_ttl(HOUR)),
            held: Vec::new(),
        },
        Side {
            broker: Arc::new(redis),
            held: Vec::new(),
        },
    ];
    for side in &sides {
        side.broker.put_module(module(), b"x").await.unwrap();
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut log = Vec::new();
    for step in 0..STEPS {
        let op = draw(&mut rng);
        let memory = sides[0].apply(&op).await;
        let redis = sides[1].apply(&op).await;
        log.push(format!("{step}: {op:?} → {memory}"));
        let history = || log[log.len().saturating_sub(12)..].join("\n");
        assert_eq!(
            memory,
            redis,
            "seed {seed}, step {step}: {op:?} answered differently; last steps:\n{}",
            history()
        );
        let (seen_memory, seen_redis) = (sides[0].observe().await, sides[1].observe().await);
        if seen_memory != seen_redis {
            let differ: Vec<String> = seen_memory
                .lines()
                .zip(seen_redis.lines())
                .filter(|(m, r)| m != r)
                .map(|(m, r)| format!("  memory: {m}\n  redis:  {r}"))
                .collect();
            panic!(
                "seed {seed}, step {step}: the brokers disagree after {op:?}:\n{}\nlast steps:\n{}",
                differ.join("\n"),
                history()
            );
        }
    }
}

#[tokio::test]
async fn memory_and_redis_brokers_agree_on_random_sequences() {
    let server = RedisServer::start();
    let seeds: Vec<u64> = match std::env::var("WASMQ_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("WASMQ_DIFF_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        run_seed(seed, &server).await;
    }
}
