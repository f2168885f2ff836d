//! One attach to a PTY session: `POST /hutch/v1/pty/{id}/stream`, a full-duplex HTTP/2
//! stream of length-prefixed SDK websocket messages.
//!
//! The request body carries the client's messages (input, resize, READY), the response body
//! the agent's (output, then exit). Output waits until the client sent READY, then the
//! session's undelivered output goes out followed by live output. A new attach ends the
//! previous stream; a stream that ends (client gone) leaves the session running and its
//! output buffered for the next one.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hutch_wire::pty::encode_pty_frame;
use hutch_wire::{PtyFrameDecoder, PtyMessage};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use tokio::sync::{mpsc, watch};

use super::terminal::{Terminal, same_secret};
use super::{LINGER_DELIVERED, PtySessions};
use crate::http::{self, ApiError, Body};

/// Attaches to session `id` with `token` (the query parameter or the `X-PTY-Token` header).
pub fn attach(
    sessions: &PtySessions,
    id: &str,
    token: Option<String>,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let attached = sessions.with(id, |s| {
        let Some(token) = token else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "attaching to a PTY session takes the token its creation returned \
                 (`token` query parameter or X-PTY-Token header)",
            ));
        };
        if !same_secret(&s.token, &token) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("wrong token for PTY session {id:?}"),
            ));
        }
        let generation = *s.attach.borrow() + 1;
        s.attach.send_replace(generation);
        s.attached = true;
        Ok((generation, s.terminal.clone(), s.attach.subscribe()))
    });
    let (generation, terminal, superseded) =
        attached.ok_or_else(|| PtySessions::not_found(id))??;

    let (tx, response) = http::channel(8);
    let (ready_tx, ready_rx) = watch::channel(false);
    let input = tokio::spawn(pump_input(
        sessions.clone(),
        id.to_string(),
        terminal,
        body,
        ready_tx,
    ));
    let sessions = sessions.clone();
    let id = id.to_string();
    tokio::spawn(async move {
        pump_output(&sessions, &id, generation, superseded, ready_rx, tx).await;
        input.abort();
        sessions.with(&id, |s| {
            if *s.attach.borrow() == generation {
                s.attached = false;
            }
        });
    });
    Ok(http::streaming("application/x-hutch-pty", response))
}

fn message(msg: &PtyMessage) -> Bytes {
    let mut out = Vec::new();
    encode_pty_frame(&msg.encode(), &mut out);
    Bytes::from(out)
}

/// Resolves once attach `generation` is no longer the session's current one, or the
/// session is gone.
async fn superseded(attach: &mut watch::Receiver<u64>, generation: u64) {
    loop {
        if *attach.borrow_and_update() != generation {
            return;
        }
        if attach.changed().await.is_err() {
            return;
        }
    }
}

async fn pump_output(
    sessions: &PtySessions,
    id: &str,
    generation: u64,
    mut attach: watch::Receiver<u64>,
    mut ready: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
) {
    // A client that hangs up its side without READY never gets output; the stream then
    // lasts until it is replaced or the response is dropped.
    let wait_ready = async {
        if ready.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = wait_ready => {}
        () = superseded(&mut attach, generation) => return,
        () = tx.closed() => return,
    }
    loop {
        let Some((slice, mut changed, exit_code)) = sessions.with(id, |s| {
            (
                s.output.read_from(s.delivered),
                s.output.subscribe(),
                s.exit_code,
            )
        }) else {
            return;
        };
        let mut pending: Vec<(u64, Bytes)> = slice
            .chunks
            .into_iter()
            .map(|c| (c.seq + 1, message(&PtyMessage::Data(c.data.to_vec()))))
            .collect();
        if slice.closed {
            pending.push((
                u64::MAX,
                message(&PtyMessage::Exit(exit_code.unwrap_or(-1))),
            ));
        }
        for (next, bytes) in pending {
            let permit = tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = superseded(&mut attach, generation) => return,
            };
            // Counted as delivered once handed to this stream: a client that drops the
            // connection right now loses what is in flight, as with a websocket.
            let current = sessions
                .with(id, |s| {
                    let current = *s.attach.borrow() == generation;
                    if current && next != u64::MAX {
                        s.delivered = next;
                    }
                    current
                })
                .unwrap_or(false);
            if !current {
                return;
            }
            permit.send(bytes);
        }
        if slice.closed {
            sessions.forget_later(id.to_string(), LINGER_DELIVERED);
            return;
        }
        tokio::select! {
            changed = changed.changed() => if changed.is_err() { return },
            () = superseded(&mut attach, generation) => return,
            () = tx.closed() => return,
        }
    }
}

async fn pump_input(
    sessions: PtySessions,
    id: String,
    terminal: Arc<Terminal>,
    mut body: Incoming,
    ready: watch::Sender<bool>,
) {
    let mut decoder = PtyFrameDecoder::default();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(&data);
        loop {
            let payload = match decoder.next_payload() {
                Ok(Some(payload)) => payload,
                Ok(None) => break,
                // A corrupt length prefix: nothing after it can be trusted.
                Err(_) => return,
            };
            match PtyMessage::decode(&payload) {
                // Input to a terminal whose process is gone goes nowhere, as on a real one.
                Ok(PtyMessage::Data(bytes)) => {
                    let _ = terminal.write_all(&bytes).await;
                }
                Ok(PtyMessage::Resize { cols, rows }) => {
                    if terminal.resize(rows, cols).is_ok() {
                        sessions.with(&id, |s| {
                            s.rows = rows;
                            s.cols = cols;
                        });
                    }
                }
                Ok(PtyMessage::Ready) => {
                    ready.send_replace(true);
                }
                // The SDK's clients send nothing else; unknown messages are ignored, as its
                // server ignores them.
                Ok(PtyMessage::Exit(_)) | Err(_) => {}
            }
        }
    }
}
