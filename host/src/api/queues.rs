//! `/v1/queues`: every queue's counts, totals and limits; pausing and resuming a queue; setting
//! the limits all workers obey together.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::request::Body;
use super::{ApiError, ApiState, Route, Scope};

/// The queue routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/queues", Scope::Read, queues),
        Route::new(
            Method::POST,
            "/v1/queues/{queue}/pause",
            Scope::Admin,
            |s: State<ApiState>, q: Path<String>| pause(s, q, true),
        ),
        Route::new(
            Method::POST,
            "/v1/queues/{queue}/resume",
            Scope::Admin,
            |s: State<ApiState>, q: Path<String>| pause(s, q, false),
        ),
        Route::new(
            Method::PUT,
            "/v1/queues/{queue}/limits",
            Scope::Admin,
            set_limits,
        ),
    ]
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
            format!(
                "the body must be {{\"concurrency\": n, \"rate\": [n, per_ms], \"max_size\": n}}: {e}"
            ),
        )
    })?;
    let zero = if limits.concurrency == Some(0) {
        Some("concurrency")
    } else if limits.rate.is_some_and(|(n, per)| n == 0 || per == 0) {
        Some("rate")
    } else if limits.max_size == Some(0) {
        Some("max_size")
    } else {
        None
    };
    if let Some(field) = zero {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            field: Some(field.into()),
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
