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

/// How a sandbox's agent came to be unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentUnreachable {
    /// The agent had no connection within the wait: nothing was sent to it, so the request
    /// may be replayed as it is.
    NeverConnected,
    /// The connection failed or broke during the exchange, or the agent answered something
    /// unreadable: a request may have reached the agent.
    Disrupted,
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
    AgentUnavailable {
        /// Whether a request could have reached the agent: a caller that replays requests
        /// (the proxy) decides on this, never on `reason`'s wording.
        kind: AgentUnreachable,
        reason: String,
    },
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

    /// The error of a backend asked for `capability` it does not offer: the reason it reports
    /// in [`crate::Backend::capabilities`], or a permanent one when it does not mention it.
    pub fn unsupported(
        backend: &'static str,
        capabilities: &crate::capability::Capabilities,
        capability: CapabilityName,
    ) -> Self {
        let reason = match capabilities.get(capability) {
            crate::capability::Capability::Unsupported { reason } => reason,
            // Reported supported yet not implemented: a backend bug, still refused cleanly.
            crate::capability::Capability::Supported => CapabilityReason::Permanent {
                detail: "reported supported, but the backend does not implement it".into(),
            },
        };
        Self::UnsupportedCapability {
            backend,
            capability,
            reason,
        }
    }

    /// A failure of the agent's connection or stream after a request may have been sent.
    pub(crate) fn agent_disrupted(reason: impl Into<String>) -> Self {
        Self::AgentUnavailable {
            kind: AgentUnreachable::Disrupted,
            reason: reason.into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::Capabilities;

    #[test]
    fn a_refusal_carries_the_reason_the_backend_reports() {
        let gated = CapabilityReason::FeatureGated {
            feature: "issue 16".into(),
        };
        let caps = Capabilities::default()
            .supported(&[CapabilityName::SandboxCreate])
            .unsupported(CapabilityName::SandboxCheckpoint, gated.clone());
        let e = RuntimeError::unsupported("x", &caps, CapabilityName::SandboxCheckpoint);
        assert!(matches!(
            &e,
            RuntimeError::UnsupportedCapability { reason, capability: CapabilityName::SandboxCheckpoint, .. }
                if *reason == gated
        ));
        assert_eq!(
            e.to_string(),
            "sandbox_checkpoint is not supported by the x backend: not available yet (issue 16)"
        );
        // Unmentioned, or claimed yet not implemented: refused as permanent all the same.
        for name in [
            CapabilityName::SandboxRestore,
            CapabilityName::SandboxCreate,
        ] {
            assert!(matches!(
                RuntimeError::unsupported("x", &caps, name),
                RuntimeError::UnsupportedCapability {
                    reason: CapabilityReason::Permanent { .. },
                    ..
                }
            ));
        }
    }

    #[test]
    fn an_unreachable_agent_is_retryable_whatever_the_kind() {
        for kind in [
            AgentUnreachable::NeverConnected,
            AgentUnreachable::Disrupted,
        ] {
            let e = RuntimeError::AgentUnavailable {
                kind,
                reason: "r".into(),
            };
            assert_eq!(e.retry_class(), RetryClass::Retryable);
            assert_eq!(e.code(), "agent_unavailable");
        }
    }
}
