//! Helpers shared by the integration tests: the sample job components (built on first use), one
//! sandbox per test process, and a shorthand for one run.

pub mod backend;
pub mod cluster;
pub mod redis;
pub mod rig;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use wasmq::job::{JobInfo, Limits};
use wasmq::sandbox::{
    CompileBudget, NoSubJobs, RunOutcome, RunRequest, Sandbox, SandboxConfig, SubJobSink,
};

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
}

/// The directory holding the built sample jobs; builds them (once per test process) so that
/// `cargo test` alone is enough. Cargo's own lock serialises concurrent test binaries.
pub fn jobs_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let status = Command::new("bash")
            .arg(root.join("sample-jobs/build.sh"))
            .arg("--quiet")
            .status()
            .expect("failed to run sample-jobs/build.sh");
        assert!(status.success(), "sample-jobs/build.sh failed: {status}");
        root.join("sample-jobs/target/wasm32-wasip2/release")
    })
}

/// The component bytes of sample job `name` (`hello`, `csv-clean`, …).
pub fn job(name: &str) -> Vec<u8> {
    let path = jobs_dir().join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
}

/// How long a compile may take in tests that do not test the limit (see [`config`]).
pub const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// One sandbox for the whole test process (no artifact cache: tests of the cache make their own),
/// compiling in `wasmq compile-module` children as the binary does.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(config()).expect("sandbox"))
}

/// The default sandbox configuration, with the built `wasmq` binary as the compiler child and
/// ten minutes per compile: tests of the budget set their own, and the Python and JavaScript
/// jobs (12 s each in a debug build) must not fail on a loaded machine.
pub fn config() -> SandboxConfig {
    SandboxConfig {
        compile: CompileBudget {
            program: Some(env!("CARGO_BIN_EXE_wasmq").into()),
            timeout: COMPILE_TIMEOUT,
            ..CompileBudget::default()
        },
        ..SandboxConfig::default()
    }
}

/// A request for attempt 1 of 1 with `args` as JSON.
pub fn request(args: &Value, limits: Limits) -> RunRequest {
    request_with(args, limits, 1, Arc::new(NoSubJobs))
}

/// A request with a chosen attempt number and sub-job sink.
pub fn request_with(
    args: &Value,
    limits: Limits,
    attempt: u32,
    sub_jobs: Arc<dyn SubJobSink>,
) -> RunRequest {
    RunRequest {
        info: JobInfo {
            id: "test-job".into(),
            queue: "test".into(),
            attempt,
            max_attempts: 3,
        },
        args: wasmq::invocation::args_to_bytes(args).expect("args"),
        limits,
        sub_jobs,
        progress: None,
        grant: Default::default(),
        secrets: Arc::new(wasmq::sandbox::NoSecrets),
        egress: Arc::new(wasmq::sandbox::NoEgressLimits),
    }
}

/// Runs sample job `name` once with `args` and `limits`.
pub async fn run(name: &str, args: Value, limits: Limits) -> RunOutcome {
    let module = sandbox().load(&job(name)).expect("sample job loads");
    sandbox().run(&module, request(&args, limits)).await
}

/// The result of a successful run, as JSON; panics with the failure otherwise.
pub fn ok_json(outcome: &RunOutcome) -> Value {
    match &outcome.result {
        Ok(bytes) => serde_json::from_slice(bytes).expect("result is JSON"),
        Err(f) => panic!("expected success, got {f}; stderr: {}", outcome.stderr.text),
    }
}

/// The `wasmq` binary, pointed at `redis_url` with its artifact cache in `cache`, run from the
/// repository root.
pub fn wasmq_cmd(redis_url: &str, cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmq"));
    cmd.env("WASMQ_REDIS", redis_url)
        .env("WASMQ_CACHE_DIR", cache)
        .env(
            "WASMQ_COMPILE_TIMEOUT",
            format!("{}s", COMPILE_TIMEOUT.as_secs()),
        )
        .current_dir(repo_root());
    cmd
}

/// The `wasmq` CLI as the README's least-privilege user (`wasmq`/`s3cret`) over TLS: `url`'s
/// `rediss://` addresses with the user put in, and `WASMQ_REDIS_CA_FILE` naming `ca_pem`.
pub struct CliOverTls {
    url: String,
    cache: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl CliOverTls {
    /// The CLI for `url` (one or several `rediss://` addresses) trusting `ca_pem`.
    pub fn new(url: &str, ca_pem: &[u8]) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let ca = cache.path().join("ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        CliOverTls {
            url: url.replace("rediss://", "rediss://wasmq:s3cret@"),
            cache,
            ca,
        }
    }

    /// The URL it is given, with the user in it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `wasmq args…`, not started.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = wasmq_cmd(&self.url, self.cache.path());
        cmd.env("WASMQ_REDIS_CA_FILE", &self.ca).args(args);
        cmd
    }

    /// Runs `wasmq args…`; its stdout, once it succeeded.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Without the authority the server's certificate is not trusted, and the error says so.
    pub fn assert_refused_without_the_ca(&self) {
        let out = wasmq_cmd(&self.url, self.cache.path())
            .args(["queues"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("certificate"), "{err}");
    }
}

/// The path of sample job `name`'s component.
pub fn job_path(name: &str) -> String {
    jobs_dir()
        .join(format!("{}.wasm", name.replace('-', "_")))
        .display()
        .to_string()
}

/// Enqueues through the intake with the default ceilings, as a client would: every module must
/// have been uploaded.
pub async fn enqueue(
    broker: &dyn wasmq::broker::Broker,
    jobs: &[wasmq::invocation::NewJob],
) -> Result<Vec<wasmq::broker::Enqueued>, wasmq::intake::IntakeError> {
    wasmq::intake::Intake::default().enqueue(broker, jobs).await
}
