//! Module loading: each way bytes can fail to be a job, and the compiled-artifact cache.

use crate::common;

use std::time::Duration;

use serde_json::json;
use wasmq::modules::{FormatError, ModuleHash};
use wasmq::sandbox::{CompileBudget, LoadError, ModuleOrigin, Sandbox, SandboxConfig};

fn load_err(bytes: &[u8]) -> String {
    match common::sandbox().load(bytes) {
        Ok(m) => panic!("expected {} to be refused", m.hash()),
        Err(e) => e.to_string(),
    }
}

fn component(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test component parses")
}

#[test]
fn not_wasm_is_refused() {
    assert!(matches!(
        common::sandbox().load(b"#!/bin/sh\necho hi\n"),
        Err(LoadError::Format(FormatError::NotWasm { .. }))
    ));
    assert!(load_err(b"").contains("empty file"));
}

#[test]
fn core_module_is_refused() {
    let core = wat::parse_str("(module (func (export \"run\")))").unwrap();
    assert!(matches!(
        common::sandbox().load(&core),
        Err(LoadError::Format(FormatError::CoreModule))
    ));
    assert!(load_err(&core).contains("not a component"));
}

#[test]
fn truncated_component_is_invalid() {
    let mut bytes = common::job("hello");
    bytes.truncate(bytes.len() / 2);
    assert!(matches!(
        common::sandbox().load(&bytes),
        Err(LoadError::Invalid(_))
    ));
}

#[test]
fn component_without_run_names_what_it_exports() {
    let err = load_err(&component("(component)"));
    assert!(
        err.contains("missing export `run` (it exports: nothing)"),
        "{err}"
    );

    let err = load_err(&component(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (export "hello" (func $f)))"#,
    ));
    assert!(
        err.contains("missing export `run` (it exports: `hello`)"),
        "{err}"
    );
}

/// Toolchains add exports of their own (componentize-py's `exports`): those are not refused, and
/// never called; only `run` is checked.
#[test]
fn extra_exports_are_ignored_but_run_is_checked() {
    let err = load_err(&component(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (export "run" (func $f))
             (export "extra" (func $f)))"#,
    ));
    assert!(err.contains("export `run`"), "{err}");
    assert!(!err.contains("extra"), "{err}");
}

#[test]
fn run_with_the_wrong_type_is_refused() {
    let err = load_err(&component(
        r#"(component
             (core module $m (func (export "f")))
             (core instance $i (instantiate $m))
             (func $f (canon lift (core func $i "f")))
             (export "run" (func $f)))"#,
    ));
    assert!(err.contains("export `run`"), "{err}");
}

#[test]
fn unknown_import_is_named() {
    let err = load_err(&component(
        r#"(component (import "acme:billing/charge" (instance)))"#,
    ));
    assert!(err.contains("imports `acme:billing/charge`"), "{err}");
}

#[test]
fn ungranted_wasi_import_is_named() {
    let err = load_err(&component(
        r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
             (core module $m (func (export "f"))) (core instance $i (instantiate $m))
             (func (export "run") (canon lift (core func $i "f"))))"#,
    ));
    assert!(err.contains("wasi:http/outgoing-handler@0.2.0"), "{err}");
}

fn cached_sandbox(dir: &std::path::Path) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.to_owned()),
        max_instances: 4,
        ..SandboxConfig::default()
    })
    .unwrap()
}

async fn greets(sandbox: &Sandbox, module: &wasmq::sandbox::JobModule) {
    let out = sandbox
        .run(
            module,
            common::request(&json!({"name": "cache"}), Default::default()),
        )
        .await;
    assert_eq!(common::ok_json(&out), json!({"message": "Hello, cache!"}));
}

#[tokio::test]
async fn second_load_comes_from_memory_then_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let hello = common::job("hello");

    let first = cached_sandbox(dir.path());
    let m = first.load(&hello).unwrap();
    assert_eq!(m.origin(), ModuleOrigin::Compiled);
    assert_eq!(m.hash(), ModuleHash::of(&hello));
    assert_eq!(first.load(&hello).unwrap().origin(), ModuleOrigin::Memory);
    greets(&first, &m).await;

    // A new process (a new sandbox) reuses the artifact instead of recompiling.
    let second = cached_sandbox(dir.path());
    let m = second.load(&hello).unwrap();
    assert_eq!(m.origin(), ModuleOrigin::DiskCache);
    greets(&second, &m).await;
}

#[tokio::test]
async fn corrupted_artifact_is_rejected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let hello = common::job("hello");
    let first = cached_sandbox(dir.path());
    first.load(&hello).unwrap();
    let path = first
        .cache()
        .unwrap()
        .path(&ModuleHash::of(&hello), first.engine_key());

    // Flip one byte in the middle of the compiled code.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let second = cached_sandbox(dir.path());
    let m = second.load(&hello).unwrap();
    assert_eq!(
        m.origin(),
        ModuleOrigin::Compiled,
        "a corrupted artifact must never be loaded"
    );
    greets(&second, &m).await;
    // The rebuilt artifact is good again.
    assert_eq!(
        cached_sandbox(dir.path()).load(&hello).unwrap().origin(),
        ModuleOrigin::DiskCache
    );
}

#[tokio::test]
async fn foreign_artifacts_are_rejected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let hello = common::job("hello");
    let chaos = common::job("chaos");
    let sandbox = cached_sandbox(dir.path());
    let cache = sandbox.cache().unwrap();
    let key = sandbox.engine_key().to_owned();

    // Bytes the cache never wrote.
    std::fs::write(
        cache.path(&ModuleHash::of(&hello), &key),
        b"\x7fELF\x02\x01\x01 definitely not ours",
    )
    .unwrap();
    assert_eq!(
        sandbox.load(&hello).unwrap().origin(),
        ModuleOrigin::Compiled
    );

    // Well framed, but not a wasmtime artifact (as if from another engine build).
    cache
        .write(&ModuleHash::of(&chaos), &key, b"not machine code")
        .unwrap();
    let fresh = cached_sandbox(dir.path());
    assert_eq!(fresh.load(&chaos).unwrap().origin(), ModuleOrigin::Compiled);

    // A real artifact of another module, copied under this module's name.
    let other = ModuleHash::of(b"some other component");
    std::fs::copy(
        cache.path(&ModuleHash::of(&hello), &key),
        cache.path(&other, &key),
    )
    .unwrap();
    assert!(matches!(
        cache.read(&other, &key),
        wasmq::modules::CacheLookup::Rejected(_)
    ));
}

/// A component whose `run` (of the wrong type: it never gets that far) is one function of `ops`
/// multiply-load-store steps over 5,000 live locals: Cranelift's time and memory grow faster
/// than its size. 20,000 steps (0.6 MB) take about 10 s to compile in a debug build; 100,000
/// (3 MB) take more than two minutes and ask for over 128 MiB at once.
pub fn compile_bomb(ops: usize) -> Vec<u8> {
    use std::fmt::Write as _;
    let locals = 5000;
    let mut body = String::with_capacity(ops * 120);
    let mut x: u64 = 1;
    for _ in 0..ops {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (a, b, c) = (
            (x >> 33) as usize % locals,
            (x >> 13) as usize % locals,
            (x >> 43) as usize % locals,
        );
        let (load, store) = ((x >> 7) % 8192 * 8, (x >> 21) % 8192 * 8);
        writeln!(
            body,
            "local.get {a} local.get {b} i64.mul local.tee {c} i32.const {load} i64.load i64.add \
             local.set {a} i32.const {store} local.get {c} i64.store"
        )
        .unwrap();
    }
    component(&format!(
        r#"(component
            (core module $m (memory 1)
                (func (export "f") (result i32) (local {}) {body} i32.const 0))
            (core instance $i (instantiate $m))
            (func (export "run") (result u32) (canon lift (core func $i "f"))))"#,
        "i64 ".repeat(locals)
    ))
}

/// A sandbox compiling in `wasmq compile-module` children under `timeout` and `memory_mb`, with
/// its artifact cache in `dir`.
fn budgeted(dir: &std::path::Path, timeout: Duration, memory_mb: u64) -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.to_owned()),
        max_instances: 4,
        // Other ceilings than the compiler child's engine has: artifacts still load.
        ceilings: wasmq::job::Limits {
            memory_bytes: 256 << 20,
            ..wasmq::job::Limits::default_ceilings()
        },
        compile: CompileBudget {
            timeout,
            memory_bytes: memory_mb << 20,
            ..common::config().compile
        },
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn artifacts(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// Past the compile memory limit the child is stopped and the load refused naming the limit;
/// three concurrent loads of the bomb share one compile; the refusal is remembered (no second
/// compile) and nothing reaches the artifact cache. A real job compiles under the same limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_refused_once_for_all_concurrent_loads() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = budgeted(dir.path(), common::COMPILE_TIMEOUT, 128);
    let bomb = compile_bomb(100_000);
    let loads = (0..3).map(|_| sandbox.load_async(bomb.clone()));
    let refusals = futures_util::future::join_all(loads).await;
    for refused in refusals {
        let err = refused.unwrap_err();
        assert!(matches!(err, LoadError::MemoryBudget { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "compiling the component needed more than the limit of 128 MiB of memory (--compile-memory-mb)"
        );
    }
    assert_eq!(sandbox.compiles_started(), 1, "one compile for three loads");
    assert!(sandbox.load_async(bomb).await.is_err());
    assert_eq!(sandbox.compiles_started(), 1, "the refusal is remembered");
    assert_eq!(
        artifacts(dir.path()),
        0,
        "nothing cached for a refused module"
    );

    let hello = sandbox.load_async(common::job("hello")).await.unwrap();
    assert_eq!(hello.origin(), ModuleOrigin::Compiled);
    greets(&sandbox, &hello).await;
    assert_eq!(artifacts(dir.path()), 1);
}

/// Past the compile time limit the child is killed and the load refused naming the limit; a
/// component refused by the world check after compiling leaves nothing in the cache either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_bomb_is_killed_at_the_compile_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = budgeted(dir.path(), Duration::from_secs(2), 2048);
    let started = std::time::Instant::now();
    let err = sandbox.load_async(compile_bomb(20_000)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, LoadError::TimeBudget { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "compiling the component took longer than the limit of 2 s (--compile-timeout)"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(!err.is_permanent(), "a busy machine may compile it in time");
    // Wrong `run` type: compiled (quickly), then refused; nothing cached.
    let small = compile_bomb(10);
    let err = sandbox.load_async(small).await.unwrap_err().to_string();
    assert!(err.contains("expected 2-tuple, found 0-tuple"), "{err}");
    assert_eq!(artifacts(dir.path()), 0);
}

/// The names of imports and exports are checked before anything is compiled: no compile starts.
#[tokio::test]
async fn imports_and_exports_are_checked_before_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = budgeted(dir.path(), Duration::from_secs(60), 2048);
    let no_run = component(
        r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m))
           (func (export "go") (canon lift (core func $i "f"))))"#,
    );
    let err = sandbox.load_async(no_run).await.unwrap_err().to_string();
    assert!(
        err.contains("missing export `run` (it exports: `go`)"),
        "{err}"
    );
    let foreign = component(
        r#"(component (import "acme:db/query" (func)) (core module $m (func (export "f")))
           (core instance $i (instantiate $m)) (func (export "run") (canon lift (core func $i "f"))))"#,
    );
    let err = sandbox.load_async(foreign).await.unwrap_err().to_string();
    assert!(err.contains("imports `acme:db/query`"), "{err}");
    assert_eq!(sandbox.compiles_started(), 0);
}

/// Three clients upload the same memory bomb to a live server at once while another polls
/// `/healthz`: each upload gets a 422 naming the limit, the server's own memory stays flat (the
/// compile happens in a child) and `/healthz` keeps answering. (The time limit is tested in
/// process: a bomb that outlasts a short limit here could not tell it from a slow machine.)
#[test]
fn a_server_under_compile_bombs_stays_small_and_responsive() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use common::serve::{ADMIN, Server};

    let server = Server::start_with(0, &["--compile-memory-mb", "128"]);
    let baseline = server.process().peak_rss();
    let memory_bomb = compile_bomb(100_000);
    let uploading = AtomicBool::new(true);
    let upload_time = std::sync::Mutex::new(Duration::ZERO);
    let mut latencies = std::thread::scope(|s| {
        let health = s.spawn(|| {
            let mut latencies = Vec::new();
            // At least 20 answers, and for as long as the uploads last.
            while uploading.load(Ordering::Relaxed) || latencies.len() < 20 {
                let asked = Instant::now();
                let (status, body) = server.http("GET", "/healthz", None, b"");
                latencies.push(asked.elapsed());
                assert_eq!(status, 200, "{body}");
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies
        });
        let started = Instant::now();
        let uploads: Vec<_> = (0..3)
            .map(|_| s.spawn(|| server.http("POST", "/v1/modules", Some(ADMIN), &memory_bomb)))
            .collect();
        let answers: Vec<_> = uploads.into_iter().map(|u| u.join().unwrap()).collect();
        uploading.store(false, Ordering::Relaxed);
        *upload_time.lock().unwrap() = started.elapsed();
        for (status, body) in &answers {
            assert_eq!(*status, 422, "{body}");
            assert!(body.contains("\"compile_limit\""), "{body}");
            assert!(body.contains("limit of 128 MiB of memory"), "{body}");
        }
        health.join().unwrap()
    });
    let grew = server.process().peak_rss().saturating_sub(baseline);
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    println!(
        "server peak RSS grew by {} KiB; /healthz answered {} times during the uploads: median {:?}, 95th percentile {:?}, slowest {:?}",
        grew >> 10,
        latencies.len(),
        pct(50),
        pct(95),
        pct(100)
    );
    // Compiled in-process, the memory bomb alone would have needed more than 128 MiB.
    assert!(grew < 64 << 20, "the server grew by {grew} bytes");
    // Responsive, whatever the machine's speed: a server that compiled in-process would hold
    // /healthz for about as long as a compile, so nearly every answer would take a sizeable
    // part of the uploads' time. (How fast it answers is a figure, printed above.)
    let uploads = *upload_time.lock().unwrap();
    assert!(
        pct(95) < uploads / 4,
        "/healthz slowed down (the uploads took {uploads:?}): {latencies:?}"
    );
}

/// An operator may refuse interfaces outright: `chaos` (Rust's std imports `wasi:sockets` and
/// `wasi:filesystem`) is refused before compiling, naming the import; `hello`, which imports
/// neither, loads; without the setting both load.
#[tokio::test]
async fn refused_interfaces_are_named_at_load() {
    let strict = Sandbox::new(SandboxConfig {
        refused_imports: vec!["wasi:sockets".into(), "wasi:filesystem/preopens".into()],
        max_instances: 2,
        ..common::config()
    })
    .unwrap();
    let err = strict
        .load_async(common::job("chaos"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("which this host's operator refuses (--refuse-imports wasi:"),
        "{err}"
    );
    assert!(err.contains("imports `wasi:"), "{err}");
    assert_eq!(strict.compiles_started(), 0, "refused before compiling");
    strict.load_async(common::job("hello")).await.unwrap();
    common::sandbox()
        .load_async(common::job("chaos"))
        .await
        .unwrap();
}
