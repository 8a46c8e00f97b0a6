//! `wasmq enqueue`: one job from flags, or a JSON-lines file of invocations (`-` for stdin),
//! through the intake — every line and every module checked before anything is enqueued —
//! optionally waiting for them all to end.

use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::{AttemptLimits, report};
use crate::broker::{ApiBroker, Enqueued, JobRecord};
use crate::intake::{Intake, IntakeError, Place, Refusal};
use crate::invocation::{Invocation, NewJob};
use crate::job::JobState;
use crate::modules::ModuleHash;
use crate::time::format_time;

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
    #[command(flatten)]
    limits: AttemptLimits,
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
        self.limits.apply(&mut inv);
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
    let lines = match &args.file {
        Some(path) => read_jsonl(path)?,
        None => Vec::new(),
    };
    // A refusal names the line of the file it came from; a job from the flags needs no place.
    let located = |e: IntakeError| match &args.file {
        Some(path) => refused_line(e, &lines, path),
        None => e.into(),
    };
    let jobs: Vec<NewJob> = match (&args.file, args.module) {
        (Some(_), _) => intake
            .jobs(
                lines
                    .iter()
                    .map(|(_, text)| Invocation::from_json(text.as_bytes())),
            )
            .map_err(|r| located(r.into()))?,
        (None, Some(module)) => vec![intake.job(args.invocation(module)?)?],
        (None, None) => bail!("name a module, or `--file` with invocations"),
    };
    // Nothing is enqueued unless every line is valid and every module was uploaded.
    let outcomes = intake
        .enqueue(broker.as_ref(), &jobs)
        .await
        .map_err(located)?;
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
fn refused_line(e: IntakeError, lines: &[(usize, String)], path: &Path) -> anyhow::Error {
    match e {
        IntakeError::Refused(Refusal {
            place: Place::Job(i),
            error,
        }) => anyhow::Error::new(error).context(format!(
            "line {} of `{}`",
            lines.get(i).map_or(i + 1, |(n, _)| *n),
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

pub(super) fn show_record(id: &str, record: Option<&JobRecord>, json: bool) -> anyhow::Result<()> {
    match (record, json) {
        (None, true) => println!("{}", serde_json::json!({"id": id, "state": null})),
        (None, false) => println!("job `{id}` not found (never enqueued, or its result expired)"),
        (Some(r), true) => println!("{}", serde_json::to_string(r)?),
        (Some(r), false) => print!("{}", report::record_text(r)),
    }
    Ok(())
}
