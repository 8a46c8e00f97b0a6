//! Module loading: each way bytes can fail to be a job, and the compiled-artifact cache.

use crate::common;

use serde_json::json;
use wasmq::modules::{FormatError, ModuleHash};
use wasmq::sandbox::{LoadError, ModuleOrigin, Sandbox, SandboxConfig};

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
        r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func)))))"#,
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
