//! `wasmq demo`: the whole system in one process — the sample jobs uploaded to the embedded
//! in-memory broker, a batch enqueued (real work, the same CSV cleaning in Rust, Python and
//! JavaScript, a fan-out, `chaos` jobs that hit each limit and retry), one worker running them
//! with a progress bar, then a summary table.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::JobsDir;
use super::report::group;
use crate::broker::memory::MemoryBroker;
use crate::broker::{ApiBroker, JobRecord};
use crate::intake::Intake;
use crate::invocation::{Invocation, NewJob};
use crate::job::JobState;
use crate::modules::ModuleHash;
use crate::sandbox::Sandbox;
use crate::worker::{Backoff, Worker, WorkerConfig};

/// Flags of `wasmq demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    jobs: JobsDir,
    /// Jobs in flight in the worker.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

const MESSY_CSV: &str = "\
 Full Name ,Email,  City
Ada  Lovelace, ADA@Example.com ,London
Grace Hopper,grace@example.com,  New   York
,,
ada lovelace,ada@example.com,London
Ada Lovelace,Ada@EXAMPLE.com,London
";

const DOC: &str = "# wasmq\n\nJobs are **components**.\n\n## Limits\n\n| limit | enforced by |\n|---|---|\n| fuel | wasmtime |\n| memory | limiter |\n\n- [x] sandbox\n- [x] queue\n";

/// Sub-jobs the fan-out case enqueues.
const FANOUT: u32 = 5;

const JOBS: [&str; 7] = [
    "hello",
    "csv-clean",
    "markdown",
    "fanout",
    "chaos",
    "python-csv-clean",
    "js-csv-clean",
];

/// The CSV cleaning job in each language: the demo checks that their results agree.
const CSV_JOBS: [&str; 3] = ["csv-clean", "python-csv-clean", "js-csv-clean"];

struct Case {
    job: &'static str,
    what: &'static str,
    /// How the job must end: `succeeded`, or `dead` with this failure kind.
    expect: (JobState, Option<&'static str>),
    args: Value,
    /// Changes to the default invocation (limits, attempts).
    tweak: fn(&mut Invocation),
}

const OK: (JobState, Option<&str>) = (JobState::Succeeded, None);

fn dead(kind: &'static str) -> (JobState, Option<&'static str>) {
    (JobState::Dead, Some(kind))
}

fn cases(hello: ModuleHash) -> Vec<Case> {
    vec![
        Case {
            job: "hello",
            what: "greet",
            expect: OK,
            args: json!({"name": "wasmq"}),
            tweak: |_| {},
        },
        Case {
            job: "csv-clean",
            what: "clean 5 messy rows",
            expect: OK,
            args: json!({"csv": MESSY_CSV, "key": ["email"]}),
            tweak: |_| {},
        },
        Case {
            job: "python-csv-clean",
            what: "the same, in Python",
            expect: OK,
            args: json!({"csv": MESSY_CSV, "key": ["email"]}),
            tweak: |_| {},
        },
        Case {
            job: "js-csv-clean",
            what: "the same, in JavaScript",
            expect: OK,
            args: json!({"csv": MESSY_CSV, "key": ["email"]}),
            tweak: |_| {},
        },
        Case {
            job: "markdown",
            what: "render a page",
            expect: OK,
            args: json!({"markdown": DOC}),
            tweak: |_| {},
        },
        Case {
            job: "fanout",
            what: "fan out 5 hello sub-jobs",
            expect: OK,
            args: json!({"module": hello, "count": FANOUT, "args": {"name": "sub-job"}}),
            tweak: |_| {},
        },
        Case {
            job: "chaos",
            what: "fail twice, then succeed",
            expect: OK,
            args: json!({"mode": "flaky", "failures": 2}),
            tweak: |_| {},
        },
        Case {
            job: "chaos",
            what: "print 4 MiB, 64 KiB kept",
            expect: OK,
            args: json!({"mode": "print", "bytes": 4 << 20}),
            tweak: |_| {},
        },
        Case {
            job: "chaos",
            what: "spin forever, 50M fuel",
            expect: dead("out_of_fuel"),
            args: json!({"mode": "spin"}),
            tweak: |i| {
                i.fuel = 50_000_000;
                i.max_attempts = 2
            },
        },
        Case {
            job: "chaos",
            what: "allocate forever, 32 MiB cap",
            expect: dead("memory_limit"),
            args: json!({"mode": "alloc"}),
            tweak: |i| {
                i.memory_mb = 32;
                i.max_attempts = 2
            },
        },
        Case {
            job: "chaos",
            what: "sleep 10 s, 300 ms deadline",
            expect: dead("timeout"),
            args: json!({"mode": "sleep", "ms": 10_000}),
            tweak: |i| {
                i.timeout_ms = 300;
                i.max_attempts = 2
            },
        },
        Case {
            job: "chaos",
            what: "recurse forever",
            expect: dead("stack_overflow"),
            args: json!({"mode": "recurse"}),
            tweak: |i| i.max_attempts = 1,
        },
        Case {
            job: "chaos",
            what: "panic",
            expect: dead("trap"),
            args: json!({"mode": "panic", "message": "disk on fire"}),
            tweak: |i| i.max_attempts = 2,
        },
        Case {
            job: "chaos",
            what: "give up for good",
            expect: dead("fail"),
            args: json!({"mode": "fail", "message": "invoice already paid"}),
            tweak: |_| {},
        },
    ]
}

pub(crate) async fn run(sandbox: Sandbox, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let broker: Arc<dyn ApiBroker> = Arc::new(MemoryBroker::new());

    // 1. Upload: validate (compile) each sample job and store it under its hash. The Python and
    // JavaScript components are 12-19 MB: compiling them takes seconds, once per machine (then
    // the artifact cache has them).
    let mut hashes = std::collections::HashMap::new();
    for name in JOBS {
        let bytes = args.jobs.read(name)?;
        print!("uploading {name:<16} ");
        std::io::Write::flush(&mut std::io::stdout())?;
        let module = sandbox.load_async(bytes.clone()).await?;
        broker.put_module(module.hash(), &bytes).await?;
        println!(
            "{} ({:>10} bytes, {} in {:.1?})",
            module.hash(),
            group(bytes.len() as u64),
            match module.origin() {
                crate::sandbox::ModuleOrigin::Compiled => "compiled",
                _ => "loaded from the artifact cache",
            },
            module.load_time()
        );
        hashes.insert(name, module.hash());
    }

    // 2. Enqueue the batch.
    let cases = cases(hashes["hello"]);
    let jobs = cases.iter().enumerate().map(|(n, case)| {
        let mut inv = Invocation::new(hashes[case.job]);
        inv.id = Some(format!("demo-{:02}-{}", n + 1, case.job));
        inv.queue = "demo".into();
        inv.args = case.args.clone();
        (case.tweak)(&mut inv);
        Ok(inv)
    });
    let intake = Intake::new(*sandbox.ceilings(), sandbox.sizes());
    let jobs: Vec<NewJob> = intake.jobs(jobs)?;
    intake.enqueue(broker.as_ref(), &jobs).await?;
    println!("enqueued {} jobs on queue `demo`\n", jobs.len());

    // 3. One worker; short backoff so the retries happen while you watch.
    let config = WorkerConfig {
        queues: vec!["demo".into()],
        concurrency: args.concurrency,
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        maintain_every: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(broker.clone(), sandbox, config);
    let counters = worker.counters();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let total = jobs.len() as u64 + u64::from(FANOUT);
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} jobs ended  {msg}",
    )?);
    loop {
        let c = counters.snapshot();
        bar.set_position(c.succeeded + c.dead);
        bar.set_message(format!("{} retries", c.retried));
        let q = broker.queues().await?;
        if q.iter().all(|q| q.ready + q.scheduled + q.leased == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    let _ = stop.send(());
    let stats = running.await?;

    // 4. Summary.
    println!(
        "{:<26} {:<30} {:<10} {:>8} {:>13}  detail",
        "job", "case", "state", "attempts", "fuel"
    );
    let mut unexpected = 0;
    let mut sub_jobs = Vec::new();
    // The CSV job in Rust, Python and JavaScript: one result.
    let mut csv_results = Vec::new();
    for (case, job) in cases.iter().zip(&jobs) {
        let record = broker
            .job(Some("demo"), job.id())
            .await?
            .ok_or_else(|| anyhow::anyhow!("job `{}` vanished", job.id()))?;
        let kind = record.last_error.as_ref().map(|e| e.kind.as_str());
        let ended = (
            record.state,
            if record.state == JobState::Dead {
                kind
            } else {
                None
            },
        );
        if ended != case.expect {
            unexpected += 1;
        }
        if let Some(r) = &record.report {
            sub_jobs.extend(r.sub_jobs.iter().cloned());
        }
        if CSV_JOBS.contains(&case.job) {
            csv_results.push(record.report.as_ref().and_then(|r| r.result.clone()));
        }
        println!(
            "{:<26} {:<30} {:<10} {:>8} {:>13}  {}",
            job.id(),
            case.what,
            record.state.as_str(),
            record.attempts,
            group(record.report.as_ref().map_or(0, |r| r.fuel_used)),
            detail(&record)
        );
    }
    let mut sub_ok = 0;
    for id in &sub_jobs {
        if broker
            .job(Some("demo"), id)
            .await?
            .is_some_and(|r| r.state == JobState::Succeeded)
        {
            sub_ok += 1;
        }
    }
    println!(
        "{:<26} {:<30} {:<10} {:>8} {:>13}  {}",
        format!(
            "demo-{:02}-fanout.N",
            1 + cases.iter().position(|c| c.job == "fanout").unwrap_or(0)
        ),
        "the fan-out's sub-jobs (hello)",
        format!("{sub_ok}/{} ok", sub_jobs.len()),
        "",
        "",
        sub_jobs.join(" ")
    );
    if sub_ok != FANOUT as usize {
        unexpected += 1;
    }
    let agree = csv_results.len() == CSV_JOBS.len()
        && csv_results[0].is_some()
        && csv_results.iter().all(|r| *r == csv_results[0]);
    println!(
        "\ncsv-clean in Rust, Python and JavaScript: {}",
        if agree {
            "identical results"
        } else {
            "results DIFFER"
        }
    );
    if !agree {
        unexpected += 1;
    }
    println!(
        "\n{} attempts succeeded, {} were retried, {} jobs dead · {} fuel in all",
        stats.succeeded,
        stats.retried,
        stats.dead,
        group(stats.fuel_used)
    );
    if unexpected > 0 {
        anyhow::bail!("{unexpected} demo job(s) did not end as expected");
    }
    Ok(ExitCode::SUCCESS)
}

/// The result, or the reason it died, on one line.
fn detail(r: &JobRecord) -> String {
    let text = match (r.state, &r.last_error, &r.report) {
        (JobState::Succeeded, _, Some(rep)) => {
            let mut t = rep
                .result
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_default();
            if rep.stdout.truncated {
                t = format!(
                    "stdout truncated: {} of {} bytes kept; {t}",
                    rep.stdout.text.len(),
                    rep.stdout.total_bytes
                );
            }
            if let Some(e) = &r.last_error {
                t = format!("after `{}` on attempt {}; {t}", e.kind, e.attempt);
            }
            t
        }
        (_, Some(e), _) => format!("{}: {}", e.kind, e.message),
        _ => String::new(),
    };
    text.chars().take(90).collect()
}
