//! `wasmq worker`: run jobs from Redis until SIGTERM or SIGINT, then drain.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::broker::Broker;
use crate::sandbox::Sandbox;
use crate::worker::{Backoff, Worker, WorkerConfig};

/// Flags of `wasmq worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Queues to take jobs from, earlier ones first.
    #[arg(long, value_delimiter = ',', default_value = crate::invocation::DEFAULT_QUEUE)]
    queues: Vec<String>,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long a fetched job stays leased without a heartbeat.
    #[arg(long, value_parser = super::parse_duration, default_value = "30s")]
    lease: Duration,
    /// How long running jobs get to finish after SIGTERM/SIGINT.
    #[arg(long, value_parser = super::parse_duration, default_value = "25s")]
    grace: Duration,
    /// How long succeeded jobs' records are kept.
    #[arg(long, value_parser = super::parse_duration, default_value = "24h")]
    result_ttl: Duration,
    /// Delay before the first retry; doubles for each further one (with jitter).
    #[arg(long, value_parser = super::parse_duration, default_value = "5s")]
    backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, value_parser = super::parse_duration, default_value = "1h")]
    backoff_max: Duration,
    /// Period of the pass that promotes due jobs and recovers expired leases.
    #[arg(long, value_parser = super::parse_duration, default_value = "1s")]
    maintain_every: Duration,
}

impl WorkerArgs {
    pub(crate) fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub(crate) fn result_ttl(&self) -> Duration {
        self.result_ttl
    }

    pub(crate) fn config(&self) -> anyhow::Result<WorkerConfig> {
        if self.concurrency == 0 {
            anyhow::bail!("`--concurrency` must be at least 1");
        }
        if self.lease < Duration::from_millis(300) {
            anyhow::bail!(
                "`--lease` must be at least 300ms, so heartbeats (every third of it) can keep up"
            );
        }
        for q in &self.queues {
            crate::invocation::check_queue_name(q).context("`--queues`")?;
        }
        Ok(WorkerConfig {
            queues: self.queues.clone(),
            concurrency: self.concurrency,
            lease: self.lease,
            grace: self.grace,
            backoff: Backoff {
                base: self.backoff_base,
                max: self.backoff_max,
            },
            maintain_every: self.maintain_every,
            ..WorkerConfig::default()
        })
    }
}

pub(crate) async fn run(
    broker: Arc<dyn Broker>,
    sandbox: Sandbox,
    args: WorkerArgs,
) -> anyhow::Result<ExitCode> {
    let config = args.config()?;
    eprintln!(
        "wasmq worker {}: queues {}, concurrency {}",
        config.name,
        config.queues.join(","),
        config.concurrency
    );
    let worker = Worker::new(broker, sandbox, config);
    let stats = worker.run(shutdown_signal()).await;
    eprintln!(
        "stopped: {} succeeded, {} retried, {} dead, {} handed back",
        stats.succeeded, stats.retried, stats.dead, stats.released
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("signal received: finishing running jobs, fetching no more");
}
