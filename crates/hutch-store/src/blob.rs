//! Reading blobs out of an import source and staging them, always verifying size and digest
//! while the bytes stream past, so nothing unverified ever reaches the store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, StoreError};
use crate::staging::unique_name;

/// Manifests, indexes and configs are read whole; anything larger is not a real image.
const JSON_LIMIT: u64 = 32 << 20;

/// A blob verified and placed in an import's staging `blobs/` directory.
#[derive(Clone, Debug)]
pub(crate) struct StagedBlob {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
}

pub(crate) fn not_an_image(source: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::NotAnImage {
        path: source.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens a file of the import source, refusing anything that is not a regular file (a fifo
/// would block the import forever, a directory is a malformed layout).
pub(crate) fn open_source_file(path: &Path, what: &str, source: &Path) -> Result<File, StoreError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(not_an_image(
                source,
                format!("{what} ({}) is not a regular file", path.display()),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(not_an_image(
                source,
                format!("{what} is missing (expected {})", path.display()),
            ));
        }
        Err(err) => return Err(StoreError::io(format!("inspecting {what}"), err)),
    }
    File::open(path).ctx(|| format!("opening {what} at {}", path.display()))
}

/// Reads a small JSON document of the source whole (bounded, so a hostile source cannot make
/// the import allocate without limit).
pub(crate) fn read_small(path: &Path, what: &str, source: &Path) -> Result<Vec<u8>, StoreError> {
    let file = open_source_file(path, what, source)?;
    read_small_from(file, what, source)
}

/// [`read_small`] from any stream, e.g. an archive member.
pub(crate) fn read_small_from(
    reader: impl Read,
    what: &str,
    source: &Path,
) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    reader
        .take(JSON_LIMIT + 1)
        .read_to_end(&mut bytes)
        .ctx(|| format!("reading {what}"))?;
    if bytes.len() as u64 > JSON_LIMIT {
        return Err(not_an_image(
            source,
            format!("{what} is larger than {} MiB", JSON_LIMIT >> 20),
        ));
    }
    Ok(bytes)
}

/// Like [`read_small`], and checks the bytes against the descriptor that referenced them.
pub(crate) fn read_verified(
    path: &Path,
    expected: &Digest,
    size: Option<u64>,
    what: &str,
    source: &Path,
) -> Result<Vec<u8>, StoreError> {
    let bytes = read_small(path, what, source)?;
    verify(
        what,
        expected,
        size,
        &Digest::of_bytes(&bytes),
        bytes.len() as u64,
    )?;
    Ok(bytes)
}

/// Checks a blob's size (when known) and digest against what named it.
pub(crate) fn verify(
    what: &str,
    expected: &Digest,
    expected_size: Option<u64>,
    actual: &Digest,
    actual_size: u64,
) -> Result<(), StoreError> {
    if let Some(expected_size) = expected_size
        && expected_size != actual_size
    {
        return Err(StoreError::SizeMismatch {
            what: what.to_string(),
            expected: expected_size,
            actual: actual_size,
        });
    }
    if actual != expected {
        return Err(StoreError::DigestMismatch {
            what: what.to_string(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// Writes already-verified bytes as a staged blob named by their digest.
pub(crate) fn stage_bytes(staged: &Path, bytes: &[u8]) -> Result<StagedBlob, StoreError> {
    let digest = Digest::of_bytes(bytes);
    let dest = staged.join(digest.hex());
    fs::write(&dest, bytes).ctx(|| format!("staging blob {digest}"))?;
    Ok(StagedBlob {
        digest,
        size: bytes.len() as u64,
    })
}

/// Streams the source file at `path` into the staging directory `staged` while hashing it, and
/// checks the result against `expected` (when the source names the digest). When `linkable`,
/// the source is itself inside the store's staging area (an unpacked archive member), so it is
/// hashed in place and hard-linked instead of copied.
pub(crate) fn stage_file(
    path: &Path,
    staged: &Path,
    expected: Option<(&Digest, Option<u64>)>,
    linkable: bool,
    what: &str,
    source: &Path,
) -> Result<StagedBlob, StoreError> {
    let file = open_source_file(path, what, source)?;
    let mut reader = HashingReader::new(file);
    let temp = staged.join(unique_name("blob"));
    let result = (|| {
        if linkable {
            fs::hard_link(path, &temp).ctx(|| format!("staging {what}"))?;
        } else {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&temp)
                .ctx(|| format!("staging {what}"))?;
            io::copy(&mut reader, &mut out).ctx(|| format!("copying {what}"))?;
        }
        let (digest, size) = reader.finish().ctx(|| format!("reading {what}"))?;
        if let Some((expected, expected_size)) = expected {
            verify(what, expected, expected_size, &digest, size)?;
        }
        let dest = staged.join(digest.hex());
        fs::rename(&temp, &dest).ctx(|| format!("staging {what}"))?;
        Ok(StagedBlob { digest, size })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Where a blob lives in a store or staging `blobs` directory.
pub(crate) fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(digest.hex())
}
