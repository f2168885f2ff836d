//! PTY websockets: the SDK opens `GET /api/v1/pty/{session}/ws?token=…` on the proxy; the
//! proxy opens the agent's full-duplex `POST /hutch/v1/pty/{session}/stream?token=…` and
//! moves the SDK's binary messages across unchanged, each one length-prefixed (u32 BE) on
//! the HTTP/2 stream. The agent checks the token; its refusal is returned before the
//! upgrade, so a bad token is an HTTP error the client can read.

use std::time::Duration;

use axum::body::Body;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hutch_runtime::agent::{AgentClient, channel_body};

use crate::error::ApiError;

/// The SDK's opcodes (first byte of each binary message).
const OP_EXIT: u8 = 0x03;
/// More often than the Python client's 10 s read timeout, so a quiet terminal stays open.
const PING_EVERY: Duration = Duration::from_secs(4);
/// Largest message accepted from the agent.
const MAX_MESSAGE: usize = 4 << 20;

/// The session id, when `path` is a PTY websocket path.
pub fn websocket_session(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/pty/")?;
    let session = rest.strip_suffix("/ws")?;
    (!session.is_empty() && !session.contains('/')).then(|| session.to_string())
}

/// The session token: `?token=` or the `X-PTY-Token` header.
pub fn token(uri: &Uri, headers: &HeaderMap) -> String {
    let from_query = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(percent_decode)
    });
    from_query
        .or_else(|| {
            headers
                .get("x-pty-token")
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Opens the agent's stream, then upgrades the client's connection and bridges the two.
pub async fn bridge(
    agent: AgentClient,
    session: String,
    token: String,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (to_agent, body) = channel_body(64);
    let request = hyper::Request::builder()
        .method("POST")
        .uri(format!(
            "/hutch/v1/pty/{}/stream?token={}",
            encode_query(&session),
            encode_query(&token)
        ))
        .body(body);
    let request = match request {
        Ok(r) => r,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let response = match agent.request(request).await {
        Ok(r) => r,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "SANDBOX_UNREACHABLE",
                e.to_string(),
            )
            .into_response();
        }
    };
    if !response.status().is_success() {
        // The agent's refusal (unknown session, bad token) as it gave it.
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, Body::new(body));
    }
    let from_agent = response.into_body();
    upgrade
        .on_upgrade(move |socket| async move {
            run(socket, to_agent, from_agent).await;
        })
        .into_response()
}

async fn run(
    mut socket: WebSocket,
    to_agent: tokio::sync::mpsc::Sender<Bytes>,
    mut from_agent: hyper::body::Incoming,
) {
    let mut pending = BytesMut::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut exit_code: Option<i32> = None;
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let payload = match incoming {
                    Some(Ok(Message::Binary(b))) => b,
                    // Text is typed input from simple clients.
                    Some(Ok(Message::Text(t))) => {
                        let mut b = Vec::with_capacity(t.len() + 1);
                        b.push(0x00);
                        b.extend_from_slice(t.as_bytes());
                        Bytes::from(b)
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                };
                let mut framed = BytesMut::with_capacity(payload.len() + 4);
                framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                framed.extend_from_slice(&payload);
                if to_agent.send(framed.freeze()).await.is_err() {
                    break;
                }
            }
            frame = from_agent.frame() => {
                let Some(Ok(frame)) = frame else { break };
                let Ok(data) = frame.into_data() else { continue };
                pending.extend_from_slice(&data);
                while pending.len() >= 4 {
                    let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
                    if len > MAX_MESSAGE {
                        close(&mut socket, 1011, "bad message from the sandbox").await;
                        return;
                    }
                    if pending.len() < 4 + len {
                        break;
                    }
                    pending.advance(4);
                    let message = pending.split_to(len).freeze();
                    if message.first() == Some(&OP_EXIT) && message.len() >= 5 {
                        exit_code = Some(i32::from_be_bytes([message[1], message[2], message[3], message[4]]));
                    }
                    if socket.send(Message::Binary(message)).await.is_err() {
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
    match exit_code {
        Some(code) => close(&mut socket, 1000, &format!("exit:{code}")).await,
        None => close(&mut socket, 1011, "session terminated").await,
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_and_its_token() {
        assert_eq!(
            websocket_session("/api/v1/pty/abc/ws").as_deref(),
            Some("abc")
        );
        assert_eq!(websocket_session("/api/v1/pty/abc"), None);
        assert_eq!(websocket_session("/api/v1/pty//ws"), None);
        let uri: Uri = "/api/v1/pty/abc/ws?x=1&token=a%2Fb".parse().unwrap();
        assert_eq!(token(&uri, &HeaderMap::new()), "a/b");
        let mut headers = HeaderMap::new();
        headers.insert("x-pty-token", "tok".parse().unwrap());
        let uri: Uri = "/api/v1/pty/abc/ws".parse().unwrap();
        assert_eq!(token(&uri, &headers), "tok");
    }
}
