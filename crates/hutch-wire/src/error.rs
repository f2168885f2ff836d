//! The JSON error body every Hutch endpoint answers with on failure.

use serde::{Deserialize, Serialize};

/// `{"error": "...", "code": "..."}`: `error` is a sentence a user can act on, `code` a
/// stable machine-readable name (`not_found`, `invalid_request`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            code: code.into(),
        }
    }
}
