//! `wasmq serve`: the HTTP API, with an optional worker in the same process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::OperatorLimits;
use super::queue::RedisArgs;
use crate::api::{ApiState, BodyLimits, Tokens};
use crate::broker::ApiBroker;
use crate::sandbox::Sandbox;
use crate::worker::{Worker, WorkerConfig};

/// Flags of `wasmq serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Token file: one `name:secret:scope[,scope…]` per line (scopes: enqueue, upload, admin).
    #[arg(long, env = "WASMQ_TOKENS_FILE", conflicts_with = "insecure_no_auth")]
    tokens_file: Option<PathBuf>,
    /// Tokens inline, `;`-separated, same format (prefer the file: environments leak).
    #[arg(
        long,
        env = "WASMQ_TOKENS",
        hide_env_values = true,
        conflicts_with = "insecure_no_auth"
    )]
    tokens: Option<String>,
    /// Accept every request without a token. Local development only.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Also run a worker in this process with this many jobs in flight (0: none).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Queues the in-process worker takes jobs from.
    #[arg(long, value_delimiter = ',', default_value = crate::invocation::DEFAULT_QUEUE)]
    queues: Vec<String>,
}

impl ServeArgs {
    pub(crate) fn workers(&self) -> usize {
        self.workers
    }

    fn tokens(&self) -> anyhow::Result<Tokens> {
        if self.insecure_no_auth {
            eprintln!(
                "WARNING: --insecure-no-auth: anyone who can reach {} can upload code and run it",
                self.listen
            );
            return Ok(Tokens::insecure_open());
        }
        let text = match (&self.tokens_file, &self.tokens) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the token file `{}`", path.display()))?,
            (None, Some(inline)) => inline.clone(),
            (None, None) => anyhow::bail!(
                "no tokens: pass `--tokens-file` (or WASMQ_TOKENS), or `--insecure-no-auth` for local development"
            ),
        };
        Tokens::parse(&text).context("invalid tokens")
    }
}

pub(crate) async fn run(
    redis: RedisArgs,
    sandbox: Sandbox,
    args: ServeArgs,
    operator: OperatorLimits,
) -> anyhow::Result<ExitCode> {
    let tokens = args.tokens()?;
    let connected = redis.connect().await?;
    redis.check_settings(&connected).await?;
    let broker: Arc<dyn ApiBroker> = connected;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("failed to listen on `{}`", args.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut worker_task = None;
    let mut counters = None;
    if args.workers > 0 {
        for q in &args.queues {
            crate::invocation::check_queue_name(q).context("`--queues`")?;
        }
        let worker = Worker::new(
            broker.clone(),
            sandbox.clone(),
            WorkerConfig {
                queues: args.queues.clone(),
                concurrency: args.workers,
                fan_out: operator.fan_out,
                secret_key: super::secret::key_from_env()?,
                ..WorkerConfig::default()
            },
        );
        counters = Some(worker.counters());
        let mut stop = stop_rx.clone();
        worker_task = Some(tokio::spawn(worker.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    let state = ApiState {
        broker,
        sandbox,
        tokens: Arc::new(tokens),
        limits: BodyLimits {
            module_bytes: usize::try_from(operator.module_bytes).unwrap_or(usize::MAX),
            ..BodyLimits::default()
        },
        worker: counters,
        throughput: Default::default(),
    };
    // The address line is the readiness signal for scripts and tests.
    println!("listening on http://{addr}");
    println!("dashboard: http://{addr}/ (enter a token in the page)");
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(crate::api::serve(listener, state, async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    super::worker::shutdown_signal().await;
    let _ = stop_tx.send(true);
    // In-flight requests (long polls included) get a moment; the worker drains on its own terms.
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    if let Some(task) = worker_task {
        task.await?;
    }
    Ok(ExitCode::SUCCESS)
}
