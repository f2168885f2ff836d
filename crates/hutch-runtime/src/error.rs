//! The runtime's typed errors. Every error says what failed and, through [`RetryClass`],
//! whether trying again can help.

use crate::capability::{CapabilityName, CapabilityReason};

/// Whether retrying the same call may succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryClass {
    Retryable,
    NotRetryable,
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("sandbox {id} not found")]
    NotFound { id: String },
    #[error("sandbox {id} already exists")]
    AlreadyExists { id: String },
    #[error("invalid sandbox spec: {reason}")]
    InvalidSpec { reason: String },
    #[error("no capacity for a new sandbox: {reason}")]
    CapacityRejected { reason: String },
    #[error("{capability} is not supported by the {backend} backend: {reason}")]
    UnsupportedCapability {
        backend: &'static str,
        capability: CapabilityName,
        reason: CapabilityReason,
    },
    #[error("image: {0}")]
    Image(#[from] hutch_store::StoreError),
    #[error("process: {message}")]
    ProcessFailure { code: String, message: String },
    #[error("filesystem: {message}")]
    FilesystemFailure { code: String, message: String },
    #[error("the sandbox's agent is unreachable: {reason}")]
    AgentUnavailable { reason: String },
    #[error("sandbox {id} is not running (state: {state})")]
    NotRunning { id: String, state: String },
    #[error("{backend} backend failure: {message}")]
    BackendFailure {
        backend: &'static str,
        message: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::NotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::InvalidSpec { .. }
            | Self::UnsupportedCapability { .. }
            | Self::Image(_)
            | Self::NotRunning { .. } => RetryClass::NotRetryable,
            Self::CapacityRejected { .. } | Self::AgentUnavailable { .. } => RetryClass::Retryable,
            Self::ProcessFailure { .. }
            | Self::FilesystemFailure { .. }
            | Self::BackendFailure { .. }
            | Self::Io { .. } => RetryClass::Unknown,
        }
    }

    /// A stable machine-readable name for the error kind.
    pub fn code(&self) -> &str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::AlreadyExists { .. } => "already_exists",
            Self::InvalidSpec { .. } => "invalid_spec",
            Self::CapacityRejected { .. } => "capacity_rejected",
            Self::UnsupportedCapability { .. } => "unsupported_capability",
            Self::Image(e) if e.is_not_found() => "image_not_found",
            Self::Image(_) => "image_error",
            Self::ProcessFailure { code, .. } | Self::FilesystemFailure { code, .. } => code,
            Self::AgentUnavailable { .. } => "agent_unavailable",
            Self::NotRunning { .. } => "not_running",
            Self::BackendFailure { .. } => "backend_failure",
            Self::Io { .. } => "io_error",
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
