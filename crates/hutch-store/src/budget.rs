//! Caps on what unpacking untrusted archives may write: bytes (apparent sizes, so a sparse
//! file counts at its full length), entries, and the length of the decompressed tar stream,
//! per layer and summed over one image. A few kilobytes of gzip or a sparse entry can
//! otherwise describe terabytes, filling the host's disk or keeping a core busy for hours.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StoreError;

const GIB: u64 = 1 << 30;
/// Environment variables overriding the defaults (read when a [`crate::Store`] is opened).
pub const MAX_LAYER_BYTES_ENV: &str = "HUTCH_MAX_LAYER_BYTES";
pub const MAX_LAYER_ENTRIES_ENV: &str = "HUTCH_MAX_LAYER_ENTRIES";
pub const MAX_IMAGE_BYTES_ENV: &str = "HUTCH_MAX_IMAGE_BYTES";

/// Limits on unpacking, checked while extracting so a layer over them fails before it has
/// written more than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes one layer may unpack to (sum of the apparent sizes of its files), and the
    /// longest its decompressed tar stream may be.
    pub layer_bytes: u64,
    /// Entries one layer may hold (implicitly created parent directories included).
    pub layer_entries: u64,
    /// Bytes all the layers one import or pull unpacks may add up to.
    pub image_bytes: u64,
}

impl Default for UnpackLimits {
    /// Generous for real images (the largest common ones unpack to a few GiB), small enough
    /// that one hostile image cannot fill a typical disk.
    fn default() -> Self {
        UnpackLimits {
            layer_bytes: 16 * GIB,
            layer_entries: 1_000_000,
            image_bytes: 64 * GIB,
        }
    }
}

impl UnpackLimits {
    /// The defaults, each overridden by its environment variable when that holds a number
    /// (an unparsable value is ignored with a warning rather than lifting the limit).
    pub fn from_env() -> UnpackLimits {
        let defaults = UnpackLimits::default();
        UnpackLimits {
            layer_bytes: env_or(MAX_LAYER_BYTES_ENV, defaults.layer_bytes),
            layer_entries: env_or(MAX_LAYER_ENTRIES_ENV, defaults.layer_entries),
            image_bytes: env_or(MAX_IMAGE_BYTES_ENV, defaults.image_bytes),
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(%name, %value, default, "ignoring an unparsable unpack limit");
            default
        }),
        Err(_) => default,
    }
}

/// What one image's unpacking has used so far; clones share the count, so layers unpacked
/// on several threads of one pull draw from one budget.
#[derive(Clone, Debug)]
pub(crate) struct ImageBudget {
    limit: u64,
    used: Arc<AtomicU64>,
}

impl ImageBudget {
    pub(crate) fn new(limit: u64) -> ImageBudget {
        ImageBudget {
            limit,
            used: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when that would pass it.
    fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }
}

/// The budget of one layer being unpacked (and of its image, when there is one).
pub(crate) struct LayerBudget {
    layer: String,
    limits: UnpackLimits,
    image: Option<ImageBudget>,
    bytes: u64,
    entries: u64,
}

impl LayerBudget {
    pub(crate) fn new(layer: &str, limits: UnpackLimits, image: Option<ImageBudget>) -> Self {
        LayerBudget {
            layer: layer.to_string(),
            limits,
            image,
            bytes: 0,
            entries: 0,
        }
    }

    fn exceeded(&self, limit: u64, what: &str, setting: &'static str) -> StoreError {
        StoreError::UnpackLimit {
            layer: self.layer.clone(),
            what: what.to_string(),
            limit,
            setting,
        }
    }

    /// Counts `bytes` more of file content (apparent size), before they are written.
    pub(crate) fn charge_bytes(&mut self, bytes: u64) -> Result<(), StoreError> {
        let total = self.bytes.saturating_add(bytes);
        if total > self.limits.layer_bytes {
            return Err(self.exceeded(
                self.limits.layer_bytes,
                "bytes of file content in one layer",
                MAX_LAYER_BYTES_ENV,
            ));
        }
        if let Some(image) = &self.image
            && !image.take(bytes)
        {
            return Err(self.exceeded(
                image.limit,
                "bytes of file content in one image",
                MAX_IMAGE_BYTES_ENV,
            ));
        }
        self.bytes = total;
        Ok(())
    }

    /// Counts one more entry (file, directory, link, node, or implicit parent directory).
    pub(crate) fn charge_entry(&mut self) -> Result<(), StoreError> {
        self.entries += 1;
        if self.entries > self.limits.layer_entries {
            return Err(self.exceeded(
                self.limits.layer_entries,
                "entries in one layer",
                MAX_LAYER_ENTRIES_ENV,
            ));
        }
        Ok(())
    }

    /// The longest the layer's decompressed tar stream may be.
    pub(crate) fn limit_bytes(&self) -> u64 {
        self.limits.layer_bytes
    }

    /// The file content counted so far: the layer's size.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The error for a decompressed stream longer than the layer limit.
    pub(crate) fn stream_too_long(&self) -> StoreError {
        self.exceeded(
            self.limits.layer_bytes,
            "bytes of decompressed tar stream in one layer",
            MAX_LAYER_BYTES_ENV,
        )
    }
}

/// Marker carried inside the `io::Error` a [`CappedReader`] returns, so the unpacker can turn
/// it back into a typed [`StoreError::UnpackLimit`].
#[derive(Debug)]
pub(crate) struct StreamTooLong;

impl std::fmt::Display for StreamTooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the decompressed stream is longer than the layer limit")
    }
}

impl std::error::Error for StreamTooLong {}

/// True if `err` (or the error it wraps, as the tar crate does) came from a [`CappedReader`].
pub(crate) fn is_stream_too_long(err: &io::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err
        .get_ref()
        .map(|e| e as &(dyn std::error::Error + 'static));
    while let Some(e) = source {
        if e.is::<StreamTooLong>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            source = Some(inner);
            continue;
        }
        source = e.source();
    }
    false
}

/// Fails reads once more than `limit` bytes have gone through: a decompression bomb made of
/// tar headers or padding (which write nothing) still stops.
pub(crate) struct CappedReader<R> {
    inner: R,
    left: u64,
}

impl<R> CappedReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        CappedReader { inner, left: limit }
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // One byte more tells a stream that ends exactly at the limit from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(StreamTooLong)),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_budget_counts_bytes_and_entries() {
        let limits = UnpackLimits {
            layer_bytes: 10,
            layer_entries: 2,
            image_bytes: 15,
        };
        let image = ImageBudget::new(limits.image_bytes);
        let mut first = LayerBudget::new("a", limits, Some(image.clone()));
        first.charge_bytes(10).expect("at the limit");
        assert!(matches!(
            first.charge_bytes(1),
            Err(StoreError::UnpackLimit { .. })
        ));
        first.charge_entry().expect("1");
        first.charge_entry().expect("2");
        assert!(first.charge_entry().is_err());
        let mut second = LayerBudget::new("b", limits, Some(image));
        second.charge_bytes(5).expect("image has 5 left");
        match second.charge_bytes(1) {
            Err(StoreError::UnpackLimit { setting, .. }) => {
                assert_eq!(setting, MAX_IMAGE_BYTES_ENV)
            }
            other => panic!("expected the image limit, got {other:?}"),
        }
    }

    #[test]
    fn capped_reader_allows_exactly_the_limit() {
        let mut out = Vec::new();
        CappedReader::new(&b"12345"[..], 5)
            .read_to_end(&mut out)
            .expect("exactly at the limit");
        assert_eq!(out, b"12345");
        let err = CappedReader::new(&b"123456"[..], 5)
            .read_to_end(&mut Vec::new())
            .expect_err("over the limit");
        assert!(is_stream_too_long(&err));
        let wrapped = io::Error::other(err);
        assert!(is_stream_too_long(&wrapped), "found through a wrapper");
    }
}
