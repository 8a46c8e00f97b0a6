//! The commands that talk to a Redis broker: `upload`, `modules`, `enqueue`, `job`, `queues`,
//! `dead`.

use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::report;
use crate::broker::redis::RedisBroker;
use crate::broker::{ApiBroker, CancelOutcome, Enqueued, JobRecord};
use crate::intake::{Intake, IntakeError, Place, Refusal};
use crate::invocation::{Invocation, NewJob};
use crate::job::JobState;
use crate::modules::ModuleHash;
use crate::sandbox::Sandbox;
use crate::time::format_time;

/// Where the broker is: shared by every command that needs Redis.
#[derive(Debug, Clone, Args)]
pub(crate) struct RedisArgs {
    /// Redis URL.
    #[arg(
        long,
        env = "WASMQ_REDIS",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub(crate) redis: String,
}

impl RedisArgs {
    pub(crate) async fn connect(&self) -> anyhow::Result<Arc<RedisBroker>> {
        Ok(Arc::new(self.connect_plain().await?))
    }

    /// Connects, keeping succeeded jobs' records for `result_ttl`.
    pub(crate) async fn connect_with_ttl(
        &self,
        result_ttl: Duration,
    ) -> anyhow::Result<Arc<RedisBroker>> {
        Ok(Arc::new(
            self.connect_plain().await?.with_result_ttl(result_ttl),
        ))
    }

    async fn connect_plain(&self) -> anyhow::Result<RedisBroker> {
        RedisBroker::connect(&self.redis)
            .await
            .with_context(|| format!("failed to connect to Redis at `{}`", self.redis))
    }
}

/// Flags of `wasmq upload`.
#[derive(Debug, Args)]
pub(crate) struct UploadArgs {
    /// Job components (`.wasm`) to upload.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Validates each component like a worker would (it must fit the `wasmq:job` world), stores it
/// under its hash and prints the hash.
pub(crate) async fn upload(
    broker: &dyn ApiBroker,
    sandbox: &Sandbox,
    args: UploadArgs,
) -> anyhow::Result<ExitCode> {
    for file in &args.files {
        let hash = upload_one(broker, sandbox, file).await?;
        println!("{hash}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads, validates and stores one component.
pub(crate) async fn upload_one(
    broker: &dyn ApiBroker,
    sandbox: &Sandbox,
    file: &std::path::Path,
) -> anyhow::Result<ModuleHash> {
    let bytes =
        std::fs::read(file).with_context(|| format!("failed to read `{}`", file.display()))?;
    let hash = ModuleHash::of(&bytes);
    let module = sandbox
        .load_async(bytes.clone())
        .await
        .with_context(|| format!("`{}` is not a wasmq job", file.display()))?;
    let info = broker.put_module(module.hash(), &bytes).await?;
    eprintln!(
        "{}: {} bytes, uploaded {}",
        file.display(),
        info.size,
        format_time(info.uploaded_at_ms)
    );
    Ok(hash)
}

/// The `--json` flag of the listing commands (`modules`, `queues`, `workers`).
#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn modules(broker: &dyn ApiBroker, args: JsonArgs) -> anyhow::Result<ExitCode> {
    let all = broker.modules().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<71} {:>12}  uploaded", "module", "bytes");
    for m in all {
        println!(
            "{:<71} {:>12}  {}",
            m.hash,
            report::group(m.size),
            format_time(m.uploaded_at_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `wasmq enqueue`.
#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    /// The module (`sha256:…`, as printed by `wasmq upload`).
    #[arg(required_unless_present = "file")]
    module: Option<ModuleHash>,
    /// Arguments as JSON (`{"$bytes": "<base64>"}` for raw bytes).
    #[arg(long, default_value = "null")]
    args: String,
    /// Queue.
    #[arg(long, default_value = crate::invocation::DEFAULT_QUEUE)]
    queue: String,
    /// Run after this long (`10s`, `5m`, `1h 30m`).
    #[arg(long, value_parser = crate::time::parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Run at this RFC 3339 time.
    #[arg(long)]
    at: Option<String>,
    /// Attempts in all.
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Job id, also the idempotency key [default: a new UUIDv7].
    #[arg(long)]
    id: Option<String>,
    /// Higher runs first (-100 to 100).
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i32>,
    /// Fuel budget per attempt.
    #[arg(long)]
    fuel: Option<u64>,
    /// Deadline per attempt, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory cap per attempt, in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Enqueue every invocation in this JSON-lines file (`-` for stdin) instead; one per line.
    #[arg(long, conflicts_with = "module")]
    file: Option<PathBuf>,
    /// Wait for the jobs to end and print their outcomes.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "5m")]
    wait_timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl EnqueueArgs {
    fn invocation(&self, module: ModuleHash) -> anyhow::Result<Invocation> {
        let mut inv = Invocation::new(module);
        inv.args = serde_json::from_str(&self.args).context("`--args` is not JSON")?;
        inv.queue = self.queue.clone();
        inv.id = self.id.clone();
        inv.max_attempts = self.max_attempts.unwrap_or(inv.max_attempts);
        inv.priority = self.priority.unwrap_or(inv.priority);
        inv.fuel = self.fuel.unwrap_or(inv.fuel);
        inv.timeout_ms = self.timeout_ms.unwrap_or(inv.timeout_ms);
        inv.memory_mb = self.memory_mb.unwrap_or(inv.memory_mb);
        inv.run_at = match (&self.at, self.delay) {
            (Some(at), _) => Some(at.clone()),
            (None, Some(d)) => Some(format_time(crate::time::now_ms() + d.as_millis() as u64)),
            (None, None) => None,
        };
        Ok(inv)
    }
}

pub(crate) async fn enqueue(
    intake: &Intake,
    broker: Arc<dyn ApiBroker>,
    args: EnqueueArgs,
) -> anyhow::Result<ExitCode> {
    // Where each job came from, to name it in a refusal: a line of the file, or the flags.
    let (jobs, lines): (Vec<NewJob>, Vec<usize>) = match (&args.file, args.module) {
        (Some(path), _) => {
            let lines = read_jsonl(path)?;
            let numbers: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
            let jobs = intake
                .jobs(
                    lines
                        .iter()
                        .map(|(_, text)| Invocation::from_json(text.as_bytes())),
                )
                .map_err(|r| refused_line(IntakeError::Refused(r), &numbers, path))?;
            (jobs, numbers)
        }
        (None, Some(module)) => (vec![intake.job(args.invocation(module)?)?], vec![]),
        (None, None) => bail!("name a module, or `--file` with invocations"),
    };
    // Nothing is enqueued unless every line is valid and every module was uploaded.
    let outcomes = match intake.enqueue(broker.as_ref(), &jobs).await {
        Ok(outcomes) => outcomes,
        Err(e) => match &args.file {
            Some(path) => return Err(refused_line(e, &lines, path)),
            None => return Err(e.into()),
        },
    };
    let existed = outcomes.iter().filter(|o| **o == Enqueued::Existed).count();
    if !args.wait {
        if args.json {
            let rows: Vec<_> = jobs
                .iter()
                .zip(&outcomes)
                .map(|(j, o)| serde_json::json!({"id": j.id(), "queue": j.queue(), "enqueued": o}))
                .collect();
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            for job in &jobs {
                println!("{}", job.id());
            }
        }
        if existed > 0 {
            eprintln!("{existed} job(s) already existed with the same id and were left alone");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let records = wait_all(broker, &jobs, args.wait_timeout).await?;
    let mut all_ok = true;
    for (job, record) in jobs.iter().zip(&records) {
        all_ok &= record
            .as_ref()
            .is_some_and(|r| r.state == JobState::Succeeded);
        show_record(job.id(), record.as_ref(), args.json || jobs.len() > 1)?;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An intake error for a file, naming the line of the job it refused.
fn refused_line(e: IntakeError, lines: &[usize], path: &Path) -> anyhow::Error {
    match e {
        IntakeError::Refused(Refusal {
            place: Place::Job(i),
            error,
        }) => anyhow::Error::new(error).context(format!(
            "line {} of `{}`",
            lines.get(i).copied().unwrap_or(i + 1),
            path.display()
        )),
        other => other.into(),
    }
}

/// The non-empty lines of a JSON-lines file, numbered from 1.
fn read_jsonl(path: &PathBuf) -> anyhow::Result<Vec<(usize, String)>> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read `{}`", path.display()))?;
    }
    Ok(text
        .as_bytes()
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.ok()?;
            (!l.trim().is_empty()).then(|| (i + 1, l))
        })
        .collect())
}

/// Waits for every job (a few at a time), with a progress bar when there are several.
pub(crate) async fn wait_all(
    broker: Arc<dyn ApiBroker>,
    jobs: &[NewJob],
    timeout: Duration,
) -> anyhow::Result<Vec<Option<JobRecord>>> {
    let bar = if jobs.len() > 1 {
        let bar = ProgressBar::new(jobs.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} jobs ended  {elapsed_precise}  {msg}",
            )
            .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let results: Vec<_> = futures_util::stream::iter(jobs.iter().map(|job| {
        let broker = broker.clone();
        let bar = bar.clone();
        async move {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = broker.wait_job(job.queue(), job.id(), left).await;
            bar.inc(1);
            r
        }
    }))
    // Each waiter holds a blocking Redis connection: a few at a time is plenty.
    .buffered(16)
    .collect()
    .await;
    bar.finish_and_clear();
    results.into_iter().map(|r| Ok(r?)).collect()
}

fn show_record(id: &str, record: Option<&JobRecord>, json: bool) -> anyhow::Result<()> {
    match (record, json) {
        (None, true) => println!("{}", serde_json::json!({"id": id, "state": null})),
        (None, false) => println!("job `{id}` not found (never enqueued, or its result expired)"),
        (Some(r), true) => println!("{}", serde_json::to_string(r)?),
        (Some(r), false) => print!("{}", report::record_text(r)),
    }
    Ok(())
}

/// Flags of `wasmq job`.
#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// The job id.
    id: String,
    /// The job's queue [default: search every queue].
    #[arg(long)]
    queue: Option<String>,
    /// Wait until the job has succeeded or died.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "5m")]
    wait_timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn job(broker: &dyn ApiBroker, args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut record = broker.job(args.queue.as_deref(), &args.id).await?;
    if args.wait
        && let Some(r) = &record
        && !r.state.is_final()
    {
        record = wait_with_progress(broker, &r.queue.clone(), &args.id, args.wait_timeout).await?;
    }
    show_record(&args.id, record.as_ref(), args.json)?;
    Ok(match record {
        None => ExitCode::from(2),
        Some(r) if r.state == JobState::Dead => ExitCode::from(1),
        Some(_) => ExitCode::SUCCESS,
    })
}

/// Waits for a job to end, drawing its reported progress as a bar (on a terminal).
async fn wait_with_progress(
    broker: &dyn ApiBroker,
    queue: &str,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<Option<JobRecord>> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos:>3}%  {msg}").expect("a valid template"),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let record = loop {
        // Short waits rather than one long one, so the bar follows the job's progress.
        let slice = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(Duration::from_millis(250));
        let record = broker.wait_job(queue, id, slice).await?;
        match &record {
            Some(r) if !r.state.is_final() && !slice.is_zero() => {
                if let Some(p) = &r.progress {
                    bar.set_position(u64::from(p.percent));
                    bar.set_message(p.note.clone().unwrap_or_default());
                } else {
                    bar.set_message(r.state.as_str());
                }
            }
            _ => break record,
        }
    };
    bar.finish_and_clear();
    Ok(record)
}

pub(crate) async fn queues(broker: &dyn ApiBroker, args: JsonArgs) -> anyhow::Result<ExitCode> {
    let counts = broker.queues().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&counts)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>9} │ {:>10} {:>10} {:>9} {:>9}",
        "queue",
        "ready",
        "scheduled",
        "leased",
        "dead",
        "enqueued",
        "succeeded",
        "retried",
        "failed"
    );
    for c in counts {
        let t = &c.totals;
        let name = if c.paused {
            format!("{} (paused)", c.queue)
        } else {
            c.queue.clone()
        };
        println!(
            "{:<24} {:>9} {:>9} {:>9} {:>9} │ {:>10} {:>10} {:>9} {:>9}",
            name,
            c.ready,
            c.scheduled,
            c.leased,
            c.dead,
            t.enqueued,
            t.succeeded,
            t.retried,
            t.failed
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn workers(broker: &dyn ApiBroker, args: JsonArgs) -> anyhow::Result<ExitCode> {
    let workers = broker.workers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:>8} {:>11} {:<22} {:<22} queues",
        "worker", "in flight", "concurrency", "started", "last seen"
    );
    for w in workers {
        println!(
            "{:<32} {:>8} {:>11} {:<22} {:<22} {}",
            w.name,
            w.in_flight,
            w.concurrency,
            format_time(w.started_at_ms),
            format_time(w.last_seen_ms),
            w.queues.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `wasmq limit`.
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// The queue.
    queue: String,
    /// At most this many of its jobs run at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// At most this many of its jobs start per `--per`.
    #[arg(long, requires = "per")]
    rate: Option<u32>,
    /// The rate window (`1s`, `1m`).
    #[arg(long, value_parser = crate::time::parse_duration, requires = "rate")]
    per: Option<Duration>,
}

pub(crate) async fn limit(broker: &dyn ApiBroker, args: LimitArgs) -> anyhow::Result<ExitCode> {
    crate::invocation::check_queue_name(&args.queue)?;
    if args.concurrency == Some(0) || args.rate == Some(0) {
        bail!(
            "limits must be at least 1 (run `wasmq limit {}` alone to remove them)",
            args.queue
        );
    }
    let rate = match (args.rate, args.per) {
        (Some(n), Some(per)) if per.as_millis() > 0 => Some((n, per.as_millis() as u64)),
        (Some(_), _) => bail!("`--per` must be at least 1ms"),
        _ => None,
    };
    let limits = crate::broker::QueueLimits {
        concurrency: args.concurrency,
        rate,
    };
    broker.set_limits(&args.queue, &limits).await?;
    println!("queue `{}`: {}", args.queue, describe_limits(&limits));
    Ok(ExitCode::SUCCESS)
}

fn describe_limits(l: &crate::broker::QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(c) = l.concurrency {
        parts.push(format!("at most {c} at once"));
    }
    if let Some((n, per_ms)) = l.rate {
        parts.push(format!("at most {n} per {per_ms} ms"));
    }
    if parts.is_empty() {
        "no limits".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(crate) async fn set_paused(
    broker: &dyn ApiBroker,
    queue: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    crate::invocation::check_queue_name(queue)?;
    broker.set_paused(queue, paused).await?;
    println!(
        "queue `{queue}`: {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Flags of `wasmq cancel`.
#[derive(Debug, Args)]
pub(crate) struct CancelArgs {
    /// The job id.
    id: String,
    /// The job's queue [default: search every queue].
    #[arg(long)]
    queue: Option<String>,
}

pub(crate) async fn cancel(broker: &dyn ApiBroker, args: CancelArgs) -> anyhow::Result<ExitCode> {
    let Some(record) = broker.job(args.queue.as_deref(), &args.id).await? else {
        bail!("job `{}` not found", args.id);
    };
    match broker.cancel(&record.queue, &args.id).await? {
        CancelOutcome::Cancelled => println!("{}: cancelled", args.id),
        CancelOutcome::Cancelling => println!(
            "{}: running; its worker stops it at its next heartbeat (within a second) and it ends cancelled",
            args.id
        ),
        CancelOutcome::AlreadyFinal(state) => {
            bail!("job `{}` already ended: {}", args.id, state.as_str())
        }
        CancelOutcome::NotFound => bail!("job `{}` not found", args.id),
    }
    Ok(ExitCode::SUCCESS)
}

/// `wasmq dead …`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List the newest dead jobs with their last error.
    List {
        /// Queue.
        #[arg(long, default_value = crate::invocation::DEFAULT_QUEUE)]
        queue: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead job (or all of them) back on its queue with a fresh set of attempts.
    Retry(DeadTarget),
    /// Delete a dead job (or all of them).
    Delete(DeadTarget),
}

/// Which dead jobs `wasmq dead retry|delete` acts on.
#[derive(Debug, Args)]
pub(crate) struct DeadTarget {
    /// The job id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Every job in the queue's dead set.
    #[arg(long)]
    all: bool,
    /// Queue.
    #[arg(long, default_value = crate::invocation::DEFAULT_QUEUE)]
    queue: String,
}

pub(crate) async fn dead(broker: &dyn ApiBroker, command: DeadCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadCommand::List { queue, limit, json } => {
            let dead = broker.dead(&queue, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
            } else {
                println!("{:<38} {:>8}  {:<20} last error", "id", "attempts", "died");
                for r in dead {
                    let err = r
                        .last_error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.kind, e.message))
                        .unwrap_or_default();
                    println!(
                        "{:<38} {:>8}  {:<20} {}",
                        r.id,
                        r.attempts,
                        r.finished_at_ms.map(format_time).unwrap_or_default(),
                        err
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeadCommand::Retry(target) => take_from_dead(broker, target, true).await,
        DeadCommand::Delete(target) => take_from_dead(broker, target, false).await,
    }
}

/// `wasmq dead retry|delete`: one job, or with `--all` the whole dead set.
async fn take_from_dead(
    broker: &dyn ApiBroker,
    DeadTarget { id, queue, .. }: DeadTarget,
    retry: bool,
) -> anyhow::Result<ExitCode> {
    match id {
        None if retry => {
            let n = broker.retry_all_dead(&queue).await?;
            println!("{n} dead job(s) back on queue `{queue}`");
        }
        None => {
            let n = broker.delete_all_dead(&queue).await?;
            println!("{n} dead job(s) of queue `{queue}` deleted");
        }
        Some(id) => {
            let taken = if retry {
                broker.retry_dead(&queue, &id).await?
            } else {
                broker.delete_dead(&queue, &id).await?
            };
            if !taken {
                bail!("job `{id}` is not in the dead set of queue `{queue}`");
            }
            if retry {
                println!("{id}: back on queue `{queue}`");
            } else {
                println!("{id}: deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
