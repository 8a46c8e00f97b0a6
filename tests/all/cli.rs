//! The `wasmq` binary: `run` with text and JSON output, exit codes, error messages, and `demo`.

use crate::common;
use crate::common::rig::Rig;

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
    // The artifact cache the guest tests use: the Python and JavaScript components compile once
    // per machine.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-artifacts");
    let dir = common::jobs_dir().display().to_string();
    // The tests' compile budget: the demo compiles the Python and JavaScript components when
    // they are new, on a machine busy with the rest of the suite.
    let timeout = format!("{}s", common::COMPILE_TIMEOUT.as_secs());
    let out = wasmq(
        &cache,
        &["demo", "--jobs-dir", &dir, "--compile-timeout", &timeout],
    );
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
    assert!(
        stdout.contains("csv-clean in Rust, Python and JavaScript: identical results"),
        "{stdout}"
    );
    assert!(
        stdout.contains("partner-sync, one per page     20/20 ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("partner API: 20 pages served")
            && stdout.contains("(egress limit 3); sink: 80 records stored by 20 POSTs, each with the granted bearer token"),
        "{stdout}"
    );
}

#[test]
fn upload_enqueue_wait_and_inspect() {
    let q = Rig::new();
    let hash = q.ok(&["upload", &common::job_path("hello")]);
    let hash = hash.trim();
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");
    assert_eq!(
        q.ok(&["upload", &common::job_path("hello")]).trim(),
        hash,
        "idempotent"
    );
    let modules: Value = serde_json::from_str(&q.ok(&["modules", "--json"])).unwrap();
    assert_eq!(modules.as_array().unwrap().len(), 1);
    assert_eq!(modules[0]["hash"], hash);
    assert!(modules[0]["size"].as_u64().unwrap() > 10_000);

    let _worker = q.worker("worker", &[]);
    let out = q.ok(&[
        "enqueue",
        hash,
        "--args",
        r#"{"name":"Ada"}"#,
        "--id",
        "greet",
        "--wait",
    ]);
    assert!(
        out.contains("job greet on queue `default`: succeeded"),
        "{out}"
    );
    assert!(out.contains("\"message\": \"Hello, Ada!\""), "{out}");

    let record: Value = serde_json::from_str(&q.ok(&["job", "greet", "--json"])).unwrap();
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["attempts"], 1);
    assert_eq!(record["report"]["result"]["message"], "Hello, Ada!");

    // The id is the idempotency key.
    let again = q.cmd(&[
        "enqueue",
        hash,
        "--args",
        r#"{"name":"Bob"}"#,
        "--id",
        "greet",
    ]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        text(&again.stderr).contains("already existed"),
        "{}",
        text(&again.stderr)
    );
    let record: Value = serde_json::from_str(&q.ok(&["job", "greet", "--json"])).unwrap();
    assert_eq!(record["invocation"]["args"]["name"], "Ada");

    // Bulk from stdin, waited on together.
    let lines: String = (0..20)
        .map(|i| {
            format!("{{\"module\":\"{hash}\",\"id\":\"bulk-{i}\",\"args\":{{\"name\":\"{i}\"}}}}\n")
        })
        .collect();
    let mut child = common::wasmq_cmd(&q.redis().url(), q.dir.path())
        .args(["enqueue", "--file", "-", "--wait", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), lines.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let states: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["state"].clone())
        .collect();
    assert_eq!(states, vec![Value::from("succeeded"); 20]);

    let queues: Value = serde_json::from_str(&q.ok(&["queues", "--json"])).unwrap();
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["ready"], 0);
    assert_eq!(queues[0]["leased"], 0);
}

#[test]
fn enqueue_refuses_bad_invocations_and_names_the_field() {
    let q = Rig::new();
    let hash = q.ok(&["upload", &common::job_path("hello")]);
    let hash = hash.trim();
    let never = format!("sha256:{}", "ab".repeat(32));
    let bad_lines = q.dir.path().join("bad.jsonl");
    std::fs::write(
        &bad_lines,
        format!("{{\"module\":\"{hash}\"}}\n{{\"module\":\"{hash}\",\"colour\":\"red\"}}\n"),
    )
    .unwrap();
    let five_kb = format!("\"{}\"", "x".repeat(5000));
    let cases: [(&[&str], &str); 8] = [
        (&["enqueue", &never], "was never uploaded"),
        (
            &["--max-args-kb", "4", "enqueue", hash, "--args", &five_kb],
            "`args` is 5002 bytes of JSON, above the limit of 4096 bytes (--max-args-kb)",
        ),
        (
            &["enqueue", "sha256:xyz"],
            "must be `sha256:` followed by 64",
        ),
        (
            &["enqueue", hash, "--memory-mb", "100000"],
            "`memory_mb` is 100000, above the operator's ceiling",
        ),
        (
            &["enqueue", hash, "--queue", "a b"],
            "`queue` `a b` contains ` `",
        ),
        (
            &["enqueue", hash, "--max-attempts", "0"],
            "`max_attempts` must be between 1 and 100",
        ),
        (
            &["enqueue", hash, "--delay", "soon"],
            "`soon` is not a duration",
        ),
        (
            &["enqueue", "--file", bad_lines.to_str().unwrap()],
            "line 2 of",
        ),
    ];
    for (args, expected) in cases {
        let out = q.cmd(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stdout)
        );
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        text(
            &q.cmd(&["enqueue", "--file", bad_lines.to_str().unwrap()])
                .stderr
        )
        .contains("unknown field `colour`")
    );
    // A file far longer than one broker call, its only unknown module on the last line: the
    // whole file is checked before anything is enqueued.
    let long = q.dir.path().join("long.jsonl");
    let mut lines: String = (0..12_000)
        .map(|i| format!("{{\"module\":\"{hash}\",\"id\":\"long-{i}\"}}\n"))
        .collect();
    lines.push_str(&format!("{{\"module\":\"{never}\"}}\n"));
    std::fs::write(&long, lines).unwrap();
    let out = q.cmd(&["enqueue", "--file", long.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 12001 of") && stderr.contains("was never uploaded"),
        "{stderr}"
    );
    // The operator's ceilings are flags: a lower one refuses what the default allows.
    let out = q.cmd(&["--max-memory-mb", "32", "enqueue", hash]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("`memory_mb` is 64, above the operator's ceiling of 32"),
        "{stderr}"
    );
    let out = q.cmd(&["--max-fuel", "0", "enqueue", hash]);
    assert!(
        text(&out.stderr).contains("`--max-fuel` must be greater than zero"),
        "{}",
        text(&out.stderr)
    );
    // Nothing from the bad files was enqueued, not even their valid lines.
    let queues: Value = serde_json::from_str(&q.ok(&["queues", "--json"])).unwrap();
    assert_eq!(queues, serde_json::json!([]));
    let out = q.cmd(&["upload", "Cargo.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`Cargo.toml` is not a wasmq job"),
        "{}",
        text(&out.stderr)
    );
}

/// `wasmq upload` refuses a module over `--max-module-mb` (the same limit as `POST /v1/modules`)
/// by its size, before reading it, and stores nothing.
#[test]
fn upload_refuses_modules_over_the_size_limit() {
    let q = Rig::new();
    // Sparse files: their size is what is checked, nothing need be written.
    let sized = |name: &str, bytes: u64| {
        let path = q.dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        path.display().to_string()
    };
    let default_limit = 64 << 20;
    let big = sized("big.wasm", default_limit + 1);
    let out = q.cmd(&["upload", &big]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "is {} bytes, above the module size limit of {default_limit} bytes (`--max-module-mb`)",
            default_limit + 1
        )),
        "{stderr}"
    );
    let two_mb = sized("two.wasm", 2 << 20);
    let out = q.cmd(&["--max-module-mb", "1", "upload", &two_mb]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("above the module size limit of 1048576 bytes"),
        "{}",
        text(&out.stderr)
    );
    // A real job under the limit is accepted; nothing else was stored.
    let hash = q.ok(&["--max-module-mb", "1", "upload", &common::job_path("hello")]);
    let modules: Value = serde_json::from_str(&q.ok(&["modules", "--json"])).unwrap();
    let stored: Vec<&str> = modules
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["hash"].as_str().unwrap())
        .collect();
    assert_eq!(stored, [hash.trim()]);
}

#[test]
fn dead_jobs_are_listed_retried_and_deleted() {
    let q = Rig::new();
    let chaos = q.ok(&["upload", &common::job_path("chaos")]);
    let chaos = chaos.trim();
    let args = r#"{"mode":"retry","message":"upstream down"}"#;
    let _worker = q.worker("worker", &[]);
    let out = q.cmd(&[
        "enqueue",
        chaos,
        "--args",
        args,
        "--id",
        "x",
        "--max-attempts",
        "2",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(1), "a dead job exits 1");
    assert!(text(&out.stdout).contains("dead"), "{}", text(&out.stdout));

    let dead: Value = serde_json::from_str(&q.ok(&["dead", "list", "--json"])).unwrap();
    assert_eq!(dead[0]["id"], "x");
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["last_error"]["kind"], "retry");
    let listing = q.ok(&["dead", "list"]);
    assert!(
        listing.contains("retry: job asked to be retried: upstream down"),
        "{listing}"
    );

    assert!(
        q.ok(&["dead", "retry", "x"])
            .contains("back on queue `default`")
    );
    let out = q.cmd(&["job", "x", "--wait", "--json"]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["state"], "dead", "it failed again");
    assert_eq!(record["attempts"], 2, "with a fresh set of attempts");

    assert!(q.ok(&["dead", "delete", "x"]).contains("deleted"));
    let out = q.cmd(&["dead", "delete", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("job `x` is not in the dead set of queue `default`"));
    assert_eq!(q.cmd(&["job", "x"]).status.code(), Some(2), "gone");

    // `--all` acts on the whole dead set; an id or `--all` is required, not both.
    for id in ["y", "z"] {
        q.cmd(&[
            "enqueue",
            chaos,
            "--args",
            args,
            "--id",
            id,
            "--max-attempts",
            "1",
            "--wait",
        ]);
    }
    assert_eq!(q.cmd(&["dead", "retry"]).status.code(), Some(2));
    assert_eq!(
        q.cmd(&["dead", "retry", "y", "--all"]).status.code(),
        Some(2)
    );
    assert_eq!(
        q.ok(&["dead", "delete", "--all"]).trim(),
        "2 dead job(s) of queue `default` deleted"
    );
    assert_eq!(
        q.ok(&["dead", "retry", "--all"]).trim(),
        "0 dead job(s) back on queue `default`"
    );
}

#[test]
fn cancel_a_scheduled_job() {
    let q = Rig::new();
    let hash = q.ok(&["upload", &common::job_path("hello")]);
    q.ok(&["enqueue", hash.trim(), "--id", "later", "--delay", "1h"]);
    let queues: Value = serde_json::from_str(&q.ok(&["queues", "--json"])).unwrap();
    assert_eq!(queues[0]["scheduled"], 1);
    assert_eq!(q.ok(&["cancel", "later"]).trim(), "later: cancelled");
    let record: Value = serde_json::from_str(&q.ok(&["job", "later", "--json"])).unwrap();
    assert_eq!(record["state"], "cancelled");
    let out = q.cmd(&["cancel", "later"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("job `later` already ended: cancelled"));
    let queues: Value = serde_json::from_str(&q.ok(&["queues", "--json"])).unwrap();
    assert_eq!(queues[0]["scheduled"], 0);
    assert_eq!(queues[0]["totals"]["cancelled"], 1);
    assert_eq!(queues[0]["totals"]["enqueued"], 1);
}

#[test]
fn cron_entries_are_added_listed_and_removed() {
    let q = Rig::new();
    let hash = q.ok(&["upload", &common::job_path("hello")]);
    let hash = hash.trim();
    let out = q.ok(&[
        "cron",
        "add",
        "nightly",
        "0 3 * * *",
        hash,
        "--args",
        r#"{"name":"night"}"#,
    ]);
    assert!(
        out.starts_with("nightly: `0 3 * * *` on queue `default`, next at "),
        "{out}"
    );
    let list: Value = serde_json::from_str(&q.ok(&["cron", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "nightly");
    assert_eq!(list[0]["invocation"]["args"]["name"], "night");
    assert!(list[0]["next_ms"].as_u64().unwrap() > 0);
    let cases: [(&[&str], &str); 3] = [
        (
            &["cron", "add", "x", "every day", hash],
            "`every day` is not a cron expression",
        ),
        (
            &["cron", "add", "bad name", "* * * * *", hash],
            "`name` `bad name` must be",
        ),
        (
            &[
                "cron",
                "add",
                "x",
                "* * * * *",
                &format!("sha256:{}", "0".repeat(64)),
            ],
            "was never uploaded",
        ),
    ];
    for (args, want) in cases {
        let out = q.cmd(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(q.ok(&["cron", "remove", "nightly"]).contains("removed"));
    let out = q.cmd(&["cron", "remove", "nightly"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no cron entry `nightly` on queue `default`"));
}

#[test]
fn pause_and_resume_a_queue() {
    let q = Rig::new();
    assert_eq!(q.ok(&["pause", "mail"]).trim(), "queue `mail`: paused");
    let listing = q.ok(&["queues"]);
    assert!(listing.contains("mail (paused)"));
    assert_eq!(
        listing.lines().next(),
        Some("redis: maxmemory-policy noeviction · appendonly yes · appendfsync always"),
        "what the Redis is set to do with accepted jobs comes first"
    );
    assert_eq!(q.ok(&["resume", "mail"]).trim(), "queue `mail`: resumed");
    assert!(!q.ok(&["queues"]).contains("(paused)"));
    let out = q.cmd(&["pause", "a b"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_logs_carry_the_job_span() {
    let q = Rig::new();
    let chaos = q.ok(&["upload", &common::job_path("chaos")]);
    let log_path = q.dir.path().join("worker.log");
    let mut worker = common::wasmq_cmd(&q.redis().url(), q.dir.path())
        .args(["worker", "--log-format", "json"])
        .env("WASMQ_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let args = r#"{"mode":"fail","message":"nope"}"#;
    let out = q.cmd(&[
        "enqueue",
        chaos.trim(),
        "--args",
        args,
        "--id",
        "logged",
        "--wait",
    ]);
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "attempt failed")
        .unwrap_or_else(|| panic!("no `attempt failed` record in:\n{log}"));
    assert_eq!(failed["span"]["id"], "logged");
    assert_eq!(failed["span"]["attempt"], 1);
    assert_eq!(failed["fields"]["kind"], "fail");
    assert_eq!(failed["level"], "INFO");
}

#[test]
fn limit_a_queue() {
    let q = Rig::new();
    let out = q.ok(&[
        "limit",
        "mail",
        "--concurrency",
        "2",
        "--rate",
        "100",
        "--per",
        "1m",
    ]);
    assert_eq!(
        out.trim(),
        "queue `mail`: at most 2 at once, at most 100 per 60000 ms"
    );
    let queues: Value = serde_json::from_str(&q.ok(&["queues", "--json"])).unwrap();
    assert_eq!(
        queues[0]["limits"],
        serde_json::json!({"concurrency": 2, "rate": [100, 60000]})
    );
    assert_eq!(q.ok(&["limit", "mail"]).trim(), "queue `mail`: no limits");
    let out = q.cmd(&["limit", "mail", "--concurrency", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("limits must be at least 1"));

    // A size cap: the enqueue past it fails naming the queue and the limit.
    let hash = q.upload("hello");
    assert_eq!(
        q.ok(&["limit", "mail", "--max-size", "2"]).trim(),
        "queue `mail`: at most 2 waiting or running"
    );
    q.ok(&["enqueue", &hash, "--queue", "mail"]);
    q.ok(&["enqueue", &hash, "--queue", "mail"]);
    let out = q.cmd(&["enqueue", &hash, "--queue", "mail"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains(
            "queue `mail` is full: it holds 2 jobs waiting or running and its limit is 2 (`wasmq limit mail --max-size`)"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn grant_list_and_revoke_a_modules_destinations() {
    let q = Rig::new();
    let hash = q.upload("fetch");
    let out = q.ok(&[
        "grant",
        &hash,
        "--http",
        "https://api.partner.example",
        "--http",
        "https://*.cdn.example:8443",
        "--secret",
        "PARTNER_TOKEN",
    ]);
    assert_eq!(
        out,
        format!(
            "{hash}:\n  http    https://*.cdn.example:8443\n  http    https://api.partner.example\n  secret  PARTNER_TOKEN\n"
        )
    );
    // Granting again adds; each destination is kept once.
    q.ok(&[
        "grant",
        &hash,
        "--http",
        "http://10.0.0.0/8:8080",
        "--http",
        "https://api.partner.example",
    ]);
    let listed: Value = serde_json::from_str(&q.ok(&["grants", "--json"])).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{
            "module": hash,
            "http": ["http://10.0.0.0/8:8080", "https://*.cdn.example:8443", "https://api.partner.example"],
            "secrets": ["PARTNER_TOKEN"],
        }])
    );

    // Bad input is refused naming what was wrong, before anything is stored.
    for (args, says) in [
        (vec!["--http", "api.partner.example"], "has no scheme"),
        (vec!["--http", "https://api.example/v1"], "names a path"),
        (
            vec!["--secret", "partner-token"],
            "secret name `partner-token`",
        ),
    ] {
        let mut all = vec!["grant", hash.as_str()];
        all.extend(args);
        let out = q.cmd(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{all:?}: {}",
            text(&out.stderr)
        );
    }
    let unknown = format!("sha256:{}", "0".repeat(64));
    let out = q.cmd(&["grant", &unknown, "--http", "https://api.example"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("was never uploaded"),
        "{}",
        text(&out.stderr)
    );
    let out = q.cmd(&["revoke", &hash]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--all"), "{}", text(&out.stderr));

    // Revoking takes away what is named, then everything.
    let out = q.ok(&[
        "revoke",
        &hash,
        "--http",
        "https://*.cdn.example:8443",
        "--secret",
        "PARTNER_TOKEN",
    ]);
    assert_eq!(
        out,
        format!(
            "{hash}:\n  http    http://10.0.0.0/8:8080\n  http    https://api.partner.example\n"
        )
    );
    assert_eq!(
        q.ok(&["revoke", &hash, "--all"]),
        format!("{hash}: nothing granted\n")
    );
    assert_eq!(q.ok(&["grants"]), "no module has a grant\n");
}

#[test]
fn run_reaches_only_the_destinations_its_flags_grant() {
    let cache = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let partner = rt.block_on(wasmq::partner::Partner::start()).unwrap();
    let args = format!(r#"{{"url":"{}"}}"#, partner.url("/records?page=1"));
    let fetch = job_path("fetch");

    let denied = wasmq(cache.path(), &["run", &fetch, "--args", &args]);
    assert_eq!(denied.status.code(), Some(1));
    let out = text(&denied.stdout);
    assert!(out.contains("HTTP request denied"), "{out}");
    assert!(
        out.contains(&format!("`{}` is not granted", partner.origin())),
        "{out}"
    );
    assert_eq!(partner.requests(), 0);

    let granted = wasmq(
        cache.path(),
        &[
            "run",
            &fetch,
            "--args",
            &args,
            "--http",
            &partner.origin(),
            "--json",
        ],
    );
    assert_eq!(granted.status.code(), Some(0), "{}", text(&granted.stderr));
    let v: Value = serde_json::from_slice(&granted.stdout).unwrap();
    assert_eq!(v["result"]["status"], 200);
    assert_eq!(v["http"][0]["destination"], partner.origin());
    assert_eq!(v["http"][0]["calls"], 1);
    assert_eq!(partner.requests(), 1);
}

#[test]
fn workers_and_the_server_refuse_a_redis_that_evicts_jobs() {
    let redis = common::redis::RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let cache = tempfile::tempdir().unwrap();
    for args in [
        &["worker"][..],
        &["serve", "--listen", "127.0.0.1:0", "--insecure-no-auth"][..],
    ] {
        let out = common::wasmq_cmd(&redis.url(), cache.path())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("has `maxmemory-policy allkeys-lru`")
                && stderr.contains("--allow-evicting-redis"),
            "{args:?}: {stderr}"
        );
    }
    // Allowed, the worker runs (and says what it risks); it is stopped once it has said so.
    let mut worker = common::wasmq_cmd(&redis.url(), cache.path())
        .args(["worker", "--allow-evicting-redis"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(worker.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(
        first.contains("(allowed by --allow-evicting-redis)"),
        "{first}"
    );
    assert!(worker.try_wait().unwrap().is_none(), "the worker runs");
    let _ = worker.kill();
    let _ = worker.wait();
}

/// The ACL user the README gives for a least-privilege deployment: wasmq's keys only, and only
/// the command categories it needs (no `@dangerous` ones: no `CONFIG`, `FLUSHALL`, `KEYS`, …).
pub(crate) const LEAST_PRIVILEGE: &[&str] = &[
    "on",
    ">s3cret",
    "~wasmq:*",
    "resetchannels",
    "-@all",
    "+@read",
    "+@write",
    "+@scripting",
    "+@connection",
    "+time",
    "-@dangerous",
];

/// A managed Redis as users run it: TLS only (a certificate signed by a private authority) and
/// the least-privilege ACL user.
#[test]
fn a_least_privilege_acl_user_uploads_enqueues_and_runs_jobs_over_tls() {
    let redis = common::redis::RedisServer::start_tls(&[]);
    let mut setuser = vec!["ACL", "SETUSER", "wasmq"];
    setuser.extend_from_slice(LEAST_PRIVILEGE);
    redis.cmd(&setuser);
    let cli = common::CliOverTls::new(&redis.url(), redis.ca_pem().unwrap());
    cli.assert_refused_without_the_ca();
    let hash = cli.run(&["upload", &job_path("hello")]).trim().to_owned();
    cli.run(&[
        "enqueue",
        &hash,
        "--args",
        r#"{"name":"acl"}"#,
        "--id",
        "acl-1",
    ]);
    let mut worker = cli
        .cmd(&["worker"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let record = cli.run(&["job", "acl-1", "--wait"]);
    let _ = worker.kill();
    let stderr = {
        let _ = worker.wait();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut s).unwrap();
        s
    };
    assert!(record.contains("Hello, acl!"), "{record}");
    // It may not read the server's settings, and says so instead of guessing.
    assert!(
        stderr.contains("does not say its `maxmemory-policy`"),
        "{stderr}"
    );
    // Nor do what it was not given.
    let client = redis.client_for(cli.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let refused: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut conn);
    let refused = refused.unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("permission"),
        "FLUSHALL is refused: {refused}"
    );
}
