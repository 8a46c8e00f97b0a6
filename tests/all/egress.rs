//! Outbound HTTP from jobs: reachable only where the operator granted it, checked on the
//! request actually sent (host, port, every redirect hop, the addresses a name resolves to), with
//! each call's body bounded; the grant given and taken back through the broker, the CLI and the
//! API. The partner API is a local server that counts what reached it.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::rig::Rig;
use serde_json::{Value, json};
use wasmq::broker::ApiBroker;
use wasmq::broker::memory::MemoryBroker;
use wasmq::grant::{Grant, HttpRule};
use wasmq::job::{FailureKind, JobState, Limits, LogLevel};
use wasmq::modules::ModuleHash;
use wasmq::partner::Partner;
use wasmq::sandbox::{Failure, HttpLimits, RunOutcome, Sandbox, SandboxConfig};
use wasmq::worker::{Worker, WorkerConfig};

fn grant(rules: &[String]) -> Arc<Grant> {
    Arc::new(Grant {
        http: rules
            .iter()
            .map(|r| r.parse::<HttpRule>().unwrap())
            .collect(),
        secrets: Vec::new(),
    })
}

async fn fetch_with(sandbox: &Sandbox, args: Value, grant: Arc<Grant>) -> RunOutcome {
    let module = sandbox
        .load_async(common::job("fetch"))
        .await
        .expect("fetch loads");
    let mut request = common::request(&args, Limits::default());
    request.grant = grant;
    sandbox.run(&module, request).await
}

async fn fetch(args: Value, grant: Arc<Grant>) -> RunOutcome {
    fetch_with(common::sandbox(), args, grant).await
}

/// The run failed for good with a denial, and the job's log names the refused authority.
fn assert_denied(outcome: &RunOutcome, authority: &str) {
    match &outcome.result {
        Err(Failure::Fail { message }) => assert!(message.contains("denied"), "{message}"),
        other => panic!("expected a denial, got {other:?}"),
    }
    let warning = outcome
        .logs
        .iter()
        .find(|l| l.level == LogLevel::Warn && l.message.contains("denied"))
        .unwrap_or_else(|| panic!("no denial in the log: {:?}", outcome.logs));
    assert!(
        warning.message.contains(authority),
        "{} does not name {authority}",
        warning.message
    );
}

#[tokio::test]
async fn a_granted_call_reaches_the_partner_and_is_reported() {
    let partner = Partner::start().await.unwrap();
    let outcome = fetch(
        json!({ "url": partner.url("/records?page=2") }),
        grant(&[partner.origin()]),
    )
    .await;
    let result = common::ok_json(&outcome);
    assert_eq!(result["status"], 200);
    let records: Value = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    assert_eq!(records[0]["id"], 10);
    assert_eq!((partner.requests(), partner.peak()), (1, 1));
    // The Host header the partner saw is the authority requested, set by the host.
    assert_eq!(partner.log()[0].1, partner.addr.to_string());
    let uses = &outcome.http;
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert_eq!(uses[0].destination, partner.origin());
    assert_eq!((uses[0].calls, uses[0].failed), (1, 0));
    assert_eq!(uses[0].bytes_received, result["bytes"].as_u64().unwrap());
}

#[tokio::test]
async fn requests_outside_the_grant_are_denied_and_never_reach_the_partner() {
    let partner = Partner::start().await.unwrap();
    let port = partner.addr.port();
    let origin = partner.origin();
    let records = partner.url("/records?page=1");

    // No grant at all.
    assert_denied(&fetch(json!({ "url": records }), grant(&[])).await, &origin);
    // Another host granted, not this one.
    assert_denied(
        &fetch(
            json!({ "url": records }),
            grant(&[format!("http://127.0.0.2:{port}")]),
        )
        .await,
        &origin,
    );
    // The right host on another port.
    assert_denied(
        &fetch(
            json!({ "url": records }),
            grant(&[format!("http://127.0.0.1:{}", port.wrapping_add(1))]),
        )
        .await,
        &origin,
    );
    // HTTPS granted, plain HTTP asked for.
    assert_denied(
        &fetch(
            json!({ "url": records }),
            grant(&[format!("https://127.0.0.1:{port}")]),
        )
        .await,
        &origin,
    );
    // A granted name that resolves to loopback, which the grant does not name.
    let by_name = format!("http://localhost:{port}");
    assert_denied(
        &fetch(
            json!({ "url": format!("{by_name}/records?page=1") }),
            grant(std::slice::from_ref(&by_name)),
        )
        .await,
        "resolves to 127.0.0.1",
    );
    // A Host header naming another host: the guest cannot even set it.
    let steered = fetch(
        json!({ "url": records, "headers": { "host": "evil.example" } }),
        grant(std::slice::from_ref(&origin)),
    )
    .await;
    assert!(steered.result.is_err(), "{:?}", steered.result);
    assert_eq!(partner.requests(), 0, "{:?}", partner.log());

    // A redirect to a host the grant does not cover: the first hop reaches the partner, the
    // second is refused.
    let redirected = fetch(
        json!({ "url": partner.url(&format!("/redirect?to=http://localhost:{port}/records?page=1")) }),
        grant(std::slice::from_ref(&origin)),
    )
    .await;
    assert_denied(&redirected, &format!("http://localhost:{port}"));
    assert_eq!(partner.requests(), 1, "{:?}", partner.log());
    assert!(partner.log()[0].0.starts_with("/redirect"));

    // The same redirect with both names granted (and loopback named) is followed.
    let followed = fetch(
        json!({ "url": partner.url(&format!("/redirect?to=http://localhost:{port}/records?page=1")) }),
        grant(&[origin.clone(), by_name.clone()]),
    )
    .await;
    assert_eq!(common::ok_json(&followed)["status"], 200);
    assert_eq!(partner.requests(), 3, "{:?}", partner.log());
}

#[tokio::test]
async fn a_response_over_the_cap_ends_the_call_not_the_host() {
    let partner = Partner::start().await.unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        http: HttpLimits {
            max_response_body: 64 << 10,
            ..HttpLimits::default()
        },
        ..common::config()
    })
    .unwrap();
    let g = grant(&[partner.origin()]);

    // Within the cap: the whole body.
    let small = fetch_with(
        &sandbox,
        json!({ "url": partner.url("/big?bytes=65536") }),
        g.clone(),
    )
    .await;
    assert_eq!(common::ok_json(&small)["bytes"], 65536);

    // Over it: the call fails, the run reports it, nothing past the cap was delivered.
    let big = fetch_with(
        &sandbox,
        json!({ "url": partner.url("/big?bytes=8388608") }),
        g.clone(),
    )
    .await;
    match &big.result {
        Err(Failure::Retry { message }) => {
            assert!(message.contains("body size exceeds limit"), "{message}")
        }
        other => panic!("expected the body cap, got {other:?}"),
    }
    let used = &big.http[0];
    assert_eq!((used.calls, used.failed), (1, 1));
    assert!(
        used.bytes_received <= (64 << 10) + (64 << 10),
        "received {} bytes past a 64 KiB cap",
        used.bytes_received
    );

    // The host is fine: the next call works.
    let again = fetch_with(
        &sandbox,
        json!({ "url": partner.url("/records?page=0") }),
        g,
    )
    .await;
    assert_eq!(common::ok_json(&again)["status"], 200);
}

#[tokio::test]
async fn a_call_that_outlives_the_first_byte_timeout_fails_within_it() {
    let partner = Partner::start().await.unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        http: HttpLimits {
            first_byte_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        },
        ..common::config()
    })
    .unwrap();
    let slow = fetch_with(
        &sandbox,
        json!({ "url": partner.url("/slow?ms=30000") }),
        grant(&[partner.origin()]),
    )
    .await;
    match &slow.result {
        Err(Failure::Retry { message }) => {
            assert!(message.contains("HttpResponseTimeout"), "{message}")
        }
        other => panic!("expected the first-byte timeout, got {other:?}"),
    }
    // Nowhere near the partner's 30 s: the timeout, not the server, ended it.
    assert!(
        slow.wall_time < Duration::from_secs(20),
        "{:?}",
        slow.wall_time
    );
}

/// Grants through the broker: given, used by a worker, taken back.
#[tokio::test]
async fn a_worker_runs_a_module_with_the_grant_the_broker_holds() {
    let partner = Partner::start().await.unwrap();
    let broker: Arc<dyn ApiBroker> = Arc::new(MemoryBroker::new());
    let bytes = common::job("fetch");
    let module = ModuleHash::of(&bytes);

    // Nothing uploaded yet: nothing can be granted.
    let refused = broker
        .extend_grant(module, &grant(&[partner.origin()]))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("never uploaded"), "{refused}");
    broker.put_module(module, &bytes).await.unwrap();
    let whole = broker
        .extend_grant(module, &grant(&[partner.origin()]))
        .await
        .unwrap();
    assert_eq!(whole.http.len(), 1);

    let worker = Worker::new(
        broker.clone(),
        common::sandbox().clone(),
        WorkerConfig {
            grant_ttl: Duration::ZERO,
            maintain_every: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let run = |id: &'static str| {
        let broker = broker.clone();
        let url = partner.url("/records?page=3");
        async move {
            let mut inv = wasmq::invocation::Invocation::new(module);
            inv.id = Some(id.into());
            inv.args = json!({ "url": url });
            let job = inv.prepare(&Limits::default_ceilings()).unwrap();
            common::enqueue(broker.as_ref(), &[job]).await.unwrap();
            broker
                .wait_job("default", id, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap()
        }
    };

    let granted = run("granted").await;
    assert_eq!(
        granted.state,
        JobState::Succeeded,
        "{:?}",
        granted.last_error
    );
    let report = granted.report.unwrap();
    assert_eq!(report.http[0].destination, partner.origin());
    assert_eq!(report.http[0].calls, 1);

    // Revoked: the next run (the worker reads grants for every run here) is denied.
    let left = broker
        .remove_grant(module, &Grant::default())
        .await
        .unwrap();
    assert!(left.is_empty());
    let revoked = run("revoked").await;
    assert_eq!(revoked.state, JobState::Dead);
    let error = revoked.last_error.unwrap();
    assert_eq!(error.kind, FailureKind::Fail);
    assert!(error.message.contains("denied"), "{}", error.message);
    assert_eq!(partner.requests(), 1);

    let _ = stop.send(());
    running.await.unwrap();
}

/// Waits (up to ten minutes, for a loaded machine) for each job to end; returns their states.
async fn final_states(broker: &dyn ApiBroker, ids: &[String]) -> Vec<JobState> {
    let mut states = Vec::new();
    for id in ids {
        let r = broker
            .wait_job("default", id, Duration::from_secs(600))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("job {id} vanished"));
        assert!(r.state.is_final(), "{id} still {:?}", r.state);
        states.push(r.state);
    }
    states
}

/// Three worker processes, one destination limited to 5 in flight and 20 started per second:
/// the partner never sees more, and every job succeeds.
#[test]
fn an_egress_limit_holds_across_worker_processes() {
    let q = Rig::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let partner = rt.block_on(Partner::start()).unwrap();
    let fetch = q.upload("fetch");
    q.ok(&["grant", &fetch, "--http", &partner.origin()]);
    assert_eq!(
        q.ok(&[
            "egress-limit",
            "127.0.0.1",
            "--concurrency",
            "5",
            "--rate",
            "20",
            "--per",
            "1s"
        ]),
        "127.0.0.1: at most 5 calls at once, at most 20 started per 1000 ms\n"
    );
    // A start keeps counting 300 ms past its window: on a shared two-core machine running three
    // workers, Redis and the partner, the delay from admission to arrival varies by more than
    // the default guard's 20 ms.
    let _workers: Vec<_> = (0..3)
        .map(|i| {
            q.worker(
                &format!("w{i}"),
                &["--concurrency", "20", "--egress-rate-guard", "300ms"],
            )
        })
        .collect();
    let ids = q.enqueue_many(
        200,
        "call",
        &fetch,
        json!({ "url": partner.url("/slow?ms=150") }),
    );
    let broker = rt.block_on(q.broker());
    let states = rt.block_on(final_states(&broker, &ids));
    assert!(
        states.iter().all(|s| *s == JobState::Succeeded),
        "{states:?}"
    );
    assert_eq!(partner.requests(), 200);
    assert!(
        partner.peak() <= 5,
        "{} calls in flight at once",
        partner.peak()
    );
    let most = partner.most_started_within(Duration::from_secs(1));
    eprintln!(
        "200 calls through three workers: at most {} in flight, at most {most} started in any second",
        partner.peak()
    );
    assert!(most <= 20, "{most} calls started within one second");
    // The test means something only if the calls pressed against the limit: sixty slots of
    // 150 ms calls could start hundreds a second. Half the limit is far below what even a
    // loaded machine reaches.
    assert!(
        most >= 10,
        "the calls never pressed against the limit ({most} per second at most)"
    );
}

/// A worker killed while its jobs hold a destination's only slots: the slots come back when
/// their lease runs out, and the jobs waiting for them finish on another worker.
#[test]
fn a_killed_workers_egress_slots_come_back() {
    let q = Rig::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let partner = rt.block_on(Partner::start()).unwrap();
    let fetch = q.upload("fetch");
    q.ok(&["grant", &fetch, "--http", &partner.origin()]);
    q.ok(&["egress-limit", "127.0.0.1", "--concurrency", "2"]);
    let fast = [
        "--lease",
        "2s",
        "--egress-lease",
        "2s",
        "--concurrency",
        "8",
    ];
    let doomed = q.worker("doomed", &fast);

    // Two calls that never answer take both slots; one attempt each, so they end dead once
    // their worker is gone.
    let hanging =
        r#"{"url": "URL", "method": "GET"}"#.replace("URL", &partner.url("/slow?ms=600000"));
    let mut hang_ids = Vec::new();
    for i in 0..2 {
        let id = format!("hang-{i}");
        q.ok(&[
            "enqueue",
            &fetch,
            "--id",
            &id,
            "--args",
            &hanging,
            "--max-attempts",
            "1",
            "--timeout-ms",
            "900000",
        ]);
        hang_ids.push(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while partner.in_flight() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hanging calls never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Four more wait for a slot on the same worker; then it dies with the slots held.
    let waiting = q.enqueue_many(
        4,
        "waiting",
        &fetch,
        json!({ "url": partner.url("/records?page=1") }),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(partner.requests(), 2, "a call passed the limit");
    doomed.kill();

    let _rescuer = q.worker("rescuer", &fast);
    let broker = rt.block_on(q.broker());
    let states = rt.block_on(final_states(&broker, &waiting));
    assert!(
        states.iter().all(|s| *s == JobState::Succeeded),
        "{states:?}"
    );
    let hung = rt.block_on(final_states(&broker, &hang_ids));
    assert!(hung.iter().all(|s| *s == JobState::Dead), "{hung:?}");
    assert_eq!(partner.requests(), 6);
}

/// Past the pool's size the sandbox allocates each run on demand (a pool for ten thousand runs
/// cannot be reserved), compiling for the smaller reservation in its compiler child: jobs run
/// there as they do in a pooled one.
#[tokio::test]
async fn a_sandbox_for_more_runs_than_the_pool_runs_jobs_alike() {
    let partner = Partner::start().await.unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: wasmq::sandbox::MAX_POOLED_INSTANCES + 1,
        ..common::config()
    })
    .unwrap();
    let hello = sandbox.load_async(common::job("hello")).await.unwrap();
    let outcome = sandbox
        .run(
            &hello,
            common::request(&json!({"name": "many"}), Limits::default()),
        )
        .await;
    assert_eq!(common::ok_json(&outcome)["message"], "Hello, many!");
    let fetched = fetch_with(
        &sandbox,
        json!({ "url": partner.url("/records?page=1") }),
        grant(&[partner.origin()]),
    )
    .await;
    assert_eq!(common::ok_json(&fetched)["status"], 200);
    // The memory cap holds there too.
    let chaos = sandbox.load_async(common::job("chaos")).await.unwrap();
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let capped = sandbox
        .run(&chaos, common::request(&json!({"mode": "alloc"}), limits))
        .await;
    assert!(
        matches!(capped.result, Err(Failure::MemoryLimit { .. })),
        "{:?}",
        capped.result
    );
}

/// A guest waiting on a response is parked: a call answered after a second burns the same fuel
/// as one answered at once, and fifty wait together on the sandbox's two guest threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_waiting_on_a_response_burns_no_fuel() {
    let partner = Partner::start().await.unwrap();
    let g = grant(&[partner.origin()]);
    let quick = fetch(json!({ "url": partner.url("/slow?ms=0001") }), g.clone()).await;
    let slow = fetch(json!({ "url": partner.url("/slow?ms=1000") }), g.clone()).await;
    common::ok_json(&quick);
    common::ok_json(&slow);
    assert!(slow.wall_time >= Duration::from_secs(1));
    assert_eq!(
        quick.fuel_used, slow.fuel_used,
        "waiting a second cost fuel"
    );

    // Fifty runs that the partner answers only once all fifty wait together: on a sandbox with
    // one guest thread per core, they can only all wait if waiting holds no thread.
    let runs = (0..50).map(|_| fetch(json!({ "url": partner.url("/gather?n=50") }), g.clone()));
    let outcomes = futures_util::future::join_all(runs).await;
    for o in &outcomes {
        assert_eq!(common::ok_json(o)["body"], "gathered");
    }
    assert!(
        partner.peak() >= 50,
        "at most {} waited together",
        partner.peak()
    );
}

struct OneSecret(&'static str, &'static str);

impl wasmq::sandbox::SecretSource for OneSecret {
    fn secret(&self, name: &str) -> wasmq::sandbox::SecretFuture {
        let found = (name == self.0)
            .then(|| self.1.to_owned())
            .ok_or_else(|| "not set".to_owned());
        Box::pin(async move { found })
    }
}

/// `partner-sync` in Rust, Python and JavaScript: the same page fetched, the same records kept, stored
/// with the granted token; and denied the same way without a grant.
#[tokio::test]
async fn partner_sync_fetches_cleans_and_stores_in_every_language() {
    let partner = Partner::start().await.unwrap();
    for (n, job) in ["partner-sync", "python-partner-sync"]
        .into_iter()
        .enumerate()
    {
        let module = common::sandbox()
            .load_async(common::job(job))
            .await
            .unwrap();
        let args = json!({
            "source": partner.url("/records"),
            "page": 2,
            "sink": partner.url("/sink"),
        });
        let mut request = common::request(&args, Limits::default());
        request.grant = Arc::new(Grant {
            http: vec![partner.origin().parse().unwrap()],
            secrets: vec!["SINK_TOKEN".into()],
        });
        request.secrets = Arc::new(OneSecret("SINK_TOKEN", "sink-token-0123456789"));
        let outcome = common::sandbox().run(&module, request.clone()).await;
        assert_eq!(
            common::ok_json(&outcome),
            json!({"fetched": 5, "stored": 4}),
            "{job}: {}",
            outcome.stderr.text
        );
        let (stored, tokens) = partner.sunk();
        assert_eq!(stored, 4 * (n as u64 + 1), "{job}");
        assert_eq!(
            tokens.last().unwrap(),
            "Bearer sink-token-0123456789",
            "{job}"
        );
        assert!(partner.log().iter().any(|(p, _)| p == "/records?page=2"));

        request.grant = Arc::new(Grant {
            http: Vec::new(),
            secrets: vec!["SINK_TOKEN".into()],
        });
        let denied = common::sandbox().run(&module, request).await;
        match &denied.result {
            Err(Failure::Fail { message }) => {
                assert!(message.contains("denied"), "{job}: {message}")
            }
            other => panic!("{job}: {other:?}"),
        }
    }
}
