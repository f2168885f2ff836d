//! The registry client's one error type. Every variant names the image it was about and the
//! cause, in words a user can act on.

use hutch_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error(
        "pulling {reference}: the registry {registry} refused the credentials or wants some ({detail}); log in with `docker login {registry}` (~/.docker/config.json) or pass --username/--password-stdin"
    )]
    Unauthorized {
        reference: String,
        registry: String,
        detail: String,
    },

    #[error("{reference}: {what} not found on {registry}")]
    NotFound {
        reference: String,
        registry: String,
        what: String,
    },

    #[error("{reference}: the registry answered {status} for {url}: {body}")]
    Server {
        reference: String,
        status: u16,
        url: String,
        body: String,
    },

    #[error("{reference}: cannot reach {registry}: {detail}{hint}")]
    Transport {
        reference: String,
        registry: String,
        detail: String,
        /// Advice, e.g. about `--insecure` for a plain-HTTP registry.
        hint: String,
    },

    #[error("{reference}: unsupported {what} media type {media_type:?}")]
    UnknownMediaType {
        reference: String,
        what: String,
        media_type: String,
    },

    #[error(
        "{reference}: no linux/amd64 image in its index (it has: {})",
        if available.is_empty() { "nothing".to_string() } else { available.join(", ") }
    )]
    NoMatchingPlatform {
        reference: String,
        available: Vec<String>,
    },

    #[error("{reference}: {what} is malformed: {detail}")]
    Malformed {
        reference: String,
        what: String,
        detail: String,
    },

    #[error(
        "{reference}: digest mismatch for {what}: expected {expected}, got {actual}; the registry served corrupt or tampered data"
    )]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{reference}: {what} ended after {got} of {expected} bytes")]
    Truncated {
        reference: String,
        what: String,
        got: u64,
        expected: u64,
    },

    /// The store's message already carries its causes, so it is not also a `source`
    /// (which would print them twice in an error chain).
    #[error("{reference}: {error}")]
    Store {
        reference: String,
        error: StoreError,
    },

    #[error("{reference}: reading credentials: {detail}")]
    Credentials { reference: String, detail: String },
}

impl RegistryError {
    /// The store's error, with the image it happened to.
    pub fn store(reference: &impl std::fmt::Display, error: StoreError) -> Self {
        Self::Store {
            reference: reference.to_string(),
            error,
        }
    }

    /// True when the image (or the registry's idea of it) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}
