//! `wasmq run`: one invocation of a component file, locally, with the sandbox's limits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Args;
use serde_json::{Value, json};

use super::AttemptLimits;
use super::report;
use crate::grant::{Grant, HttpRule};
use crate::invocation::{args_to_bytes, bytes_to_json};
use crate::job::{JobInfo, Limits};
use crate::modules::ModuleHash;
use crate::sandbox::{
    EnqueueFuture, JoinFuture, JoinOptions, RunRequest, Sandbox, SecretFuture, SecretSource,
    SubJobOptions, SubJobSink,
};

/// Flags of `wasmq run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The job component (`.wasm`).
    module: PathBuf,
    /// Arguments as JSON (`{"$bytes": "<base64>"}` for raw bytes).
    #[arg(long, default_value = "null", conflicts_with = "args_file")]
    args: String,
    /// Read the JSON arguments from a file (`-` for stdin).
    #[arg(long)]
    args_file: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    /// The attempt number the job sees (to try retry logic locally).
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// The attempts the job is told it has.
    #[arg(long, default_value_t = 1)]
    max_attempts: u32,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// Let the job call this HTTP destination (`https://api.example`, `https://*.cdn.example:8443`,
    /// `http://127.0.0.1:8080`), as `wasmq grant --http` does for queued runs; repeatable.
    #[arg(long = "http", value_name = "DESTINATION")]
    http: Vec<HttpRule>,
    /// Grant the job secret NAME with the contents of PATH (trailing newline removed), as
    /// `wasmq grant --secret` and `wasmq secret set` do for queued runs; repeatable.
    #[arg(long = "secret-file", value_name = "NAME=PATH", value_parser = parse_secret_file)]
    secret_files: Vec<(String, PathBuf)>,
}

fn parse_secret_file(text: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=PATH"))?;
    crate::grant::check_secret_name(name).map_err(|e| e.to_string())?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

/// Secrets read from files for one local run.
struct FileSecrets(HashMap<String, String>);

impl SecretSource for FileSecrets {
    fn secret(&self, name: &str) -> SecretFuture {
        let found =
            self.0.get(name).cloned().ok_or_else(|| {
                format!("secret `{name}` was not given (`--secret-file {name}=PATH`)")
            });
        Box::pin(async move { found })
    }
}

/// Reads each `--secret-file`, checking its value as `wasmq secret set` would.
fn read_secret_files(files: &[(String, PathBuf)]) -> anyhow::Result<FileSecrets> {
    let mut secrets = HashMap::new();
    for (name, path) in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read secret `{name}` from `{}`", path.display()))?;
        let value = text.strip_suffix('\n').unwrap_or(&text).to_owned();
        crate::secret::check_value(&value).with_context(|| format!("secret `{name}`"))?;
        secrets.insert(name.clone(), value);
    }
    Ok(FileSecrets(secrets))
}

/// The per-run limit flags, defaulting to the invocation format's defaults.
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    #[command(flatten)]
    attempt: AttemptLimits,
    /// Bytes of stdout and of stderr kept [default: 65536].
    #[arg(long)]
    output_bytes: Option<usize>,
}

impl LimitArgs {
    /// The limits these flags ask for, checked against the sandbox's ceilings.
    pub(crate) fn limits(&self, sandbox: &Sandbox) -> anyhow::Result<Limits> {
        let attempt = self.attempt.limits();
        let limits = Limits {
            output_bytes: self.output_bytes.unwrap_or(attempt.output_bytes),
            ..attempt
        };
        limits.check(sandbox.ceilings()).context("invalid limits")?;
        Ok(limits)
    }
}

/// Records sub-jobs instead of enqueueing them: `wasmq run` has no queue, but shows what the job
/// would have enqueued.
#[derive(Debug, Default)]
pub(crate) struct RecordedSubJobs {
    jobs: Mutex<Vec<Value>>,
}

impl RecordedSubJobs {
    pub(crate) fn take(&self) -> Vec<Value> {
        std::mem::take(&mut self.jobs.lock().unwrap())
    }
}

impl SubJobSink for RecordedSubJobs {
    fn enqueue(
        &self,
        parent: &JobInfo,
        module: String,
        args: Vec<u8>,
        options: SubJobOptions,
    ) -> EnqueueFuture {
        let result = (|| {
            let hash = module.parse::<ModuleHash>().map_err(|e| e.to_string())?;
            let mut jobs = self.jobs.lock().unwrap();
            let position = u32::try_from(jobs.len() + 1).unwrap_or(u32::MAX);
            let id = crate::worker::sub_job_id(&parent.id, position, options.key.as_deref())?;
            jobs.push(json!({
                "id": id,
                "module": hash,
                "args": bytes_to_json(&args),
                "queue": options.queue.as_deref().unwrap_or(&parent.queue),
                "delay_ms": options.delay_ms,
                "max_attempts": options.max_attempts,
                "priority": options.priority,
            }));
            Ok(id)
        })();
        Box::pin(async move { result })
    }

    fn join(&self, _: &JobInfo, _: Vec<String>, _: JoinOptions) -> JoinFuture {
        Box::pin(async {
            Err("`wasmq run` records sub-jobs without running them, so there are no outcomes to join; enqueue the job on a worker to run its sub-jobs".to_owned())
        })
    }
}

/// A job id for local runs: unique enough for logs, clearly not from a queue.
pub(crate) fn local_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("local-{:x}", nanos & 0xffff_ffff_ffff)
}

pub(crate) async fn run(sandbox: Sandbox, args: RunArgs) -> anyhow::Result<ExitCode> {
    let json_text = match &args.args_file {
        None => args.args.clone(),
        Some(p) if p.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("failed to read args from stdin")?
        }
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("failed to read args file `{}`", p.display()))?,
    };
    let value: Value = serde_json::from_str(&json_text).context("`--args` is not valid JSON")?;
    let arg_bytes = args_to_bytes(&value)?;
    let secrets = read_secret_files(&args.secret_files)?;
    let limits = args.limits.limits(&sandbox)?;

    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("failed to read `{}`", args.module.display()))?;
    let module = sandbox
        .load_async(bytes)
        .await
        .with_context(|| format!("failed to load module `{}`", args.module.display()))?;

    let sub_jobs = Arc::new(RecordedSubJobs::default());
    let info = JobInfo {
        id: local_id(),
        queue: "local".into(),
        attempt: args.attempt,
        max_attempts: args.max_attempts,
    };
    let request = RunRequest {
        info,
        args: arg_bytes,
        limits,
        sub_jobs: sub_jobs.clone(),
        progress: None,
        grant: Arc::new(Grant {
            http: args.http.clone(),
            secrets: args.secret_files.iter().map(|(n, _)| n.clone()).collect(),
        }),
        secrets: Arc::new(secrets),
        egress: Arc::new(crate::sandbox::NoEgressLimits),
    };
    let outcome = sandbox.run(&module, request).await;
    let recorded = sub_jobs.take();

    if args.json {
        let mut v = report::outcome_json(&module, &outcome);
        v["sub_jobs"] = Value::Array(recorded);
        println!("{v}");
    } else {
        print!("{}", report::outcome_text(&module, &outcome));
        if !recorded.is_empty() {
            println!(
                "sub-jobs recorded ({}; `wasmq run` has no queue, so none ran):",
                recorded.len()
            );
            for job in &recorded {
                println!(
                    "  {} {} {}",
                    job["id"].as_str().unwrap_or(""),
                    job["module"].as_str().unwrap_or(""),
                    job["args"]
                );
            }
        }
    }
    Ok(if outcome.result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
