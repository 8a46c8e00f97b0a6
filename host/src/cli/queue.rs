//! The commands that talk to a Redis broker: `upload`, `modules`, `job`, `queues`, `workers`,
//! `limit`, `pause`, `resume`, `cancel`, `dead` (`enqueue` is in `enqueue.rs`).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::enqueue::show_record;
use super::report;
use crate::broker::redis::RedisBroker;
use crate::broker::{ApiBroker, CancelOutcome, JobRecord};
use crate::job::JobState;
use crate::modules::ModuleHash;
use crate::sandbox::Sandbox;
use crate::time::format_time;

/// Where the broker is: shared by every command that needs Redis.
#[derive(Debug, Clone, Args)]
pub(crate) struct RedisArgs {
    /// Redis URL; a Redis Cluster as a comma-separated list of node URLs (every master's, or at
    /// least two nodes: the rest is discovered).
    #[arg(
        long,
        env = "WASMQ_REDIS",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub(crate) redis: String,
    /// Run workers and the server on a Redis whose `maxmemory-policy` evicts keys, which drops
    /// accepted jobs under memory pressure without an error. Refused without this flag.
    #[arg(long, env = "WASMQ_ALLOW_EVICTING_REDIS", global = true)]
    pub(crate) allow_evicting_redis: bool,
    /// Acknowledge an enqueue, an ack or any other job-state change only once this many replicas
    /// of its master confirmed it (Redis `WAIT`): a failover then loses none of them. 0: the
    /// master's word is enough (faster; a failover can lose the last writes).
    #[arg(long, env = "WASMQ_DURABLE_WRITES", default_value_t = 0, global = true)]
    pub(crate) durable_writes: u32,
    /// PEM file of the certificate authority that signed a `rediss://` Redis's certificate
    /// (default: the system's trusted roots).
    #[arg(long, env = "WASMQ_REDIS_CA_FILE", global = true)]
    pub(crate) redis_ca_file: Option<PathBuf>,
    /// How long a durable write waits for its replicas before it is reported as failed (it was
    /// applied on the master; every write is safe to repeat).
    #[arg(long, env = "WASMQ_DURABLE_WRITES_TIMEOUT", value_parser = crate::time::parse_duration, default_value = "5s", global = true)]
    pub(crate) durable_writes_timeout: Duration,
}

impl RedisArgs {
    /// Refuses a Redis that evicts keys (naming the setting), unless the operator allowed it;
    /// warns when the server will not say.
    pub(crate) async fn check_settings(&self, broker: &RedisBroker) -> anyhow::Result<()> {
        let settings = crate::broker::Inspect::durability(broker).await;
        match (settings.evicting(), &settings.eviction) {
            (Some(policy), _) if !self.allow_evicting_redis => anyhow::bail!(
                "Redis at `{}` has `maxmemory-policy {policy}`: under memory pressure it deletes keys, and accepted jobs with them, without an error. Set `maxmemory-policy noeviction` (then a full Redis refuses enqueues instead), or pass `--allow-evicting-redis` to run anyway",
                self.redis
            ),
            (Some(policy), _) => eprintln!(
                "warning: Redis at `{}` has `maxmemory-policy {policy}` (allowed by --allow-evicting-redis): accepted jobs may be evicted under memory pressure",
                self.redis
            ),
            (None, None) => eprintln!(
                "warning: Redis at `{}` does not say its `maxmemory-policy` (CONFIG GET refused): make sure it is `noeviction`, or accepted jobs may be evicted",
                self.redis
            ),
            (None, Some(_)) => {}
        }
        Ok(())
    }

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
        let ca = match &self.redis_ca_file {
            Some(path) => Some(std::fs::read(path).with_context(|| {
                format!("failed to read the Redis CA file `{}`", path.display())
            })?),
            None => None,
        };
        RedisBroker::connect_with(&self.redis, "wasmq", ca.as_deref())
            .await
            .with_context(|| format!("failed to connect to Redis at `{}`", self.redis))?
            .with_durable_writes(self.durable_writes, self.durable_writes_timeout)
            .await
            .with_context(|| {
                format!(
                    "--durable-writes {} at `{}`",
                    self.durable_writes, self.redis
                )
            })
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
    max_bytes: u64,
) -> anyhow::Result<ExitCode> {
    for file in &args.files {
        let hash = upload_one(broker, sandbox, file, max_bytes).await?;
        println!("{hash}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a module file, refusing one over `max_bytes` — by its size before reading, and by what
/// was read (a file that grows, a pipe) — so that an oversized file is never held in memory.
fn read_module(file: &std::path::Path, max_bytes: u64) -> anyhow::Result<Vec<u8>> {
    let too_big = |size: u64| {
        anyhow::anyhow!(
            "`{}` is {size} bytes, above the module size limit of {max_bytes} bytes (`--max-module-mb`)",
            file.display()
        )
    };
    let opened = std::fs::File::open(file)
        .with_context(|| format!("failed to read `{}`", file.display()))?;
    let size = opened.metadata().map(|m| m.len()).unwrap_or(0);
    if size > max_bytes {
        return Err(too_big(size));
    }
    let mut bytes = Vec::new();
    opened
        .take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("failed to read `{}`", file.display()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads, validates and stores one component.
pub(crate) async fn upload_one(
    broker: &dyn ApiBroker,
    sandbox: &Sandbox,
    file: &std::path::Path,
    max_bytes: u64,
) -> anyhow::Result<ModuleHash> {
    let bytes = read_module(file, max_bytes)?;
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
    pub(crate) json: bool,
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
    println!("{}", durability_line(&broker.durability().await));
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
        "{:<32} {:>8} {:>8} {:>11} {:<22} {:<22} queues",
        "worker", "in flight", "waiting", "concurrency", "started", "last seen"
    );
    for w in workers {
        println!(
            "{:<32} {:>8} {:>8} {:>11} {:<22} {:<22} {}",
            w.name,
            w.in_flight,
            w.waiting,
            w.concurrency,
            format_time(w.started_at_ms),
            format_time(w.last_seen_ms),
            w.queues.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `redis: maxmemory-policy noeviction · appendonly yes · appendfsync always`, `?` where Redis
/// will not say, and what an unsafe setting risks.
fn durability_line(d: &crate::broker::Durability) -> String {
    if d.backend == "memory" {
        return "memory broker: jobs last as long as this process".to_owned();
    }
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
    let mut line = format!(
        "{}: maxmemory-policy {} · appendonly {} · appendfsync {}",
        d.backend,
        or_unknown(d.eviction.clone()),
        or_unknown(
            d.appendonly
                .map(|a| if a { "yes" } else { "no" }.to_owned())
        ),
        or_unknown(d.appendfsync.clone()),
    );
    if let Some(n) = d.durable_writes {
        line.push_str(&format!(" · durable writes: {n} replica(s) confirm each"));
    }
    if let Some(policy) = d.evicting() {
        line.push_str(&format!(
            " — `{policy}` evicts accepted jobs under memory pressure"
        ));
    } else if d.appendonly == Some(false) {
        line.push_str(" — without the append-only file a restart loses jobs");
    } else if d.appendfsync.as_deref() == Some("everysec") {
        line.push_str(" — a power cut may lose up to a second of accepted jobs");
    } else if d.backend == "redis-cluster" && d.durable_writes.is_none() {
        line.push_str(
            " — a failover may lose the last accepted jobs not yet on a replica (--durable-writes)",
        );
    }
    line
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
    /// At most this many of its jobs waiting or running (ready, scheduled, leased); enqueues
    /// past it are refused whole (HTTP 429).
    #[arg(long)]
    max_size: Option<u64>,
}

pub(crate) async fn limit(broker: &dyn ApiBroker, args: LimitArgs) -> anyhow::Result<ExitCode> {
    crate::invocation::check_queue_name(&args.queue)?;
    if args.concurrency == Some(0) || args.rate == Some(0) || args.max_size == Some(0) {
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
        max_size: args.max_size,
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
    if let Some(n) = l.max_size {
        parts.push(format!("at most {n} waiting or running"));
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
    match crate::broker::cancel_job(broker, &record.queue, &args.id).await? {
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
