//! The Python and JavaScript clients, the direct-to-Redis path and the README's "Enqueue from any
//! language" examples, each run against a live `wasmq serve` (with an in-process worker) on a
//! private Redis. Needs `python3` (with the `redis` package) and `node` ≥ 18: `tests/run.sh`
//! installs them when missing.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};

use common::redis::RedisServer;

const ADMIN: &str = "admin-secret-0123456789";
const ENQUEUER: &str = "enqueue-secret-0123456789";

/// Redis, and `wasmq serve --workers 4` on a free port.
struct Server {
    redis: RedisServer,
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("ops:{ADMIN}:admin\nci:{ENQUEUER}:enqueue\n"),
        )
        .unwrap();
        let mut child = common::wasmq_cmd(&redis.url(), dir.path())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "4",
                "--tokens-file",
            ])
            .arg(&tokens)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("wasmq serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from wasmq serve: {line:?}"))
            .to_owned();
        Server {
            redis,
            child,
            url,
            _dir: dir,
        }
    }

    /// Runs `program args…` from the repository root with the server's coordinates in the
    /// environment; panics with the output unless it succeeds.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        assert!(
            which(program),
            "`{program}` is not installed: `tests/run.sh` installs what these tests need"
        );
        let out = Command::new(program)
            .args(args)
            .current_dir(common::repo_root())
            .env("WASMQ_URL", &self.url)
            .env("WASMQ_TOKEN", ADMIN)
            .env("WASMQ_ENQUEUE_TOKEN", ENQUEUER)
            .env("WASMQ_JOBS_DIR", common::jobs_dir())
            .env("WASMQ_JOB", common::job_path("hello"))
            .env("WASMQ_REDIS_URL", self.redis.url())
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_client_and_direct_redis_enqueue() {
    let server = Server::start();
    let out = server.run(
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
    let server = Server::start();
    let out = server.run("node", &["--test", "clients/js/test/"]);
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
    let server = Server::start();
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
        let out = server.run(program, &[file]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.trim(), format!("succeeded Hello, {name}!"), "{file}");
    }
}
