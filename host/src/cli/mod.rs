//! The `wasmq` command line: argument parsing and the commands built on the library.
//!
//! Commands print for people by default and one JSON object with `--json`. Errors are returned as
//! `anyhow` chains for `main` to print; job failures are not errors but outcomes (exit code 1).

mod bench;
mod demo;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::sandbox::{Sandbox, SandboxConfig};

/// wasmq — background jobs as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wasmq", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Where compiled artifacts are cached [default: $XDG_CACHE_HOME/wasmq or ~/.cache/wasmq].
    #[arg(long, global = true, env = "WASMQ_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile every module afresh; neither read nor write the artifact cache.
    #[arg(long, global = true)]
    no_cache: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one invocation of a job component locally and print its outcome.
    Run(run::RunArgs),
    /// Run the sample jobs (built by `sample-jobs/build.sh`) and show what the sandbox does.
    Demo(demo::DemoArgs),
    /// Measure the sandbox and print the figures.
    Bench(bench::BenchArgs),
}

/// Flags shared by commands that look for the sample jobs.
#[derive(Debug, Args)]
pub(crate) struct JobsDir {
    /// Directory holding the sample job components.
    #[arg(long, default_value = "sample-jobs/target/wasm32-wasip2/release")]
    jobs_dir: PathBuf,
}

impl JobsDir {
    /// Reads `<name>.wasm` from the jobs directory, with a hint when it was never built.
    pub(crate) fn read(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self
            .jobs_dir
            .join(format!("{}.wasm", name.replace('-', "_")));
        std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "failed to read sample job `{}`: {e} (build the sample jobs with `sample-jobs/build.sh`)",
                path.display()
            )
        })
    }
}

impl Cli {
    /// Runs the parsed command; `Ok` carries the process exit code.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cache_dir = if self.no_cache {
            None
        } else {
            Some(self.cache_dir.unwrap_or_else(default_cache_dir))
        };
        match self.command {
            Command::Run(args) => run::run(sandbox(cache_dir)?, args).await,
            Command::Demo(args) => demo::run(sandbox(cache_dir)?, args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    }
}

fn sandbox(cache_dir: Option<PathBuf>) -> anyhow::Result<Sandbox> {
    Sandbox::new(SandboxConfig {
        cache_dir,
        ..SandboxConfig::default()
    })
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("wasmq")
}
