//! `/v1/batches`: a group of jobs with a callback enqueued once when all have ended, and its
//! progress.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{Body, queue_or_default};
use super::{ApiError, ApiState, BodySize, Route, Scope};
use crate::broker::{BrokerError, Enqueued};
use crate::intake::IntakeError;
use crate::invocation::NewJob;

/// The batch routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/batches", Scope::Enqueue, enqueue_batch)
            .body(BodySize::Request),
        Route::new(Method::GET, "/v1/batches/{id}", Scope::Read, get_batch),
    ]
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
    let intake = state.intake();
    let batch = intake
        .batch(body.id, body.jobs, body.callback)
        .map_err(|r| ApiError::refused(&r, true))?;
    let created = intake
        .enqueue_batch(state.broker.as_ref(), &batch)
        .await
        .map_err(|e| match e {
            IntakeError::Refused(r) => ApiError::refused(&r, true),
            // The broker refuses a batch whose job ids are already taken by other jobs.
            IntakeError::Broker(BrokerError::Invocation(inv)) => ApiError {
                status: StatusCode::CONFLICT,
                ..ApiError::invocation(&inv, None)
            },
            IntakeError::Broker(other) => other.into(),
        })?;
    let id = batch.id.clone();
    let body = json!({
        "batch": id,
        "queue": batch.callback.queue(),
        "jobs": batch.jobs.iter().map(NewJob::id).collect::<Vec<_>>(),
        "callback": batch.callback.id(),
        "created": created == Enqueued::Created,
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
