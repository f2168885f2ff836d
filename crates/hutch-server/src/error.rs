//! The server's one error type: every failure a client can see, with its HTTP status, a
//! stable code and a message a user can act on. Nothing a client sends turns into a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hutch_runtime::RuntimeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn sandbox_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            format!("sandbox {id} not found"),
        )
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message.to_string(),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// A valid key whose scope does not cover what it asks for.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = serde_json::json!({
            "error": self.message,
            "message": self.message,
            "code": self.code,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        let status = match &e {
            RuntimeError::NotFound { .. } => StatusCode::NOT_FOUND,
            RuntimeError::AlreadyExists { .. } => StatusCode::CONFLICT,
            RuntimeError::InvalidSpec { .. } | RuntimeError::UnsupportedCapability { .. } => {
                StatusCode::BAD_REQUEST
            }
            RuntimeError::Image(i) if i.is_not_found() => StatusCode::NOT_FOUND,
            RuntimeError::CapacityRejected { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RuntimeError::NotRunning { .. } => StatusCode::CONFLICT,
            RuntimeError::AgentUnavailable { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match e.code() {
            "not_found" => "not_found",
            "already_exists" => "already_exists",
            "invalid_spec" => "invalid_spec",
            "capacity_rejected" => "capacity_rejected",
            "unsupported_capability" => "unsupported_capability",
            "image_not_found" => "image_not_found",
            "agent_unavailable" => "agent_unavailable",
            "not_running" => "not_running",
            _ => "backend_failure",
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Self::internal(e)
    }
}
