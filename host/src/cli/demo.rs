//! `wasmq demo`: runs the sample jobs — real work, and the `chaos` job hitting each limit — and
//! prints what happened in a table.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};

use super::JobsDir;
use super::report::group;
use super::run::local_id;
use crate::invocation::{args_to_bytes, bytes_to_json};
use crate::sandbox::{JobInfo, Limits, NoSubJobs, RunRequest, Sandbox};

/// Flags of `wasmq demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    jobs: JobsDir,
}

const MESSY_CSV: &str = "\
 Full Name ,Email,  City
Ada  Lovelace, ADA@Example.com ,London
Grace Hopper,grace@example.com,  New   York
,,
ada lovelace,ada@example.com,London
Ada Lovelace,Ada@EXAMPLE.com,London
";

const DOC: &str = "# wasmq\n\nJobs are **components**.\n\n## Limits\n\n| limit | enforced by |\n|---|---|\n| fuel | wasmtime |\n| memory | limiter |\n\n- [x] sandbox\n- [ ] queue\n";

struct Case {
    job: &'static str,
    what: &'static str,
    /// The outcome the case must end with: `succeeded` or a failure kind.
    expect: &'static str,
    args: Value,
    limits: Limits,
}

fn cases() -> Vec<Case> {
    let d = Limits::default();
    vec![
        Case {
            job: "hello",
            what: "greet",
            expect: "succeeded",
            args: json!({"name": "wasmq"}),
            limits: d,
        },
        Case {
            job: "csv-clean",
            what: "clean 5 messy rows",
            expect: "succeeded",
            args: json!({"csv": MESSY_CSV, "key": ["email"]}),
            limits: d,
        },
        Case {
            job: "markdown",
            what: "render a page",
            expect: "succeeded",
            args: json!({"markdown": DOC}),
            limits: d,
        },
        Case {
            job: "chaos",
            what: "spin forever, 50M fuel",
            expect: "out_of_fuel",
            args: json!({"mode": "spin"}),
            limits: Limits {
                fuel: 50_000_000,
                ..d
            },
        },
        Case {
            job: "chaos",
            what: "allocate forever, 32 MiB cap",
            expect: "memory_limit",
            args: json!({"mode": "alloc"}),
            limits: Limits {
                memory_bytes: 32 << 20,
                ..d
            },
        },
        Case {
            job: "chaos",
            what: "sleep 10 s, 300 ms deadline",
            expect: "timeout",
            args: json!({"mode": "sleep", "ms": 10_000}),
            limits: Limits {
                timeout: Duration::from_millis(300),
                ..d
            },
        },
        Case {
            job: "chaos",
            what: "recurse forever",
            expect: "stack_overflow",
            args: json!({"mode": "recurse"}),
            limits: d,
        },
        Case {
            job: "chaos",
            what: "print 4 MiB, 64 KiB kept",
            expect: "succeeded",
            args: json!({"mode": "print", "bytes": 4 << 20}),
            limits: d,
        },
        Case {
            job: "chaos",
            what: "panic",
            expect: "trap",
            args: json!({"mode": "panic", "message": "disk on fire"}),
            limits: d,
        },
        Case {
            job: "chaos",
            what: "give up for good",
            expect: "fail",
            args: json!({"mode": "fail", "message": "invoice already paid"}),
            limits: d,
        },
    ]
}

pub(crate) async fn run(sandbox: Sandbox, args: DemoArgs) -> anyhow::Result<ExitCode> {
    println!(
        "{:<10} {:<30} {:<14} {:>9} {:>13}  detail",
        "job", "case", "outcome", "time", "fuel"
    );
    let mut unexpected = 0;
    for case in cases() {
        let bytes = args.jobs.read(case.job)?;
        let module = sandbox.load_async(bytes).await?;
        let info = JobInfo {
            id: local_id(),
            queue: "demo".into(),
            attempt: 1,
            max_attempts: 1,
        };
        let request = RunRequest {
            info,
            args: args_to_bytes(&case.args)?,
            limits: case.limits,
            sub_jobs: Arc::new(NoSubJobs),
        };
        let outcome = sandbox.run(&module, request).await;
        let (label, detail) = match &outcome.result {
            Ok(bytes) => {
                let mut detail = bytes_to_json(bytes).to_string();
                if outcome.stdout.truncated {
                    detail = format!(
                        "stdout truncated: {} of {} bytes kept; {detail}",
                        outcome.stdout.text.len(),
                        outcome.stdout.total_bytes
                    );
                }
                ("succeeded".to_owned(), detail)
            }
            Err(f) => (f.kind().to_owned(), f.to_string()),
        };
        if label != case.expect {
            unexpected += 1;
        }
        let detail: String = detail.chars().take(90).collect();
        println!(
            "{:<10} {:<30} {:<14} {:>6.1} ms {:>13}  {detail}",
            case.job,
            case.what,
            label,
            outcome.wall_time.as_secs_f64() * 1e3,
            group(outcome.fuel_used)
        );
    }
    if unexpected > 0 {
        anyhow::bail!("{unexpected} demo case(s) did not end as expected");
    }
    Ok(ExitCode::SUCCESS)
}
