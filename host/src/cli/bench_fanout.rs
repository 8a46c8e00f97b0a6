//! `wasmq bench fanout`: jobs that await their sub-jobs. One parent (the `chaos` job's `join`
//! mode) enqueues 10,000 `hello` children and joins them all, on one worker process: the time from
//! the parent's start to its end, children per second, the worker's peak RSS and CPU; then 1,000
//! parents each awaiting 10 children, on a fresh worker.
//!
//! It starts a private `redis-server` and runs the worker as a child process (`wasmq worker`), so
//! that the RSS measured is the worker's alone. Build with `--release`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::JobsDir;
use super::bench_io::run_worker;
use super::private_redis::PrivateRedis;
use super::report::group;
use crate::broker::ApiBroker;
use crate::broker::redis::RedisBroker;
use crate::intake::Intake;
use crate::invocation::{Invocation, InvocationError};
use crate::job::JobState;
use crate::sandbox::SandboxConfig;

/// Flags of `wasmq bench fanout`.
#[derive(Debug, Args)]
pub(crate) struct FanoutBench {
    #[command(flatten)]
    jobs: JobsDir,
    /// Children of the one wide parent.
    #[arg(long, default_value_t = 10_000)]
    children: u32,
    /// Parents of the second run (each awaiting `--each` children).
    #[arg(long, default_value_t = 1000)]
    parents: u32,
    /// Children of each parent in the second run.
    #[arg(long, default_value_t = 10)]
    each: u32,
    /// The worker's concurrency (running jobs; waiting parents are counted apart).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

pub(crate) async fn run(
    args: FanoutBench,
    base: SandboxConfig,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build of wasmq; run `cargo run --release -p wasmq -- bench fanout`"
        );
    }
    let redis = PrivateRedis::start()?;
    let broker: Arc<dyn ApiBroker> = Arc::new(RedisBroker::connect(&redis.url).await?);
    let sandbox = super::sandbox(&base, 0)?;
    let mut hashes = Vec::new();
    for name in ["chaos", "hello"] {
        let bytes = args.jobs.read(name)?;
        let module = sandbox.load_async(bytes.clone()).await?;
        broker.put_module(module.hash(), &bytes).await?;
        hashes.push(module.hash());
    }
    let (chaos, hello) = (hashes[0], hashes[1]);
    let intake = Intake::new(*sandbox.ceilings(), sandbox.sizes());

    let rounds = [
        ("one parent", 1, args.children),
        ("many parents", args.parents, args.each),
    ];
    println!(
        "one worker process, concurrency {}; `hello` children, awaited with `join`",
        args.concurrency
    );
    for (round, (name, parents, each)) in rounds.into_iter().enumerate() {
        let queue = format!("bench-fanout-{round}");
        let jobs = (0..parents)
            .map(|i| {
                let mut inv = Invocation::new(chaos);
                inv.queue = queue.clone();
                inv.id = Some(format!("parent-{i}"));
                inv.args = json!({"mode": "join", "module": hello, "count": each,
                                  "args": {"name": "child"}, "propagate": true});
                inv.timeout_ms = 15 * 60 * 1000;
                Ok(inv)
            })
            .collect::<Vec<Result<Invocation, InvocationError>>>();
        let jobs = intake.jobs(jobs)?;
        intake.enqueue(broker.as_ref(), &jobs).await?;

        let total = u64::from(parents) * (1 + u64::from(each));
        let used = run_worker(
            &redis.url,
            broker.as_ref(),
            &queue,
            &["--max-sub-jobs".into(), each.max(1000).to_string()],
            &[
                "--concurrency".into(),
                args.concurrency.to_string(),
                "--max-waiting".into(),
                parents.to_string(),
            ],
            cache_dir.as_deref(),
            total,
        )
        .await?;

        let (mut first, mut last, mut ok) = (u64::MAX, 0, 0);
        for job in &jobs {
            if let Some(r) = broker.job(Some(&queue), job.id()).await? {
                first = first.min(r.started_at_ms.unwrap_or(u64::MAX));
                last = last.max(r.finished_at_ms.unwrap_or(0));
                ok += usize::from(r.state == JobState::Succeeded);
            }
        }
        let wall = Duration::from_millis(last.saturating_sub(first)).max(Duration::from_millis(1));
        let children = u64::from(parents) * u64::from(each);
        println!(
            "{name}: {} parents × {} children: {ok} of {parents} parents succeeded · {:.2} s from the first parent's start to the last one's end · {:.0} children/s · worker peak RSS {} MiB · CPU user {:.2} s + system {:.2} s",
            group(u64::from(parents)),
            group(u64::from(each)),
            wall.as_secs_f64(),
            children as f64 / wall.as_secs_f64(),
            used.peak_rss >> 20,
            used.user.as_secs_f64(),
            used.system.as_secs_f64()
        );
    }
    drop(redis);
    Ok(ExitCode::SUCCESS)
}
