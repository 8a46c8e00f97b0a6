//! `wasmq bench io`: jobs that wait on the network. Ten thousand `fetch` jobs, each one GET to a
//! local server that answers after a second, run by one worker process with a concurrency of
//! ten thousand: its peak RSS, the wall time from the first job started to the last one ended,
//! and jobs/s, its CPU time per job, and when jobs started, requests arrived and jobs ended;
//! then the same under an egress limit of 100 concurrent on that server (and the peak the
//! server observed); then the same GETs made natively from this process, the floor the machine
//! sets; then the per-call overhead of a granted request against a server
//! that answers at once, beside the same request made natively with hyper.
//!
//! It starts a private `redis-server` and runs the worker as a child process (`wasmq worker`), so
//! that the RSS measured is the worker's alone. Build with `--release`.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::JobsDir;
use super::private_redis::PrivateRedis;
use super::report::{group, timings};
use crate::broker::redis::RedisBroker;
use crate::broker::{ApiBroker, EgressLimit};
use crate::grant::Grant;
use crate::intake::Intake;
use crate::invocation::Invocation;
use crate::job::{JobInfo, JobState, Limits};
use crate::partner::Partner;
use crate::sandbox::{NoEgressLimits, NoSecrets, NoSubJobs, RunRequest, SandboxConfig};

/// Flags of `wasmq bench io`.
#[derive(Debug, Args)]
pub(crate) struct IoBench {
    #[command(flatten)]
    jobs: JobsDir,
    /// Jobs per run, each one GET.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Jobs in flight in the worker.
    #[arg(long, default_value_t = 10_000)]
    concurrency: usize,
    /// How long the server takes to answer each GET, in ms.
    #[arg(long, default_value_t = 1000)]
    delay_ms: u64,
    /// The egress limit (calls in flight) of the second run; 0 skips it.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Calls timed one at a time for the per-call overhead.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
}

pub(crate) async fn run(
    args: IoBench,
    base: SandboxConfig,
    cache_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build of wasmq; run `cargo run --release -p wasmq -- bench io`"
        );
    }
    let redis = PrivateRedis::start()?;
    let broker: Arc<dyn ApiBroker> = Arc::new(RedisBroker::connect(&redis.url).await?);
    let fetch = args.jobs.read("fetch")?;
    let sandbox = super::sandbox(&base, 0)?;
    let module = sandbox.load_async(fetch.clone()).await?;
    broker.put_module(module.hash(), &fetch).await?;
    let intake = Intake::new(*sandbox.ceilings(), sandbox.sizes());
    println!(
        "{} fetch jobs, each one GET answered after {} ms; one worker process, concurrency {}",
        group(args.count as u64),
        args.delay_ms,
        group(args.concurrency as u64)
    );

    let mut rounds = vec![("no egress limit", None)];
    if args.limit > 0 {
        rounds.push(("egress limit", Some(args.limit)));
    }
    for (round, (name, limit)) in rounds.into_iter().enumerate() {
        // A queue per round: its totals count this round's jobs only.
        let queue = format!("bench-io-{round}");
        let partner = Partner::start().await?;
        broker
            .extend_grant(
                module.hash(),
                &Grant {
                    http: vec![partner.origin().parse()?],
                    secrets: Vec::new(),
                },
            )
            .await?;
        broker
            .set_egress_limit(
                "127.0.0.1",
                &EgressLimit {
                    concurrency: limit,
                    rate: None,
                },
            )
            .await?;
        let url = partner.url(&format!("/slow?ms={}", args.delay_ms));
        let jobs = (0..args.count)
            .map(|i| {
                let mut inv = Invocation::new(module.hash());
                inv.queue = queue.clone();
                inv.id = Some(format!("call-{i}"));
                inv.args = json!({ "url": url });
                inv.timeout_ms = 15 * 60 * 1000;
                Ok(inv)
            })
            .collect::<Vec<Result<Invocation, crate::invocation::InvocationError>>>();
        let jobs = intake.jobs(jobs)?;
        intake.enqueue(broker.as_ref(), &jobs).await?;

        let used = run_worker(
            &redis.url,
            broker.as_ref(),
            &queue,
            &[],
            &["--concurrency".into(), args.concurrency.to_string()],
            cache_dir.as_deref(),
            args.count as u64,
        )
        .await?;
        let (rss, user, sys) = (used.peak_rss, used.user, used.system);

        let (mut started, mut ended, mut ok) = (Vec::new(), Vec::new(), 0);
        for job in &jobs {
            if let Some(r) = broker.job(Some(&queue), job.id()).await? {
                started.extend(r.started_at_ms);
                ended.extend(r.finished_at_ms);
                ok += usize::from(r.state == JobState::Succeeded);
            }
        }
        started.sort_unstable();
        ended.sort_unstable();
        let first = started.first().copied().unwrap_or(0);
        let last = ended.last().copied().unwrap_or(first);
        let wall = Duration::from_millis(last.saturating_sub(first));
        // The server's arrival instants, on the records' clock (ms since the epoch).
        let (now_ms, now) = (crate::time::now_ms(), Instant::now());
        let arrived: Vec<u64> = partner
            .arrivals()
            .into_iter()
            .map(|t| now_ms.saturating_sub(now.duration_since(t).as_millis() as u64))
            .collect();
        println!(
            "{name}{}: {ok} of {} succeeded · wall {:.2} s (first job started → last ended) · {:.0} jobs/s · worker peak RSS {} MiB · server saw at most {} at once",
            limit.map_or(String::new(), |l| format!(" {l}")),
            args.count,
            wall.as_secs_f64(),
            args.count as f64 / wall.as_secs_f64().max(1e-3),
            rss >> 20,
            partner.peak()
        );
        println!(
            "  worker CPU: user {:.2} s + system {:.2} s = {:.0} µs a job",
            user.as_secs_f64(),
            sys.as_secs_f64(),
            (user + sys).as_secs_f64() * 1e6 / args.count as f64
        );
        println!(
            "  ms after the first start — jobs started {} · requests arrived {} · jobs ended {}",
            spread(&started, first),
            spread(&arrived, first),
            spread(&ended, first)
        );
        broker
            .remove_grant(module.hash(), &Grant::default())
            .await?;
    }

    // The floor this machine sets: the same GETs, all at once, made natively with hyper from
    // this process (one task and connection each), no jobs, no Redis.
    // Each call holds a socket at both ends here.
    super::worker::raise_open_files(2 * args.count);
    let partner = Partner::start().await?;
    let path = format!("/slow?ms={}", args.delay_ms);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..args.count {
        let path = path.clone();
        let addr = partner.addr;
        calls.spawn(async move { native_get(addr, &path).await });
    }
    let mut failed = 0;
    while let Some(call) = calls.join_next().await {
        failed += usize::from(!matches!(call, Ok(Ok(()))));
    }
    let wall = started.elapsed();
    println!(
        "the same {} GETs natively (hyper, one task and connection each, no jobs): {} failed · wall {:.2} s · server saw at most {} at once",
        group(args.count as u64),
        failed,
        wall.as_secs_f64(),
        partner.peak()
    );

    // Per-call overhead: one granted GET at a time to a server that answers at once, as a job
    // (instantiate, call, the guest's request through the host) and natively with hyper.
    let partner = Partner::start().await?;
    let url = partner.url("/ok");
    let grant = Arc::new(Grant {
        http: vec![partner.origin().parse()?],
        secrets: Vec::new(),
    });
    let args_bytes = serde_json::to_vec(&json!({ "url": url }))?;
    let mut guest = Vec::with_capacity(args.calls);
    for i in 0..args.calls {
        let outcome = sandbox
            .run(
                &module,
                RunRequest {
                    info: JobInfo {
                        id: format!("call-{i}"),
                        queue: "bench".into(),
                        attempt: 1,
                        max_attempts: 1,
                    },
                    args: args_bytes.clone(),
                    limits: Limits::default(),
                    sub_jobs: Arc::new(NoSubJobs),
                    progress: None,
                    grant: grant.clone(),
                    secrets: Arc::new(NoSecrets),
                    egress: Arc::new(NoEgressLimits),
                },
            )
            .await;
        anyhow::ensure!(
            outcome.result.is_ok(),
            "call {i} failed: {:?}",
            outcome.result
        );
        guest.push(outcome.wall_time);
    }
    let mut native = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let t = Instant::now();
        native_get(partner.addr, "/ok").await?;
        native.push(t.elapsed());
    }
    let guest_median = timings(
        "a granted GET from a job (instantiate + call + request)",
        &mut guest,
    );
    let native_median = timings("the same GET natively (hyper, new connection)", &mut native);
    println!(
        "overhead per call: {:.1} µs at the median",
        (guest_median.as_secs_f64() - native_median.as_secs_f64()) * 1e6
    );
    drop(redis);
    Ok(ExitCode::SUCCESS)
}

/// `first … / p10 … / p50 … / p99 … / last …` of sorted epoch-ms `times`, as ms after `origin`.
fn spread(times: &[u64], origin: u64) -> String {
    let at = |q: f64| {
        let i = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
        times.get(i).map_or(0, |t| t.saturating_sub(origin))
    };
    format!(
        "first {} / p10 {} / p50 {} / p99 {} / last {}",
        at(0.0),
        at(0.1),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// One GET over a new connection, as the host's own sender makes it.
async fn native_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await?;
    Ok(())
}

/// What a worker process used by the time its jobs ended.
pub(super) struct WorkerUse {
    /// Its peak resident memory, in bytes.
    pub(super) peak_rss: u64,
    /// CPU time in user space.
    pub(super) user: Duration,
    /// CPU time in the kernel.
    pub(super) system: Duration,
}

/// Runs `wasmq worker` as a child process on `queue` of the Redis at `redis_url` — `global`
/// flags before the subcommand, `extra` after it, precompiling into `cache_dir` (or no cache) —
/// until `total` of the queue's jobs have ended (succeeded or dead); then reads its peak RSS and
/// CPU time and stops it. Fails if it exits first or an hour passes.
pub(super) async fn run_worker(
    redis_url: &str,
    broker: &dyn ApiBroker,
    queue: &str,
    global: &[String],
    extra: &[String],
    cache_dir: Option<&std::path::Path>,
    total: u64,
) -> anyhow::Result<WorkerUse> {
    let mut worker = std::process::Command::new(std::env::current_exe()?);
    worker
        .arg("--redis")
        .arg(redis_url)
        .args(global)
        .args(["worker", "--queues", queue, "--precompile"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cache_dir {
        Some(dir) => worker.arg("--cache-dir").arg(dir),
        None => worker.arg("--no-cache"),
    };
    let mut child = worker.spawn().context("failed to start `wasmq worker`")?;
    let pid = child.id();
    let waited = Instant::now();
    loop {
        let q = broker.queues().await?;
        let q = q.iter().find(|q| q.queue == queue);
        if q.is_some_and(|q| q.totals.succeeded + q.totals.dead >= total) {
            break;
        }
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "the worker exited before the jobs ended"
        );
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(3600),
            "the jobs did not end within an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let peak_rss = peak_rss(pid)?;
    let (user, system) = cpu_time(pid)?;
    let _ = child.kill();
    let _ = child.wait();
    Ok(WorkerUse {
        peak_rss,
        user,
        system,
    })
}

/// The CPU time process `pid` has used so far: (user, system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at the state, field 3;
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat
        .rsplit_once(')')
        .context("no command name in /proc/<pid>/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<Duration> {
        let t: u64 = fields.get(i).context("short /proc/<pid>/stat")?.parse()?;
        // USER_HZ, the unit of these fields, is 100 on every Linux architecture.
        Ok(Duration::from_millis(t * 10))
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// The most memory process `pid` has had resident (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kb << 10)
}
