//! `wasmq worker`: run jobs from Redis until SIGTERM or SIGINT, then drain.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::broker::ApiBroker;
use crate::sandbox::Sandbox;
use crate::worker::{Backoff, FanOut, Worker, WorkerConfig};

/// Flags of `wasmq worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// Queues to take jobs from: `a,b` takes `a` first, `b` when `a` is empty; `a:3,b:1` draws a
    /// random order per fetch with `a` first three times as often (no queue starves).
    #[arg(long, value_delimiter = ',', default_value = crate::invocation::DEFAULT_QUEUE)]
    queues: Vec<String>,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Jobs that may wait for their sub-jobs at once (`join`), beside the running ones: each
    /// gives its slot back while it waits and stays in memory, suspended; past this a `join`
    /// returns an error to the job.
    #[arg(long, default_value_t = crate::worker::DEFAULT_MAX_WAITING)]
    max_waiting: usize,
    /// How long a fetched job stays leased without a heartbeat.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "30s")]
    lease: Duration,
    /// How long running jobs get to finish after SIGTERM/SIGINT.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "25s")]
    grace: Duration,
    /// How long succeeded jobs' records are kept.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "24h")]
    result_ttl: Duration,
    /// Delay before the first retry; doubles for each further one (with jitter).
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "5s")]
    backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "1h")]
    backoff_max: Duration,
    /// Period of the pass that promotes due jobs and recovers expired leases.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "1s")]
    maintain_every: Duration,
    /// At start, load every uploaded module in the background (from the artifact cache, or by
    /// compiling it), so that no job waits for a compile — worth it for Python and JavaScript
    /// jobs, whose components take seconds to compile.
    #[arg(long)]
    precompile: bool,
    /// How long a module's grant is used before it is read again: a grant or revoke reaches
    /// runs that start later than this (`0s`: read it for every run).
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "1s")]
    grant_ttl: Duration,
    /// How long an egress slot this worker holds lives without a renewal (renewed every third
    /// of it during the call): a killed worker's slots come back within this.
    #[arg(long, value_parser = crate::time::parse_duration, default_value = "30s")]
    egress_lease: Duration,
    /// How long past its rate window an egress start keeps counting [default: 2% of the window,
    /// at least 10ms]: it must cover how much the delay from this worker to the destination
    /// varies, or the destination may see a few more starts in a window than the limit.
    #[arg(long, value_parser = crate::time::parse_duration)]
    egress_rate_guard: Option<Duration>,
}

impl WorkerArgs {
    /// Runs alive at once: the running ones and the ones waiting for sub-jobs.
    pub(crate) fn instances(&self) -> usize {
        self.concurrency.saturating_add(self.max_waiting)
    }

    pub(crate) fn result_ttl(&self) -> Duration {
        self.result_ttl
    }

    pub(crate) fn config(&self) -> anyhow::Result<WorkerConfig> {
        if self.concurrency == 0 {
            anyhow::bail!("`--concurrency` must be at least 1");
        }
        if self.egress_lease < Duration::from_millis(300) {
            anyhow::bail!("`--egress-lease` must be at least 300ms, so renewals can keep up");
        }
        if self.lease < Duration::from_millis(300) {
            anyhow::bail!(
                "`--lease` must be at least 300ms, so heartbeats (every third of it) can keep up"
            );
        }
        let (queues, weights) = parse_queues(&self.queues)?;
        Ok(WorkerConfig {
            queues,
            weights,
            concurrency: self.concurrency,
            max_waiting: self.max_waiting,
            lease: self.lease,
            grace: self.grace,
            backoff: Backoff {
                base: self.backoff_base,
                max: self.backoff_max,
            },
            maintain_every: self.maintain_every,
            precompile: self.precompile,
            grant_ttl: self.grant_ttl,
            secret_key: super::secret::key_from_env()?,
            egress_lease: self.egress_lease,
            egress_rate_guard: self.egress_rate_guard,
            ..WorkerConfig::default()
        })
    }
}

pub(crate) async fn run(
    broker: Arc<dyn ApiBroker>,
    sandbox: Sandbox,
    args: WorkerArgs,
    fan_out: FanOut,
) -> anyhow::Result<ExitCode> {
    let config = WorkerConfig {
        fan_out,
        ..args.config()?
    };
    eprintln!(
        "wasmq worker {}: queues {}, concurrency {}",
        config.name,
        config.queues.join(","),
        config.concurrency
    );
    raise_open_files(config.concurrency);
    let worker = Worker::new(broker, sandbox, config);
    let stats = worker.run(shutdown_signal()).await;
    eprintln!(
        "stopped: {} succeeded, {} retried, {} dead, {} handed back",
        stats.succeeded, stats.retried, stats.dead, stats.released
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or SIGINT. The handlers are in place when this returns, not
/// when the future is first polled: a signal that arrives once jobs are leased must drain the
/// worker, never end the process the default way (its leases would run out, and its jobs run
/// again).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("signal received: finishing running jobs, fetching no more");
    }
}

/// `a,b` (strict order) or `a:3,b:1` (weights): names checked, weights all given or none.
fn parse_queues(specs: &[String]) -> anyhow::Result<(Vec<String>, Vec<u32>)> {
    let mut queues = Vec::new();
    let mut weights = Vec::new();
    for spec in specs {
        let (name, weight) = match spec.split_once(':') {
            Some((n, w)) => {
                let w: u32 = w.parse().ok().filter(|w| *w > 0).ok_or_else(|| {
                    anyhow::anyhow!(
                        "`--queues`: weight `{w}` of `{n}` must be a whole number above 0"
                    )
                })?;
                (n, Some(w))
            }
            None => (spec.as_str(), None),
        };
        crate::invocation::check_queue_name(name).context("`--queues`")?;
        queues.push(name.to_owned());
        weights.extend(weight);
    }
    if !weights.is_empty() && weights.len() != queues.len() {
        anyhow::bail!("`--queues`: give every queue a weight (`a:3,b:1`) or none (`a,b`)");
    }
    Ok((queues, weights))
}

/// Raises this process's soft limit on open files to its hard limit: every job waiting on an
/// HTTP response holds a socket, and the usual soft limit (1,024) is far below ten thousand.
/// Warns when even the hard limit is below what `concurrency` may need.
#[allow(unsafe_code)]
pub(super) fn raise_open_files(concurrency: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the struct we pass; `setrlimit` reads it and changes only this
    // process's limits.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    let wanted = concurrency as u64 + 256;
    if !raised || limit.rlim_max < wanted {
        eprintln!(
            "warning: open files are limited to {} (`ulimit -n`); {concurrency} jobs each waiting on an HTTP call need about {wanted}",
            limit.rlim_cur
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_queues(&s(&["a", "b"])).unwrap(),
            (s(&["a", "b"]), vec![])
        );
        assert_eq!(
            parse_queues(&s(&["a:3", "b:1"])).unwrap(),
            (s(&["a", "b"]), vec![3, 1])
        );
        let err = parse_queues(&s(&["a:3", "b"])).unwrap_err().to_string();
        assert!(err.contains("give every queue a weight"), "{err}");
        let err = parse_queues(&s(&["a:0"])).unwrap_err().to_string();
        assert!(err.contains("weight `0` of `a`"), "{err}");
        assert!(parse_queues(&s(&["a b"])).is_err());
    }
}
