//! `/v1/egress`: fleet-wide limits on HTTP destinations — how many calls to a host may be in
//! flight and how many may start per window, across every worker.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::request::Body;
use super::{ApiError, ApiState, BodySize, Route, Scope};
use crate::broker::EgressLimit;
use crate::grant::normalize_host;

/// The egress routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/egress", Scope::Read, list),
        Route::new(Method::PUT, "/v1/egress/{host}", Scope::Admin, set).body(BodySize::Request),
    ]
}

async fn list(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let limits: Vec<Value> = state
        .broker
        .egress_limits()
        .await?
        .iter()
        .map(|(h, l)| json!({ "host": h, "limit": l }))
        .collect();
    Ok(Json(json!({ "egress": limits })))
}

async fn set(
    State(state): State<ApiState>,
    Path(host): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Value>, ApiError> {
    let host = normalize_host(&host).map_err(|e| ApiError {
        field: Some("host".into()),
        ..ApiError::bad_request(e.to_string())
    })?;
    let limit: EgressLimit = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limits",
            format!("the body must be {{\"concurrency\": n, \"rate\": [n, per_ms]}}: {e}"),
        )
    })?;
    limit
        .check()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_limits", e))?;
    state.broker.set_egress_limit(&host, &limit).await?;
    Ok(Json(json!({ "host": host, "limit": limit })))
}
