//! `wasmq demo`: the whole system in one process — the sample jobs uploaded to the embedded
//! in-memory broker, a batch enqueued (real work, the same CSV cleaning in Rust, Python and
//! JavaScript, a fan-out, `chaos` jobs that hit each limit and retry, and a fan-out of
//! `partner-sync` jobs against a local partner API under an egress limit), one worker running
//! them with a progress bar, then a summary table and what the partner API observed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::JobsDir;
use super::report::group;
use crate::broker::memory::MemoryBroker;
use crate::broker::{ApiBroker, EgressLimit, JobRecord};
use crate::grant::Grant;
use crate::intake::Intake;
use crate::invocation::{Invocation, NewJob};
use crate::job::JobState;
use crate::modules::ModuleHash;
use crate::partner::Partner;
use crate::sandbox::Sandbox;
use crate::secret::SecretKey;
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

/// Pages the partner fan-out syncs, one `partner-sync` job each.
const PAGES: u32 = 20;

/// The egress limit on the partner API: calls in flight at once, across the fleet.
const PARTNER_CONCURRENCY: u32 = 3;

/// The token the local sink expects, granted to `partner-sync` as the secret `SINK_TOKEN`.
const SINK_TOKEN: &str = "demo-sink-token-7f3a9c";

const JOBS: [&str; 8] = [
    "hello",
    "csv-clean",
    "markdown",
    "fanout",
    "chaos",
    "python-csv-clean",
    "js-csv-clean",
    "partner-sync",
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

fn cases(hello: ModuleHash, partner_sync: ModuleHash, partner: &Partner) -> Vec<Case> {
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
            job: "fanout",
            what: "sync 20 partner pages (≤ 3)",
            expect: OK,
            args: json!({
                "module": partner_sync,
                "count": PAGES,
                "field": "page",
                "args": {
                    "source": partner.url("/records?delay_ms=100"),
                    "sink": partner.url("/sink"),
                },
            }),
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

    // 2. A partner API and a sink on loopback; `partner-sync` may call them (and nothing else),
    // may read the sink's token, and every worker together calls them at most 3 at a time.
    let partner = Partner::start().await?;
    let grant = Grant {
        http: vec![partner.origin().parse()?],
        secrets: vec!["SINK_TOKEN".into()],
    };
    broker.extend_grant(hashes["partner-sync"], &grant).await?;
    let key = SecretKey::parse(&SecretKey::generate())?;
    broker
        .put_secret("SINK_TOKEN", &key.seal("SINK_TOKEN", SINK_TOKEN)?)
        .await?;
    let limit = EgressLimit {
        concurrency: Some(PARTNER_CONCURRENCY),
        rate: None,
    };
    broker.set_egress_limit("127.0.0.1", &limit).await?;
    println!(
        "partner API and sink on {}: granted to partner-sync with the secret SINK_TOKEN, egress limit {PARTNER_CONCURRENCY} at once",
        partner.origin()
    );

    // 3. Enqueue the batch.
    let cases = cases(hashes["hello"], hashes["partner-sync"], &partner);
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

    // 4. One worker; short backoff so the retries happen while you watch.
    let config = WorkerConfig {
        queues: vec!["demo".into()],
        concurrency: args.concurrency,
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        maintain_every: Duration::from_millis(50),
        secret_key: Some(key),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(broker.clone(), sandbox, config);
    let counters = worker.counters();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let total = jobs.len() as u64 + u64::from(FANOUT + PAGES);
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

    // 5. Summary.
    println!(
        "{:<26} {:<30} {:<10} {:>8} {:>13}  detail",
        "job", "case", "state", "attempts", "fuel"
    );
    let mut unexpected = 0;
    // Each fan-out case's sub-jobs.
    let mut fanned: Vec<(usize, Vec<String>)> = Vec::new();
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
        if let Some(r) = &record.report
            && !r.sub_jobs.is_empty()
        {
            fanned.push((fanned.len(), r.sub_jobs.clone()));
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
    for ((index, ids), (what, expected)) in fanned.iter().zip([
        ("the fan-out's sub-jobs (hello)", FANOUT),
        ("partner-sync, one per page", PAGES),
    ]) {
        let mut ok = 0;
        for id in ids {
            if broker
                .job(Some("demo"), id)
                .await?
                .is_some_and(|r| r.state == JobState::Succeeded)
            {
                ok += 1;
            }
        }
        let case = cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.job == "fanout")
            .nth(*index)
            .map_or(0, |(n, _)| n + 1);
        let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
        println!(
            "{:<26} {:<30} {:<10} {:>8} {:>13}  {}{}",
            format!("demo-{case:02}-fanout.N"),
            what,
            format!("{ok}/{} ok", ids.len()),
            "",
            "",
            shown.join(" "),
            if ids.len() > shown.len() { " …" } else { "" }
        );
        if ok != expected as usize {
            unexpected += 1;
        }
    }
    let pages = partner
        .log()
        .iter()
        .filter(|(path, _)| path.starts_with("/records"))
        .count();
    let (stored, tokens) = partner.sunk();
    let authorised = tokens.iter().all(|t| *t == format!("Bearer {SINK_TOKEN}"));
    println!(
        "\npartner API: {pages} pages served, at most {} calls in flight at once (egress limit {PARTNER_CONCURRENCY}); \
         sink: {stored} records stored by {} POSTs, {}",
        partner.peak(),
        tokens.len(),
        if authorised {
            "each with the granted bearer token"
        } else {
            "some WITHOUT the granted token"
        }
    );
    if partner.peak() > u64::from(PARTNER_CONCURRENCY) || !authorised || pages < PAGES as usize {
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
