//! Secrets: sealed under the operator's key before the broker sees them, read by a guest only
//! when its module is granted them, and redacted from everything a run leaves behind — its
//! record (output, logs, progress, result, errors) and the host's own logs.

use crate::common;
use crate::common::rig::Rig;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wasmq::broker::ApiBroker;
use wasmq::broker::memory::MemoryBroker;
use wasmq::grant::Grant;
use wasmq::job::{JobState, Limits};
use wasmq::modules::ModuleHash;
use wasmq::sandbox::{Failure, RunOutcome, SecretFuture, SecretSource};
use wasmq::secret::SecretKey;
use wasmq::worker::{Worker, WorkerConfig};

/// A value with a quote in it, so that its JSON-escaped form differs from it.
const VALUE: &str = "tok-\"9f8e7d6c5b4a\"-end";

struct Map(HashMap<String, String>);

impl SecretSource for Map {
    fn secret(&self, name: &str) -> SecretFuture {
        let found = self
            .0
            .get(name)
            .cloned()
            .ok_or_else(|| "not set".to_owned());
        Box::pin(async move { found })
    }
}

async fn leak(granted: &[&str], args: Value) -> RunOutcome {
    leak_from("chaos", granted, args).await
}

async fn leak_from(job: &str, granted: &[&str], args: Value) -> RunOutcome {
    let module = common::sandbox()
        .load_async(common::job(job))
        .await
        .unwrap();
    let mut request = common::request(&args, Limits::default());
    request.grant = Arc::new(Grant {
        http: Vec::new(),
        secrets: granted.iter().map(|s| s.to_string()).collect(),
    });
    request.secrets = Arc::new(Map(HashMap::from([(
        "SINK_TOKEN".to_owned(),
        VALUE.to_owned(),
    )])));
    common::sandbox().run(&module, request).await
}

/// Nothing the outcome holds shows the value, raw or JSON-escaped.
fn assert_nowhere(what: &str, text: &str) {
    let escaped = serde_json::to_string(VALUE).unwrap();
    let escaped = &escaped[1..escaped.len() - 1];
    assert!(!text.contains(VALUE), "{what} shows the secret: {text}");
    assert!(
        !text.contains(escaped),
        "{what} shows the escaped secret: {text}"
    );
    assert!(
        !text.contains("9f8e7d6c5b4a"),
        "{what} shows part of the secret: {text}"
    );
}

#[tokio::test]
async fn a_secret_a_job_prints_logs_and_returns_is_redacted_everywhere() {
    let outcome = leak(
        &["SINK_TOKEN"],
        json!({"mode": "leak", "secret": "SINK_TOKEN"}),
    )
    .await;
    let result = common::ok_json(&outcome);
    assert_eq!(result["leaked"], "[redacted:SINK_TOKEN]");
    assert_eq!(result["quoted"], "\"[redacted:SINK_TOKEN]\"");
    assert_eq!(outcome.stdout.text, "stdout: [redacted:SINK_TOKEN]\n");
    assert_eq!(outcome.stderr.text, "stderr: [redacted:SINK_TOKEN]\n");
    assert_eq!(outcome.logs[0].message, "log: [redacted:SINK_TOKEN]");
    assert_eq!(
        outcome.progress.as_ref().unwrap().note.as_deref(),
        Some("note: [redacted:SINK_TOKEN]")
    );
    assert_nowhere("the outcome", &format!("{outcome:?}"));

    let failed = leak(
        &["SINK_TOKEN"],
        json!({"mode": "leak", "secret": "SINK_TOKEN", "fail": true}),
    )
    .await;
    match &failed.result {
        Err(Failure::Fail { message }) => assert_eq!(message, "error: [redacted:SINK_TOKEN]"),
        other => panic!("{other:?}"),
    }
    assert_nowhere("the failed outcome", &format!("{failed:?}"));
}

#[tokio::test]
async fn python_and_javascript_jobs_read_granted_secrets_redacted_alike() {
    for job in ["python-chaos", "js-chaos"] {
        let args = json!({"mode": "leak", "secret": "SINK_TOKEN"});
        let outcome = leak_from(job, &["SINK_TOKEN"], args.clone()).await;
        let result = common::ok_json(&outcome);
        assert_eq!(result["leaked"], "[redacted:SINK_TOKEN]", "{job}");
        assert_eq!(
            outcome.stdout.text, "stdout: [redacted:SINK_TOKEN]\n",
            "{job}"
        );
        assert_eq!(
            outcome.stderr.text, "stderr: [redacted:SINK_TOKEN]\n",
            "{job}"
        );
        assert_eq!(
            outcome.logs[0].message, "log: [redacted:SINK_TOKEN]",
            "{job}"
        );
        assert_nowhere(job, &format!("{outcome:?}"));
        let refused = leak_from(job, &[], args).await;
        match &refused.result {
            Err(Failure::Fail { message }) => {
                assert!(message.contains("is not granted"), "{job}: {message}")
            }
            other => panic!("{job}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_secret_not_granted_cannot_be_read() {
    let outcome = leak(&[], json!({"mode": "leak", "secret": "SINK_TOKEN"})).await;
    match &outcome.result {
        Err(Failure::Fail { message }) => {
            assert!(
                message.contains("secret `SINK_TOKEN` is not granted"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_nowhere("the outcome", &format!("{outcome:?}"));
}

#[tokio::test]
async fn a_worker_opens_granted_secrets_with_its_key_only() {
    let key_text = SecretKey::generate();
    let key = SecretKey::parse(&key_text).unwrap();
    let broker: Arc<dyn ApiBroker> = Arc::new(MemoryBroker::new());
    let bytes = common::job("chaos");
    let chaos = ModuleHash::of(&bytes);
    broker.put_module(chaos, &bytes).await.unwrap();
    broker
        .put_secret("SINK_TOKEN", &key.seal("SINK_TOKEN", VALUE).unwrap())
        .await
        .unwrap();
    broker
        .extend_grant(
            chaos,
            &Grant {
                http: Vec::new(),
                secrets: vec!["SINK_TOKEN".into()],
            },
        )
        .await
        .unwrap();

    let run = |key: Option<SecretKey>, id: &'static str| {
        let broker = broker.clone();
        async move {
            let worker = Worker::new(
                broker.clone(),
                common::sandbox().clone(),
                WorkerConfig {
                    secret_key: key,
                    maintain_every: Duration::from_millis(20),
                    ..WorkerConfig::default()
                },
            );
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let running = tokio::spawn(worker.run(async {
                let _ = stopped.await;
            }));
            let mut inv = wasmq::invocation::Invocation::new(chaos);
            inv.id = Some(id.into());
            inv.args = json!({"mode": "leak", "secret": "SINK_TOKEN"});
            let job = inv.prepare(&Limits::default_ceilings()).unwrap();
            common::enqueue(broker.as_ref(), &[job]).await.unwrap();
            let record = broker
                .wait_job("default", id, Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            let _ = stop.send(());
            running.await.unwrap();
            record
        }
    };

    let opened = run(Some(key), "with-key").await;
    assert_eq!(opened.state, JobState::Succeeded, "{:?}", opened.last_error);
    let report = opened.report.as_ref().unwrap();
    assert_eq!(
        report.result.as_ref().unwrap()["leaked"],
        "[redacted:SINK_TOKEN]"
    );
    assert_nowhere("the job record", &serde_json::to_string(&opened).unwrap());

    // Another key (or none) cannot open it; the job is told why, and sees nothing.
    let other = SecretKey::parse(&SecretKey::generate()).unwrap();
    let refused = run(Some(other), "other-key").await;
    assert_eq!(refused.state, JobState::Dead);
    let message = &refused.last_error.as_ref().unwrap().message;
    assert!(
        message.contains("does not open with this WASMQ_SECRET_KEY"),
        "{message}"
    );
    let keyless = run(None, "no-key").await;
    let message = &keyless.last_error.as_ref().unwrap().message;
    assert!(
        message.contains("cannot open secret `SINK_TOKEN`"),
        "{message}"
    );
    assert_nowhere("the refused records", &format!("{refused:?}{keyless:?}"));
    let _ = key_text;
}

/// Through the binary on Redis: set from stdin, listed by name, stored sealed, read by a worker
/// process, and found nowhere afterwards — not in Redis, the job's record or the worker's log.
#[test]
fn secrets_set_through_the_cli_never_show_their_value() {
    let q = Rig::new();
    let key = SecretKey::generate();
    let chaos = q.upload("chaos");

    // No key: refused, nothing stored.
    let out = common::wasmq_cmd(&q.redis().url(), q.dir.path())
        .args(["secret", "set", "SINK_TOKEN"])
        .env_remove("WASMQ_SECRET_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret key"));

    let mut set = common::wasmq_cmd(&q.redis().url(), q.dir.path())
        .args(["secret", "set", "SINK_TOKEN"])
        .env("WASMQ_SECRET_KEY", &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(set.stdin.take().unwrap(), "{VALUE}").unwrap();
    let out = set.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(q.ok(&["secret", "list"]), "SINK_TOKEN\n");
    q.ok(&["grant", &chaos, "--secret", "SINK_TOKEN"]);

    let log = std::fs::File::create(q.log_path("worker")).unwrap();
    let _worker: common::rig::Process = common::wasmq_cmd(&q.redis().url(), q.dir.path())
        .args(["worker", "--maintain-every", "50ms"])
        .env("WASMQ_SECRET_KEY", &key)
        .env("WASMQ_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
        .into();
    let out = q.ok(&[
        "enqueue",
        &chaos,
        "--args",
        r#"{"mode":"leak","secret":"SINK_TOKEN"}"#,
        "--wait",
        "--json",
    ]);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(
        record["report"]["result"]["leaked"],
        "[redacted:SINK_TOKEN]"
    );
    assert_nowhere("the job record", &out);
    assert_nowhere("the worker's log", &q.log("worker"));

    // Redis holds the sealed value only.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dump = rt.block_on(async {
        let client = redis::Client::open(q.redis().url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        let mut all = Vec::new();
        for k in keys {
            let d: Vec<u8> = redis::cmd("DUMP")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            all.extend(d);
        }
        all
    });
    assert!(
        !dump.windows(12).any(|w| w == b"9f8e7d6c5b4a"),
        "Redis holds the value in the clear"
    );

    assert_eq!(
        q.ok(&["secret", "delete", "SINK_TOKEN"]),
        "secret `SINK_TOKEN` deleted\n"
    );
    assert_eq!(q.ok(&["secret", "list"]), "no secrets\n");
}

/// The store holds at most `MAX_SECRETS` names: one more is refused, replacing one is not.
async fn the_secret_store_is_bounded(broker: &dyn ApiBroker) {
    let max = wasmq::secret::MAX_SECRETS;
    for i in 0..max {
        broker
            .put_secret(&format!("S{i}"), b"sealed")
            .await
            .unwrap();
    }
    let refused = broker.put_secret("ONE_MORE", b"sealed").await.unwrap_err();
    assert!(
        refused.to_string().contains("holds 10000 secrets"),
        "{refused}"
    );
    broker.put_secret("S0", b"resealed").await.unwrap();
    assert_eq!(broker.secret_names().await.unwrap().len(), max);
    assert_eq!(broker.secret("S0").await.unwrap().unwrap(), b"resealed");
    assert!(broker.delete_secret("S1").await.unwrap());
    broker.put_secret("ONE_MORE", b"sealed").await.unwrap();
}

#[tokio::test]
async fn the_secret_store_is_bounded_in_memory_and_on_redis() {
    the_secret_store_is_bounded(&MemoryBroker::new()).await;
    let server = common::redis::RedisServer::start();
    let redis = wasmq::broker::redis::RedisBroker::connect(&server.url())
        .await
        .unwrap();
    the_secret_store_is_bounded(&redis).await;
}
