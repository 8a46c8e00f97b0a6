//! `wasmq bench queue`: the queue end to end through a real Redis — enqueue throughput, processing
//! throughput of one worker process, and single-job latency from enqueue to result observed.
//!
//! By default it starts a private `redis-server` (append-only file on, fsync every second: Redis's
//! recommended durable setting) on a free port; `--cluster N` a private Redis Cluster of N masters
//! (`--replicas` per master); `--use-redis` measures the server or cluster at `--redis`. On its own
//! servers it also prints the Redis CPU each master spent per job (`INFO cpu`) and the costliest
//! commands (`INFO commandstats`).
//! Build with `--release`: a debug build measures the wrong thing.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::json;

use super::JobsDir;
use super::private_redis::{PrivateCluster, PrivateRedis, RedisCpu};
use super::queue::RedisArgs;
use super::report::timings;
use crate::broker::ApiBroker;
use crate::broker::redis::{RedisBroker, hash_slot};
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
    /// Measure the Redis at `--redis` (a single Redis or a cluster) instead of starting a
    /// private one.
    #[arg(long)]
    use_redis: bool,
    /// Start a private Redis Cluster of this many masters instead of a single Redis.
    #[arg(long, default_value_t = 0)]
    cluster: usize,
    /// Replicas per master in the private Redis or cluster (`--durable-writes` needs them).
    #[arg(long, default_value_t = 0)]
    replicas: usize,
    /// Queues the jobs are spread over (on a cluster, spread evenly over the masters too).
    #[arg(long, default_value_t = 1)]
    queues: usize,
}

/// Where the benchmark's Redis is: started by it (one server, or a cluster), or the operator's.
enum Setup {
    /// One server, and its replicas.
    Single(PrivateRedis, Vec<PrivateRedis>),
    Cluster(PrivateCluster),
    Given(String),
}

impl Setup {
    fn url(&self) -> String {
        match self {
            Setup::Single(r, _) => r.url.clone(),
            Setup::Cluster(c) => c.url(),
            Setup::Given(url) => url.clone(),
        }
    }

    /// The masters' ports, where the benchmark can read their CPU (its own servers only).
    fn master_ports(&self) -> Vec<u16> {
        match self {
            Setup::Single(r, _) => vec![r.port],
            Setup::Cluster(c) => c.masters().iter().map(|m| m.port).collect(),
            Setup::Given(_) => Vec::new(),
        }
    }

    /// Every master's CPU and command figures now.
    fn cpu(&self) -> anyhow::Result<Vec<RedisCpu>> {
        self.master_ports()
            .into_iter()
            .map(RedisCpu::read)
            .collect()
    }
}

/// `n` queue names spread evenly over `masters` masters that split the slots evenly in order
/// (as [`PrivateCluster`] does): queue `k` on master `k % masters`.
fn spread_queues(n: usize, masters: usize) -> Vec<String> {
    (0..n)
        .map(|k| {
            let master = k % masters;
            let range = 16384 * master / masters..16384 * (master + 1) / masters;
            (0..)
                .map(|i| format!("bench-{k}-{i}"))
                .find(|name| range.contains(&(hash_slot(name.as_bytes()) as usize)))
                .expect("some name lands in every range")
        })
        .collect()
}

/// Prints what the masters spent between two readings, per job of `jobs`: CPU, and time inside
/// commands with the costliest ones.
fn print_cpu(phase: &str, before: &[RedisCpu], after: &[RedisCpu], jobs: usize) {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let spent = a.since(b);
        let mut top: Vec<(&String, &(u64, u64))> = spent.commands.iter().collect();
        top.sort_by_key(|(_, (_, usec))| std::cmp::Reverse(*usec));
        let top: Vec<String> = top
            .iter()
            .take(8)
            .map(|(name, (calls, usec))| {
                format!("{name} {calls}× {:.1} µs/job", *usec as f64 / jobs as f64)
            })
            .collect();
        let forked = match spent.forks {
            0 => String::new(),
            n => format!(
                " (Redis forked {n}× meanwhile — an AOF rewrite or a replica's sync: the fork and the pages copied after it are in the CPU figure, in no command)"
            ),
        };
        println!(
            "  {phase}, master {}: Redis CPU {:.1} µs/job ({:.2} s), in commands {:.1} µs/job over {:.2} calls/job, {:.3} reads/job — {}{forked}",
            i + 1,
            spent.cpu_s * 1e6 / jobs as f64,
            spent.cpu_s,
            spent.command_us() as f64 / jobs as f64,
            spent.calls() as f64 / jobs as f64,
            spent.reads as f64 / jobs as f64,
            top.join(", ")
        );
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
    let setup = match (args.use_redis, args.cluster) {
        (true, _) => Setup::Given(redis.redis.clone()),
        (false, 0) => {
            let master = PrivateRedis::start()?;
            let replicas = (0..args.replicas)
                .map(|_| PrivateRedis::start_replica_of(master.port))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Setup::Single(master, replicas)
        }
        (false, masters) => Setup::Cluster(PrivateCluster::start(masters, args.replicas)?),
    };
    let url = setup.url();
    let masters = setup.master_ports().len().max(1);
    let queues = spread_queues(args.queues.max(1), masters);
    // The keys a deployment has (`wasmq:…`) on the benchmark's own servers, which start empty;
    // on a shared Redis a fresh prefix per run, so other data and old runs do not interfere
    // (its longer keys cost Redis a little more per command).
    let prefix = match setup {
        Setup::Given(_) => format!("wasmq-bench-{}", uuid::Uuid::now_v7().simple()),
        _ => "wasmq".to_owned(),
    };
    let broker: Arc<dyn ApiBroker> = Arc::new(
        RedisBroker::connect_with_prefix(&url, &prefix)
            .await
            .with_context(|| format!("failed to connect to Redis at `{url}`"))?
            .with_durable_writes(redis.durable_writes, redis.durable_writes_timeout)
            .await?,
    );
    println!(
        "redis: {url} ({}), durable writes {}, {} hello jobs over {} queue(s), worker concurrency {}",
        match &setup {
            Setup::Single(_, replicas) => format!(
                "private, {} replica(s), appendonly everysec",
                replicas.len()
            ),
            Setup::Cluster(_) => format!(
                "private cluster: {masters} master(s), {} replica(s) each, appendonly everysec",
                args.replicas
            ),
            Setup::Given(_) => "--use-redis".to_owned(),
        },
        match redis.durable_writes {
            0 => "off".to_owned(),
            n => format!("{n} replica(s)"),
        },
        args.count,
        queues.len(),
        args.concurrency
    );
    if setup.master_ports().is_empty() {
        println!("(Redis CPU is measured on the benchmark's own servers only)");
    }

    let sandbox = super::sandbox(&base, args.concurrency)?;
    let hello = args.jobs.read("hello")?;
    let module = sandbox.load_async(hello.clone()).await?;
    broker.put_module(module.hash(), &hello).await?;
    let intake = Intake::new(*sandbox.ceilings(), sandbox.sizes());
    let job = |i: usize| -> anyhow::Result<NewJob> {
        let mut inv = Invocation::new(module.hash());
        inv.args = json!({ "name": format!("n{i}") });
        inv.queue = queues[i % queues.len()].clone();
        Ok(intake.job(inv)?)
    };

    // Enqueue: pipelined, in chunks.
    let jobs = (0..args.count)
        .map(job)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cpu_start = setup.cpu()?;
    let started = Instant::now();
    intake.enqueue(broker.as_ref(), &jobs).await?;
    let enqueue_time = started.elapsed();
    let cpu_enqueued = setup.cpu()?;
    println!(
        "enqueue: {:.0} jobs/s ({} jobs in {:.2} s)",
        args.count as f64 / enqueue_time.as_secs_f64(),
        args.count,
        enqueue_time.as_secs_f64()
    );
    print_cpu("bulk enqueue", &cpu_start, &cpu_enqueued, args.count);

    // Single enqueues: a tenth as many, one job per call (64 calls in flight), as clients that
    // enqueue jobs one by one do.
    let singles = (args.count / 10).max(1);
    let single_jobs = (args.count..args.count + singles)
        .map(job)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    futures_util::stream::iter(&single_jobs)
        .map(|j| intake.enqueue(broker.as_ref(), std::slice::from_ref(j)))
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let single_time = started.elapsed();
    let cpu_singles = setup.cpu()?;
    println!(
        "single enqueue: {:.0} jobs/s ({singles} calls of one job in {:.2} s, 64 in flight)",
        singles as f64 / single_time.as_secs_f64(),
        single_time.as_secs_f64()
    );
    print_cpu("single enqueue", &cpu_enqueued, &cpu_singles, singles);
    let total = args.count + singles;

    // Process: one worker, this process, until every job has succeeded.
    let config = WorkerConfig {
        concurrency: args.concurrency,
        queues: queues.clone(),
        // Every queue in turn: none waits for another to empty.
        weights: vec![1; queues.len()],
        ..WorkerConfig::default()
    };
    let worker = Worker::new(broker.clone(), sandbox, config);
    let counters = worker.counters();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    while counters.succeeded.load(Ordering::Relaxed) < total as u64 {
        anyhow::ensure!(
            counters.dead.load(Ordering::Relaxed) + counters.retried.load(Ordering::Relaxed) == 0,
            "a hello job failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let process_time = started.elapsed();
    let cpu_processed = setup.cpu()?;
    println!(
        "process: {:.0} jobs/s ({total} jobs in {:.2} s, one worker process)",
        total as f64 / process_time.as_secs_f64(),
        process_time.as_secs_f64()
    );
    print_cpu("fetch + ack", &cpu_singles, &cpu_processed, total);
    if !cpu_start.is_empty() {
        let per_job = |before: &[RedisCpu], after: &[RedisCpu], jobs: usize| -> f64 {
            let cpu: f64 = before
                .iter()
                .zip(after)
                .map(|(b, a)| a.since(b).cpu_s)
                .sum();
            cpu * 1e6 / jobs as f64
        };
        let run = per_job(&cpu_singles, &cpu_processed, total);
        println!(
            "Redis CPU for one job's whole life, all masters: {:.1} µs with a single enqueue, \
             {:.1} µs with a bulk one (enqueue {:.1} or {:.1} + fetch and ack {run:.1})",
            per_job(&cpu_enqueued, &cpu_singles, singles) + run,
            per_job(&cpu_start, &cpu_enqueued, args.count) + run,
            per_job(&cpu_enqueued, &cpu_singles, singles),
            per_job(&cpu_start, &cpu_enqueued, args.count),
        );
    }

    // Latency: one job at a time, enqueue → result observed, with the worker idle and blocked.
    let mut latency = Vec::with_capacity(args.latency_samples);
    let mut accepted = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let one = job(total + i)?;
        let t = Instant::now();
        intake
            .enqueue(broker.as_ref(), std::slice::from_ref(&one))
            .await?;
        accepted.push(t.elapsed());
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
    // `--latency-samples 0` measures throughput only.
    if args.latency_samples > 0 {
        timings("enqueue call (one job, acknowledged)", &mut accepted);
        timings("latency enqueue→result", &mut latency);
    }
    let _ = stop_tx.send(());
    running.await?;
    Ok(ExitCode::SUCCESS)
}
