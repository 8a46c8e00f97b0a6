//! The API's one error shape: `{"error": {"code": "…", "message": "…", "field": …}}` with the status
//! code that fits. Every handler error becomes an [`ApiError`] here and nowhere else.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::broker::BrokerError;
use crate::intake::{Place, Refusal};
use crate::invocation::InvocationError;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code (`invalid_invocation`, `unauthorized`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, when there is one (`fuel`, `jobs[3].module`).
    pub field: Option<String>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 404 with `what` named.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A job refused by the intake, located in the request (`jobs[3]`, `callback`) when the
    /// request held a list of jobs (`in_list`).
    pub fn refused(r: &Refusal, in_list: bool) -> Self {
        let prefix = match r.place {
            Place::Job(i) if in_list => Some(format!("jobs[{i}]")),
            Place::Callback => Some("callback".to_owned()),
            Place::Job(_) | Place::Only => None,
        };
        Self::invocation(&r.error, prefix.as_deref())
    }

    /// An invocation refused; `prefix` locates it in a bulk request (`jobs[3]`).
    pub fn invocation(e: &InvocationError, prefix: Option<&str>) -> Self {
        let code = match e {
            InvocationError::UnknownModule(_) => "unknown_module",
            _ => "invalid_invocation",
        };
        let field = e.field_name().map(str::to_owned);
        let (message, field) = match prefix {
            Some(p) => (
                format!("{p}: {e}"),
                Some(field.map_or_else(|| p.to_owned(), |f| format!("{p}.{f}"))),
            ),
            None => (e.to_string(), field),
        };
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            message,
            field,
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Invocation(inv) => ApiError::invocation(&inv, None),
            BrokerError::Unavailable { .. } => {
                tracing::warn!(error = %e, "broker unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the broker is unavailable: {e}"),
                )
            }
            BrokerError::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
            }
            BrokerError::Grant(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_grant",
                e.to_string(),
            ),
            BrokerError::UnknownModule(_) => ApiError::not_found(e.to_string()),
            BrokerError::ModuleBusy(_) => {
                ApiError::new(StatusCode::CONFLICT, "module_busy", e.to_string())
            }
            BrokerError::TooManySecrets(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_secrets",
                e.to_string(),
            ),
            BrokerError::Corrupt { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "code": self.code, "message": self.message, "field": self.field }
        });
        (self.status, Json(body)).into_response()
    }
}
