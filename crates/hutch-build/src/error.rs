//! The build's one error type: what went wrong, and for anything a Dockerfile said, the
//! file and the line.

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{file}:{line}: {message}")]
    Dockerfile {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: RUN failed with exit code {code}{}: {command}",
        if *oom { " (killed: out of memory; raise the build's memory)" } else { "" }
    )]
    RunFailed {
        file: String,
        line: usize,
        command: String,
        code: i32,
        oom: bool,
    },
    #[error("{0}")]
    Store(#[from] hutch_store::StoreError),
    #[error("{0}")]
    Runtime(#[from] hutch_runtime::RuntimeError),
    #[error("{0}")]
    Registry(#[from] hutch_registry::RegistryError),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl BuildError {
    pub fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            error,
        }
    }
}
