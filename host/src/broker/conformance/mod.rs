//! The broker conformance suite: what every backend must do, written once against the traits and
//! run on each backend (`tests/all/broker.rs` runs it on the memory broker, on paused time, and on
//! a real Redis). A new backend passes when it passes these, and the differential test
//! (`tests/all/differential.rs`) then holds it against the memory broker.
//!
//! Built only with the `testing` feature. A backend provides a [`Store`]; the
//! [`broker_conformance!`](crate::broker_conformance) macro makes one test per case.

mod cron_batches;
mod egress;
mod lifecycle;
mod operate;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

// Every case, by name, for the macro.
use crate::broker::{Ack, ApiBroker, Completion, Enqueued, Lease, QueueCounts};
use crate::invocation::{Invocation, NewJob};
use crate::job::{AttemptError, FailureKind, JobState, Limits, RunReport};
use crate::modules::ModuleHash;
pub use cron_batches::*;
pub use egress::*;
pub use lifecycle::*;
pub use operate::*;

/// Where a case gets its broker: a fresh, empty one for each case.
#[async_trait]
pub trait Store: Send + Sync {
    /// A new broker with nothing in it, keeping succeeded and cancelled jobs for `result_ttl`.
    async fn broker(&self, result_ttl: Duration) -> Arc<dyn ApiBroker>;
}

/// The broker one case runs against.
struct Subject {
    broker: Arc<dyn ApiBroker>,
}

impl Subject {
    async fn new(store: &dyn Store, result_ttl: Duration) -> Subject {
        Subject {
            broker: store.broker(result_ttl).await,
        }
    }
}

pub const LEASE: Duration = Duration::from_secs(30);
/// Results are kept this long in most cases: far longer than a loaded machine may take between a
/// job's end and a case's look at it.
pub const TTL: Duration = Duration::from_secs(3600);
/// Results are kept this long in the cases that watch them expire.
pub const SHORT_TTL: Duration = Duration::from_secs(2);

pub fn module() -> ModuleHash {
    ModuleHash::of(b"not really a component: the broker does not look")
}

pub fn job(id: &str, f: impl FnOnce(&mut Invocation)) -> NewJob {
    let mut inv = Invocation::new(module());
    inv.id = Some(id.to_owned());
    inv.args = json!({ "id": id });
    f(&mut inv);
    inv.prepare(&Limits::default_ceilings()).unwrap()
}

pub async fn put(b: &dyn ApiBroker, jobs: &[NewJob]) -> Vec<Enqueued> {
    b.put_module(module(), b"x").await.unwrap();
    b.enqueue(jobs).await.unwrap()
}

pub async fn fetch(b: &dyn ApiBroker, max: usize) -> Vec<Lease> {
    b.fetch(&["default".to_owned()], max, LEASE, "w1")
        .await
        .unwrap()
}

pub fn ids(leases: &[Lease]) -> Vec<&str> {
    leases.iter().map(|l| l.key.id.as_str()).collect()
}

pub fn ok(lease: &Lease) -> Ack {
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

pub fn error(lease: &Lease, kind: FailureKind) -> AttemptError {
    AttemptError::new(
        lease.attempt,
        kind,
        format!("{kind} on attempt {}", lease.attempt),
        1,
    )
}

pub fn at(ms: u64) -> String {
    crate::time::format_time(ms)
}

pub async fn state(b: &dyn ApiBroker, id: &str) -> Option<JobState> {
    b.job(None, id).await.unwrap().map(|r| r.state)
}

pub async fn counts(b: &dyn ApiBroker) -> QueueCounts {
    b.queues()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.queue == "default")
        .unwrap_or_default()
}

/// Makes one test per conformance case, each with a fresh broker from `$store` (an expression
/// giving a [`Store`]), under the test attribute `$test` — e.g.
/// `wasmq::broker_conformance!(MyStore::new(), tokio::test);`, or
/// `tokio::test(start_paused = true)` for a backend that reads tokio's clock.
#[macro_export]
macro_rules! broker_conformance {
    ($store:expr, $test:meta) => {
        $crate::broker_conformance!(@cases $store, $test,
            modules_are_stored_once,
            a_job_runs_once_and_keeps_its_result,
            enqueue_is_idempotent_by_id,
            priority_then_fifo,
            queues_are_separate_and_counted,
            delayed_jobs_wait_for_their_time,
            retries_back_off_then_die,
            one_ack_ends_each_job_its_own_way,
            expired_leases_are_recovered,
            a_workers_own_expired_leases_are_left_to_it,
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
            batch_callbacks_carry_results_within_a_budget,
            a_record_keeps_the_last_25_failures,
            jobs_are_listed_by_state_in_order,
            scheduled_jobs_can_run_now,
            the_whole_dead_set_can_be_retried_or_deleted,
            module_usage_counts_jobs_not_yet_succeeded,
            the_succeeded_listing_keeps_the_newest_10000,
            a_full_queue_refuses_enqueues_whole,
            egress_concurrency_is_held_under_leases,
            egress_rate_is_a_sliding_window
        );
    };
    (@cases $store:expr, $test:meta, $($name:ident),* $(,)?) => {
        $(
            #[$test]
            async fn $name() {
                let store = $store;
                $crate::broker::conformance::$name(&store).await
            }
        )*
    };
}
