//! PTY websockets: the SDK opens `GET /api/v1/pty/{session}/ws?token=…` on the proxy; the
//! proxy opens the agent's PTY stream ([`AgentClient::pty_stream`]) and moves the SDK's
//! binary messages across unchanged. The agent checks the token; its refusal is returned
//! before the upgrade, so a bad token is an HTTP error the client can read.

use std::time::Duration;

use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hutch_runtime::RuntimeError;
use hutch_runtime::agent::{AgentClient, PtyInput, PtyStream};
use hutch_wire::PtyMessage;
use hutch_wire::pty::{OP_DATA, OP_EXIT, PTY_TOKEN_HEADER};

use crate::error::ApiError;

/// More often than the Python client's 10 s read timeout, so a quiet terminal stays open.
const PING_EVERY: Duration = Duration::from_secs(4);

/// The session id, when `path` is a PTY websocket path.
pub fn websocket_session(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/pty/")?;
    let session = rest.strip_suffix("/ws")?;
    (!session.is_empty() && !session.contains('/')).then(|| session.to_string())
}

/// The session token: `?token=` or the `X-PTY-Token` header.
pub fn token(uri: &Uri, headers: &HeaderMap) -> String {
    uri.query()
        .and_then(|q| hutch_wire::query::param(q, "token"))
        .or_else(|| {
            headers
                .get(PTY_TOKEN_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        })
        .unwrap_or_default()
}

/// Opens the agent's stream, then upgrades the client's connection and bridges the two.
pub async fn bridge(
    agent: AgentClient,
    session: String,
    token: String,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (input, body) = PtyInput::channel(64);
    let output = match agent.pty_stream(&session, &token, body).await {
        Ok(output) => output,
        // The agent's refusal, with the status it stands for.
        Err(RuntimeError::ProcessFailure { code, message }) => {
            let status = match code.as_str() {
                "unauthorized" => StatusCode::UNAUTHORIZED,
                "forbidden" => StatusCode::FORBIDDEN,
                "not_found" => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            let code = match status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::FORBIDDEN => "forbidden",
                StatusCode::NOT_FOUND => "not_found",
                _ => "agent_error",
            };
            return ApiError::new(status, code, message).into_response();
        }
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "SANDBOX_UNREACHABLE",
                e.to_string(),
            )
            .into_response();
        }
    };
    upgrade
        .on_upgrade(move |socket| run(socket, input, output))
        .into_response()
}

async fn run(mut socket: WebSocket, input: PtyInput, mut output: PtyStream) {
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
                        b.push(OP_DATA);
                        b.extend_from_slice(t.as_bytes());
                        Bytes::from(b)
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                };
                if input.send_payload(&payload).await.is_err() {
                    break;
                }
            }
            message = output.next_payload() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) => {
                        close(&mut socket, 1011, "bad message from the sandbox").await;
                        return;
                    }
                };
                if message.first() == Some(&OP_EXIT)
                    && let Ok(PtyMessage::Exit(code)) = PtyMessage::decode(&message)
                {
                    exit_code = Some(code);
                }
                if socket.send(Message::Binary(message.into())).await.is_err() {
                    return;
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
