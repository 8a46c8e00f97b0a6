//! `/v1/cron`: recurring jobs — list, add (or replace), remove.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{Body, QueueParam, parse_query, queue_or_default};
use super::{ApiError, ApiState, BodySize, Route, Scope};
use crate::invocation::Invocation;

/// The cron routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/cron", Scope::Read, list_cron),
        Route::new(Method::POST, "/v1/cron", Scope::Admin, add_cron).body(BodySize::Request),
        Route::new(Method::DELETE, "/v1/cron/{name}", Scope::Admin, remove_cron),
    ]
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
    let entry = crate::scheduler::add_cron(
        &state.intake(),
        state.broker.as_ref(),
        &new.name,
        &new.schedule,
        invocation,
    )
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
