//! What every route reads from a request: the body (with size and read failures in the API's
//! error shape) and query strings (unknown parameters refused), including the common `?queue=`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request};
use axum::http::StatusCode;
use serde::Deserialize;

use super::ApiError;
use crate::invocation::DEFAULT_QUEUE;

/// A request body, with size and read failures in the API's error shape.
pub(super) struct Body(pub(super) Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|r| {
                let status = r.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        "payload_too_large",
                        "the request body is over the size limit",
                    )
                } else {
                    ApiError::new(status, "bad_request", r.body_text())
                }
            })
    }
}

/// Query parameters naming a queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QueueParam {
    pub(super) queue: Option<String>,
}

/// The `?queue=` parameter, `default` when absent.
pub(super) fn queue_or_default(req: &Request) -> Result<String, ApiError> {
    let QueueParam { queue } = parse_query(req.uri().query())?;
    Ok(queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned()))
}

/// Parses a query string, refusing unknown parameters, in the API's error shape.
pub(super) fn parse_query<T: serde::de::DeserializeOwned>(
    query: Option<&str>,
) -> Result<T, ApiError> {
    let uri: axum::http::Uri = format!("/?{}", query.unwrap_or(""))
        .parse()
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}
