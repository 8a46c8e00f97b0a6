//! Running the service: `/healthz`, `/metrics` (Prometheus), `/openapi.json`, the workers that
//! report themselves and the throughput history behind the dashboard's chart.

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiState, Route, Scope};
use super::{OPENAPI, metrics, throughput};

/// The operations routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/workers", Scope::Read, workers),
        Route::new(Method::GET, "/v1/throughput", Scope::Read, throughput),
        Route::public(Method::GET, "/healthz", health),
        Route::new(Method::GET, "/metrics", Scope::Read, metrics),
        Route::public(Method::GET, "/openapi.json", openapi),
    ]
}

async fn workers(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "workers": state.broker.workers().await? })))
}

async fn throughput(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({
        "interval_ms": throughput::INTERVAL.as_millis() as u64,
        "rates": state.throughput.rates(),
    }))
}

async fn health(State(state): State<ApiState>) -> Response {
    match state.broker.ping().await {
        Ok(()) => Json(json!({
            "status": "ok",
            "durability": state.broker.durability().await,
        }))
        .into_response(),
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
