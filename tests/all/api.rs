//! The HTTP API through its router (no socket), against a real Redis: every route, the token
//! scopes, and for each kind of bad input the status code and the one error shape. The tests of
//! routes that reach the broker run twice: `on_redis::` and `on_cluster::` (a private Redis
//! Cluster).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::cluster::RedisCluster;
use common::redis::RedisServer;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use wasmq::api::{ApiState, BodyLimits, Tokens, router};
use wasmq::broker::ApiBroker;
use wasmq::broker::redis::RedisBroker;
use wasmq::worker::{Backoff, Worker, WorkerConfig};

use common::serve::{ADMIN, ENQUEUER};

const UPLOADER: &str = "upload-secret-0123456789";

struct Api {
    state: ApiState,
    store: Store,
}

/// What the API under test keeps its state in.
enum Store {
    Single(RedisServer),
    // Held for its nodes' lifetime.
    Cluster(#[allow(dead_code)] RedisCluster),
}

impl Api {
    async fn new() -> Self {
        Self::with_limits(BodyLimits::default()).await
    }

    /// The API on a private Redis Cluster (three masters, a replica each).
    async fn on_cluster() -> Self {
        let cluster = tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap();
        let url = cluster.url();
        Self::on(Store::Cluster(cluster), &url, BodyLimits::default()).await
    }

    async fn with_limits(limits: BodyLimits) -> Self {
        let redis = RedisServer::start();
        let url = redis.url();
        Self::on(Store::Single(redis), &url, limits).await
    }

    /// The single Redis under an API made by [`Api::new`] or [`Api::with_limits`].
    fn redis(&mut self) -> &mut RedisServer {
        match &mut self.store {
            Store::Single(redis) => redis,
            Store::Cluster(_) => panic!("a single-Redis test"),
        }
    }

    async fn on(store: Store, url: &str, limits: BodyLimits) -> Self {
        let broker: Arc<dyn ApiBroker> = Arc::new(RedisBroker::connect(url).await.unwrap());
        let tokens = Tokens::parse(&format!(
            "ops:{ADMIN}:admin\nci:{ENQUEUER}:enqueue\nbuild:{UPLOADER}:upload"
        ))
        .unwrap();
        Api {
            state: ApiState {
                broker,
                sandbox: common::sandbox().clone(),
                tokens: Arc::new(tokens),
                limits,
                worker: None,
                throughput: Default::default(),
            },
            store,
        }
    }

    /// Sends a request; returns the status and the body (JSON, or a string for text bodies).
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Body,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = router(self.state.clone())
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, Some(ADMIN), Body::empty())
            .await
    }

    async fn post_json(&self, uri: &str, token: &str, v: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, uri, Some(token), Body::from(v.to_string()))
            .await
    }

    async fn upload(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/modules",
                Some(UPLOADER),
                Body::from(common::job(name)),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["module"].as_str().unwrap().to_owned()
    }

    /// Starts an in-process worker whose histograms `/metrics` reports, as `serve --workers` does.
    fn worker(
        &mut self,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<wasmq::worker::WorkerStats>,
    ) {
        let worker = Worker::new(
            self.state.broker.clone(),
            common::sandbox().clone(),
            WorkerConfig {
                backoff: Backoff {
                    base: Duration::from_millis(20),
                    max: Duration::from_millis(50),
                },
                maintain_every: Duration::from_millis(20),
                ..WorkerConfig::default()
            },
        );
        self.state.worker = Some(worker.counters());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (
            tx,
            tokio::spawn(worker.run(async {
                let _ = rx.await;
            })),
        )
    }
}

/// Every error has exactly this shape.
fn assert_error(
    status: StatusCode,
    body: &Value,
    want_status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(e["field"].as_str(), field, "{body}");
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "nothing but `error`: {body}"
    );
}

async fn tokens_and_scopes(api: Api) {
    let (s, b) = api
        .call(Method::GET, "/v1/queues", None, Body::empty())
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized", None);
    let (s, b) = api
        .call(
            Method::GET,
            "/v1/queues",
            Some("not-a-token-at-all"),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert!(
        !b.to_string().contains("not-a-token"),
        "the token is not echoed"
    );
    // Any valid token reads; writing needs the scope.
    let (s, _) = api
        .call(Method::GET, "/v1/queues", Some(ENQUEUER), Body::empty())
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/modules",
            Some(ENQUEUER),
            Body::from(common::job("hello")),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`ci` lacks the `upload` scope")
    );
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/dead/x/retry",
            Some(UPLOADER),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    // Public routes.
    let (s, b) = api.call(Method::GET, "/healthz", None, Body::empty()).await;
    // The test Redis keeps everything: no eviction, an fsync per write (on every node of a
    // cluster).
    let backend = match api.store {
        Store::Single(_) => "redis",
        Store::Cluster(_) => "redis-cluster",
    };
    assert_eq!(
        (s, b),
        (
            StatusCode::OK,
            json!({"status": "ok", "durability": {"backend": backend, "eviction": "noeviction",
                   "appendonly": true, "appendfsync": "always", "durable_writes": null}})
        )
    );
    let (s, b) = api
        .call(Method::GET, "/openapi.json", None, Body::empty())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["openapi"], "3.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_are_validated_stored_and_guarded() {
    let api = Api::with_limits(BodyLimits {
        module_bytes: 512 << 10,
        request_bytes: 1 << 20,
    })
    .await;
    let hello = api.upload("hello").await;
    assert_eq!(api.upload("hello").await, hello, "idempotent");
    let (s, b) = api.get("/v1/modules").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["modules"][0]["hash"], hello.as_str());
    let (s, b) = api.get(&format!("/v1/modules/{hello}")).await;
    assert_eq!(
        (s, b["size"].as_u64().unwrap() > 10_000),
        (StatusCode::OK, true)
    );

    let (s, b) = api
        .call(
            Method::POST,
            "/v1/modules",
            Some(UPLOADER),
            Body::from("not wasm"),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_module",
        None,
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly binary"),
        "{b}"
    );
    let (s, b) = api
        .call(Method::POST, "/v1/modules", Some(UPLOADER), Body::empty())
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", None);
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/modules",
            Some(UPLOADER),
            Body::from(vec![0u8; 600 << 10]),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    let (s, b) = api.get("/v1/modules/sha256:nothex").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("hash"));
    let never = format!("sha256:{}", "0".repeat(64));
    let (s, b) = api.get(&format!("/v1/modules/{never}")).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    // In use by a waiting job: refused unless forced.
    let (s, _) = api
        .post_json(
            "/v1/jobs",
            ENQUEUER,
            &json!({"module": hello, "run_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let uri = format!("/v1/modules/{hello}");
    let (s, b) = api
        .call(Method::DELETE, &uri, Some(ADMIN), Body::empty())
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "module_in_use", None);
    let (s, b) = api
        .call(
            Method::DELETE,
            &format!("{uri}?force=true"),
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    let (s, b) = api
        .call(Method::DELETE, &uri, Some(ADMIN), Body::empty())
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invocations_name_the_field() {
    let api = Api::with_limits(BodyLimits {
        module_bytes: 64 << 20,
        request_bytes: 4096,
    })
    .await;
    let hello = api.upload("hello").await;
    let never = format!("sha256:{}", "ab".repeat(32));
    let cases: Vec<(Body, StatusCode, &str, Option<&str>)> = vec![
        (
            Body::from("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            Body::from(json!({"module": hello, "fuel": "lots"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("fuel"),
        ),
        (
            Body::from(json!({"module": hello, "colour": 1}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("colour"),
        ),
        (
            Body::from(json!({"args": 1}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("module"),
        ),
        (
            Body::from(json!({"module": "sha256:xyz"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("module"),
        ),
        (
            Body::from(json!({"module": never}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_module",
            Some("module"),
        ),
        (
            Body::from(json!({"module": hello, "memory_mb": 4096}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("memory_mb"),
        ),
        (
            Body::from(json!({"module": hello, "queue": "no spaces"}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("queue"),
        ),
        (
            Body::from(
                json!({"jobs": [{"module": hello}, {"module": hello, "max_attempts": 0}]})
                    .to_string(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("jobs[1].max_attempts"),
        ),
        (
            Body::from(json!({"jobs": [{"module": hello}, {"module": never}]}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_module",
            Some("jobs[1].module"),
        ),
        (
            // A list of one is still a list: the job is named by its place.
            Body::from(json!({"jobs": [{"module": never}]}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_module",
            Some("jobs[0].module"),
        ),
        (
            Body::from(json!({"jobs": 5}).to_string()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("jobs"),
        ),
        (
            Body::from(vec![b' '; 5000]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, b) = api
            .call(Method::POST, "/v1/jobs", Some(ENQUEUER), body)
            .await;
        assert_error(s, &b, status, code, field);
    }
    // All or nothing: the valid first job of a refused bulk request was not enqueued.
    let (_, b) = api.get("/v1/queues").await;
    assert_eq!(b["queues"], json!([]), "{b}");
    let (s, b) = api
        .call(Method::PUT, "/v1/jobs", Some(ADMIN), Body::empty())
        .await;
    assert_error(
        s,
        &b,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    let (s, b) = api.get("/v2/everything").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    let (s, b) = api.get("/v1/jobs/x?colour=red").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", None);
    let (s, b) = api.get("/v1/jobs/x?wait=soon").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("wait"));
}

/// Args over the operator's limit are refused naming `args` and the limit, alone, in a bulk
/// request or in a batch, and Redis keeps nothing of them; args at the limit go in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_over_the_limit_are_refused_before_anything_is_stored() {
    let mut api = Api::new().await;
    let hello = api.upload("hello").await;
    let limit = wasmq::job::Sizes::default().args_bytes;
    // A JSON string of `len` bytes, quotes included.
    let args = |len: usize| Value::String("x".repeat(len - 2));
    let over = json!({"module": hello, "args": args(limit + 1)});
    let before = api.redis().stored_bytes();
    let requests = [
        ("/v1/jobs", over.clone(), "args"),
        (
            "/v1/jobs",
            json!({"jobs": [{"module": hello}, over.clone(), over.clone()]}),
            "jobs[1].args",
        ),
        (
            "/v1/batches",
            json!({"jobs": [{"module": hello}, over.clone()], "callback": {"module": hello}}),
            "jobs[1].args",
        ),
        (
            "/v1/batches",
            json!({"jobs": [{"module": hello}], "callback": over.clone()}),
            "callback.args",
        ),
    ];
    for (uri, body, field) in &requests {
        let (s, b) = api.post_json(uri, ENQUEUER, body).await;
        assert_error(
            s,
            &b,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some(field),
        );
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "`args` is {} bytes of JSON, above the limit of {limit} bytes (--max-args-kb)",
                limit + 1
            )),
            "{message}"
        );
    }
    let grew = api.redis().stored_bytes().saturating_sub(before);
    assert!(
        grew < 4 << 10,
        "refused requests left {grew} bytes in Redis"
    );
    let (s, b) = api
        .post_json(
            "/v1/jobs",
            ENQUEUER,
            &json!({"module": hello, "args": args(limit)}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
}

async fn jobs_run_and_are_waited_on_cancelled_and_retried(mut api: Api) {
    let hello = api.upload("hello").await;
    let chaos = api.upload("chaos").await;
    let (s, b) = api
        .post_json(
            "/v1/jobs",
            ENQUEUER,
            &json!({"module": hello, "id": "greet", "args": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(
        (s, &b),
        (
            StatusCode::ACCEPTED,
            &json!({"id": "greet", "queue": "default", "created": true})
        )
    );
    let (_, b) = api
        .post_json(
            "/v1/jobs",
            ENQUEUER,
            &json!({"module": hello, "id": "greet"}),
        )
        .await;
    assert_eq!(b["created"], false, "idempotent on id");
    let (s, b) = api
        .post_json(
            "/v1/jobs",
            ENQUEUER,
            &json!({"jobs": [
                {"module": chaos, "id": "doomed", "args": {"mode": "fail", "message": "no"}},
                {"module": hello, "id": "later", "run_at": "2999-01-01T00:00:00Z"},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(b["jobs"].as_array().unwrap().len(), 2);

    // Cancel the scheduled one before any worker runs.
    let (s, b) = api
        .call(
            Method::DELETE,
            "/v1/jobs/later",
            Some(ENQUEUER),
            Body::empty(),
        )
        .await;
    assert_eq!((s, &b["outcome"]), (StatusCode::OK, &json!("cancelled")));
    let (s, b) = api
        .call(
            Method::DELETE,
            "/v1/jobs/later",
            Some(ENQUEUER),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, "already_final", None);
    let (s, b) = api
        .call(
            Method::DELETE,
            "/v1/jobs/nope",
            Some(ENQUEUER),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (stop, running) = api.worker();
    let (s, b) = api.get("/v1/jobs/greet?wait=30s").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["state"], "succeeded");
    assert_eq!(b["report"]["result"], json!({"message": "Hello, Ada!"}));
    assert!(b["report"]["fuel_used"].as_u64().unwrap() > 0);
    let (_, b) = api.get("/v1/jobs/doomed?wait=30s&queue=default").await;
    assert_eq!(
        (b["state"].as_str(), b["last_error"]["kind"].as_str()),
        (Some("dead"), Some("fail"))
    );
    let (s, b) = api.get("/v1/jobs/nope").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (_, b) = api.get("/v1/dead").await;
    assert_eq!(b["jobs"][0]["id"], "doomed");
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/dead/doomed/retry",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!((s, &b["state"]), (StatusCode::OK, &json!("ready")));
    let (_, b) = api.get("/v1/jobs/doomed?wait=30s").await;
    assert_eq!(b["state"], "dead");
    let (s, _) = api
        .call(
            Method::DELETE,
            "/v1/dead/doomed",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api
        .call(
            Method::DELETE,
            "/v1/dead/doomed",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (_, b) = api.get("/v1/queues").await;
    let totals = &b["queues"][0]["totals"];
    assert_eq!(
        (
            totals["enqueued"].as_u64(),
            totals["succeeded"].as_u64(),
            totals["cancelled"].as_u64()
        ),
        (Some(3), Some(1), Some(1))
    );
    let (s, text) = api.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains("wasmq_jobs_succeeded_total{queue=\"default\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wasmq_jobs_dead_total{queue=\"default\"} 2"),
        "{text}"
    );
    assert!(text.contains("wasmq_workers 1"), "{text}");
    let (_, b) = api.get("/v1/workers").await;
    assert_eq!(b["workers"].as_array().unwrap().len(), 1, "{b}");
    // Three attempts ran in this process: greet, and doomed twice.
    assert!(
        text.contains("wasmq_job_duration_seconds_count 3"),
        "{text}"
    );
    assert!(
        text.contains("wasmq_job_fuel_bucket{le=\"+Inf\"} 3"),
        "{text}"
    );
    let _ = stop.send(());
    running.await.unwrap();
}

async fn jobs_are_listed_run_now_and_dead_sets_emptied(mut api: Api) {
    let hello = api.upload("hello").await;
    let chaos = api.upload("chaos").await;
    let mut jobs: Vec<Value> = (0..3)
        .map(|n| json!({"module": hello, "id": format!("r{n}")}))
        .collect();
    jobs.push(json!({"module": hello, "id": "later", "run_at": "2999-01-01T00:00:00Z"}));
    let (s, _) = api
        .post_json("/v1/jobs", ENQUEUER, &json!({ "jobs": jobs }))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // Listing: ready by default, paged; each state apart.
    let ids = |b: &Value| -> Vec<String> {
        b["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, b) = api.get("/v1/jobs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (b["state"].as_str(), b["total"].as_u64()),
        (Some("ready"), Some(3))
    );
    assert_eq!(ids(&b), ["r0", "r1", "r2"]);
    let (_, b) = api.get("/v1/jobs?state=ready&offset=1&limit=1").await;
    assert_eq!(
        (ids(&b), b["total"].as_u64()),
        (vec!["r1".to_owned()], Some(3))
    );
    let (_, b) = api.get("/v1/jobs?queue=default&state=scheduled").await;
    assert_eq!(ids(&b), ["later"]);
    let (s, b) = api.get("/v1/jobs?state=finished").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("state"));
    let (s, b) = api.get("/v1/jobs?colour=red").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", None);

    // Run now: only scheduled jobs, only with admin.
    let run = |id: &str, token| {
        let uri = format!("/v1/jobs/{id}/run");
        let api = &api;
        async move {
            api.call(Method::POST, &uri, Some(token), Body::empty())
                .await
        }
    };
    let (s, b) = run("later", ENQUEUER).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, b) = run("later", ADMIN).await;
    assert_eq!((s, &b["state"]), (StatusCode::OK, &json!("ready")));
    let (s, b) = run("later", ADMIN).await;
    assert_error(s, &b, StatusCode::CONFLICT, "not_scheduled", None);
    let (s, b) = run("nope", ADMIN).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    let (_, b) = api.get("/v1/jobs?state=ready").await;
    assert_eq!(b["total"], 4);

    // Three jobs die; the whole dead set is retried, dies again, and is deleted.
    let doomed: Vec<Value> = (0..3)
        .map(|n| json!({"module": chaos, "id": format!("d{n}"), "max_attempts": 1, "args": {"mode": "fail"}}))
        .collect();
    api.post_json("/v1/jobs", ENQUEUER, &json!({ "jobs": doomed }))
        .await;
    let (_, b) = api.get("/v1/modules?usage=true").await;
    let usage: Vec<(String, u64)> = b["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["hash"].as_str().unwrap().to_owned(),
                m["jobs"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(usage, [(hello.clone(), 4), (chaos.clone(), 3)]);
    let (_, b) = api.get("/v1/modules").await;
    assert!(
        b["modules"][0].get("jobs").is_none(),
        "counted only when asked"
    );

    let broker = api.state.broker.clone();
    let dead_count = || async { broker.queues().await.unwrap()[0].dead };
    let until_dead = |n: u64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while dead_count().await < n {
            assert!(tokio::time::Instant::now() < deadline, "jobs did not die");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (stop, running) = api.worker();
    until_dead(3).await;
    let _ = stop.send(());
    running.await.unwrap();
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/dead/retry",
            Some(ENQUEUER),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, b) = api
        .call(Method::POST, "/v1/dead/retry", Some(ADMIN), Body::empty())
        .await;
    assert_eq!(
        (s, &b),
        (StatusCode::OK, &json!({"queue": "default", "retried": 3}))
    );
    assert_eq!(dead_count().await, 0);
    let (stop, running) = api.worker();
    until_dead(3).await;
    let _ = stop.send(());
    running.await.unwrap();
    let (_, b) = api.get("/v1/jobs/d0").await;
    assert_eq!(
        b["errors"].as_array().unwrap().len(),
        2,
        "one failure per run: {b}"
    );
    let (s, b) = api
        .call(
            Method::DELETE,
            "/v1/dead?queue=default",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(
        (s, &b),
        (StatusCode::OK, &json!({"queue": "default", "deleted": 3}))
    );
    assert_eq!(dead_count().await, 0);
    let (s, _) = api.get("/v1/jobs/d0").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Throughput: rates between the samples the server took.
    let (_, b) = api.get("/v1/throughput").await;
    assert_eq!(b, json!({"interval_ms": 1000, "rates": []}));
    let queues = api.state.broker.queues().await.unwrap();
    api.state.throughput.record(1_000, &[]);
    api.state.throughput.record(3_000, &queues);
    let (_, b) = api.get("/v1/throughput").await;
    assert_eq!(
        b["rates"],
        json!([{"at_ms": 3000, "succeeded": 2.0, "failed": 3.0}]),
        "4 succeeded and 6 failed attempts over 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_without_a_token_and_locked_down() {
    let api = Api::new().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = router(api.state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
    }
    // The page is a shell: its data needs a token.
    let (s, _) = api.call(Method::GET, "/v1/jobs", None, Body::empty()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_lost_redis() {
    let mut api = Api::new().await;
    let (s, _) = api.call(Method::GET, "/healthz", None, Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    api.redis().kill();
    let (s, b) = api.call(Method::GET, "/healthz", None, Body::empty()).await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "unavailable", None);
}

async fn cron_entries_over_http(api: Api) {
    let hello = api.upload("hello").await;
    let entry = json!({"name": "nightly", "schedule": "0 3 * * *", "invocation": {"module": hello, "args": {"name": "n"}}});
    let (s, b) = api.post_json("/v1/cron", ENQUEUER, &entry).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, b) = api.post_json("/v1/cron", ADMIN, &entry).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert!(b["next_ms"].as_u64().unwrap() > 0);
    let (_, b) = api.get("/v1/cron").await;
    assert_eq!(b["cron"][0]["name"], "nightly");
    let never = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            json!({"name": "x", "schedule": "sometimes", "invocation": {"module": hello}}),
            "invalid_invocation",
            Some("schedule"),
        ),
        (
            json!({"name": "no spaces", "schedule": "* * * * *", "invocation": {"module": hello}}),
            "invalid_invocation",
            Some("name"),
        ),
        (
            json!({"name": "x", "schedule": "* * * * *", "invocation": {"module": never}}),
            "unknown_module",
            Some("invocation.module"),
        ),
        (
            json!({"name": "x", "schedule": "* * * * *", "invocation": {"module": hello, "fuel": 0}}),
            "invalid_invocation",
            Some("invocation.fuel"),
        ),
        (
            json!({"name": "x", "schedule": "* * * * *", "invocation": {"module": hello, "id": "fixed"}}),
            "invalid_invocation",
            Some("invocation"),
        ),
    ];
    for (body, code, field) in cases {
        let (s, b) = api.post_json("/v1/cron", ADMIN, &body).await;
        assert_error(s, &b, StatusCode::UNPROCESSABLE_ENTITY, code, field);
    }
    let (s, b) = api
        .post_json("/v1/cron", ADMIN, &json!({"name": "x"}))
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_json", None);
    let (s, _) = api
        .call(
            Method::DELETE,
            "/v1/cron/nightly",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, b) = api
        .call(
            Method::DELETE,
            "/v1/cron/nightly",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
}

async fn queues_pause_and_resume(api: Api) {
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/queues/mail/pause",
            Some(ENQUEUER),
            Body::empty(),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/queues/mail/pause",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(
        (s, b),
        (StatusCode::OK, json!({"queue": "mail", "paused": true}))
    );
    let (_, b) = api.get("/v1/queues").await;
    assert_eq!(b["queues"][0]["paused"], true);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/queues/mail/resume",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = api.get("/v1/queues").await;
    assert_eq!(b["queues"][0]["paused"], false);
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/queues/a%20b/pause",
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "invalid_invocation",
        Some("queue"),
    );
}

async fn queue_limits_over_http(api: Api) {
    let put = |body: &'static str| {
        api.call(
            Method::PUT,
            "/v1/queues/mail/limits",
            Some(ADMIN),
            Body::from(body),
        )
    };
    let (s, b) = put(r#"{"concurrency": 3, "rate": [10, 1000]}"#).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, b) = api.get("/v1/queues").await;
    assert_eq!(
        b["queues"][0]["limits"],
        json!({"concurrency": 3, "rate": [10, 1000]})
    );
    let (s, b) = put(r#"{"concurency": 3}"#).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_json", None);
    let (s, b) = put(r#"{"concurrency": 0}"#).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_limits",
        Some("concurrency"),
    );
    let (s, _) = put("{}").await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = api.get("/v1/queues").await;
    assert_eq!(b["queues"][0]["limits"], json!({}));
    let (s, b) = put(r#"{"max_size": 0}"#).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_limits",
        Some("max_size"),
    );
}

/// A queue capped at 100 jobs: a flood of bulk enqueues past it gets 429 and leaves nothing in
/// Redis; the jobs that fit go in, and room comes back as jobs end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_stores_nothing() {
    let mut api = Api::new().await;
    let hello = api.upload("hello").await;
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/queues/default/limits",
            Some(ADMIN),
            Body::from(r#"{"max_size": 100}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let bulk = |n: usize| json!({"jobs": vec![json!({"module": hello}); n]});
    let (s, b) = api.post_json("/v1/jobs", ENQUEUER, &bulk(100)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let before = api.redis().stored_bytes();
    for _ in 0..20 {
        let (s, b) = api.post_json("/v1/jobs", ENQUEUER, &bulk(1000)).await;
        assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "queue_full", None);
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("holds 100 jobs waiting or running and its limit is 100"),
            "{message}"
        );
    }
    let (s, b) = api
        .post_json(
            "/v1/batches",
            ENQUEUER,
            &json!({"jobs": [{"module": hello}], "callback": {"module": hello}}),
        )
        .await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, "queue_full", None);
    let grew = api.redis().stored_bytes().saturating_sub(before);
    assert!(
        grew < 1024,
        "20,000 refused jobs left {grew} bytes in Redis"
    );
    let (_, b) = api.get("/v1/queues").await;
    assert_eq!(b["queues"][0]["ready"], 100, "{b}");
    assert_eq!(b["queues"][0]["totals"]["enqueued"], 100, "{b}");
}

async fn a_batch_calls_back_over_http(mut api: Api) {
    let hello = api.upload("hello").await;
    let chaos = api.upload("chaos").await;
    let body = json!({
        "id": "nightly",
        "jobs": [
            {"module": hello, "id": "n1", "args": {"name": "one"}},
            {"module": chaos, "id": "n2", "args": {"mode": "fail", "message": "no"}},
        ],
        "callback": {"module": hello, "args": {"name": "batch"}},
    });
    let (s, b) = api.post_json("/v1/batches", ENQUEUER, &body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["callback"], "batch:nightly:callback");
    assert_eq!(b["jobs"], json!(["n1", "n2"]));
    let (_, b) = api.post_json("/v1/batches", ENQUEUER, &body).await;
    assert_eq!(b["created"], false, "idempotent on the batch id");
    let (_, b) = api.get("/v1/batches/nightly").await;
    assert_eq!(
        (b["total"].as_u64(), b["pending"].as_u64()),
        (Some(2), Some(2))
    );

    let (stop, running) = api.worker();
    // The callback exists once both jobs have ended.
    api.get("/v1/jobs/n1?wait=30s").await;
    api.get("/v1/jobs/n2?wait=30s").await;
    // The callback is enqueued by the step after the last job's end: the batch says when.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, b) = api.get("/v1/batches/nightly").await;
        if b["done_at_ms"].is_u64() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never called back: {b}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, cb) = api.get("/v1/jobs/batch:nightly:callback?wait=30s").await;
    let _ = stop.send(());
    running.await.unwrap();
    assert_eq!(cb["state"], "succeeded", "{cb}");
    assert_eq!(cb["report"]["result"], json!({"message": "Hello, batch!"}));
    // Each job's state, with its result or its last error.
    let jobs = &cb["invocation"]["args"]["jobs"];
    assert_eq!(
        jobs[0],
        json!({"id": "n1", "state": "succeeded", "result": {"message": "Hello, one!"}})
    );
    assert_eq!(
        (&jobs[1]["id"], &jobs[1]["state"]),
        (&json!("n2"), &json!("dead"))
    );
    assert_eq!(
        (&jobs[1]["error"]["kind"], &jobs[1]["error"]["message"]),
        (&json!("fail"), &json!("job failed: no"))
    );
    let (_, b) = api.get("/v1/batches/nightly").await;
    assert_eq!(b["pending"], 0);
    assert!(b["done_at_ms"].as_u64().is_some());

    let never = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            json!({"jobs": [], "callback": {"module": hello}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("jobs"),
        ),
        (
            json!({"jobs": [{"module": hello, "queue": "mail"}], "callback": {"module": hello}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("jobs"),
        ),
        (
            json!({"jobs": [{"module": never}], "callback": {"module": hello}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_module",
            Some("jobs[0].module"),
        ),
        (
            json!({"jobs": [{"module": hello, "fuel": 0}], "callback": {"module": hello}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("jobs[0].fuel"),
        ),
        (
            json!({"jobs": [{"module": hello}], "callback": {"module": hello, "id": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_invocation",
            Some("callback.id"),
        ),
        (
            json!({"jobs": [{"module": hello, "id": "n1"}], "callback": {"module": hello}}),
            StatusCode::CONFLICT,
            "invalid_invocation",
            Some("jobs"),
        ),
        (
            json!({"callback": {"module": hello}}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, b) = api.post_json("/v1/batches", ENQUEUER, &body).await;
        assert_error(s, &b, status, code, field);
    }
    let (s, b) = api.get("/v1/batches/nope").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);
}

async fn grants_are_given_listed_and_revoked_by_an_admin_only(api: Api) {
    let fetch = api.upload("fetch").await;
    let path = format!("/v1/modules/{fetch}/grant");
    let body = json!({"http": ["https://api.partner.example", "http://127.0.0.1:8080"], "secrets": ["SINK_TOKEN"]});

    // An enqueuer may not grant, nor read grants.
    let (s, b) = api.post_json(&path, ENQUEUER, &body).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, b) = api
        .call(Method::GET, "/v1/grants", Some(ENQUEUER), Body::empty())
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);

    let (s, b) = api.post_json(&path, ADMIN, &body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let whole = json!({
        "module": fetch,
        "http": ["http://127.0.0.1:8080", "https://api.partner.example"],
        "secrets": ["SINK_TOKEN"],
    });
    assert_eq!(b, whole);
    let (s, b) = api
        .call(Method::GET, &path, Some(ADMIN), Body::empty())
        .await;
    assert_eq!((s, &b), (StatusCode::OK, &whole));
    let (s, b) = api
        .call(Method::GET, "/v1/grants", Some(ADMIN), Body::empty())
        .await;
    assert_eq!((s, &b), (StatusCode::OK, &json!({"grants": [whole]})));

    // Bad grants name the field; a module never uploaded is not found.
    let (s, b) = api
        .post_json(
            &path,
            ADMIN,
            &json!({"http": ["https://ok.example", "ftp://x"]}),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_grant",
        Some("http[1]"),
    );
    let (s, b) = api.post_json(&path, ADMIN, &json!({"env": ["X"]})).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_grant",
        Some("env"),
    );
    let (s, b) = api.post_json(&path, ADMIN, &json!({})).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_grant",
        None,
    );
    let many: Vec<String> = (0..65).map(|i| format!("https://h{i}.example")).collect();
    let (s, b) = api.post_json(&path, ADMIN, &json!({"http": many})).await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_grant",
        None,
    );
    let unknown = format!("/v1/modules/sha256:{}/grant", "0".repeat(64));
    let (s, b) = api.post_json(&unknown, ADMIN, &body).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    // Revoking part, then all.
    let (s, b) = api
        .post_json(
            &format!("{path}/revoke"),
            ADMIN,
            &json!({"secrets": ["SINK_TOKEN"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["secrets"], json!([]));
    assert_eq!(b["http"].as_array().unwrap().len(), 2);
    let (s, b) = api
        .call(
            Method::POST,
            &format!("{path}/revoke"),
            Some(ADMIN),
            Body::empty(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"module": fetch, "http": [], "secrets": []}));
    let (_, b) = api
        .call(Method::GET, "/v1/grants", Some(ADMIN), Body::empty())
        .await;
    assert_eq!(b, json!({"grants": []}));
}

async fn egress_limits_are_set_by_an_admin_and_listed(api: Api) {
    let limit = json!({"concurrency": 5, "rate": [20, 1000]});
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/egress/API.Partner.Example",
            Some(ENQUEUER),
            Body::from(limit.to_string()),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, "forbidden", None);
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/egress/API.Partner.Example",
            Some(ADMIN),
            Body::from(limit.to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"host": "api.partner.example", "limit": limit}));
    let (_, b) = api.get("/v1/egress").await;
    assert_eq!(
        b,
        json!({"egress": [{"host": "api.partner.example", "limit": limit}]})
    );

    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/egress/api.partner.example",
            Some(ADMIN),
            Body::from(r#"{"concurrency": 0}"#),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_limits",
        None,
    );
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/egress/api.partner.example",
            Some(ADMIN),
            Body::from(r#"{"burst": 3}"#),
        )
        .await;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_limits",
        None,
    );
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/egress/not%20a%20host",
            Some(ADMIN),
            Body::from("{}"),
        )
        .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("host"));

    let (s, _) = api
        .call(
            Method::PUT,
            "/v1/egress/api.partner.example",
            Some(ADMIN),
            Body::from("{}"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = api.get("/v1/egress").await;
    assert_eq!(b, json!({"egress": []}));
}

/// The routes that reach the broker, run on a single Redis and on a Redis Cluster.
macro_rules! on_single_redis_and_cluster {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Api::new().await).await
                }
            )*
        }
        mod on_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Api::on_cluster().await).await
                }
            )*
        }
    };
}

on_single_redis_and_cluster!(
    tokens_and_scopes,
    jobs_run_and_are_waited_on_cancelled_and_retried,
    jobs_are_listed_run_now_and_dead_sets_emptied,
    cron_entries_over_http,
    queues_pause_and_resume,
    queue_limits_over_http,
    a_batch_calls_back_over_http,
    grants_are_given_listed_and_revoked_by_an_admin_only,
    egress_limits_are_set_by_an_admin_and_listed,
);
