//! The HTTP API (`wasmq serve`): modules, jobs, queues and the dead set as JSON, `/healthz`,
//! `/metrics`, and the OpenAPI document it is described by (`docs/openapi.json`).
//!
//! One file per resource (`modules`, `grants`, `egress`, `jobs`, `batches`, `queues`, `dead`, `cron`, `operations`),
//! each with a `routes()` table: method, path, the scope a token needs, the body size it reads and
//! its handler, side by side. The router is built from [`routes`] and nothing else, and a test
//! checks that table against the OpenAPI document both ways, so the spec cannot drift from what is
//! served: adding a route is one line in its resource's table (plus the handler) and its entry in
//! `docs/openapi.json`. The dashboard
//! (`dashboard.rs`) adds its page and static files, which hold no data: everything it shows comes
//! through these routes with the token entered in the page. Errors all have one shape
//! ([`ApiError`]); bad input is a 4xx that says what was wrong, never a 500.
//!
//! What it must not do: run jobs or talk to Redis directly — it calls the [`ApiBroker`]; the
//! optional in-process worker is an ordinary [`crate::worker::Worker`].

mod auth;
mod batches;
mod cron;
mod dashboard;
mod dead;
mod egress;
mod error;
mod grants;
mod jobs;
mod metrics;
mod modules;
mod operations;
mod queues;
mod request;
pub mod throughput;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter, on};
use tokio::net::TcpListener;

pub use auth::{Scope, Tokens};
pub use error::ApiError;

use crate::broker::ApiBroker;
use crate::intake::Intake;
use crate::sandbox::Sandbox;
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
    pub broker: Arc<dyn ApiBroker>,
    /// Validates uploads (compiles them against the `job` world).
    pub sandbox: Sandbox,
    /// Who may do what.
    pub tokens: Arc<Tokens>,
    /// Request size limits.
    pub limits: BodyLimits,
    /// The in-process worker's counters, when `serve` runs one.
    pub worker: Option<Arc<Counters>>,
    /// Throughput history, sampled while [`serve`] runs.
    pub throughput: Arc<throughput::Throughput>,
}

impl ApiState {
    /// The intake for new jobs, with the operator's ceilings (the sandbox's).
    pub fn intake(&self) -> Intake {
        Intake::new(*self.sandbox.ceilings(), self.sandbox.sizes())
    }
}

/// How large a route's request body may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodySize {
    /// No body is read: axum's default limit applies.
    Default,
    /// A module upload: [`BodyLimits::module_bytes`].
    Module,
    /// A JSON request: [`BodyLimits::request_bytes`].
    Request,
}

/// One route: its method, path (OpenAPI's `{param}` syntax, which axum shares), the scope a token
/// needs (`None`: public), how large a body it reads, and its handler. Each resource file declares
/// its own in a `routes()` table; [`routes`] is all of them, and the router and the OpenAPI test
/// are both built from it.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path.
    pub path: &'static str,
    /// The scope a token needs; `None` for the public routes.
    pub scope: Option<Scope>,
    /// How large a body it reads.
    pub body: BodySize,
    handler: MethodRouter<ApiState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("scope", &self.scope)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// A route that needs a token with `scope`.
    fn new<H, T>(method: Method, path: &'static str, scope: Scope, handler: H) -> Route
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        Route {
            scope: Some(scope),
            ..Route::public(method, path, handler)
        }
    }

    /// A route anyone may call.
    fn public<H, T>(method: Method, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, ApiState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        Route {
            method,
            path,
            scope: None,
            body: BodySize::Default,
            handler: on(filter, handler),
        }
    }

    /// Reads bodies up to the `size` limit.
    fn body(self, size: BodySize) -> Route {
        Route { body: size, ..self }
    }
}

/// Every route the API serves, resource by resource.
pub fn routes() -> Vec<Route> {
    [
        modules::routes(),
        grants::routes(),
        egress::routes(),
        jobs::routes(),
        batches::routes(),
        queues::routes(),
        dead::routes(),
        cron::routes(),
        operations::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The API's router, built from [`routes`], plus the dashboard's pages.
pub fn router(state: ApiState) -> Router {
    let mut router = dashboard::routes();
    for route in routes() {
        let mut handler = route.handler;
        handler = match route.body {
            BodySize::Default => handler,
            BodySize::Module => handler.layer(DefaultBodyLimit::max(state.limits.module_bytes)),
            BodySize::Request => handler.layer(DefaultBodyLimit::max(state.limits.request_bytes)),
        };
        if let Some(scope) = route.scope {
            let tokens = state.tokens.clone();
            handler = handler.layer(axum::middleware::from_fn(move |req: Request, next| {
                auth::require(tokens.clone(), scope, req, next)
            }));
        }
        router = router.route(route.path, handler);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;
    use crate::job::FailureKind;

    /// The router is built from `routes()` alone; the spec must list exactly those routes, and
    /// mark exactly the public ones as needing no token.
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
        let routes = routes();
        let key = |r: &Route| (r.method.to_string(), r.path.to_owned());
        let served: BTreeSet<_> = routes.iter().map(key).collect();
        assert_eq!(served.len(), routes.len(), "no route is declared twice");
        assert_eq!(served, in_spec);
        let public: BTreeSet<_> = routes
            .iter()
            .filter(|r| r.scope.is_none())
            .map(key)
            .collect();
        assert_eq!(public, public_in_spec);
    }

    /// A job record's failure `kind` is one of exactly the kinds the host has.
    #[test]
    fn the_openapi_document_lists_exactly_the_failure_kinds() {
        let spec: Value = serde_json::from_str(OPENAPI).unwrap();
        let listed: Vec<&str> = spec["components"]["schemas"]["AttemptError"]["properties"]["kind"]
            ["enum"]
            .as_array()
            .expect("`kind` is an enum")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let kinds: Vec<&str> = FailureKind::ALL
            .into_iter()
            .map(FailureKind::as_str)
            .collect();
        assert_eq!(listed, kinds);
    }
}
