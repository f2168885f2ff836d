//! The state crate's one error type. Variants say what went wrong in domain terms; each has a
//! stable machine-readable [`StateError::code`] and a message a user can act on. Nothing here
//! knows HTTP: the server maps these to statuses in one place.

use hutch_runtime::RuntimeError;

use crate::db::DbError;

/// What kind of thing was not found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sandbox,
    Template,
    Build,
    Image,
    Pool,
}

/// Why a request conflicts with the current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// A sandbox name already in use in the namespace.
    NameTaken,
    SandboxTerminated,
    SandboxNotRunning,
    /// A built image that does not sit on its parent template's layers.
    LineageMismatch,
    /// A template other templates are built on: it is neither removed nor replaced.
    TemplateHasChildren,
    /// A build asked to register that has not built (or has already been registered).
    BuildNotBuilt,
    /// A parent template renamed since the client looked it up.
    TemplateChanged,
    /// A completion whose report disagrees with what the host recorded.
    SnapshotMismatch,
    /// A pool with claimed sandboxes still running is not deleted.
    PoolInUse,
}

impl Conflict {
    pub fn code(self) -> &'static str {
        match self {
            Self::NameTaken => "name_taken",
            Self::SandboxTerminated => "sandbox_terminated",
            Self::SandboxNotRunning => "sandbox_not_running",
            Self::LineageMismatch => "lineage_mismatch",
            Self::TemplateHasChildren => "template_has_children",
            Self::BuildNotBuilt => "build_not_built",
            Self::TemplateChanged => "template_changed",
            Self::SnapshotMismatch => "snapshot_mismatch",
            Self::PoolInUse => "pool_in_use",
        }
    }
}

/// What part of a request is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// A value of the request (a bound, a field combination, an unusable image record).
    Request,
    SandboxName,
    TemplateName,
    Namespace,
    Dockerfile,
}

impl Invalid {
    pub fn code(self) -> &'static str {
        match self {
            Self::Request => "invalid_request",
            Self::SandboxName => "invalid_name",
            Self::TemplateName => "invalid_template_name",
            Self::Namespace => "invalid_namespace",
            Self::Dockerfile => "dockerfile_invalid",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}", not_found_message(*kind, id))]
    NotFound { kind: Kind, id: String },
    #[error("{message}")]
    Conflict { conflict: Conflict, message: String },
    #[error("{message}")]
    InvalidArgument { invalid: Invalid, message: String },
    /// A sandbox bigger than this host could ever run.
    #[error("{0}")]
    ExceedsHost(String),
    /// Every sandbox slot is taken and the queue of waiting creates is full.
    #[error(
        "{max_sandboxes} sandboxes run and {max_queued} creates already wait for room; retry later"
    )]
    CapacityExceeded {
        max_sandboxes: usize,
        max_queued: usize,
    },
    /// A claim with no warm sandbox, when the pool already has `max_containers`.
    #[error(
        "pool {pool} has no warm sandbox and already has its max_containers ({max}); \
         retry when a claimed sandbox ends, or raise max_containers"
    )]
    PoolExhausted { pool: String, max: usize },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] hutch_store::StoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    DefaultImage(#[from] crate::default_image::DefaultImageError),
    /// The host failed at something it needed (random bytes, a directory).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn not_found_message(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Sandbox => format!("sandbox {id} not found"),
        Kind::Template => format!("template {id:?} not found"),
        Kind::Build => format!("template build {id:?} not found"),
        Kind::Image => format!("image {id:?} not found; import or pull it first"),
        Kind::Pool => format!("sandbox pool {id} not found"),
    }
}

impl StateError {
    pub fn not_found(kind: Kind, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn conflict(conflict: Conflict, message: impl Into<String>) -> Self {
        Self::Conflict {
            conflict,
            message: message.into(),
        }
    }

    pub fn invalid(invalid: Invalid, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            invalid,
            message: message.into(),
        }
    }

    /// The stable code clients match on (the JSON `code` of an API error).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { kind, .. } => match kind {
                Kind::Sandbox => "sandbox_not_found",
                Kind::Template => "template_not_found",
                Kind::Build => "build_not_found",
                Kind::Image => "image_not_found",
                Kind::Pool => "pool_not_found",
            },
            Self::Conflict { conflict, .. } => conflict.code(),
            Self::InvalidArgument { invalid, .. } => invalid.code(),
            Self::ExceedsHost(_) => "exceeds_host_capacity",
            Self::CapacityExceeded { .. } => "too_many_pending",
            Self::PoolExhausted { .. } => "pool_exhausted",
            Self::Runtime(e) => runtime_code(e),
            Self::Store(_) | Self::Db(_) | Self::DefaultImage(_) | Self::Io(_) => "internal",
        }
    }
}

/// The runtime's code, if it is one clients know; `backend_failure` otherwise. The one list
/// of them: the server's own mapping of runtime errors uses it too.
pub fn runtime_code(e: &RuntimeError) -> &'static str {
    match e.code() {
        "not_found" => "not_found",
        "already_exists" => "already_exists",
        "invalid_spec" => "invalid_spec",
        "capacity_rejected" => "capacity_rejected",
        "unsupported_capability" => "unsupported_capability",
        "image_not_found" => "image_not_found",
        "agent_unavailable" => "agent_unavailable",
        "not_running" => "not_running",
        _ => "backend_failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_was_not_found() {
        let e = StateError::not_found(Kind::Template, "web");
        assert_eq!(e.to_string(), "template \"web\" not found");
        assert_eq!(e.code(), "template_not_found");
        let e = StateError::not_found(Kind::Sandbox, "abc");
        assert_eq!(e.to_string(), "sandbox abc not found");
        let e = StateError::CapacityExceeded {
            max_sandboxes: 2,
            max_queued: 1,
        };
        assert!(e.to_string().starts_with("2 sandboxes run and 1 creates"));
        assert_eq!(e.code(), "too_many_pending");
    }
}
