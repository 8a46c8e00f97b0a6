//! The HTTP API (`wasmq serve`): modules, jobs, queues and the dead set as JSON, `/healthz`,
//! `/metrics`, and the OpenAPI document it is described by (`docs/openapi.json`).
//!
//! Every route is one [`Endpoint`]: its method, path and the scope a token needs. The API's routes
//! are built from [`Endpoint::ALL`] and nothing else, and a test checks that list against the
//! OpenAPI document both ways, so the spec cannot drift from what is served. The dashboard
//! (`dashboard.rs`) adds its page and static files, which hold no data: everything it shows comes
//! through these routes with the token entered in the page. Errors all have one shape
//! ([`ApiError`]); bad input is a 4xx that says what was wrong, never a 500.
//!
//! What it must not do: run jobs or talk to Redis directly — it calls the [`Broker`]; the
//! optional in-process worker is an ordinary [`crate::worker::Worker`].

mod auth;
mod dashboard;
mod error;
mod metrics;
pub mod throughput;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, on};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use auth::{Scope, Tokens};
pub use error::ApiError;

use crate::broker::{Broker, CancelOutcome, JobState, ModuleDeletion, enqueue_checked};
use crate::invocation::{DEFAULT_QUEUE, Invocation, NewJob};
use crate::modules::ModuleHash;
use crate::sandbox::{Limits, Sandbox};
use crate::worker::Counters;

/// The OpenAPI 3 document describing every route.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Size limits of request bodies.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest module upload. 64 MiB: a Python or JavaScript component is 12–18 MB.
    pub module_bytes: usize,
    /// Largest other request (a bulk enqueue). 16 MiB.
    pub request_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            module_bytes: 64 << 20,
            request_bytes: 16 << 20,
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Where jobs and modules live.
    pub broker: Arc<dyn Broker>,
    /// Validates uploads (compiles them against the `job` world).
    pub sandbox: Sandbox,
    /// Who may do what.
    pub tokens: Arc<Tokens>,
    /// Request size limits.
    pub limits: BodyLimits,
    /// The operator's ceilings for invocations.
    pub ceilings: Limits,
    /// The in-process worker's counters, when `serve` runs one.
    pub worker: Option<Arc<Counters>>,
    /// Throughput history, sampled while [`serve`] runs.
    pub throughput: Arc<throughput::Throughput>,
}

/// One route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/modules`
    UploadModule,
    /// `GET /v1/modules`
    ListModules,
    /// `GET /v1/modules/{hash}`
    GetModule,
    /// `DELETE /v1/modules/{hash}`
    DeleteModule,
    /// `POST /v1/jobs`
    Enqueue,
    /// `POST /v1/batches`
    EnqueueBatch,
    /// `GET /v1/batches/{id}`
    GetBatch,
    /// `GET /v1/jobs`
    ListJobs,
    /// `GET /v1/jobs/{id}`
    GetJob,
    /// `POST /v1/jobs/{id}/run`
    RunJob,
    /// `DELETE /v1/jobs/{id}`
    CancelJob,
    /// `GET /v1/queues`
    Queues,
    /// `POST /v1/queues/{queue}/pause`
    PauseQueue,
    /// `POST /v1/queues/{queue}/resume`
    ResumeQueue,
    /// `PUT /v1/queues/{queue}/limits`
    SetLimits,
    /// `GET /v1/workers`
    Workers,
    /// `GET /v1/dead`
    ListDead,
    /// `POST /v1/dead/{id}/retry`
    RetryDead,
    /// `DELETE /v1/dead/{id}`
    DeleteDead,
    /// `POST /v1/dead/retry`
    RetryAllDead,
    /// `DELETE /v1/dead`
    DeleteAllDead,
    /// `GET /v1/throughput`
    Throughput,
    /// `GET /v1/cron`
    ListCron,
    /// `POST /v1/cron`
    AddCron,
    /// `DELETE /v1/cron/{name}`
    RemoveCron,
    /// `GET /healthz`
    Health,
    /// `GET /metrics`
    Metrics,
    /// `GET /openapi.json`
    OpenApi,
}

impl Endpoint {
    /// Every route the server has.
    pub const ALL: [Endpoint; 28] = [
        Endpoint::UploadModule,
        Endpoint::ListModules,
        Endpoint::GetModule,
        Endpoint::DeleteModule,
        Endpoint::Enqueue,
        Endpoint::EnqueueBatch,
        Endpoint::GetBatch,
        Endpoint::ListJobs,
        Endpoint::GetJob,
        Endpoint::RunJob,
        Endpoint::CancelJob,
        Endpoint::Queues,
        Endpoint::PauseQueue,
        Endpoint::ResumeQueue,
        Endpoint::SetLimits,
        Endpoint::Workers,
        Endpoint::ListDead,
        Endpoint::RetryDead,
        Endpoint::DeleteDead,
        Endpoint::RetryAllDead,
        Endpoint::DeleteAllDead,
        Endpoint::Throughput,
        Endpoint::ListCron,
        Endpoint::AddCron,
        Endpoint::RemoveCron,
        Endpoint::Health,
        Endpoint::Metrics,
        Endpoint::OpenApi,
    ];

    /// Method and path (OpenAPI's `{param}` syntax, which axum shares).
    pub fn route(self) -> (Method, &'static str) {
        use Endpoint::*;
        match self {
            UploadModule => (Method::POST, "/v1/modules"),
            ListModules => (Method::GET, "/v1/modules"),
            GetModule => (Method::GET, "/v1/modules/{hash}"),
            DeleteModule => (Method::DELETE, "/v1/modules/{hash}"),
            Enqueue => (Method::POST, "/v1/jobs"),
            EnqueueBatch => (Method::POST, "/v1/batches"),
            GetBatch => (Method::GET, "/v1/batches/{id}"),
            ListJobs => (Method::GET, "/v1/jobs"),
            GetJob => (Method::GET, "/v1/jobs/{id}"),
            RunJob => (Method::POST, "/v1/jobs/{id}/run"),
            CancelJob => (Method::DELETE, "/v1/jobs/{id}"),
            Queues => (Method::GET, "/v1/queues"),
            PauseQueue => (Method::POST, "/v1/queues/{queue}/pause"),
            ResumeQueue => (Method::POST, "/v1/queues/{queue}/resume"),
            SetLimits => (Method::PUT, "/v1/queues/{queue}/limits"),
            Workers => (Method::GET, "/v1/workers"),
            ListDead => (Method::GET, "/v1/dead"),
            RetryDead => (Method::POST, "/v1/dead/{id}/retry"),
            DeleteDead => (Method::DELETE, "/v1/dead/{id}"),
            RetryAllDead => (Method::POST, "/v1/dead/retry"),
            DeleteAllDead => (Method::DELETE, "/v1/dead"),
            Throughput => (Method::GET, "/v1/throughput"),
            ListCron => (Method::GET, "/v1/cron"),
            AddCron => (Method::POST, "/v1/cron"),
            RemoveCron => (Method::DELETE, "/v1/cron/{name}"),
            Health => (Method::GET, "/healthz"),
            Metrics => (Method::GET, "/metrics"),
            OpenApi => (Method::GET, "/openapi.json"),
        }
    }

    /// The scope a token needs; `None` for the public routes.
    pub fn scope(self) -> Option<Scope> {
        use Endpoint::*;
        match self {
            Health | OpenApi => None,
            UploadModule => Some(Scope::Upload),
            Enqueue | EnqueueBatch | CancelJob => Some(Scope::Enqueue),
            DeleteModule | RetryDead | DeleteDead | RetryAllDead | DeleteAllDead | RunJob
            | AddCron | RemoveCron | PauseQueue | ResumeQueue | SetLimits => Some(Scope::Admin),
            ListModules | GetModule | ListJobs | GetJob | GetBatch | Queues | Workers
            | ListDead | Throughput | ListCron | Metrics => Some(Scope::Read),
        }
    }

    fn handler(self, state: &ApiState) -> MethodRouter<ApiState> {
        use Endpoint::*;
        let (method, _) = self.route();
        let filter = axum::routing::MethodFilter::try_from(method).expect("a standard method");
        let router = match self {
            UploadModule => {
                on(filter, upload_module).layer(DefaultBodyLimit::max(state.limits.module_bytes))
            }
            ListModules => on(filter, list_modules),
            GetModule => on(filter, get_module),
            DeleteModule => on(filter, delete_module),
            Enqueue => on(filter, enqueue).layer(DefaultBodyLimit::max(state.limits.request_bytes)),
            EnqueueBatch => {
                on(filter, enqueue_batch).layer(DefaultBodyLimit::max(state.limits.request_bytes))
            }
            GetBatch => on(filter, get_batch),
            ListJobs => on(filter, list_jobs),
            GetJob => on(filter, get_job),
            RunJob => on(filter, run_job),
            CancelJob => on(filter, cancel_job),
            Queues => on(filter, queues),
            Workers => on(filter, workers),
            SetLimits => on(filter, set_limits),
            PauseQueue => on(filter, |s: State<ApiState>, q: Path<String>| {
                pause(s, q, true)
            }),
            ResumeQueue => on(filter, |s: State<ApiState>, q: Path<String>| {
                pause(s, q, false)
            }),
            ListDead => on(filter, list_dead),
            RetryDead => on(filter, retry_dead),
            DeleteDead => on(filter, delete_dead),
            RetryAllDead => on(filter, retry_all_dead),
            DeleteAllDead => on(filter, delete_all_dead),
            Throughput => on(filter, throughput),
            ListCron => on(filter, list_cron),
            AddCron => {
                on(filter, add_cron).layer(DefaultBodyLimit::max(state.limits.request_bytes))
            }
            RemoveCron => on(filter, remove_cron),
            Health => on(filter, health),
            Metrics => on(filter, metrics),
            OpenApi => on(filter, openapi),
        };
        match self.scope() {
            None => router,
            Some(scope) => {
                let tokens = state.tokens.clone();
                router.layer(axum::middleware::from_fn(move |req: Request, next| {
                    auth::require(tokens.clone(), scope, req, next)
                }))
            }
        }
    }
}

/// The API's router, built from [`Endpoint::ALL`], plus the dashboard's pages.
pub fn router(state: ApiState) -> Router {
    let mut router = dashboard::routes();
    for endpoint in Endpoint::ALL {
        let (_, path) = endpoint.route();
        router = router.route(path, endpoint.handler(&state));
    }
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = tokio::spawn(state.throughput.clone().sample(state.broker.clone()));
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    served
}

/// A request body, with size and read failures in the API's error shape.
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|r| {
                let status = r.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        "payload_too_large",
                        "the request body is over the size limit",
                    )
                } else {
                    ApiError::new(status, "bad_request", r.body_text())
                }
            })
    }
}

/// Query parameters naming a queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueParam {
    queue: Option<String>,
}

/// The `?queue=` parameter, `default` when absent.
fn queue_or_default(req: &Request) -> Result<String, ApiError> {
    let QueueParam { queue } = parse_query(req.uri().query())?;
    Ok(queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned()))
}

/// Parses a query string, refusing unknown parameters, in the API's error shape.
fn parse_query<T: serde::de::DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    let uri: axum::http::Uri = format!("/?{}", query.unwrap_or(""))
        .parse()
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

async fn upload_module(
    State(state): State<ApiState>,
    Body(bytes): Body,
) -> Result<Response, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the body must be the component's bytes",
        ));
    }
    let module = state
        .sandbox
        .load_async(bytes.to_vec())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_module",
                e.to_string(),
            )
        })?;
    let info = state.broker.put_module(module.hash(), &bytes).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "module": info.hash, "size": info.size, "uploaded_at_ms": info.uploaded_at_ms })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModulesParams {
    #[serde(default)]
    usage: bool,
}

async fn list_modules(
    State(state): State<ApiState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let ModulesParams { usage } = parse_query(req.uri().query())?;
    let modules = state.broker.modules().await?;
    if !usage {
        return Ok(Json(json!({ "modules": modules })));
    }
    let counts = state.broker.module_usage().await?;
    let modules: Vec<Value> = modules
        .into_iter()
        .map(|m| {
            let jobs = counts.get(&m.hash).copied().unwrap_or(0);
            let mut v = json!(m);
            v["jobs"] = jobs.into();
            v
        })
        .collect();
    Ok(Json(json!({ "modules": modules })))
}

fn hash_param(hash: &str) -> Result<ModuleHash, ApiError> {
    hash.parse()
        .map_err(|e: crate::modules::HashParseError| ApiError {
            field: Some("hash".into()),
            ..ApiError::bad_request(e.to_string())
        })
}

async fn get_module(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hash = hash_param(&hash)?;
    let info = state
        .broker
        .modules()
        .await?
        .into_iter()
        .find(|m| m.hash == hash)
        .ok_or_else(|| ApiError::not_found(format!("module `{hash}` was never uploaded")))?;
    Ok(Json(json!(info)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceParam {
    #[serde(default)]
    force: bool,
}

async fn delete_module(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let hash = hash_param(&hash)?;
    let ForceParam { force } = parse_query(req.uri().query())?;
    match state.broker.delete_module(hash, force).await? {
        ModuleDeletion::Deleted => Ok(StatusCode::NO_CONTENT),
        ModuleDeletion::NotFound => Err(ApiError::not_found(format!(
            "module `{hash}` was never uploaded"
        ))),
        ModuleDeletion::InUse(n) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "module_in_use",
            format!(
                "{n} job(s) that have not succeeded use module `{hash}`; add `?force=true` to delete it anyway"
            ),
        )),
    }
}

async fn enqueue(State(state): State<ApiState>, Body(bytes): Body) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let bulk = value
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("jobs"));
    let jobs: Vec<NewJob> = if bulk {
        let Some(Value::Array(items)) = value.get("jobs") else {
            return Err(ApiError {
                field: Some("jobs".into()),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_invocation",
                    "`jobs` must be an array of invocations",
                )
            });
        };
        // All or nothing: every invocation is checked before any is enqueued.
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Invocation::from_value(item.clone())
                    .and_then(|inv| inv.prepare(&state.ceilings))
                    .map_err(|e| ApiError::invocation(&e, Some(&format!("jobs[{i}]"))))
            })
            .collect::<Result<_, _>>()?
    } else {
        let job = Invocation::from_value(value)
            .and_then(|inv| inv.prepare(&state.ceilings))
            .map_err(|e| ApiError::invocation(&e, None))?;
        vec![job]
    };
    let outcomes = match enqueue_checked(state.broker.as_ref(), &jobs).await {
        Err(crate::broker::BrokerError::Invocation(e)) if bulk => {
            // Name the first job that uses the unknown module.
            let at = match &e {
                crate::invocation::InvocationError::UnknownModule(h) => jobs
                    .iter()
                    .position(|j| j.invocation.module == *h)
                    .unwrap_or(0),
                _ => 0,
            };
            return Err(ApiError::invocation(&e, Some(&format!("jobs[{at}]"))));
        }
        other => other?,
    };
    let rows: Vec<Value> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(j, o)| json!({ "id": j.id(), "queue": j.queue(), "created": *o == crate::broker::Enqueued::Created }))
        .collect();
    let body = if bulk {
        json!({ "jobs": rows })
    } else {
        rows.into_iter().next().expect("one job")
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /v1/batches`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    id: Option<String>,
    jobs: Vec<Value>,
    callback: Value,
}

async fn enqueue_batch(
    State(state): State<ApiState>,
    Body(bytes): Body,
) -> Result<Response, ApiError> {
    let body: BatchBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be {{\"jobs\": [...], \"callback\": {{...}}, \"id\"?}}: {e}"),
        )
    })?;
    let id = body.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut callback = Invocation::from_value(body.callback)
        .map_err(|e| ApiError::invocation(&e, Some("callback")))?;
    if callback.id.is_some() {
        return Err(ApiError {
            field: Some("callback.id".into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_invocation",
                "the callback's id is `batch:<id>:callback`; leave it out",
            )
        });
    }
    callback.id = Some(format!("batch:{id}:callback"));
    let callback = callback
        .prepare(&state.ceilings)
        .map_err(|e| ApiError::invocation(&e, Some("callback")))?;
    let jobs = body
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            Invocation::from_value(item)
                .and_then(|inv| inv.prepare(&state.ceilings))
                .map_err(|e| ApiError::invocation(&e, Some(&format!("jobs[{i}]"))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batch = crate::broker::NewBatch {
        id: id.clone(),
        jobs,
        callback,
    };
    batch.check().map_err(|e| ApiError::invocation(&e, None))?;
    let mut all = batch.jobs.clone();
    all.push(batch.callback.clone());
    crate::broker::check_modules(state.broker.as_ref(), &all).await?;
    let created = state
        .broker
        .enqueue_batch(&batch)
        .await
        .map_err(|e| match e {
            crate::broker::BrokerError::Invocation(inv) => ApiError {
                status: StatusCode::CONFLICT,
                ..ApiError::invocation(&inv, None)
            },
            other => other.into(),
        })?;
    let body = json!({
        "batch": id,
        "queue": batch.callback.queue(),
        "jobs": batch.jobs.iter().map(NewJob::id).collect::<Vec<_>>(),
        "callback": batch.callback.id(),
        "created": created == crate::broker::Enqueued::Created,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn get_batch(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let queue = queue_or_default(&req)?;
    let info = state
        .broker
        .batch(&queue, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no batch `{id}` on queue `{queue}`")))?;
    Ok(Json(json!(info)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetJobParams {
    queue: Option<String>,
    wait: Option<String>,
}

/// The longest `?wait=`: a long poll, not a subscription.
const MAX_WAIT: Duration = Duration::from_secs(300);

async fn get_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let params: GetJobParams = parse_query(req.uri().query())?;
    let wait = params
        .wait
        .as_deref()
        .map(|w| {
            crate::cli::parse_duration(w).map_err(|e| ApiError {
                field: Some("wait".into()),
                ..ApiError::bad_request(e)
            })
        })
        .transpose()?;
    let mut record = state.broker.job(params.queue.as_deref(), &id).await?;
    if let (Some(wait), Some(r)) = (wait, &record)
        && !r.state.is_final()
    {
        record = state
            .broker
            .wait_job(&r.queue.clone(), &id, wait.min(MAX_WAIT))
            .await?;
    }
    let record = record.ok_or_else(|| {
        ApiError::not_found(format!(
            "job `{id}` not found (never enqueued, or its result expired)"
        ))
    })?;
    Ok(Json(json!(record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJobsParams {
    queue: Option<String>,
    state: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

async fn list_jobs(State(state): State<ApiState>, req: Request) -> Result<Json<Value>, ApiError> {
    let params: ListJobsParams = parse_query(req.uri().query())?;
    let queue = params.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
    let wanted = params.state.as_deref().unwrap_or("ready");
    let job_state = JobState::parse(wanted).ok_or_else(|| ApiError {
        field: Some("state".into()),
        ..ApiError::bad_request(format!(
            "unknown state `{wanted}`: one of ready, scheduled, leased, succeeded, dead, cancelled"
        ))
    })?;
    let offset = params.offset.unwrap_or(0);
    let limit = params.limit.unwrap_or(50).min(1000);
    let page = state.broker.jobs(&queue, job_state, offset, limit).await?;
    Ok(Json(json!({
        "queue": queue,
        "state": job_state,
        "offset": offset,
        "total": page.total,
        "jobs": page.jobs,
    })))
}

async fn run_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let queue = queue_or_default(&req)?;
    if state.broker.run_now(&queue, &id).await? {
        return Ok(Json(json!({ "id": id, "queue": queue, "state": "ready" })));
    }
    match state.broker.job(Some(&queue), &id).await? {
        None => Err(ApiError::not_found(format!(
            "job `{id}` not found on queue `{queue}`"
        ))),
        Some(r) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_scheduled",
            format!("job `{id}` is {}, not scheduled", r.state.as_str()),
        )),
    }
}

async fn cancel_job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let QueueParam { queue } = parse_query(req.uri().query())?;
    let record = state
        .broker
        .job(queue.as_deref(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job `{id}` not found")))?;
    match state.broker.cancel(&record.queue, &id).await? {
        CancelOutcome::NotFound => Err(ApiError::not_found(format!("job `{id}` not found"))),
        CancelOutcome::AlreadyFinal(s) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_final",
            format!("job `{id}` already ended: {}", s.as_str()),
        )),
        outcome => Ok(Json(
            json!({ "id": id, "queue": record.queue, "outcome": outcome }),
        )),
    }
}

async fn queues(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "queues": state.broker.queues().await? })))
}

async fn set_limits(
    State(state): State<ApiState>,
    Path(queue): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Value>, ApiError> {
    crate::invocation::check_queue_name(&queue).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        ..ApiError::invocation(&e, None)
    })?;
    let limits: crate::broker::QueueLimits = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be {{\"concurrency\": n, \"rate\": [n, per_ms]}}: {e}"),
        )
    })?;
    if limits.concurrency == Some(0) || limits.rate.is_some_and(|(n, per)| n == 0 || per == 0) {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: Some(
                if limits.concurrency == Some(0) {
                    "concurrency"
                } else {
                    "rate"
                }
                .into(),
            ),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_limits",
                "limits must be at least 1; leave a limit out to remove it",
            )
        });
    }
    state.broker.set_limits(&queue, &limits).await?;
    Ok(Json(json!({ "queue": queue, "limits": limits })))
}

async fn workers(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "workers": state.broker.workers().await? })))
}

async fn pause(
    State(state): State<ApiState>,
    Path(queue): Path<String>,
    paused: bool,
) -> Result<Json<Value>, ApiError> {
    crate::invocation::check_queue_name(&queue).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        ..ApiError::invocation(&e, None)
    })?;
    state.broker.set_paused(&queue, paused).await?;
    Ok(Json(json!({ "queue": queue, "paused": paused })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadParams {
    queue: Option<String>,
    limit: Option<usize>,
}

async fn list_dead(State(state): State<ApiState>, req: Request) -> Result<Json<Value>, ApiError> {
    let params: DeadParams = parse_query(req.uri().query())?;
    let queue = params.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
    let limit = params.limit.unwrap_or(50).min(1000);
    Ok(Json(
        json!({ "queue": queue, "jobs": state.broker.dead(&queue, limit).await? }),
    ))
}

async fn retry_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let queue = queue_or_default(&req)?;
    if !state.broker.retry_dead(&queue, &id).await? {
        return Err(ApiError::not_found(format!(
            "job `{id}` is not in the dead set of queue `{queue}`"
        )));
    }
    Ok(Json(json!({ "id": id, "queue": queue, "state": "ready" })))
}

async fn delete_dead(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let queue = queue_or_default(&req)?;
    if !state.broker.delete_dead(&queue, &id).await? {
        return Err(ApiError::not_found(format!(
            "job `{id}` is not in the dead set of queue `{queue}`"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn retry_all_dead(
    State(state): State<ApiState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let queue = queue_or_default(&req)?;
    let n = state.broker.retry_all_dead(&queue).await?;
    Ok(Json(json!({ "queue": queue, "retried": n })))
}

async fn delete_all_dead(
    State(state): State<ApiState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let queue = queue_or_default(&req)?;
    let n = state.broker.delete_all_dead(&queue).await?;
    Ok(Json(json!({ "queue": queue, "deleted": n })))
}

async fn throughput(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({
        "interval_ms": throughput::INTERVAL.as_millis() as u64,
        "rates": state.throughput.rates(),
    }))
}

async fn list_cron(State(state): State<ApiState>, req: Request) -> Result<Json<Value>, ApiError> {
    let QueueParam { queue } = parse_query(req.uri().query())?;
    Ok(Json(
        json!({ "cron": state.broker.crons(queue.as_deref()).await? }),
    ))
}

/// `POST /v1/cron`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCron {
    name: String,
    schedule: String,
    invocation: Value,
}

async fn add_cron(State(state): State<ApiState>, Body(bytes): Body) -> Result<Response, ApiError> {
    let new: NewCron = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be {{\"name\", \"schedule\", \"invocation\"}}: {e}"),
        )
    })?;
    let invocation = Invocation::from_value(new.invocation)
        .map_err(|e| ApiError::invocation(&e, Some("invocation")))?;
    let entry =
        crate::scheduler::add_cron(state.broker.as_ref(), &new.name, &new.schedule, invocation)
            .await
            .map_err(|e| match e {
                // The entry's own fields (`name`, `schedule`) are named as they are; the rest are
                // inside the invocation.
                crate::broker::BrokerError::Invocation(inv) => {
                    let own = matches!(&inv, crate::invocation::InvocationError::Field { field, .. }
                    if matches!(*field, "name" | "schedule" | "invocation"));
                    ApiError::invocation(&inv, (!own).then_some("invocation"))
                }
                other => other.into(),
            })?;
    Ok((StatusCode::CREATED, Json(json!(entry))).into_response())
}

async fn remove_cron(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let queue = queue_or_default(&req)?;
    if !state.broker.remove_cron(&queue, &name).await? {
        return Err(ApiError::not_found(format!(
            "no cron entry `{name}` on queue `{queue}`"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn health(State(state): State<ApiState>) -> Response {
    match state.broker.ping().await {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let queues = state.broker.queues().await?;
    let workers = state.broker.workers().await?.len();
    let text = metrics::render(&queues, workers, state.worker.as_deref());
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The router is built from `Endpoint::ALL` alone; the spec must list exactly those routes,
    /// and mark exactly the public ones as needing no token.
    #[test]
    fn the_openapi_document_lists_every_route_and_only_those() {
        let spec: Value = serde_json::from_str(OPENAPI).unwrap();
        let mut in_spec = BTreeSet::new();
        let mut public_in_spec = BTreeSet::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let key = (method.to_uppercase(), path.clone());
                if op.get("security") == Some(&json!([])) {
                    public_in_spec.insert(key.clone());
                }
                in_spec.insert(key);
            }
        }
        let served: BTreeSet<_> = Endpoint::ALL
            .iter()
            .map(|e| {
                let (m, p) = e.route();
                (m.to_string(), p.to_owned())
            })
            .collect();
        assert_eq!(served, in_spec);
        let public: BTreeSet<_> = Endpoint::ALL
            .iter()
            .filter(|e| e.scope().is_none())
            .map(|e| {
                let (m, p) = e.route();
                (m.to_string(), p.to_owned())
            })
            .collect();
        assert_eq!(public, public_in_spec);
    }
}
