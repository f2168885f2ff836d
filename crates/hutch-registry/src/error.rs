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

    #[error("{reference}: {what} is larger than {}; refused", human(*limit))]
    TooLarge {
        reference: String,
        what: String,
        limit: u64,
    },

    /// A connection refused before it was made: by a server's [`crate::EgressPolicy`], or
    /// a token realm that would get credentials over plain HTTP.
    #[error("{reference}: refusing to pull from {registry}: {reason}")]
    Refused {
        reference: String,
        registry: String,
        reason: String,
    },

    /// A connection failed, under an [`crate::EgressPolicy`]: the cause (refused, timed out,
    /// reset) is logged, not told, so that API clients cannot use pulls to scan ports.
    #[error("{reference}: registry {registry} is unreachable")]
    Unreachable { reference: String, registry: String },

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

/// `4 MiB`, `64 KiB`, or bytes.
fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
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
