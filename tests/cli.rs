//! The `wasmq` binary: `run` with text and JSON output, exit codes, error messages, and `demo`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn wasmq(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmq"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .current_dir(common::repo_root())
        .output()
        .expect("failed to start wasmq")
}

fn job_path(name: &str) -> String {
    common::jobs_dir()
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_prints_the_result_and_exits_zero() {
    let cache = tempfile::tempdir().unwrap();
    let out = wasmq(
        cache.path(),
        &["run", &job_path("hello"), "--args", r#"{"name":"Ada"}"#],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("succeeded in"), "{stdout}");
    assert!(stdout.contains("\"message\": \"Hello, Ada!\""), "{stdout}");
}

#[test]
fn run_json_is_one_object() {
    let cache = tempfile::tempdir().unwrap();
    let out = wasmq(
        cache.path(),
        &[
            "run",
            &job_path("hello"),
            "--args",
            r#"{"name":"Ada"}"#,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["result"]["message"], "Hello, Ada!");
    assert!(v["module"].as_str().unwrap().starts_with("sha256:"));
    assert!(v["fuel_used"].as_u64().unwrap() > 0);
    assert_eq!(v["load"]["origin"], "compiled");

    // Same cache directory, new process: the artifact is reused.
    let out = wasmq(cache.path(), &["run", &job_path("hello"), "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["load"]["origin"], "disk_cache");
    assert_eq!(v["result"]["message"], "Hello, world!");
}

#[test]
fn failed_job_exits_one_with_the_reason() {
    let cache = tempfile::tempdir().unwrap();
    let out = wasmq(
        cache.path(),
        &[
            "run",
            &job_path("chaos"),
            "--args",
            r#"{"mode":"spin"}"#,
            "--fuel",
            "1000000",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["kind"], "out_of_fuel");
    assert_eq!(v["error"]["retryable"], true);
    assert_eq!(v["fuel_used"], 1_000_000);

    let out = wasmq(
        cache.path(),
        &[
            "run",
            &job_path("chaos"),
            "--args",
            r#"{"mode":"fail","message":"nope"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("failed (fail, permanent)") && stdout.contains("job failed: nope"),
        "{stdout}"
    );
}

#[test]
fn sub_jobs_are_recorded_by_run() {
    let cache = tempfile::tempdir().unwrap();
    let target = format!("sha256:{}", "cd".repeat(32));
    let args = format!(r#"{{"module":"{target}","count":2,"args":{{"x":1}}}}"#);
    let out = wasmq(
        cache.path(),
        &["run", &job_path("fanout"), "--args", &args, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sub_jobs"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["sub_jobs"][1]["args"],
        serde_json::json!({"x": 1, "index": 1})
    );
}

#[test]
fn bad_input_exits_two_with_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["run", "Cargo.toml"], "not a WebAssembly binary"),
        (
            &["run", "no/such/job.wasm"],
            "failed to read `no/such/job.wasm`",
        ),
        (
            &["run", &job_path("hello"), "--args", "{name:"],
            "`--args` is not valid JSON",
        ),
        (
            &["run", &job_path("hello"), "--memory-mb", "100000"],
            "`memory_mb` is 100000, above the operator's ceiling",
        ),
        (
            &["run", &job_path("hello"), "--args", r#"{"$bytes":"%%"}"#],
            "`args.$bytes` must be a base64 string",
        ),
    ];
    for (args, expected) in cases {
        let out = wasmq(cache.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn demo_runs_every_case() {
    let cache = tempfile::tempdir().unwrap();
    let dir = common::jobs_dir().display().to_string();
    let out = wasmq(cache.path(), &["demo", "--jobs-dir", &dir]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for kind in [
        "succeeded",
        "out_of_fuel",
        "memory_limit",
        "timeout",
        "stack_overflow",
        "trap",
        "fail",
        "truncated",
    ] {
        assert!(stdout.contains(kind), "missing {kind} in:\n{stdout}");
    }
}
