//! `wasmq bench sandbox`: measures the sandbox and prints the figures — size, compile time,
//! artifact cache load time and instantiate-and-call latency with every limit on of the `hello`
//! job in Rust, Python and JavaScript, and the cost of the sandbox on CPU-bound work (`markdown`
//! in the sandbox vs. the same code built natively).
//!
//! Build with `--release`: a debug build measures the wrong thing.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::JobsDir;
use super::report::timings;
use crate::job::{JobInfo, Limits};
use crate::sandbox::{JobModule, NoSubJobs, RunRequest, Sandbox, SandboxConfig};

// The markdown job's rendering code, compiled natively for the comparison.
#[path = "../../../sample-jobs/markdown/src/render.rs"]
mod render;

/// Flags of `wasmq bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Compile, cache-load and per-run figures for the sample jobs.
    Sandbox(SandboxBench),
    /// Enqueue and processing throughput and end-to-end latency through Redis.
    Queue(super::bench_queue::QueueBench),
    /// Jobs waiting on the network: 10,000 in flight in one worker, under an egress limit, and
    /// the per-call overhead of a granted request.
    Io(super::bench_io::IoBench),
    /// Jobs awaiting their sub-jobs: one parent joining 10,000 children, and 1,000 parents
    /// joining 10 each, in one worker.
    Fanout(super::bench_fanout::FanoutBench),
}

#[derive(Debug, Args)]
struct SandboxBench {
    #[command(flatten)]
    jobs: JobsDir,
    /// Timed `hello` runs (after as many warm-up runs as a tenth of this).
    #[arg(long, default_value_t = 20_000)]
    runs: usize,
    /// Repetitions of the slower measurements (compile, cache load, markdown).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Timed runs of the Python and JavaScript `hello` jobs.
    #[arg(long, default_value_t = 2_000)]
    guest_runs: usize,
    /// Compilations of the Python and JavaScript `hello` jobs (seconds each).
    #[arg(long, default_value_t = 3)]
    guest_reps: usize,
    /// Leave out the Python and JavaScript jobs.
    #[arg(long)]
    no_guests: bool,
    /// Size of the generated markdown document, in KiB.
    #[arg(long, default_value_t = 1024)]
    markdown_kib: usize,
}

pub(crate) async fn run(
    args: BenchArgs,
    redis: super::queue::RedisArgs,
    base: SandboxConfig,
) -> anyhow::Result<ExitCode> {
    let args = match args.what {
        BenchWhat::Sandbox(args) => args,
        BenchWhat::Queue(args) => return super::bench_queue::run(args, redis, base).await,
        BenchWhat::Io(args) => {
            let cache = base.cache_dir.clone();
            return super::bench_io::run(args, base, cache).await;
        }
        BenchWhat::Fanout(args) => {
            let cache = base.cache_dir.clone();
            return super::bench_fanout::run(args, base, cache).await;
        }
    };
    if cfg!(debug_assertions) {
        println!(
            "warning: this is a debug build of wasmq; run `cargo run --release -p wasmq -- bench sandbox`"
        );
    }
    let cache_dir = tempfile::tempdir()?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache_dir.path().to_owned()),
        // `markdown` turns the 1 MiB document into 1.9 MB of HTML, above the default result limit.
        sizes: crate::job::Sizes {
            result_bytes: base.sizes.result_bytes.max(4 << 20),
            ..base.sizes
        },
        ..base.clone()
    })?;
    for (name, runs, compile_reps) in [
        ("hello", args.runs, args.reps),
        ("python-hello", args.guest_runs, args.guest_reps),
        ("js-hello", args.guest_runs, args.guest_reps),
    ] {
        if name != "hello" && args.no_guests {
            continue;
        }
        let bytes = args.jobs.read(name)?;
        bench_job(
            &sandbox,
            name,
            &bytes,
            runs,
            compile_reps,
            args.reps.max(20),
        )
        .await?;
    }

    // CPU-bound: the markdown job in the sandbox vs. the same code natively.
    let markdown = sandbox.load(&args.jobs.read("markdown")?)?;
    let doc = make_markdown(args.markdown_kib << 10);
    let payload = serde_json::to_vec(&MarkdownArgs {
        markdown: doc.clone(),
    })?;
    let big = Limits {
        fuel: 100_000_000_000,
        timeout: Duration::from_secs(120),
        memory_bytes: 1 << 30,
        ..Limits::default()
    };
    let big_request = request(payload.clone(), big);
    let mut sandboxed = Vec::new();
    let mut fuel = 0;
    for _ in 0..args.reps {
        let outcome = run_ok(&sandbox, &markdown, &big_request).await?;
        fuel = outcome.0;
        sandboxed.push(outcome.1);
    }
    let mut native = Vec::new();
    for _ in 0..args.reps {
        let t = Instant::now();
        let parsed: MarkdownArgs = serde_json::from_slice(&payload)?;
        let (html, headings) = render::render(&parsed.markdown);
        let out = serde_json::to_vec(&MarkdownOut { html, headings })?;
        std::hint::black_box(out);
        native.push(t.elapsed());
    }
    println!(
        "markdown, {} KiB document ({} fuel per run):",
        args.markdown_kib,
        super::report::group(fuel)
    );
    let s = timings("  in the sandbox", &mut sandboxed);
    let n = timings("  native", &mut native);
    println!(
        "  sandbox / native (medians): {:.2}x",
        s.as_secs_f64() / n.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Size, compile time, artifact-cache load time and instantiate-and-call latency of one job.
async fn bench_job(
    sandbox: &Sandbox,
    name: &str,
    bytes: &[u8],
    runs: usize,
    compile_reps: usize,
    cache_reps: usize,
) -> anyhow::Result<()> {
    println!("{name}: {} bytes", super::report::group(bytes.len() as u64));

    // Compile: a sandbox without a cache compiles on every load once the process forgets it.
    let uncached = Sandbox::new(SandboxConfig::default())?;
    let mut compile = Vec::new();
    for _ in 0..compile_reps {
        uncached.forget_loaded();
        compile.push(uncached.load(bytes)?.load_time());
    }
    drop(uncached);
    timings(&format!("  compile {name}"), &mut compile);

    // Cache load: the first load writes the artifact; the others read, verify and deserialize it.
    sandbox.load(bytes)?;
    let mut cached = Vec::new();
    for _ in 0..cache_reps {
        sandbox.forget_loaded();
        let m = sandbox.load(bytes)?;
        anyhow::ensure!(
            m.origin() == crate::sandbox::ModuleOrigin::DiskCache,
            "expected a cache hit, got {:?}",
            m.origin()
        );
        cached.push(m.load_time());
    }
    timings(&format!("  cache load {name}"), &mut cached);

    // Instantiate and call, every limit on, one at a time.
    let module = sandbox.load(bytes)?;
    let request = request(br#"{"name":"bench"}"#.to_vec(), Limits::default());
    for _ in 0..runs / 10 {
        run_ok(sandbox, &module, &request).await?;
    }
    let mut per_run = Vec::with_capacity(runs);
    let started = Instant::now();
    for _ in 0..runs {
        let t = Instant::now();
        run_ok(sandbox, &module, &request).await?;
        per_run.push(t.elapsed());
    }
    let total = started.elapsed();
    timings(&format!("  {name} instantiate+call"), &mut per_run);
    println!(
        "  {:.0} runs/s sequential on one task",
        runs as f64 / total.as_secs_f64()
    );
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct MarkdownArgs {
    markdown: String,
}

#[derive(Serialize)]
struct MarkdownOut {
    html: String,
    headings: Vec<(u8, String)>,
}

fn request(args: Vec<u8>, limits: Limits) -> RunRequest {
    RunRequest {
        info: JobInfo {
            id: "bench".into(),
            queue: "bench".into(),
            attempt: 1,
            max_attempts: 1,
        },
        args,
        limits,
        sub_jobs: Arc::new(NoSubJobs),
        progress: None,
        grant: Default::default(),
        secrets: Arc::new(crate::sandbox::NoSecrets),
        egress: Arc::new(crate::sandbox::NoEgressLimits),
    }
}

async fn run_ok(
    sandbox: &Sandbox,
    module: &JobModule,
    request: &RunRequest,
) -> anyhow::Result<(u64, Duration)> {
    let outcome = sandbox.run(module, request.clone()).await;
    match outcome.result {
        Ok(_) => Ok((outcome.fuel_used, outcome.wall_time)),
        Err(f) => anyhow::bail!("benchmark run failed: {f}"),
    }
}

/// A deterministic document with the usual mix: headings, paragraphs with inline markup, lists,
/// tables and code blocks.
fn make_markdown(target_bytes: usize) -> String {
    let mut doc = String::with_capacity(target_bytes + 1024);
    let mut i = 0u64;
    while doc.len() < target_bytes {
        i += 1;
        doc.push_str(&format!("## Section {i}\n\nSome *emphasis*, **strong text**, `code {i}` and a [link](https://example.invalid/{i}). "));
        doc.push_str("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.\n\n");
        doc.push_str(&format!("- item one {i}\n- item ~~two~~\n  - nested [x] three\n\n| a | b | c |\n|---|---|---|\n| {i} | {} | {} |\n\n", i * 2, i * 3));
        doc.push_str(&format!(
            "```rust\nfn f{i}() -> u64 {{ {i} }}\n```\n\n> quoted line {i}\n\n"
        ));
    }
    doc
}
