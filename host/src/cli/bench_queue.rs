//! `wasmq bench queue`: the queue end to end through a real Redis — enqueue throughput, processing
//! throughput of one worker process, and single-job latency from enqueue to result observed.
//!
//! By default it starts a private `redis-server` (append-only file on, fsync every second: Redis's
//! recommended durable setting) on a free port; `--use-redis` measures the server at `--redis`.
//! Build with `--release`: a debug build measures the wrong thing.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::JobsDir;
use super::queue::RedisArgs;
use super::report::timings;
use crate::broker::ApiBroker;
use crate::broker::redis::RedisBroker;
use crate::intake::Intake;
use crate::invocation::{Invocation, NewJob};
use crate::job::JobState;
use crate::worker::{Worker, WorkerConfig};

/// Flags of `wasmq bench queue`.
#[derive(Debug, Args)]
pub(crate) struct QueueBench {
    #[command(flatten)]
    jobs: JobsDir,
    /// No-op (`hello`) jobs to enqueue and process.
    #[arg(long, default_value_t = 50_000)]
    count: usize,
    /// Jobs in flight in the worker.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Single jobs timed from enqueue to result observed.
    #[arg(long, default_value_t = 1000)]
    latency_samples: usize,
    /// Measure the Redis at `--redis` instead of starting a private one.
    #[arg(long)]
    use_redis: bool,
}

/// A private `redis-server`, killed on drop.
pub(super) struct PrivateRedis {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where it listens.
    pub(super) url: String,
}

impl PrivateRedis {
    /// Starts one on a free loopback port (append-only file on, fsync every second).
    pub(super) fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .context("failed to start `redis-server` (install it, or pass `--use-redis`)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(PrivateRedis {
            child,
            _dir: dir,
            url: format!("redis://127.0.0.1:{port}/"),
        })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn run(
    args: QueueBench,
    redis: RedisArgs,
    base: crate::sandbox::SandboxConfig,
) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build of wasmq; run `cargo run --release -p wasmq -- bench queue`"
        );
    }
    let private = if args.use_redis {
        None
    } else {
        Some(PrivateRedis::start()?)
    };
    let url = private
        .as_ref()
        .map_or(redis.redis.clone(), |p| p.url.clone());
    // A fresh key prefix per run: a shared Redis keeps other data, and old runs do not interfere.
    let prefix = format!("wasmq-bench-{}", uuid::Uuid::now_v7().simple());
    let broker: Arc<dyn ApiBroker> = Arc::new(
        RedisBroker::connect_with_prefix(&url, &prefix)
            .await
            .with_context(|| format!("failed to connect to Redis at `{url}`"))?,
    );
    println!(
        "redis: {url} ({}), {} hello jobs, worker concurrency {}",
        if private.is_some() {
            "private, appendonly everysec"
        } else {
            "--use-redis"
        },
        args.count,
        args.concurrency
    );

    let sandbox = super::sandbox(&base, args.concurrency)?;
    let hello = args.jobs.read("hello")?;
    let module = sandbox.load_async(hello.clone()).await?;
    broker.put_module(module.hash(), &hello).await?;
    let intake = Intake::new(*sandbox.ceilings(), sandbox.sizes());
    let job = |i: usize| -> anyhow::Result<NewJob> {
        let mut inv = Invocation::new(module.hash());
        inv.args = json!({ "name": format!("n{i}") });
        Ok(intake.job(inv)?)
    };

    // Enqueue: pipelined, in chunks.
    let jobs = (0..args.count)
        .map(job)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    intake.enqueue(broker.as_ref(), &jobs).await?;
    let enqueue_time = started.elapsed();
    println!(
        "enqueue: {:.0} jobs/s ({} jobs in {:.2} s)",
        args.count as f64 / enqueue_time.as_secs_f64(),
        args.count,
        enqueue_time.as_secs_f64()
    );

    // Process: one worker, this process, until every job has succeeded.
    let config = WorkerConfig {
        concurrency: args.concurrency,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(broker.clone(), sandbox, config);
    let counters = worker.counters();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    while counters.succeeded.load(Ordering::Relaxed) < args.count as u64 {
        anyhow::ensure!(
            counters.dead.load(Ordering::Relaxed) + counters.retried.load(Ordering::Relaxed) == 0,
            "a hello job failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let process_time = started.elapsed();
    println!(
        "process: {:.0} jobs/s ({} jobs in {:.2} s, one worker process)",
        args.count as f64 / process_time.as_secs_f64(),
        args.count,
        process_time.as_secs_f64()
    );

    // Latency: one job at a time, enqueue → result observed, with the worker idle and blocked.
    let mut latency = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let one = job(args.count + i)?;
        let t = Instant::now();
        intake
            .enqueue(broker.as_ref(), std::slice::from_ref(&one))
            .await?;
        let record = broker
            .wait_job(one.queue(), one.id(), Duration::from_secs(10))
            .await?;
        latency.push(t.elapsed());
        anyhow::ensure!(
            record.is_some_and(|r| r.state == JobState::Succeeded),
            "latency job {} did not succeed",
            one.id()
        );
    }
    timings("latency enqueue→result", &mut latency);
    let _ = stop_tx.send(());
    running.await?;
    Ok(ExitCode::SUCCESS)
}
