//! `/v1/grants` and `/v1/modules/{hash}/grant`: what the operator lets each module reach — HTTP
//! destinations and secrets. Every route needs the `admin` scope: a grant is the operator's
//! decision, never a client's.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::request::Body;
use super::{ApiError, ApiState, BodySize, Route, Scope};
use crate::grant::Grant;
use crate::modules::ModuleHash;

/// The grant routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::GET, "/v1/grants", Scope::Admin, list_grants),
        Route::new(
            Method::GET,
            "/v1/modules/{hash}/grant",
            Scope::Admin,
            get_grant,
        ),
        Route::new(
            Method::POST,
            "/v1/modules/{hash}/grant",
            Scope::Admin,
            add_grant,
        )
        .body(BodySize::Request),
        Route::new(
            Method::POST,
            "/v1/modules/{hash}/grant/revoke",
            Scope::Admin,
            revoke_grant,
        )
        .body(BodySize::Request),
    ]
}

fn grant_json(module: ModuleHash, grant: &Grant) -> Value {
    json!({ "module": module, "http": grant.http, "secrets": grant.secrets })
}

async fn list_grants(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let grants: Vec<Value> = state
        .broker
        .grants()
        .await?
        .iter()
        .map(|(m, g)| grant_json(*m, g))
        .collect();
    Ok(Json(json!({ "grants": grants })))
}

async fn get_grant(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hash = super::modules::hash_param(&hash)?;
    let grant = state.broker.grant(hash).await?;
    Ok(Json(grant_json(hash, &grant)))
}

/// The body: `{"http": [...], "secrets": [...]}`, each rule checked, naming the bad field.
fn parse_grant(bytes: &[u8]) -> Result<Grant, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let grant: Grant = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError {
            field: (path != ".").then_some(path),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_grant",
                format!(
                    "the body must be {{\"http\": [\"https://api.example\", …], \"secrets\": [\"NAME\", …]}}: {}",
                    e.inner()
                ),
            )
        }
    })?;
    grant.check().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_grant",
            e.to_string(),
        )
    })?;
    Ok(grant)
}

async fn add_grant(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Value>, ApiError> {
    let hash = super::modules::hash_param(&hash)?;
    let grant = parse_grant(&bytes)?;
    let whole = state.broker.extend_grant(hash, &grant).await?;
    tracing::info!(module = %hash, grant = ?whole, "grant added");
    Ok(Json(grant_json(hash, &whole)))
}

async fn revoke_grant(
    State(state): State<ApiState>,
    Path(hash): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Value>, ApiError> {
    let hash = super::modules::hash_param(&hash)?;
    let grant = if bytes.iter().all(u8::is_ascii_whitespace) {
        Grant::default()
    } else {
        parse_grant(&bytes)?
    };
    let left = state.broker.remove_grant(hash, &grant).await?;
    tracing::info!(module = %hash, left = ?left, "grant revoked");
    Ok(Json(grant_json(hash, &left)))
}
