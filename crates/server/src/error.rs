//! The one error type of the API. Each variant has a stable `code` clients can match on; the
//! message is safe to show; internal failures are logged and answered with a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("missing or unknown API key; send `Authorization: Bearer <key>`")]
    Unauthenticated,
    #[error("the server refused the runner token (unknown, or its runner was deregistered); register a runner with POST /v1/teams/{team}/runners and use the token it shows once")]
    UnknownRunnerToken { team: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    /// Not found, with a message that says why and what to do instead.
    #[error("{0}")]
    NotFoundBecause(String),
    #[error("{0}")]
    Conflict(String),
    /// A conflict caused by one field, parameter or header, which the answer names (a reused
    /// `Idempotency-Key`).
    #[error("{message}")]
    ConflictOn { field: String, message: String },
    #[error("{0}")]
    LimitReached(String),
    #[error("the request body is larger than {limit} bytes, the most this endpoint accepts (a team's plan sets it for hooks)")]
    PayloadTooLarge { limit: u64 },
    #[error("this route does not take that method (see /openapi.json)")]
    MethodNotAllowed,
    /// Not allowed, with a message that says which methods the route takes.
    #[error("{0}")]
    MethodNotAllowedFor(String),
    #[error("internal error; the server log has the details")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = field.into();
        ApiError::Invalid { message: format!("{field}: {}", message.into()), field }
    }

    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        ApiError::Internal(err.to_string())
    }

    /// The whole message, an internal error's detail included: for the operator at the
    /// terminal (`serve` failing to start), never for an HTTP answer.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Internal(detail) => detail.clone(),
            other => other.to_string(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthenticated | ApiError::UnknownRunnerToken { .. } => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) | ApiError::NotFoundBecause(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) | ApiError::ConflictOn { .. } => (StatusCode::CONFLICT, "conflict"),
            ApiError::LimitReached(_) => (StatusCode::UNPROCESSABLE_ENTITY, "limit_reached"),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::MethodNotAllowed | ApiError::MethodNotAllowedFor(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "request failed with an internal error");
        }
        let mut body = json!({"error": {"code": code, "message": self.to_string()}});
        if let ApiError::Invalid { field, .. } | ApiError::ConflictOn { field, .. } = &self {
            body["error"]["field"] = json!(field);
        }
        let mut response = (status, Json(body)).into_response();
        match self {
            // The unread rest of the body makes the connection unusable for another request.
            ApiError::PayloadTooLarge { .. } => {
                response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            }
            // RFC 9110: a 401 says which scheme to authenticate with.
            ApiError::Unauthenticated | ApiError::UnknownRunnerToken { .. } => {
                response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(err: rusqlite::Error) -> ApiError {
        ApiError::internal(format!("catalog database: {err}"))
    }
}
