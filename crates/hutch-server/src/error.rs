//! The server's one error type: every failure a client can see, with its HTTP status, a
//! stable code and a message a user can act on. Nothing a client sends turns into a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hutch_runtime::RuntimeError;
use hutch_state::StateError;

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
        let body = hutch_api::ErrorBody::new(self.code, self.message);
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
        Self::new(status, hutch_state::runtime_code(&e), e.to_string())
    }
}

/// The one place domain errors become HTTP: each variant's status, its stable code and its
/// message, as the SDKs have always seen them.
impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let status = match e {
            StateError::Runtime(e) => return e.into(),
            StateError::NotFound { .. } => StatusCode::NOT_FOUND,
            StateError::Conflict { .. } => StatusCode::CONFLICT,
            StateError::InvalidArgument { .. } | StateError::ExceedsHost(_) => {
                StatusCode::BAD_REQUEST
            }
            StateError::CapacityExceeded { .. } | StateError::PoolExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            StateError::Store(_)
            | StateError::Db(_)
            | StateError::DefaultImage(_)
            | StateError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use hutch_state::{Conflict, Invalid, Kind};

    use super::*;

    #[test]
    fn state_errors_keep_their_status_code_and_message() {
        let cases = [
            (
                StateError::not_found(Kind::Sandbox, "abc"),
                404,
                "sandbox_not_found",
                "sandbox abc not found",
            ),
            (
                StateError::not_found(Kind::Image, "x"),
                404,
                "image_not_found",
                "image \"x\" not found; import or pull it first",
            ),
            (
                StateError::conflict(Conflict::NameTaken, "taken"),
                409,
                "name_taken",
                "taken",
            ),
            (
                StateError::invalid(Invalid::Namespace, "bad ns"),
                400,
                "invalid_namespace",
                "bad ns",
            ),
            (
                StateError::ExceedsHost("too big".into()),
                400,
                "exceeds_host_capacity",
                "too big",
            ),
            (
                StateError::CapacityExceeded {
                    max_sandboxes: 1,
                    max_queued: 0,
                },
                429,
                "too_many_pending",
                "1 sandboxes run and 0 creates already wait for room; retry later",
            ),
            (
                StateError::Runtime(RuntimeError::NotFound { id: "s".into() }),
                404,
                "not_found",
                "",
            ),
            (
                StateError::Io(std::io::Error::other("disk on fire")),
                500,
                "internal",
                "disk on fire",
            ),
        ];
        for (e, status, code, message) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code));
            if !message.is_empty() {
                assert_eq!(api.message, message);
            }
        }
    }
}
