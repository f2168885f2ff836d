//! The JSON error body every Hutch endpoint answers with on failure: the agent's, the
//! server's and the frames that end a stream alike.

use serde::{Deserialize, Serialize};

/// `{"error": "...", "message": "...", "code": "..."}`: `error` is a sentence a user can act
/// on, `message` the same sentence under the name the Tensorlake API uses, `code` a stable
/// machine-readable name (`not_found`, `invalid_request`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Error))]
pub struct ErrorBody {
    pub error: String,
    /// Absent from bodies written before it existed (a boot outcome left by an older agent).
    #[serde(default)]
    pub message: String,
    pub code: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, error: impl Into<String>) -> Self {
        let error = error.into();
        Self {
            message: error.clone(),
            error,
            code: code.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorBody;

    #[test]
    fn error_and_message_say_the_same() {
        let body = serde_json::to_value(ErrorBody::new("not_found", "no such file")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "no such file", "message": "no such file", "code": "not_found"})
        );
        let old: ErrorBody = serde_json::from_str(r#"{"error":"x","code":"y"}"#).unwrap();
        assert_eq!((old.error.as_str(), old.code.as_str()), ("x", "y"));
    }
}
