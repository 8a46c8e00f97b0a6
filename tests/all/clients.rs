//! The Python and JavaScript clients, the direct-to-Redis path and the README's "Enqueue from any
//! language" examples, each run against a live `wasmq serve` (with an in-process worker) on a
//! private Redis. Needs `python3` (with the `redis` package) and `node` ≥ 18: `tests/run.sh`
//! installs them when missing.

use crate::common;

use std::process::{Command, Output};

use common::serve::{ADMIN, ENQUEUER, Server, which};

/// Runs `program args…` from the repository root with the server's coordinates in the
/// environment; panics with the output unless it succeeds.
fn run(server: &Server, program: &str, args: &[&str]) -> Output {
    assert!(
        which(program),
        "`{program}` is not installed: `tests/run.sh` installs what these tests need"
    );
    let out = Command::new(program)
        .args(args)
        .current_dir(common::repo_root())
        .env("WASMQ_URL", &server.url)
        .env("WASMQ_TOKEN", ADMIN)
        .env("WASMQ_ENQUEUE_TOKEN", ENQUEUER)
        .env("WASMQ_JOBS_DIR", common::jobs_dir())
        .env("WASMQ_JOB", common::job_path("hello"))
        .env("WASMQ_REDIS_URL", server.rig.redis().url())
        .env("PYTHONPATH", common::repo_root().join("clients/python"))
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "`{program} {args:?}` failed:\n{text}");
    eprintln!("{text}");
    out
}

#[test]
fn python_client_and_direct_redis_enqueue() {
    let server = Server::start(4);
    let out = run(
        &server,
        "python3",
        &[
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "clients/python/tests",
        ],
    );
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("OK"), "{report}");
    // A missing `redis` package would skip the direct-to-Redis tests: that must not pass here.
    assert!(!report.contains("skipped"), "tests were skipped:\n{report}");
}

#[test]
fn javascript_client() {
    let server = Server::start(4);
    let out = run(&server, "node", &["--test", "clients/js/test/"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("# fail 0") && report.contains("# skipped 0"),
        "{report}"
    );
}

/// The README shows these files verbatim; here they run.
#[test]
fn readme_examples_run() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let server = Server::start(4);
    for (file, program, name) in [
        ("clients/examples/enqueue.sh", "bash", "curl"),
        ("clients/examples/enqueue.py", "python3", "Python"),
        ("clients/examples/enqueue.mjs", "node", "JavaScript"),
    ] {
        let text = std::fs::read_to_string(common::repo_root().join(file)).unwrap();
        assert!(
            readme.contains(&text),
            "README.md must show `{file}` exactly as it is"
        );
        let out = run(&server, program, &[file]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), format!("succeeded Hello, {name}!"), "{file}");
    }
}
