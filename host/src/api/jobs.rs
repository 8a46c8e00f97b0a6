//! `/v1/jobs`: enqueue one job or many (all or nothing), look a job up (optionally waiting for it to
//! end), list a queue's jobs by state, run a scheduled job now, cancel a job.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use std::time::Duration;

use super::request::{Body, QueueParam, parse_query, queue_or_default};
use super::{ApiError, ApiState, BodySize, Route, Scope};

use crate::broker::CancelOutcome;
use crate::intake::{IntakeError, Refusal};
use crate::invocation::{DEFAULT_QUEUE, Invocation, NewJob};
use crate::job::JobState;

/// The job routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/jobs", Scope::Enqueue, enqueue).body(BodySize::Request),
        Route::new(Method::GET, "/v1/jobs", Scope::Read, list_jobs),
        Route::new(Method::GET, "/v1/jobs/{id}", Scope::Read, get_job),
        Route::new(Method::POST, "/v1/jobs/{id}/run", Scope::Admin, run_job),
        Route::new(Method::DELETE, "/v1/jobs/{id}", Scope::Enqueue, cancel_job),
    ]
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
    let intake = state.intake();
    let refused = |r: Refusal| ApiError::refused(&r, bulk);
    // All or nothing: every invocation and every module is checked before any job is enqueued.
    let items: Vec<Value> = if bulk {
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
        items.clone()
    } else {
        vec![value]
    };
    let jobs: Vec<NewJob> = intake
        .jobs(items.into_iter().map(Invocation::from_value))
        .map_err(refused)?;
    let outcomes = intake
        .enqueue(state.broker.as_ref(), &jobs)
        .await
        .map_err(|e| match e {
            IntakeError::Refused(r) => refused(r),
            IntakeError::Broker(b) => b.into(),
        })?;
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
            crate::time::parse_duration(w).map_err(|e| ApiError {
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
    let children = child_states(state.broker.as_ref(), &record.children).await?;
    let mut body = json!(record);
    if !children.is_empty() {
        body["children"] = Value::Array(children);
    }
    Ok(Json(body))
}

/// Each child's `queue`, `id` and current `state` (`missing` once its record is gone), in order.
async fn child_states(
    broker: &dyn crate::broker::ApiBroker,
    children: &[crate::broker::JobRef],
) -> Result<Vec<Value>, ApiError> {
    let records = broker.records_of(children).await?;
    Ok(children
        .iter()
        .zip(records)
        .map(|(c, r)| {
            json!({
                "queue": c.queue,
                "id": c.id,
                "state": r.map_or("missing", |r| r.state.as_str()),
            })
        })
        .collect())
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
    match crate::broker::cancel_job(state.broker.as_ref(), &record.queue, &id).await? {
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
