//! PTY session shapes: the Tensorlake SDK's `/api/v1/pty` JSON bodies, its websocket message
//! format, and the length-prefixed framing Hutch carries those messages in.
//!
//! The SDK talks to a PTY over a websocket of binary messages whose first byte is an opcode
//! ([`OP_DATA`], [`OP_RESIZE`], [`OP_READY`], [`OP_EXIT`]). The agent serves the same
//! messages, unchanged, over one full-duplex HTTP/2 stream
//! (`POST /hutch/v1/pty/{session_id}/stream?token=...`), each one prefixed by its length as a
//! `u32` big-endian, so the host proxy bridges a websocket by wrapping and unwrapping
//! messages without reading them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ProcessUser;

/// Client → agent: bytes typed into the terminal. Agent → client: terminal output.
pub const OP_DATA: u8 = 0x00;
/// Client → agent: `OP_RESIZE, cols: u16 BE, rows: u16 BE` (columns first, as the SDK packs
/// it with `struct.pack(">BHH", OP_RESIZE, cols, rows)`).
pub const OP_RESIZE: u8 = 0x01;
/// Client → agent: the client is listening; the agent holds output until it arrives.
pub const OP_READY: u8 = 0x02;
/// Agent → client: `OP_EXIT, code: i32 BE`, the last message of a stream. A signal death is
/// reported as 128 + the signal number.
pub const OP_EXIT: u8 = 0x03;

/// Header carrying the session token, as the SDK sends it on the websocket handshake; the
/// agent also accepts the `token` query parameter.
pub const PTY_TOKEN_HEADER: &str = "x-pty-token";
/// Bytes of the length prefix before each message of a PTY stream.
pub const PTY_LEN_PREFIX: usize = 4;
/// Largest message a decoder accepts (a big paste fits many times over).
pub const PTY_MAX_MESSAGE: usize = 8 << 20;

/// Body of `POST /api/v1/pty`, as the Python SDK builds it (`rows`/`cols` default to 24x80
/// there too).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreatePty {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default = "default_rows")]
    pub rows: u16,
    #[serde(default = "default_cols")]
    pub cols: u16,
    /// Hutch extension (the SDK never sends it): the user to run as, else the sandbox default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUser>,
}

impl Default for CreatePty {
    fn default() -> Self {
        Self {
            command: String::new(),
            args: Vec::new(),
            env: None,
            working_dir: None,
            rows: default_rows(),
            cols: default_cols(),
            user: None,
        }
    }
}

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PtyStatus {
    Running,
    Exited,
}

/// A PTY session: the answer to `POST /api/v1/pty` (with `token`) and an entry of
/// `GET /api/v1/pty` (without it: listing must not hand out attach rights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PtySession {
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub pid: i64,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    pub status: PtyStatus,
    /// Set once the process ended: its exit code, or 128 + the signal that killed it.
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub rows: u16,
    pub cols: u16,
    /// Streams attached right now (0 or 1: a new attach replaces the previous one).
    pub client_count: u32,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
}

/// Body of `GET /api/v1/pty`, in the `{"sessions": [...]}` form the Tensorlake CLI accepts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListPtySessions {
    pub sessions: Vec<PtySession>,
}

/// One websocket message of the SDK's PTY protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtyMessage {
    Data(Vec<u8>),
    Resize { cols: u16, rows: u16 },
    Ready,
    Exit(i32),
}

#[derive(Debug, PartialEq, Eq)]
pub enum PtyMessageError {
    Empty,
    UnknownOpcode(u8),
    /// The opcode's payload has the wrong length.
    Malformed(u8, usize),
    TooLarge(usize),
}

impl std::fmt::Display for PtyMessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => write!(f, "empty PTY message"),
            Self::UnknownOpcode(op) => write!(f, "unknown PTY opcode {op:#04x}"),
            Self::Malformed(op, len) => {
                write!(
                    f,
                    "PTY message with opcode {op:#04x} has a bad length ({len} bytes)"
                )
            }
            Self::TooLarge(n) => {
                write!(f, "PTY message of {n} bytes exceeds {PTY_MAX_MESSAGE}")
            }
        }
    }
}

impl std::error::Error for PtyMessageError {}

impl PtyMessage {
    /// The websocket payload: opcode byte, then the opcode's fields.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Data(bytes) => {
                let mut out = Vec::with_capacity(1 + bytes.len());
                out.push(OP_DATA);
                out.extend_from_slice(bytes);
                out
            }
            Self::Resize { cols, rows } => {
                let mut out = vec![OP_RESIZE];
                out.extend_from_slice(&cols.to_be_bytes());
                out.extend_from_slice(&rows.to_be_bytes());
                out
            }
            Self::Ready => vec![OP_READY],
            Self::Exit(code) => {
                let mut out = vec![OP_EXIT];
                out.extend_from_slice(&code.to_be_bytes());
                out
            }
        }
    }

    /// Parses a websocket payload. Trailing bytes after a resize or exit are tolerated, as
    /// the SDK's reader tolerates them.
    pub fn decode(payload: &[u8]) -> Result<Self, PtyMessageError> {
        let (&op, rest) = payload.split_first().ok_or(PtyMessageError::Empty)?;
        match op {
            OP_DATA => Ok(Self::Data(rest.to_vec())),
            OP_RESIZE if rest.len() >= 4 => Ok(Self::Resize {
                cols: u16::from_be_bytes([rest[0], rest[1]]),
                rows: u16::from_be_bytes([rest[2], rest[3]]),
            }),
            OP_READY => Ok(Self::Ready),
            OP_EXIT if rest.len() >= 4 => Ok(Self::Exit(i32::from_be_bytes([
                rest[0], rest[1], rest[2], rest[3],
            ]))),
            OP_RESIZE | OP_EXIT => Err(PtyMessageError::Malformed(op, payload.len())),
            other => Err(PtyMessageError::UnknownOpcode(other)),
        }
    }
}

/// Appends `payload` (one websocket message) to `out`, prefixed by its length.
pub fn encode_pty_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Incremental decoder of a length-prefixed PTY stream: push bytes as they arrive, take
/// whole message payloads out.
#[derive(Default)]
pub struct PtyFrameDecoder {
    buf: Vec<u8>,
}

impl PtyFrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete payload, `Ok(None)` if more bytes are needed.
    pub fn next_payload(&mut self) -> Result<Option<Vec<u8>>, PtyMessageError> {
        if self.buf.len() < PTY_LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > PTY_MAX_MESSAGE {
            return Err(PtyMessageError::TooLarge(len));
        }
        if self.buf.len() < PTY_LEN_PREFIX + len {
            return Ok(None);
        }
        let payload = self.buf[PTY_LEN_PREFIX..PTY_LEN_PREFIX + len].to_vec();
        self.buf.drain(..PTY_LEN_PREFIX + len);
        Ok(Some(payload))
    }

    /// Bytes received that do not yet form a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_sdk_bytes() {
        // struct.pack(">BHH", 1, 100, 30)
        assert_eq!(
            PtyMessage::Resize {
                cols: 100,
                rows: 30
            }
            .encode(),
            vec![1, 0, 100, 0, 30]
        );
        assert_eq!(PtyMessage::Exit(-1).encode(), vec![3, 255, 255, 255, 255]);
        assert_eq!(PtyMessage::Ready.encode(), vec![2]);
        assert_eq!(
            PtyMessage::Data(b"ls\n".to_vec()).encode(),
            b"\0ls\n".to_vec()
        );
        for msg in [
            PtyMessage::Data(vec![0, 255]),
            PtyMessage::Resize { cols: 1, rows: 2 },
            PtyMessage::Ready,
            PtyMessage::Exit(137),
        ] {
            assert_eq!(PtyMessage::decode(&msg.encode()), Ok(msg));
        }
        assert_eq!(
            PtyMessage::decode(&[1, 0]),
            Err(PtyMessageError::Malformed(1, 2))
        );
        assert_eq!(
            PtyMessage::decode(&[9]),
            Err(PtyMessageError::UnknownOpcode(9))
        );
        assert_eq!(PtyMessage::decode(&[]), Err(PtyMessageError::Empty));
    }

    #[test]
    fn frames_survive_arbitrary_splits() {
        let payloads = vec![
            vec![2u8],
            Vec::new(),
            vec![0, b'h', b'i'],
            vec![3, 0, 0, 0, 3],
        ];
        let mut wire = Vec::new();
        for p in &payloads {
            encode_pty_frame(p, &mut wire);
        }
        for split in 0..wire.len() {
            let mut dec = PtyFrameDecoder::default();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                dec.push(part);
                while let Some(p) = dec.next_payload().expect("valid") {
                    got.push(p);
                }
            }
            assert_eq!(got, payloads, "split at {split}");
            assert_eq!(dec.pending(), 0);
        }
        let mut dec = PtyFrameDecoder::default();
        dec.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            dec.next_payload(),
            Err(PtyMessageError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn create_accepts_the_python_sdk_payload() {
        let body = r#"{"command":"/bin/bash","rows":24,"cols":80,
            "env":{"TERM":"xterm-256color"},"working_dir":"/tmp","args":["-l"]}"#;
        let req: CreatePty = serde_json::from_str(body).expect("parses");
        assert_eq!((req.rows, req.cols), (24, 80));
        assert_eq!(req.args, vec!["-l"]);
        let minimal: CreatePty = serde_json::from_str(r#"{"command":"sh"}"#).expect("parses");
        assert_eq!((minimal.rows, minimal.cols), (24, 80));
    }
}
