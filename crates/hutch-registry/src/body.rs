//! Reading a registry's response bodies into memory with a hard cap: a registry (or anything
//! an image reference points at) decides how much it sends, so nothing is read whole before
//! its size is checked. The announced `Content-Length` is checked first, then the bytes are
//! counted as they stream in.

use bytes::{Bytes, BytesMut};
use reqwest::Response;

/// Largest manifest or index (containerd's limit too).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// Largest image config.
pub const CONFIG_LIMIT: u64 = 8 << 20;
/// Largest token service answer.
pub const TOKEN_LIMIT: u64 = 1 << 20;
/// How much of an error answer is read (for its message).
pub const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// Why a capped read failed.
#[derive(Debug)]
pub enum CappedError {
    /// The body is (or announced itself as) larger than the cap.
    TooLarge {
        limit: u64,
    },
    Transport(reqwest::Error),
}

/// The whole body of `resp`, failing as soon as it is known to exceed `limit` bytes.
pub async fn read_capped(mut resp: Response, limit: u64) -> Result<Bytes, CappedError> {
    if resp.content_length().is_some_and(|len| len > limit) {
        return Err(CappedError::TooLarge { limit });
    }
    let mut out = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(CappedError::Transport)? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(CappedError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// At most `limit` bytes of `resp`'s body, the rest dropped unread: for error answers,
/// which only feed a message.
pub async fn read_prefix(mut resp: Response, limit: u64) -> Bytes {
    let mut out = BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = (limit as usize).saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= limit {
            break;
        }
    }
    out.freeze()
}
