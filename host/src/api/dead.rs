//! `/v1/dead`: the dead set — list it, retry or delete one job or all of them.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{parse_query, queue_or_default};
use super::{ApiError, ApiState, Route, Scope};
use crate::invocation::DEFAULT_QUEUE;

/// The dead-set routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/dead", Scope::Read, list_dead),
        Route::new(
            Method::POST,
            "/v1/dead/{id}/retry",
            Scope::Admin,
            retry_dead,
        ),
        Route::new(Method::DELETE, "/v1/dead/{id}", Scope::Admin, delete_dead),
        Route::new(Method::POST, "/v1/dead/retry", Scope::Admin, retry_all_dead),
        Route::new(Method::DELETE, "/v1/dead", Scope::Admin, delete_all_dead),
    ]
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
