//! The HTTP API's request handling, through the router on the in-memory broker: any method,
//! path, query and body get an answer in the API's error shape or a success, never a panic and
//! never a 500.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;
use wasmq::api::{ApiState, BodyLimits, Tokens, router};
use wasmq::broker::memory::MemoryBroker;
use wasmq::sandbox::{Sandbox, SandboxConfig};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn state() -> &'static ApiState {
    static STATE: OnceLock<ApiState> = OnceLock::new();
    STATE.get_or_init(|| ApiState {
        broker: Arc::new(MemoryBroker::new()),
        sandbox: Sandbox::new(SandboxConfig {
            max_instances: 1,
            ..SandboxConfig::default()
        })
        .unwrap(),
        tokens: Arc::new(Tokens::insecure_open()),
        limits: BodyLimits::default(),
        worker: None,
        throughput: Default::default(),
    })
}

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

fuzz_target!(|data: &[u8]| {
    // method byte, then `path\nbody`.
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let Ok(path) = std::str::from_utf8(&rest[..split]) else {
        return;
    };
    // `?wait=` holds a request open for up to five minutes by design: not a finding.
    if path.contains("wait") {
        return;
    }
    let body = rest.get(split + 1..).unwrap_or_default().to_vec();
    let Ok(request) = Request::builder()
        .method(METHODS[m as usize % METHODS.len()].clone())
        .uri(format!("/{}", path.trim_start_matches('/')))
        .header("content-type", "application/json")
        .body(Body::from(body))
    else {
        return;
    };
    let status = runtime().block_on(async {
        let response = router(state().clone()).oneshot(request).await.unwrap();
        response.status()
    });
    assert!(!status.is_server_error(), "{status} for {path:?}");
});
