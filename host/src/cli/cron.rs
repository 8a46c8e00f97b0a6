//! `wasmq cron add|list|remove`: recurring jobs.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use super::AttemptLimits;
use crate::broker::ApiBroker;
use crate::intake::Intake;
use crate::invocation::{DEFAULT_QUEUE, Invocation};
use crate::modules::ModuleHash;
use crate::time::format_time;

/// `wasmq cron …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CronCommand {
    /// Add (or replace) a recurring job. Each tick enqueues one job, however many workers run.
    Add {
        /// The entry's name, unique within its queue.
        name: String,
        /// Cron expression in UTC: 5 fields, or 6 with seconds first (`*/10 * * * * *`).
        schedule: String,
        /// The module (`sha256:…`).
        module: ModuleHash,
        /// Arguments as JSON.
        #[arg(long, default_value = "null")]
        args: String,
        /// Queue.
        #[arg(long, default_value = DEFAULT_QUEUE)]
        queue: String,
        /// Attempts per tick's job.
        #[arg(long)]
        max_attempts: Option<u32>,
        #[command(flatten)]
        limits: AttemptLimits,
    },
    /// List the recurring jobs and their next tick.
    List {
        /// Only this queue's.
        #[arg(long)]
        queue: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a recurring job.
    Remove {
        /// The entry's name.
        name: String,
        /// Its queue.
        #[arg(long, default_value = DEFAULT_QUEUE)]
        queue: String,
    },
}

pub(crate) async fn run(
    intake: &Intake,
    broker: &dyn ApiBroker,
    command: CronCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        CronCommand::Add {
            name,
            schedule,
            module,
            args,
            queue,
            max_attempts,
            limits,
        } => {
            let mut inv = Invocation::new(module);
            inv.args = serde_json::from_str(&args)
                .map_err(|e| anyhow::anyhow!("`--args` is not JSON: {e}"))?;
            inv.queue = queue;
            inv.max_attempts = max_attempts.unwrap_or(inv.max_attempts);
            limits.apply(&mut inv);
            let entry = crate::scheduler::add_cron(intake, broker, &name, &schedule, inv).await?;
            println!(
                "{}: `{}` on queue `{}`, next at {}",
                entry.name,
                entry.schedule,
                entry.invocation.queue,
                format_time(entry.next_ms)
            );
        }
        CronCommand::List { queue, json } => {
            let entries = broker.crons(queue.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                println!(
                    "{:<24} {:<16} {:<20} {:<26} module",
                    "name", "queue", "schedule", "next"
                );
                for e in entries {
                    println!(
                        "{:<24} {:<16} {:<20} {:<26} {}",
                        e.name,
                        e.invocation.queue,
                        e.schedule,
                        format_time(e.next_ms),
                        e.invocation.module
                    );
                }
            }
        }
        CronCommand::Remove { name, queue } => {
            if !broker.remove_cron(&queue, &name).await? {
                bail!("no cron entry `{name}` on queue `{queue}`");
            }
            println!("{name}: removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
