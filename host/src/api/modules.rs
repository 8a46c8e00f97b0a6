//! `/v1/modules`: upload a component (checked against the `job` world, stored under its
//! SHA-256), list, look up and delete modules.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::request::{Body, parse_query};
use super::{ApiError, ApiState, BodySize, Route, Scope};
use crate::broker::ModuleDeletion;
use crate::modules::ModuleHash;
use crate::sandbox::LoadError;

/// The module routes.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/v1/modules", Scope::Upload, upload_module)
            .body(BodySize::Module),
        Route::new(Method::GET, "/v1/modules", Scope::Read, list_modules),
        Route::new(Method::GET, "/v1/modules/{hash}", Scope::Read, get_module),
        Route::new(
            Method::DELETE,
            "/v1/modules/{hash}",
            Scope::Admin,
            delete_module,
        ),
    ]
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
        .map_err(|e| match e {
            LoadError::Compiler(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            LoadError::TimeBudget { .. } | LoadError::MemoryBudget { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "compile_limit",
                e.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_module",
                e.to_string(),
            ),
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

pub(super) fn hash_param(hash: &str) -> Result<ModuleHash, ApiError> {
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
