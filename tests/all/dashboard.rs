//! The dashboard in a real browser: Debian's headless Chromium, driven by Playwright
//! (`tests/browser/dashboard.mjs`), against `wasmq serve` on a private Redis. The browser enters a
//! token, reads the overview, opens a job, retries a dead job and runs a scheduled one now; this
//! test then checks in Redis that both really moved. Needs `node`, `chromium` and
//! `tests/browser/node_modules`: `tests/run.sh` installs them when missing.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::{ADMIN, Server, which};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

fn wasmq(server: &Server, args: &[&str]) -> String {
    server.rig.ok(args).trim().to_owned()
}

fn enqueue(server: &Server, hash: &str, id: &str, args: Value, extra: &[&str]) {
    let args = args.to_string();
    let mut all = vec!["enqueue", hash, "--id", id, "--args", &args];
    all.extend_from_slice(extra);
    wasmq(server, &all);
}

/// Redis `HGET` of a job field, as text.
fn job_field(server: &Server, id: &str, field: &str) -> Option<String> {
    match server
        .rig
        .redis()
        .cmd(&["HGET", &format!("wasmq:{{default}}:job:{id}"), field])
    {
        redis::Value::BulkString(b) => Some(String::from_utf8(b).unwrap()),
        _ => None,
    }
}

#[test]
fn the_dashboard_shows_jobs_and_acts_on_them() {
    let browser_dir = common::repo_root().join("tests/browser");
    for (ok, what) in [
        (which("node"), "node"),
        (std::path::Path::new(CHROMIUM).exists(), CHROMIUM),
        (
            browser_dir.join("node_modules/playwright-core").exists(),
            "tests/browser/node_modules (npm ci)",
        ),
    ] {
        assert!(
            ok,
            "{what} is missing: `tests/run.sh` installs what this test needs"
        );
    }
    let server = Server::start(0);
    let hello = wasmq(&server, &["upload", &common::job_path("hello")]);
    let chaos = wasmq(&server, &["upload", &common::job_path("chaos")]);
    let counter = wasmq(&server, &["upload", &common::job_path("word-count")]);
    let map_reduce = wasmq(&server, &["upload", &common::job_path("map-reduce")]);

    // Some history for the chart and the lists: 300 quick jobs on two queues, one that fails twice
    // and then succeeds, one that dies, one waiting for an hour.
    let bulk: String = (0..300)
        .map(|n| {
            let queue = if n % 3 == 0 { "reports" } else { "default" };
            format!(
                "{}\n",
                json!({"module": hello, "queue": queue, "args": {"name": format!("user {n}")}})
            )
        })
        .collect();
    let file = server.rig.dir.path().join("bulk.jsonl");
    std::fs::write(&file, bulk).unwrap();
    wasmq(&server, &["enqueue", "--file", file.to_str().unwrap()]);
    enqueue(
        &server,
        &chaos,
        "flaky-1",
        json!({"mode": "flaky", "failures": 2}),
        &["--max-attempts", "3"],
    );
    enqueue(
        &server,
        &chaos,
        "broken-1",
        json!({"mode": "fail", "message": "the input file is not CSV"}),
        &[],
    );
    // A parent that awaits three children: its page shows the tree.
    enqueue(
        &server,
        &map_reduce,
        "tree-1",
        json!({"text": "one two three four five six", "chunks": 3, "counter": counter}),
        &[],
    );
    enqueue(
        &server,
        &hello,
        "later-1",
        json!({"name": "later"}),
        &["--delay", "1h"],
    );
    enqueue(
        &server,
        &hello,
        "html-1",
        json!({"name": "<img src=x onerror=\"window.__pwned=1\">"}),
        &[],
    );

    // A worker runs them all, then stops; another keeps serving `reports` only, so that
    // nothing touches `default` while the browser acts on it.
    let mut first = server.rig.worker("first", &["--queues", "default,reports"]);
    for id in ["flaky-1", "broken-1", "html-1", "tree-1"] {
        // Exits non-zero for the dead one: only the wait matters here.
        server.rig.cmd(&["job", id, "--wait"]);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queues: Value = serde_json::from_str(&wasmq(&server, &["queues", "--json"])).unwrap();
        let busy: u64 = queues
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["ready"].as_u64().unwrap() + q["leased"].as_u64().unwrap())
            .sum();
        if busy == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not finish: {queues}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &first.child().id().to_string()])
        .status();
    first.child().wait().unwrap();
    let second = server.rig.worker("second", &["--queues", "reports"]);
    assert_eq!(
        job_field(&server, "broken-1", "state").as_deref(),
        Some("dead")
    );

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .current_dir(&browser_dir)
        .env("WASMQ_URL", &server.url)
        .env("WASMQ_TOKEN", ADMIN)
        .env("WASMQ_OPEN_JOB", "flaky-1")
        .env("WASMQ_DEAD_JOB", "broken-1")
        .env("WASMQ_LATER_JOB", "later-1")
        .env("WASMQ_HTML_JOB", "html-1")
        .env("WASMQ_TREE_JOB", "tree-1")
        .env("WASMQ_SHOTS", &shots)
        .env("CHROMIUM", CHROMIUM)
        .output()
        .unwrap();
    second.kill();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "the browser test failed:\n{report}");

    // What the browser did is in Redis: the dead job is ready again with its attempts reset, and
    // the scheduled one is ready too.
    assert_eq!(
        job_field(&server, "broken-1", "state").as_deref(),
        Some("ready")
    );
    assert_eq!(
        job_field(&server, "broken-1", "attempts").as_deref(),
        Some("0")
    );
    assert_eq!(
        server
            .rig
            .redis()
            .cmd(&["ZSCORE", "wasmq:{default}:dead", "broken-1"]),
        redis::Value::Nil
    );
    assert_eq!(
        job_field(&server, "later-1", "state").as_deref(),
        Some("ready")
    );
    assert_eq!(
        server
            .rig
            .redis()
            .cmd(&["ZCARD", "wasmq:{default}:scheduled"]),
        redis::Value::Int(0)
    );
}
