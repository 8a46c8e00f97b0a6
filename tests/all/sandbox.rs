//! The sandbox, driven through the sample jobs: real work, and every limit obeyed and violated
//! by the `chaos` job.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ok_json, run};
use serde_json::json;
use wasmq::job::{JobInfo, Limits, LogLevel};
use wasmq::sandbox::{EnqueueFuture, Failure, JoinFuture, JoinOptions, SubJobOptions, SubJobSink};

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn hello_greets_by_name_and_by_default() {
    let out = run("hello", json!({"name": "Ada"}), limits()).await;
    assert_eq!(ok_json(&out), json!({"message": "Hello, Ada!"}));
    assert!(out.fuel_used > 0 && out.fuel_used < out.fuel_budget);
    let out = run("hello", json!(null), limits()).await;
    assert_eq!(ok_json(&out), json!({"message": "Hello, world!"}));
}

#[tokio::test]
async fn bad_args_fail_permanently_with_the_reason() {
    let out = run("hello", json!({"name": 5}), limits()).await;
    match out.result {
        Err(Failure::Fail { message }) => {
            assert!(message.contains("invalid job args"), "{message}")
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn csv_clean_normalises_and_dedupes() {
    let csv = " Full Name ,Email,  City\nAda  Lovelace, ADA@Example.com ,London\nGrace Hopper,grace@example.com,  New   York\n,,\nada lovelace,ada@example.com,London\nAda Lovelace,Ada@EXAMPLE.com,London\n";
    let out = run("csv-clean", json!({"csv": csv, "key": ["Email"]}), limits()).await;
    assert_eq!(
        ok_json(&out),
        json!({
            "columns": ["full_name", "email", "city"],
            "rows": [["Ada Lovelace", "ada@example.com", "London"], ["Grace Hopper", "grace@example.com", "New York"]],
            "stats": {"input_rows": 5, "output_rows": 2, "empty": 1, "duplicates": 2}
        })
    );
    // Without a key, whole rows are compared: the lowercase name makes a distinct row.
    let out = run("csv-clean", json!({"csv": csv}), limits()).await;
    assert_eq!(
        ok_json(&out)["stats"],
        json!({"input_rows": 5, "output_rows": 3, "empty": 1, "duplicates": 1})
    );
}

#[tokio::test]
async fn csv_clean_refuses_bad_input_for_good() {
    let out = run("csv-clean", json!({"csv": "a,b\n1,2,3\n"}), limits()).await;
    assert!(
        matches!(&out.result, Err(Failure::Fail { message }) if message.contains("invalid CSV")),
        "{:?}",
        out.result
    );
    let out = run(
        "csv-clean",
        json!({"csv": "a,b\n1,2\n", "key": ["c"]}),
        limits(),
    )
    .await;
    assert!(
        matches!(&out.result, Err(Failure::Fail { message }) if message.contains("`c`")),
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn markdown_renders_and_lists_headings() {
    let out = run(
        "markdown",
        json!({"markdown": "# Title\n\nSome *text*.\n\n## Part `two`\n"}),
        limits(),
    )
    .await;
    let v = ok_json(&out);
    assert_eq!(
        v["html"],
        "<h1>Title</h1>\n<p>Some <em>text</em>.</p>\n<h2>Part <code>two</code></h2>\n"
    );
    assert_eq!(
        v["headings"],
        json!([{"level": 1, "text": "Title"}, {"level": 2, "text": "Part two"}])
    );
}

// ---- fuel ----

#[tokio::test]
async fn fuel_obeyed() {
    let out = run(
        "chaos",
        json!({"mode": "spin", "iterations": 10_000}),
        Limits {
            fuel: 10_000_000,
            ..limits()
        },
    )
    .await;
    assert_eq!(ok_json(&out)["iterations"], 10_000);
    assert!(
        out.fuel_used > 10_000 && out.fuel_used < 10_000_000,
        "fuel used {}",
        out.fuel_used
    );
}

#[tokio::test]
async fn fuel_violated() {
    let out = run(
        "chaos",
        json!({"mode": "spin"}),
        Limits {
            fuel: 5_000_000,
            ..limits()
        },
    )
    .await;
    assert_eq!(out.result, Err(Failure::OutOfFuel { budget: 5_000_000 }));
    assert_eq!(out.fuel_used, 5_000_000);
    assert!(out.result.as_ref().unwrap_err().is_retryable());
}

// ---- memory ----

#[tokio::test]
async fn memory_obeyed() {
    let out = run(
        "chaos",
        json!({"mode": "alloc", "mb": 8}),
        Limits {
            memory_bytes: 32 << 20,
            ..limits()
        },
    )
    .await;
    assert_eq!(ok_json(&out)["allocated_mb"], 8);
}

#[tokio::test]
async fn memory_violated() {
    let out = run(
        "chaos",
        json!({"mode": "alloc"}),
        Limits {
            memory_bytes: 32 << 20,
            ..limits()
        },
    )
    .await;
    match out.result {
        Err(Failure::MemoryLimit {
            limit_bytes,
            requested_bytes,
        }) => {
            assert_eq!(limit_bytes, 32 << 20);
            assert!(requested_bytes > limit_bytes);
        }
        other => panic!("expected a memory limit failure, got {other:?}"),
    }
}

// ---- wall-clock deadline ----

#[tokio::test]
async fn timeout_obeyed() {
    let out = run(
        "chaos",
        json!({"mode": "sleep", "ms": 20}),
        Limits {
            timeout: Duration::from_secs(10),
            ..limits()
        },
    )
    .await;
    assert_eq!(ok_json(&out)["slept_ms"], 20);
    assert!(out.wall_time >= Duration::from_millis(20));
}

#[tokio::test]
async fn timeout_violated_while_blocked_in_a_host_call() {
    let out = run(
        "chaos",
        json!({"mode": "sleep", "ms": 60_000}),
        Limits {
            timeout: Duration::from_millis(200),
            ..limits()
        },
    )
    .await;
    assert_eq!(out.result, Err(Failure::Timeout { timeout_ms: 200 }));
    assert!(
        out.wall_time < Duration::from_secs(30),
        "deadline not enforced: {:?}",
        out.wall_time
    );
}

#[tokio::test]
async fn timeout_violated_while_spinning() {
    let fuel = Limits::default_ceilings().fuel;
    let out = run(
        "chaos",
        json!({"mode": "spin"}),
        Limits {
            fuel,
            timeout: Duration::from_millis(200),
            ..limits()
        },
    )
    .await;
    assert_eq!(out.result, Err(Failure::Timeout { timeout_ms: 200 }));
    assert!(out.fuel_used > 0 && out.fuel_used < fuel);
}

// ---- stack ----

#[tokio::test]
async fn stack_obeyed() {
    let out = run("chaos", json!({"mode": "recurse", "depth": 1000}), limits()).await;
    assert_eq!(ok_json(&out)["depth"], 1000);
}

#[tokio::test]
async fn stack_violated() {
    let out = run("chaos", json!({"mode": "recurse"}), limits()).await;
    assert!(
        matches!(out.result, Err(Failure::StackOverflow { .. })),
        "{:?}",
        out.result
    );
}

// ---- captured output ----

#[tokio::test]
async fn output_obeyed() {
    let out = run(
        "chaos",
        json!({"mode": "print", "bytes": 3000}),
        Limits {
            output_bytes: 4096,
            ..limits()
        },
    )
    .await;
    ok_json(&out);
    assert_eq!(
        (
            out.stdout.total_bytes,
            out.stdout.text.len(),
            out.stdout.truncated
        ),
        (3000, 3000, false)
    );
    assert_eq!(out.stderr.total_bytes, 0);
}

#[tokio::test]
async fn output_violated_is_truncated_not_fatal() {
    let args = json!({"mode": "print", "bytes": 1 << 20, "stream": "stderr"});
    let out = run(
        "chaos",
        args,
        Limits {
            output_bytes: 4096,
            ..limits()
        },
    )
    .await;
    assert_eq!(ok_json(&out)["printed"], 1 << 20);
    assert_eq!(
        (
            out.stderr.total_bytes,
            out.stderr.text.len(),
            out.stderr.truncated
        ),
        (1 << 20, 4096, true)
    );
}

#[tokio::test]
async fn logs_are_kept_up_to_the_cap_and_progress_is_reported() {
    let out = run("chaos", json!({"mode": "log", "count": 3}), limits()).await;
    ok_json(&out);
    let messages: Vec<_> = out
        .logs
        .iter()
        .map(|r| (r.level, r.message.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            (LogLevel::Info, "record 0"),
            (LogLevel::Info, "record 1"),
            (LogLevel::Info, "record 2")
        ]
    );
    assert_eq!(out.progress.as_ref().map(|p| p.percent), Some(100));

    let out = run("chaos", json!({"mode": "log", "count": 1500}), limits()).await;
    ok_json(&out);
    assert_eq!((out.logs.len(), out.logs_dropped), (1000, 500));
}

// ---- failures the guest chooses or causes ----

#[tokio::test]
async fn panic_is_a_trap_with_the_panic_message() {
    let out = run(
        "chaos",
        json!({"mode": "panic", "message": "disk on fire"}),
        limits(),
    )
    .await;
    match &out.result {
        Err(Failure::Trap { message }) => assert!(
            message.contains("guest panicked") && message.contains("disk on fire"),
            "{message}"
        ),
        other => panic!("expected a trap, got {other:?}"),
    }
    assert!(
        out.stderr.text.contains("disk on fire"),
        "stderr: {}",
        out.stderr.text
    );
}

#[tokio::test]
async fn unreachable_is_a_trap() {
    let out = run("chaos", json!({"mode": "trap"}), limits()).await;
    assert!(
        matches!(&out.result, Err(Failure::Trap { message }) if message.contains("unreachable")),
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn retry_and_fail_are_told_apart() {
    let out = run(
        "chaos",
        json!({"mode": "retry", "message": "busy"}),
        limits(),
    )
    .await;
    let err = out.result.unwrap_err();
    assert_eq!(
        err,
        Failure::Retry {
            message: "busy".into()
        }
    );
    assert!(err.is_retryable());
    let out = run(
        "chaos",
        json!({"mode": "fail", "message": "bad invoice"}),
        limits(),
    )
    .await;
    let err = out.result.unwrap_err();
    assert_eq!(
        err,
        Failure::Fail {
            message: "bad invoice".into()
        }
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn flaky_job_sees_its_attempt_number() {
    let module = common::sandbox().load(&common::job("chaos")).unwrap();
    let args = json!({"mode": "flaky", "failures": 2});
    for attempt in 1..=3 {
        let req = common::request_with(
            &args,
            limits(),
            attempt,
            Arc::new(wasmq::sandbox::NoSubJobs),
        );
        let out = common::sandbox().run(&module, req).await;
        if attempt <= 2 {
            assert!(
                matches!(out.result, Err(Failure::Retry { .. })),
                "attempt {attempt}: {:?}",
                out.result
            );
        } else {
            assert_eq!(ok_json(&out)["succeeded_on_attempt"], 3);
        }
    }
}

#[tokio::test]
async fn no_ambient_authority() {
    let out = run("chaos", json!({"mode": "probe"}), limits()).await;
    let v = ok_json(&out);
    assert_eq!(v["env"], 0);
    assert_eq!(v["args"], 0);
    for key in ["read_file", "list_root", "write_file", "tcp", "dns"] {
        let s = v[key].as_str().unwrap();
        assert!(s.starts_with("denied"), "{key}: {s}");
    }
}

/// Records sub-jobs and hands out sequential ids.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, String, serde_json::Value)>>);

impl SubJobSink for Recorder {
    fn enqueue(
        &self,
        parent: &JobInfo,
        module: String,
        args: Vec<u8>,
        _: SubJobOptions,
    ) -> EnqueueFuture {
        let mut jobs = self.0.lock().unwrap();
        let id = format!("sub-{}", jobs.len());
        jobs.push((
            parent.id.clone(),
            module,
            serde_json::from_slice(&args).unwrap(),
        ));
        Box::pin(async move { Ok(id) })
    }

    fn join(&self, _: &JobInfo, _: Vec<String>, _: JoinOptions) -> JoinFuture {
        Box::pin(async { Err("not here".to_owned()) })
    }
}

#[tokio::test]
async fn fanout_enqueues_through_the_host_import() {
    let module = common::sandbox().load(&common::job("fanout")).unwrap();
    let target = format!("sha256:{}", "ab".repeat(32));
    let recorder = Arc::new(Recorder::default());
    let args = json!({"module": target, "count": 4, "args": {"page": "x"}});
    let out = common::sandbox()
        .run(
            &module,
            common::request_with(&args, limits(), 1, recorder.clone()),
        )
        .await;
    assert_eq!(
        ok_json(&out),
        json!({"enqueued": ["sub-0", "sub-1", "sub-2", "sub-3"]})
    );
    let jobs = recorder.0.lock().unwrap();
    assert_eq!(jobs.len(), 4);
    for (i, (parent, module, args)) in jobs.iter().enumerate() {
        assert_eq!(
            (parent.as_str(), module.as_str()),
            ("test-job", target.as_str())
        );
        assert_eq!(args, &json!({"page": "x", "index": i}));
    }
    assert_eq!(out.progress.as_ref().map(|p| p.percent), Some(100));
}

#[tokio::test]
async fn a_refused_sub_job_reaches_the_guest() {
    // The default sink refuses; fanout turns that into a retryable failure naming the reason.
    let target = format!("sha256:{}", "ab".repeat(32));
    let out = run("fanout", json!({"module": target, "count": 1}), limits()).await;
    assert!(
        matches!(&out.result, Err(Failure::Retry { message }) if message.contains("no queue")),
        "{:?}",
        out.result
    );
}

#[tokio::test]
async fn concurrent_runs_are_isolated() {
    // One spinning guest must not starve the others on the same runtime, nor share state.
    let spin = tokio::spawn(run(
        "chaos",
        json!({"mode": "spin"}),
        Limits {
            timeout: Duration::from_millis(500),
            fuel: Limits::default_ceilings().fuel,
            ..limits()
        },
    ));
    let mut greets = Vec::new();
    for i in 0..8 {
        greets.push(tokio::spawn(run(
            "hello",
            json!({"name": format!("n{i}")}),
            limits(),
        )));
    }
    for (i, g) in greets.into_iter().enumerate() {
        assert_eq!(
            ok_json(&g.await.unwrap())["message"],
            format!("Hello, n{i}!")
        );
    }
    assert!(matches!(
        spin.await.unwrap().result,
        Err(Failure::Timeout { .. })
    ));
}

/// With a large keep-resident budget, pages a run touched stay mapped in its pool slot and are
/// reset in place: every run must still start from the module's initial memory. One slot (so
/// every run reuses it), a job that touches megabytes and one that touches little, alternated,
/// give the same results as in a sandbox with the default budget.
#[tokio::test]
async fn memory_kept_resident_is_reset_between_runs() {
    use wasmq::sandbox::{Sandbox, SandboxConfig};
    let big_doc =
        "## Section\n\nSome *emphasis* and a [link](https://example.invalid).\n\n".repeat(8000);
    let cases = [
        json!({"markdown": big_doc}),
        json!({"markdown": "# Small\n\nOne paragraph."}),
    ];
    let roomy = Limits {
        fuel: 20_000_000_000,
        memory_bytes: 256 << 20,
        ..limits()
    };
    let reference = common::sandbox().load(&common::job("markdown")).unwrap();
    let mut expected = Vec::new();
    for args in &cases {
        let out = common::sandbox()
            .run(&reference, common::request(args, roomy))
            .await;
        expected.push(ok_json(&out));
    }
    let kept = Sandbox::new(SandboxConfig {
        max_instances: 1,
        keep_resident_bytes: 64 << 20,
        ceilings: Limits {
            memory_bytes: 256 << 20,
            ..Limits::default_ceilings()
        },
        ..SandboxConfig::default()
    })
    .unwrap();
    let module = kept.load(&common::job("markdown")).unwrap();
    for round in 0..4 {
        for (args, want) in cases.iter().zip(&expected) {
            let out = kept.run(&module, common::request(args, roomy)).await;
            assert_eq!(&ok_json(&out), want, "round {round}");
        }
    }
}
