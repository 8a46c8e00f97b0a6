//! Jobs written in Python (componentize-py) and JavaScript (componentize-js) beside the Rust ones:
//! the same CSV cleaning gives the same result in all three, each guest's misbehaviour is
//! contained like a Rust job's (each limit obeyed and violated), exceptions become job errors,
//! the guest SDKs' log/progress/enqueue reach the host, the jobs run through the queue, and a
//! second sandbox sharing the artifact cache loads these large components instead of compiling
//! them again.
//!
//! The components are 12–19 MB and take seconds to compile, so this file keeps one artifact cache
//! for all its runs (in Cargo's target directory: compiled once per machine) and one loaded
//! module per job.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use wasmq::broker::ApiBroker;
use wasmq::broker::memory::MemoryBroker;
use wasmq::invocation::Invocation;
use wasmq::job::FailureKind;
use wasmq::job::JobState;
use wasmq::job::Limits;
use wasmq::sandbox::{Failure, JobModule, ModuleOrigin, RunOutcome, Sandbox, SandboxConfig};
use wasmq::worker::{Backoff, Worker, WorkerConfig};

const LANGUAGES: [&str; 2] = ["python", "js"];

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("guest-artifacts")
}

/// One sandbox with a persistent artifact cache, for the whole test process.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            cache_dir: Some(cache_dir()),
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

/// The loaded module of sample job `name`, loaded once per process (tests run in parallel).
fn module(name: &str) -> JobModule {
    static MODULES: OnceLock<Mutex<HashMap<String, Arc<OnceLock<JobModule>>>>> = OnceLock::new();
    let slot = MODULES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default()
        .clone();
    slot.get_or_init(|| {
        sandbox()
            .load(&common::job(name))
            .unwrap_or_else(|e| panic!("{name} loads: {e}"))
    })
    .clone()
}

async fn run(name: &str, args: Value, limits: Limits) -> RunOutcome {
    let module = tokio::task::spawn_blocking({
        let name = name.to_owned();
        move || module(&name)
    })
    .await
    .unwrap();
    sandbox().run(&module, common::request(&args, limits)).await
}

fn failure(outcome: &RunOutcome) -> &Failure {
    outcome
        .result
        .as_ref()
        .err()
        .unwrap_or_else(|| panic!("expected a failure, got {:?}", outcome.result))
}

/// Inputs that exercise every rule: header normalisation, quoting (`""`, a comma and text after
/// a closing quote), CR, LF and CRLF line ends, blank lines, Unicode whitespace (U+0085 and
/// U+00A0 are whitespace; U+001C and U+FEFF are not), e-mail lowercasing with a final sigma,
/// empty rows, duplicates on the key, and the default key (all columns).
fn csv_cases() -> Vec<Value> {
    let messy = "Email ,Full  Name,\"Notes\"\r\n A@X.io , Ada   Lovelace,\"first, \"\"the\"\" one\"\n,,\n\
                 b@y.io,Bob,\u{a0}x\u{85}y\u{1c}z\u{feff}!\nΑΣ@x.io,Ada Lovelace,\"x\"yz\n\
                 ΣΑ.ΣΣ@Σ.io,x,y\n\n a@x.io,Ada,dup\r";
    let mut big = String::from("id,E-Mail Address,City\n");
    for i in 0..2500 {
        big.push_str(&format!(
            "{},User{}@Example.COM,  City {}\n",
            i % 2000,
            i % 1800,
            i % 7
        ));
    }
    vec![
        json!({"csv": messy, "key": ["email"]}),
        json!({"csv": messy}),
        json!({"csv": "a,b\n1,2\n1,2\n\n3,4\n"}),
        json!({"csv": big, "key": ["e-mail address"]}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_job_gives_the_same_result_in_rust_python_and_javascript() {
    for args in csv_cases() {
        let rust = common::ok_json(&run("csv-clean", args.clone(), Limits::default()).await);
        assert!(rust["stats"]["output_rows"].as_u64().unwrap() > 0);
        for lang in LANGUAGES {
            let outcome = run(
                &format!("{lang}-csv-clean"),
                args.clone(),
                Limits::default(),
            )
            .await;
            assert_eq!(common::ok_json(&outcome), rust, "{lang} on {args}");
            assert!(
                outcome.logs.iter().any(|l| l.message.starts_with("kept ")),
                "{lang} logs a summary"
            );
        }
    }
    // Bad input fails for good in every language.
    for bad in [
        json!({"csv": "a,b\n1,2,3\n"}),
        json!({"csv": "a,b\n1,2\n", "key": ["c"]}),
    ] {
        for name in ["csv-clean", "python-csv-clean", "js-csv-clean"] {
            let outcome = run(name, bad.clone(), Limits::default()).await;
            assert_eq!(
                failure(&outcome).kind(),
                FailureKind::Fail,
                "{name} on {bad}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_jobs_are_contained_like_rust_ones() {
    for lang in LANGUAGES {
        let chaos = format!("{lang}-chaos");
        let ok = run(&chaos, json!({"mode": "ok"}), Limits::default()).await;
        assert_eq!(
            common::ok_json(&ok),
            json!({"ok": true, "attempt": 1}),
            "{lang}"
        );

        // Fuel: a loop within budget succeeds only when it ends; one without end runs out.
        let spin = run(&chaos, json!({"mode": "spin"}), Limits::default()).await;
        assert_eq!(failure(&spin).kind(), FailureKind::OutOfFuel, "{lang}");
        assert_eq!(spin.fuel_used, spin.fuel_budget, "{lang}");

        // Time: with fuel to spare, the deadline stops it.
        let timed = Limits {
            fuel: u64::MAX / 4,
            timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let slow = run(&chaos, json!({"mode": "spin"}), timed).await;
        assert_eq!(failure(&slow).kind(), FailureKind::Timeout, "{lang}");
        assert!(
            slow.wall_time < Duration::from_secs(5),
            "{lang}: {:?}",
            slow.wall_time
        );

        // Memory: 8 MiB fits in 128 MiB; asking without end hits the cap, reported as such even
        // though the guest's runtime survives the refused growth and raises an error.
        let roomy = Limits {
            fuel: 50_000_000_000,
            memory_bytes: 128 << 20,
            ..Limits::default()
        };
        let small = run(&chaos, json!({"mode": "alloc", "mb": 8}), roomy).await;
        assert_eq!(
            common::ok_json(&small),
            json!({"allocated_mb": 8}),
            "{lang}"
        );
        let greedy = run(&chaos, json!({"mode": "alloc"}), roomy).await;
        match failure(&greedy) {
            Failure::MemoryLimit { limit_bytes, .. } => assert_eq!(*limit_bytes, 128 << 20),
            other => panic!("{lang}: expected the memory limit, got {other}"),
        }

        // An uncaught exception is a retryable job error naming it, its stack on stderr.
        let raised = run(
            &chaos,
            json!({"mode": "raise", "message": "bad row 7"}),
            Limits::default(),
        )
        .await;
        let Failure::Retry { message } = failure(&raised) else {
            panic!("{lang}: expected a retry, got {}", failure(&raised));
        };
        let exception = if lang == "python" {
            "ValueError"
        } else {
            "TypeError"
        };
        assert_eq!(message, &format!("{exception}: bad row 7"), "{lang}");
        assert!(
            raised.stderr.text.contains("bad row 7"),
            "{lang}: {}",
            raised.stderr.text
        );
        let failed = run(
            &chaos,
            json!({"mode": "fail", "message": "no"}),
            Limits::default(),
        )
        .await;
        assert_eq!(
            failure(&failed),
            &Failure::Fail {
                message: "no".into()
            },
            "{lang}"
        );
        let retried = run(
            &chaos,
            json!({"mode": "retry", "message": "later"}),
            Limits::default(),
        )
        .await;
        assert_eq!(
            failure(&retried),
            &Failure::Retry {
                message: "later".into()
            },
            "{lang}"
        );

        // Output is captured and bounded; progress and logs reach the host.
        let out_limits = Limits {
            output_bytes: 64,
            ..Limits::default()
        };
        let printed = run(
            &chaos,
            json!({"mode": "print", "text": "x".repeat(200), "error": "oops"}),
            out_limits,
        )
        .await;
        common::ok_json(&printed);
        assert_eq!(printed.stdout.text, "x".repeat(64), "{lang}");
        assert!(
            printed.stdout.truncated && printed.stdout.total_bytes == 201,
            "{lang}"
        );
        assert_eq!(printed.stderr.text, "oops\n", "{lang}");
        let steps = run(
            &chaos,
            json!({"mode": "progress", "steps": 4}),
            Limits::default(),
        )
        .await;
        common::ok_json(&steps);
        let p = steps.progress.expect("progress reported");
        assert_eq!(
            (p.percent, p.note.as_deref()),
            (100, Some("step 4 of 4")),
            "{lang}"
        );
        assert_eq!(steps.logs.len(), 4, "{lang}");

        // Args that are not JSON fail for good.
        let mut request = common::request(&Value::Null, Limits::default());
        request.args = b"not json".to_vec();
        let module = module(&chaos);
        let garbage = sandbox().run(&module, request).await;
        assert_eq!(failure(&garbage).kind(), FailureKind::Fail, "{lang}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_jobs_run_through_the_queue_and_enqueue_each_other() {
    let broker: Arc<dyn ApiBroker> = Arc::new(MemoryBroker::new());
    let mut hashes = HashMap::new();
    for name in [
        "hello",
        "python-hello",
        "js-hello",
        "python-chaos",
        "js-chaos",
    ] {
        let bytes = common::job(name);
        let hash = wasmq::modules::ModuleHash::of(&bytes);
        broker.put_module(hash, &bytes).await.unwrap();
        hashes.insert(name, hash);
    }
    let job = |id: &str, name: &str, args: Value| {
        let mut inv = Invocation::new(hashes[name]);
        inv.id = Some(id.to_owned());
        inv.args = args;
        inv.max_attempts = 2;
        inv.prepare(&Limits::default_ceilings()).unwrap()
    };
    let jobs = vec![
        job("rust", "hello", json!({"name": "Rust"})),
        job("py", "python-hello", json!({"name": "Python"})),
        job("js", "js-hello", json!({"name": "JavaScript"})),
        // Each language enqueues a job of the other.
        job(
            "py-parent",
            "python-chaos",
            json!({"mode": "enqueue", "module": hashes["js-hello"].to_string(), "args": {"name": "from Python"}}),
        ),
        job(
            "js-parent",
            "js-chaos",
            json!({"mode": "enqueue", "module": hashes["python-hello"].to_string(), "args": {"name": "from JavaScript"}}),
        ),
        job("py-raise", "python-chaos", json!({"mode": "raise"})),
    ];
    common::enqueue(broker.as_ref(), &jobs).await.unwrap();
    let worker = Worker::new(
        broker.clone(),
        sandbox().clone(),
        WorkerConfig {
            concurrency: 4,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(20),
            },
            maintain_every: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let wait = |id: &str| {
        let broker = broker.clone();
        let id = id.to_owned();
        async move {
            broker
                .wait_job("default", &id, Duration::from_secs(180))
                .await
                .unwrap()
                .unwrap()
        }
    };
    for (id, message) in [
        ("rust", "Hello, Rust!"),
        ("py", "Hello, Python!"),
        ("js", "Hello, JavaScript!"),
    ] {
        let r = wait(id).await;
        assert_eq!(r.state, JobState::Succeeded, "{id}: {:?}", r.last_error);
        assert_eq!(r.report.unwrap().result, Some(json!({"message": message})));
    }
    for (parent, child, message) in [
        ("py-parent", "py-parent.1", "Hello, from Python!"),
        ("js-parent", "js-parent.1", "Hello, from JavaScript!"),
    ] {
        let r = wait(parent).await;
        assert_eq!(r.state, JobState::Succeeded, "{parent}: {:?}", r.last_error);
        assert_eq!(
            r.report.unwrap().result,
            Some(json!({"enqueued": child})),
            "sub-job ids are <parent>.<n>"
        );
        let c = wait(child).await;
        assert_eq!(c.state, JobState::Succeeded, "{child}: {:?}", c.last_error);
        assert_eq!(c.report.unwrap().result, Some(json!({"message": message})));
    }
    let raised = wait("py-raise").await;
    assert_eq!(raised.state, JobState::Dead);
    assert_eq!(raised.attempts, 2, "an exception is retried");
    assert_eq!(raised.errors.len(), 2);
    assert_eq!(
        raised.errors[1].message,
        "job asked to be retried: ValueError: chaos raised"
    );
    let _ = stop.send(());
    running.await.unwrap();
}

/// The second sandbox (another worker on this machine) to see a module finds the first one's
/// compiled artifact instead of compiling these large components again.
#[test]
fn a_second_worker_loads_guest_modules_from_the_artifact_cache() {
    let dir = tempfile::tempdir().unwrap();
    let new_sandbox = || {
        Sandbox::new(SandboxConfig {
            cache_dir: Some(dir.path().to_owned()),
            ..SandboxConfig::default()
        })
        .unwrap()
    };
    for name in ["python-hello", "js-hello"] {
        let bytes = common::job(name);
        let first = new_sandbox().load(&bytes).unwrap();
        assert_eq!(first.origin(), ModuleOrigin::Compiled, "{name}");
        let second = new_sandbox().load(&bytes).unwrap();
        assert_eq!(second.origin(), ModuleOrigin::DiskCache, "{name}");
        eprintln!(
            "{name}: {} bytes, compiled in {:?}, loaded from the cache in {:?}",
            bytes.len(),
            first.load_time(),
            second.load_time()
        );
    }
}

/// Python args annotated with a dataclass are filled from the JSON object, or refused for good
/// naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_args_fill_a_dataclass() {
    let hello = |args| run("python-hello", args, Limits::default());
    assert_eq!(
        common::ok_json(&hello(json!({"name": "Ada"})).await),
        json!({"message": "Hello, Ada!"})
    );
    assert_eq!(
        common::ok_json(&hello(Value::Null).await),
        json!({"message": "Hello, world!"}),
        "no args: the defaults"
    );
    for (args, expected) in [
        (
            json!({"nme": "x"}),
            "unknown field(s) in args: nme (Args has name)",
        ),
        (json!([1]), "args must be a JSON object for Args, not list"),
    ] {
        let outcome = hello(args).await;
        assert_eq!(
            failure(&outcome),
            &Failure::Fail {
                message: expected.into()
            }
        );
    }
}

/// The README's "Writing a job" shows these files as they are; the tests above build and run them.
#[test]
fn the_readme_shows_the_hello_job_in_each_language_as_it_is() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    for file in [
        "sample-jobs/hello/src/lib.rs",
        "sample-jobs/python-hello/app.py",
        "sample-jobs/js-hello/job.js",
    ] {
        let text = std::fs::read_to_string(common::repo_root().join(file)).unwrap();
        assert!(
            readme.contains(text.trim_end()),
            "README.md must show `{file}` exactly as it is"
        );
    }
}
