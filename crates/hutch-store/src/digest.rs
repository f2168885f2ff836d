//! Content digests (`sha256:<hex>`) and the streaming hasher used to verify data as it flows.

use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::StoreError;

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A sha256 content digest, always in the canonical `sha256:<64 lowercase hex>` form.
///
/// Deserialization validates the form, so a `Digest` read from any JSON is safe to use as a
/// path component.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; other algorithms are reported as unsupported.
    pub fn parse(value: &str) -> Result<Digest, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidDigest {
            digest: value.to_string(),
            reason: reason.to_string(),
        };
        let Some((algorithm, hex)) = value.split_once(':') else {
            return Err(invalid("expected the form sha256:<64 hex digits>"));
        };
        if algorithm != "sha256" {
            if !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(StoreError::Unsupported {
                    what: format!("the {algorithm} digest algorithm"),
                });
            }
            return Err(invalid("expected the form sha256:<64 hex digits>"));
        }
        if hex.len() != HEX_LEN {
            return Err(invalid("a sha256 digest has exactly 64 hex digits"));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("digits must be lowercase hexadecimal"));
        }
        Ok(Digest(value.to_string()))
    }

    /// Builds a digest from a bare 64-digit hex string (as used in store file names).
    pub fn from_hex(hex: &str) -> Result<Digest, StoreError> {
        Digest::parse(&format!("{PREFIX}{hex}"))
    }

    /// The sha256 of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(hasher.finalize())))
    }

    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = StoreError;

    fn try_from(value: String) -> Result<Digest, StoreError> {
        Digest::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

/// A reader that hashes and counts every byte that passes through it, so verification never
/// needs a second pass over data that may be gigabytes long.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads whatever is left (e.g. tar padding after the end-of-archive marker, which is part of
    /// the digested stream) and returns the digest and byte count.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_canonical_digests() {
        let d = Digest::parse(EMPTY).expect("valid digest");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::of_bytes(b""), d);
        assert_eq!(Digest::from_hex(d.hex()).expect("hex"), d);
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &EMPTY.to_uppercase(),
            &format!("{EMPTY}0"),
            "sha256:../../../../../../../../../../../../../../../../../../../../../etc/passwd",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            Digest::parse("sha512:abcd"),
            Err(StoreError::Unsupported { .. })
        ));
    }

    #[test]
    fn deserialization_validates() {
        let ok: Digest = serde_json::from_str(&format!("\"{EMPTY}\"")).expect("valid");
        assert_eq!(ok.as_str(), EMPTY);
        assert!(serde_json::from_str::<Digest>("\"sha256:../x\"").is_err());
    }

    #[test]
    fn hashing_reader_counts_and_hashes() {
        let mut reader = HashingReader::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        reader.read_exact(&mut first).expect("read");
        let (digest, count) = reader.finish().expect("finish");
        assert_eq!(count, 11);
        assert_eq!(digest, Digest::of_bytes(b"hello world"));
    }
}
