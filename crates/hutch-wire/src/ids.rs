//! Random ids and secrets, read from the kernel's random source (`getrandom(2)`): sandbox ids,
//! PTY session ids and tokens, build tokens, key secrets, per-boot agent secrets, nonces.
//!
//! Every id the API shows is lowercase hex of a fixed number of random bytes; the formats are
//! part of the API, so they are made here once.

use std::io;

/// Random bytes in a sandbox id: 20 hex characters.
pub const SANDBOX_ID_BYTES: usize = 10;

/// `len` bytes from the kernel's random source.
pub fn random_bytes(len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(buf)
}

/// `len` random bytes as lowercase hex (`2 * len` characters).
pub fn random_hex(len: usize) -> io::Result<String> {
    random_bytes(len).map(|bytes| hex(&bytes))
}

/// A new sandbox id: [`SANDBOX_ID_BYTES`] random bytes as hex.
pub fn sandbox_id() -> io::Result<String> {
    random_hex(SANDBOX_ID_BYTES)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercase_hex_of_their_length_and_differ() {
        let a = sandbox_id().expect("getrandom");
        assert_eq!(a.len(), 2 * SANDBOX_ID_BYTES);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{a}"
        );
        assert_ne!(a, sandbox_id().expect("getrandom"));
        assert_eq!(random_hex(32).expect("getrandom").len(), 64);
        assert!(random_hex(0).expect("empty").is_empty());
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
