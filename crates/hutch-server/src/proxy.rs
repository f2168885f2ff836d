//! The sandbox proxy (:9443): routes a request to a sandbox by `X-Tensorlake-Sandbox-Id` or
//! `Host: <id-or-name>.local` and forwards it, unchanged and streamed both ways, to the
//! sandbox's agent over its dial-home connection. PTY websockets are bridged onto the
//! agent's framed PTY stream (see [`crate::pty`]).
//!
//! Error bodies are `{"error", "code"}` with the codes the Tensorlake SDK knows; the codes
//! that make the SDK replay a request (`SANDBOX_NOT_READY`, `SANDBOX_UNREACHABLE`) are only
//! used when the request never reached the agent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hutch_runtime::RuntimeError;
use hutch_runtime::agent::BoxError;

use crate::App;
use crate::db::Status;
use crate::error::ApiError;

/// Headers that describe one hop, not the message; HTTP/2 forbids most of them.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(forward).with_state(app)
}

fn proxy_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The sandbox a request is for: the header wins, then the `.local` host label.
fn target(headers: &HeaderMap) -> Option<String> {
    if let Some(id) = headers
        .get("x-tensorlake-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        return Some(id.to_string());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = host.strip_suffix(".local")?;
    (!label.is_empty() && !label.contains('.')).then(|| label.to_string())
}

async fn forward(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    if let Err(e) = app.auth.check(req.headers()) {
        return e.into_response();
    }
    let Some(target) = target(req.headers()) else {
        return proxy_error(
            StatusCode::BAD_REQUEST,
            "MISSING_SANDBOX_ID",
            "name the sandbox with Host: <sandbox-id>.local or X-Tensorlake-Sandbox-Id",
        );
    };
    let row = match app.sandboxes.find(&target) {
        Ok(Some(row)) => row,
        Ok(None) => {
            return proxy_error(
                StatusCode::NOT_FOUND,
                "SANDBOX_NOT_FOUND",
                format!("sandbox {target} not found"),
            );
        }
        Err(e) => return e.into_response(),
    };
    match row.status {
        Status::Running => {}
        Status::Pending => {
            return proxy_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SANDBOX_NOT_READY",
                format!("sandbox {} is still starting", row.id),
            );
        }
        Status::Terminated => {
            return proxy_error(
                StatusCode::NOT_FOUND,
                "SANDBOX_NOT_FOUND",
                format!(
                    "sandbox {} is terminated ({})",
                    row.id,
                    row.reason.as_deref().unwrap_or("unknown reason")
                ),
            );
        }
    }
    let agent = match app.sandboxes.agent(&row).await {
        Ok(agent) => agent,
        Err(e) => {
            return proxy_error(
                StatusCode::BAD_GATEWAY,
                "SANDBOX_UNREACHABLE",
                format!("sandbox {}: {}", row.id, e.message),
            );
        }
    };

    let (mut parts, body) = req.into_parts();
    if let Some(session) = crate::pty::websocket_session(parts.uri.path()) {
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        let token = crate::pty::token(&parts.uri, &parts.headers);
        return crate::pty::bridge(agent, session, token, upgrade).await;
    }

    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut builder = hyper::Request::builder().method(parts.method).uri(path);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && !name.as_str().starts_with("x-forwarded-") {
            builder = builder.header(name, value);
        }
    }
    let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
    let upstream = match builder.body(body) {
        Ok(req) => req,
        Err(e) => return proxy_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string()),
    };
    match agent.request(upstream).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(*name);
            }
            if parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
            {
                // Tell any proxy in front not to buffer the stream.
                parts
                    .headers
                    .insert("x-accel-buffering", HeaderValue::from_static("no"));
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(RuntimeError::AgentUnavailable { reason }) if reason.contains("did not connect") => {
            proxy_error(
                StatusCode::BAD_GATEWAY,
                "SANDBOX_UNREACHABLE",
                format!("sandbox {}: {reason}", row.id),
            )
        }
        Err(e) => proxy_error(
            StatusCode::BAD_GATEWAY,
            "PROXY_ERROR",
            format!("sandbox {}: {e}", row.id),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn routes_by_header_then_host_label() {
        assert_eq!(
            target(&headers(&[("host", "abc.local")])).as_deref(),
            Some("abc")
        );
        assert_eq!(
            target(&headers(&[("host", "abc.local:9443")])).as_deref(),
            Some("abc")
        );
        assert_eq!(
            target(&headers(&[
                ("host", "abc.local"),
                ("x-tensorlake-sandbox-id", "xyz")
            ]))
            .as_deref(),
            Some("xyz")
        );
        assert_eq!(target(&headers(&[("host", "localhost:9443")])), None);
        assert_eq!(target(&headers(&[("host", "a.b.local")])), None);
        assert_eq!(target(&headers(&[("host", ".local")])), None);
        assert_eq!(target(&headers(&[])), None);
    }
}
