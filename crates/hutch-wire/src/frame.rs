//! Binary framing of raw process streams (`/hutch/v1/processes/...`).
//!
//! The Tensorlake API delivers output as JSON lines, which cannot carry arbitrary bytes nor a
//! partial last line. `hutch run` needs the exact bytes, so the agent also serves a framed
//! stream: `kind: u8 | seq: u64 BE | len: u32 BE | payload`. Output frames carry the sequence
//! number of their chunk in the process's output log, so a client that loses its connection
//! reattaches with `?from=<last seq + 1>` and gets neither a gap nor a duplicate.

/// Header bytes before each payload.
pub const HEADER_LEN: usize = 13;
/// Largest payload a decoder accepts; the agent's chunks are far smaller.
pub const MAX_PAYLOAD: usize = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// JSON [`StartedPayload`].
    Started = 1,
    Stdout = 2,
    Stderr = 3,
    /// JSON [`crate::ExitInfo`]; the last frame of a stream.
    Exit = 4,
    /// JSON [`crate::ErrorBody`]; the last frame of a stream.
    Error = 5,
    /// JSON [`GapPayload`]: the requested start was already evicted from the ring.
    Gap = 6,
}

impl FrameKind {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Started,
            2 => Self::Stdout,
            3 => Self::Stderr,
            4 => Self::Exit,
            5 => Self::Error,
            6 => Self::Gap,
            _ => return None,
        })
    }
}

/// Payload of a [`FrameKind::Started`] frame, the first of an exec's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StartedPayload {
    pub pid: i32,
    /// Milliseconds since the epoch.
    pub started_at: i64,
}

/// Payload of a [`FrameKind::Gap`] frame (its `seq` says the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GapPayload {
    pub first_available: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, seq: u64, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            seq,
            payload: payload.into(),
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_parts(self.kind, self.seq, &self.payload, out);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut out);
        out
    }
}

/// Encodes a frame without first owning its payload.
pub fn encode_parts(kind: FrameKind, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    UnknownKind(u8),
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            Self::TooLarge(n) => write!(f, "frame payload of {n} bytes exceeds {MAX_PAYLOAD}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Incremental decoder: feed it bytes as they arrive, take whole frames out.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = FrameKind::from_u8(self.buf[0]).ok_or(FrameError::UnknownKind(self.buf[0]))?;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&self.buf[1..9]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.buf[9..13]);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame {
            kind,
            seq: u64::from_be_bytes(seq),
            payload,
        }))
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_arbitrary_splits() {
        let frames = vec![
            Frame::new(FrameKind::Started, 0, b"{}".to_vec()),
            Frame::new(FrameKind::Stdout, 7, vec![0u8, 255, 10, 13]),
            Frame::new(FrameKind::Exit, 0, Vec::new()),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.encode_into(&mut wire);
        }
        for split in 0..wire.len() {
            let mut dec = FrameDecoder::default();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                dec.push(part);
                while let Some(f) = dec.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "split at {split}");
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn control_payloads_keep_their_json_shape() {
        let started = StartedPayload {
            pid: 7,
            started_at: 1_700_000_000_000,
        };
        assert_eq!(
            serde_json::to_string(&started).unwrap(),
            r#"{"pid":7,"started_at":1700000000000}"#
        );
        assert_eq!(
            serde_json::to_string(&GapPayload { first_available: 3 }).unwrap(),
            r#"{"first_available":3}"#
        );
        let back: StartedPayload = serde_json::from_str(r#"{"pid":7,"started_at":5}"#).unwrap();
        assert_eq!(back.pid, 7);
    }

    #[test]
    fn hostile_headers_are_refused() {
        let mut dec = FrameDecoder::default();
        dec.push(&[99; HEADER_LEN]);
        assert_eq!(dec.next_frame(), Err(FrameError::UnknownKind(99)));
        let mut dec = FrameDecoder::default();
        let mut wire = vec![2u8];
        wire.extend_from_slice(&0u64.to_be_bytes());
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        dec.push(&wire);
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
    }
}
