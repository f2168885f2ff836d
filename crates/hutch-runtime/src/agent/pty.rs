//! The host end of a PTY stream (`POST /hutch/v1/pty/{id}/stream`): messages in through a
//! [`PtyInput`], messages out of a [`PtyStream`]. Each message is one SDK websocket message,
//! so a proxy bridges a websocket by moving payloads across unchanged.

use bytes::Bytes;
use http_body_util::BodyExt;
use hutch_wire::pty::encode_pty_frame;
use hutch_wire::{PtyFrameDecoder, PtyMessage};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::client::channel_body;
use super::link::RequestBody;
use crate::error::{Result, RuntimeError};

/// Sends client messages (input, resize, READY) into a PTY stream.
#[derive(Clone)]
pub struct PtyInput(mpsc::Sender<Bytes>);

impl PtyInput {
    /// A sender and the request body to hand to [`super::AgentClient::pty_stream`]. Dropping
    /// every sender ends the request body; the session and the output stream go on.
    pub fn channel(capacity: usize) -> (Self, RequestBody) {
        let (tx, body) = channel_body(capacity);
        (Self(tx), body)
    }

    pub async fn send(&self, message: &PtyMessage) -> Result<()> {
        self.send_payload(&message.encode()).await
    }

    /// Sends one raw websocket payload (opcode byte first) as it came from a client.
    pub async fn send_payload(&self, payload: &[u8]) -> Result<()> {
        let mut framed = Vec::with_capacity(payload.len() + hutch_wire::pty::PTY_LEN_PREFIX);
        encode_pty_frame(payload, &mut framed);
        self.0
            .send(Bytes::from(framed))
            .await
            .map_err(|_| RuntimeError::agent_disrupted("the PTY stream is closed"))
    }
}

/// The agent's messages of one PTY stream: output, then the exit.
pub struct PtyStream {
    body: Incoming,
    decoder: PtyFrameDecoder,
}

impl PtyStream {
    pub(super) fn new(body: Incoming) -> Self {
        Self {
            body,
            decoder: PtyFrameDecoder::default(),
        }
    }

    /// The next raw websocket payload; `Ok(None)` when the stream ended. It ends after the
    /// exit message, or without one when the session was deleted or another attach
    /// replaced this one.
    pub async fn next_payload(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let payload = self
                .decoder
                .next_payload()
                .map_err(|e| RuntimeError::agent_disrupted(format!("corrupt PTY stream: {e}")))?;
            if payload.is_some() {
                return Ok(payload);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(RuntimeError::agent_disrupted(format!(
                        "PTY stream interrupted: {e}"
                    )));
                }
                None if self.decoder.pending() == 0 => return Ok(None),
                None => {
                    return Err(RuntimeError::agent_disrupted(
                        "PTY stream ended mid-message",
                    ));
                }
            }
        }
    }

    /// The next message, decoded.
    pub async fn next(&mut self) -> Result<Option<PtyMessage>> {
        let Some(payload) = self.next_payload().await? else {
            return Ok(None);
        };
        PtyMessage::decode(&payload)
            .map(Some)
            .map_err(|e| RuntimeError::agent_disrupted(format!("corrupt PTY stream: {e}")))
    }
}
