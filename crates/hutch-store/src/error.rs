//! The store's single error type and the helper that attaches context to I/O errors.

use std::io;
use std::path::PathBuf;

use crate::digest::Digest;

/// Everything that can go wrong in the store. Messages are meant to be shown to a user as-is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image {name} is not in the store (see `hutch image ls`)")]
    NotFound { name: String },

    #[error(
        "layer {diff_id} is not in the store; re-import the image that uses it before starting a sandbox"
    )]
    LayerMissing { diff_id: Digest },

    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest { digest: String, reason: String },

    #[error(
        "{} is not an importable image: {reason} (expected an OCI image layout directory, an OCI archive or a `docker save` archive)",
        path.display()
    )]
    NotAnImage { path: PathBuf, reason: String },

    #[error("refusing layer {layer}: entry {entry:?} {reason}")]
    UnsafeLayerEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    /// Unpacking stopped at one of the [`crate::UnpackLimits`]; nothing of the layer is kept.
    #[error(
        "refusing layer {layer}: it goes over the limit of {limit} {what} (set {setting} to change the limit)"
    )]
    UnpackLimit {
        layer: String,
        what: String,
        limit: u64,
        setting: &'static str,
    },

    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the image is corrupt or was tampered with"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },

    #[error(
        "size mismatch for {what}: expected {expected} bytes, got {actual}; the image is corrupt or was tampered with"
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error(
        "blob {digest} of image {image} is not in the store; re-import the image (`hutch image fsck` checks the whole store)"
    )]
    BlobMissing { image: String, digest: Digest },

    #[error(
        "{} names no image (no io.containerd.image.name or full org.opencontainers.image.ref.name annotation, no RepoTags); import it under a name of your choice with `hutch image import --name NAME {}`",
        path.display(),
        path.display()
    )]
    Unnamed { path: PathBuf },

    #[error("{what} is not supported yet")]
    Unsupported { what: String },

    /// The store itself never refuses removal because of pins (pinned layers simply stay until
    /// unpinned); callers that want to refuse can build this from [`crate::Store::holders`].
    #[error("image {name} is in use by sandbox(es) {}; stop them first", holders.join(", "))]
    InUse { name: String, holders: Vec<String> },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "store data at {} is corrupt: {reason}; remove it by hand or re-import the image",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl StoreError {
    /// True for "the named thing does not exist", so callers can map it to a 404-like outcome.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound { .. } | StoreError::LayerMissing { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attaches a lazily built description to an `io::Result`, so every I/O failure says what the
/// store was doing and on which path.
pub(crate) trait IoContext<T> {
    fn ctx<F: FnOnce() -> String>(self, context: F) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, context: F) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::io(context(), source))
    }
}
