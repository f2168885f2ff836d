//! Detecting how a layer blob or import archive is compressed (from its magic bytes, never its
//! name or media type, which are unreliable in the wild) and opening it as a plain stream.

use std::io::{BufRead, BufReader, Read};

use flate2::read::MultiGzDecoder;

use crate::error::{IoContext, StoreError};

/// Compression formats the store can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Detects the compression of a stream from its magic bytes; formats not handled yet are
/// reported as `Unsupported`, naming the format.
pub(crate) fn detect_compression(head: &[u8], what: &str) -> Result<Compression, StoreError> {
    let unsupported = |format: &str| StoreError::Unsupported {
        what: format!("{format}-compressed {what}"),
    };
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Err(unsupported("xz"))
    } else if head.starts_with(b"BZh") {
        Err(unsupported("bzip2"))
    } else {
        Ok(Compression::None)
    }
}

/// Opens `reader` as a (possibly gzip- or zstd-compressed) stream of tar bytes.
pub(crate) fn decompressed<'a, R: Read + 'a>(
    reader: R,
    what: &str,
) -> Result<Box<dyn Read + 'a>, StoreError> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let head = buffered
        .fill_buf()
        .ctx(|| format!("reading the start of {what}"))?;
    Ok(match detect_compression(head, what)? {
        Compression::Gzip => Box::new(MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .ctx(|| format!("starting to decompress {what}"))?,
        ),
        Compression::None => Box::new(buffered),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression_by_magic() {
        assert_eq!(
            detect_compression(&[0x1f, 0x8b, 8], "x").expect("gzip"),
            Compression::Gzip
        );
        assert_eq!(
            detect_compression(b"ustar", "x").expect("plain"),
            Compression::None
        );
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd], "x").expect("zstd"),
            Compression::Zstd
        );
        match detect_compression(&[0xfd, b'7', b'z', b'X', b'Z', 0], "layer") {
            Err(StoreError::Unsupported { what }) => assert!(what.contains("xz")),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
