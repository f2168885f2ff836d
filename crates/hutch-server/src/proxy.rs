//! The sandbox proxy (:9443): routes a request to a sandbox by `X-Tensorlake-Sandbox-Id`,
//! `Host: <id>.local` or `Host: <name>.<namespace>.local`, checks that the caller's key
//! reaches the sandbox's namespace, and forwards it, unchanged and streamed both ways, to the
//! sandbox's agent over its dial-home connection. PTY websockets are bridged onto the
//! agent's framed PTY stream (see [`crate::pty`]).
//!
//! Error bodies are `{"error", "code"}` with the codes the Tensorlake SDK knows; the codes
//! that make the SDK replay a request (`SANDBOX_NOT_READY`, `SANDBOX_UNREACHABLE`) are only
//! used when the request never reached the agent.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hutch_runtime::agent::{AgentClient, BoxError};
use hutch_runtime::{AgentUnreachable, RuntimeError};

use hutch_state::StateError;
use hutch_state::db::{ApiKey, SandboxRow, Status};

use crate::App;
use crate::auth::out_of_scope;
use crate::error::ApiError;

/// Headers that describe one hop, not the message; HTTP/2 forbids most of them.
pub(crate) const HOP_BY_HOP: &[&str] = &[
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

/// Credentials meant for Hutch, never for the sandbox: code inside must not see a caller's
/// API key or cookies (the agent is inside the sandbox's trust boundary, not Hutch's).
const CREDENTIALS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// Whether a client's request header is passed on to the sandbox's agent.
fn forwarded(name: &str) -> bool {
    !HOP_BY_HOP.contains(&name) && !CREDENTIALS.contains(&name) && !name.starts_with("x-forwarded-")
}

pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new()
        .fallback(forward)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::csrf::proxy,
        ))
        .with_state(app)
}

fn proxy_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// The sandbox a request names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A sandbox id, in whatever namespace it lives.
    Id(String),
    /// A sandbox's name (or id) within one namespace: names are only unique per namespace,
    /// so a name alone would pick one tenant's sandbox for another.
    Named { name: String, namespace: String },
    /// A user port of a sandbox, by id: `<port>-<id>`.
    Port { port: u16, id: String },
}

impl Target {
    /// `<id>`, `<port>-<id>` or `<name>.<namespace>`: a namespace has no dots, nor has a
    /// name or an id; an id is hex, so `<digits>-<hex>` is never one.
    fn parse(label: &str) -> Option<Self> {
        let label = label.to_ascii_lowercase();
        match label.split_once('.') {
            None if !label.is_empty() => Some(Self::user_port(&label).unwrap_or(Self::Id(label))),
            Some((name, namespace))
                if !name.is_empty() && !namespace.is_empty() && !namespace.contains('.') =>
            {
                Some(Self::Named {
                    name: name.to_string(),
                    namespace: namespace.to_string(),
                })
            }
            _ => None,
        }
    }

    fn user_port(label: &str) -> Option<Self> {
        let (port, id) = label.split_once('-')?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        // The management port's form is the sandbox itself.
        Some(if port == crate::ingress::MANAGEMENT_PORT {
            Self::Id(id.to_string())
        } else {
            Self::Port {
                port,
                id: id.to_string(),
            }
        })
    }
}

/// The sandbox a request is for: `X-Tensorlake-Sandbox-Id` wins, then the host:
/// `<label>.local` (what the SDKs send on loopback) or `<label>.<public host>`
/// (`--public-url`), where the label is `<id>`, `<port>-<id>` or `<name>.<namespace>`, and
/// `<port>-<id>.localhost` (what browsers resolve to loopback).
fn target(headers: &HeaderMap, uri: &Uri, public_host: Option<&str>) -> Option<Target> {
    if let Some(id) = headers
        .get("x-tensorlake-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        return Target::parse(id);
    }
    // HTTP/2 carries the authority in the URI, HTTP/1.1 in Host.
    let host = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if let Some(label) = host.strip_suffix(".localhost") {
        // Browsers resolve *.localhost to loopback, so user ports are reachable there; the
        // management API is not: such origins may call the lifecycle API (see `csrf`).
        return Target::user_port(label).filter(|t| matches!(t, Target::Port { .. }));
    }
    let label = [Some("local"), public_host]
        .into_iter()
        .flatten()
        .find_map(|suffix| host.strip_suffix(suffix)?.strip_suffix('.'))?;
    Target::parse(label)
}

/// The sandbox `target` names, if the request's key reaches its namespace.
fn resolve(
    app: &App,
    key: Option<&ApiKey>,
    target: &Target,
) -> Result<Option<SandboxRow>, ApiError> {
    let row = match target {
        Target::Id(id) | Target::Port { id, .. } => app.sandboxes.by_id(id)?,
        Target::Named { name, namespace } => {
            // Refused before the lookup, so a key learns nothing of other namespaces' names.
            if let Some(key) = key.filter(|k| !k.covers(namespace)) {
                return Err(out_of_scope(key, namespace));
            }
            match app.sandboxes.get(namespace, name) {
                Ok(row) => Some(row),
                Err(StateError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        }
    };
    match (key, row) {
        (Some(key), Some(row)) if !key.covers(&row.namespace) => {
            Err(out_of_scope(key, &row.namespace))
        }
        (_, row) => Ok(row),
    }
}

async fn forward(State(app): State<Arc<App>>, req: Request<Body>) -> Response {
    let Some(target) = target(req.headers(), req.uri(), app.ingress.public_host()) else {
        return proxy_error(
            StatusCode::BAD_REQUEST,
            "MISSING_SANDBOX_ID",
            "name the sandbox with Host: <sandbox-id>.local, Host: <name>.<namespace>.local, \
             Host: <port>-<sandbox-id>.localhost or X-Tensorlake-Sandbox-Id",
        );
    };
    if let Target::Port { port, id } = &target {
        return user_port(&app, *port, id, req).await;
    }
    let key = match app.auth.check(req.headers()) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let row = match resolve(&app, key.as_ref(), &target) {
        Ok(Some(row)) => row,
        Ok(None) => return not_found(&target),
        Err(e) => return e.into_response(),
    };
    let agent = match running_agent(&app, &row).await {
        Ok(agent) => agent,
        Err(resp) => return resp,
    };
    if req.uri().path() == "/api/v1/tunnels/tcp" {
        let port = match crate::ports::tunnel_port(req.uri().query()) {
            Ok(port) => port,
            Err(e) => return e.into_response(),
        };
        return crate::ports::tunnel(agent, &row.id, port, req).await;
    }

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
        if forwarded(name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    let body = body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync();
    let upstream = match builder.body(body) {
        Ok(req) => req,
        Err(e) => return proxy_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string()),
    };
    // The sandbox is not idle while this exchange is open (its answer may stream long).
    let busy = app.sandboxes.busy(&row.id);
    match agent.request(upstream).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            let body = body.map_frame(move |frame| {
                let _open = &busy;
                frame
            });
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
        Err(e) => forwarding_failed(&row.id, e),
    }
}

fn not_found(target: &Target) -> Response {
    let what = match target {
        Target::Id(id) | Target::Port { id, .. } => id.clone(),
        Target::Named { name, namespace } => format!("{name} in namespace {namespace}"),
    };
    proxy_error(
        StatusCode::NOT_FOUND,
        "SANDBOX_NOT_FOUND",
        format!("sandbox {what} not found"),
    )
}

/// The agent of a sandbox that runs; otherwise the answer that says why not.
async fn running_agent(app: &App, row: &SandboxRow) -> Result<AgentClient, Response> {
    match row.status {
        Status::Running => app.sandboxes.touch(&row.id),
        Status::Pending => {
            return Err(proxy_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SANDBOX_NOT_READY",
                format!("sandbox {} is still starting", row.id),
            ));
        }
        Status::Terminated => {
            return Err(proxy_error(
                StatusCode::NOT_FOUND,
                "SANDBOX_NOT_FOUND",
                format!(
                    "sandbox {} is terminated ({})",
                    row.id,
                    row.reason.as_deref().unwrap_or("unknown reason")
                ),
            ));
        }
    }
    app.sandboxes.agent(row).await.map_err(|e| {
        proxy_error(
            StatusCode::BAD_GATEWAY,
            "SANDBOX_UNREACHABLE",
            format!("sandbox {}: {e}", row.id),
        )
    })
}

/// A request for a user port: served when the port is exposed, and, unless the sandbox
/// allows unauthenticated access, only with a key that reaches its namespace (which loopback
/// servers without `--require-keys` do not ask for).
async fn user_port(app: &App, port: u16, id: &str, req: Request<Body>) -> Response {
    let row = match app.sandboxes.by_id(id) {
        Ok(Some(row)) => row,
        Ok(None) => {
            return not_found(&Target::Port {
                port,
                id: id.to_string(),
            });
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let open = row.spec["allow_unauthenticated_access"].as_bool() == Some(true);
    let exposed = crate::lifecycle::port_list(&row.spec).contains(&port);
    if !(open && exposed) {
        match app.auth.check(req.headers()) {
            Ok(Some(key)) if !key.covers(&row.namespace) => {
                return out_of_scope(&key, &row.namespace).into_response();
            }
            Ok(_) => {}
            Err(e) => return e.into_response(),
        }
    }
    if !exposed {
        return proxy_error(
            StatusCode::FORBIDDEN,
            "PORT_NOT_EXPOSED",
            format!(
                "port {port} of sandbox {} is not exposed (expose it with \
                 exposed_ports on create or update, or `sandbox.expose_ports([{port}])`)",
                row.id
            ),
        );
    }
    if let Err(resp) = running_agent(app, &row).await {
        return resp;
    }
    crate::ports::forward(&app.ports, &row.id, port, req).await
}

/// The answer to a request the agent did not answer. Only one that never reached the agent
/// gets the code the SDK replays on; the kind says so, never the message's wording.
fn forwarding_failed(id: &str, e: RuntimeError) -> Response {
    match e {
        RuntimeError::AgentUnavailable {
            kind: AgentUnreachable::NeverConnected,
            reason,
        } => proxy_error(
            StatusCode::BAD_GATEWAY,
            "SANDBOX_UNREACHABLE",
            format!("sandbox {id}: {reason}"),
        ),
        e => proxy_error(
            StatusCode::BAD_GATEWAY,
            "PROXY_ERROR",
            format!("sandbox {id}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn error_of(resp: Response) -> (StatusCode, serde_json::Value) {
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn only_a_request_that_never_reached_the_agent_is_marked_replayable() {
        let never = RuntimeError::AgentUnavailable {
            kind: AgentUnreachable::NeverConnected,
            reason: "the agent did not connect within 10s".into(),
        };
        let (status, body) = error_of(forwarding_failed("sbx", never)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body.to_string().matches("SANDBOX_UNREACHABLE").count(),
            1,
            "{body}"
        );
        assert!(
            body.to_string()
                .contains("sandbox sbx: the agent did not connect within 10s"),
            "{body}"
        );
        // Wording that merely looks like it is not enough: the request may have arrived.
        let lost = RuntimeError::AgentUnavailable {
            kind: AgentUnreachable::Disrupted,
            reason: "the agent did not connect; connection lost".into(),
        };
        let (status, body) = error_of(forwarding_failed("sbx", lost)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.to_string().contains("PROXY_ERROR"), "{body}");
        assert!(!body.to_string().contains("SANDBOX_UNREACHABLE"), "{body}");
    }

    #[test]
    fn credentials_never_reach_the_sandbox() {
        for name in [
            "authorization",
            "cookie",
            "proxy-authorization",
            "host",
            "x-forwarded-for",
        ] {
            assert!(!forwarded(name), "{name}");
        }
        for name in [
            "content-type",
            "x-pty-token",
            "accept",
            "x-tensorlake-sandbox-id",
        ] {
            assert!(forwarded(name), "{name}");
        }
    }

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

    fn at(h: &HeaderMap) -> Option<Target> {
        target(h, &Uri::from_static("/"), Some("sbx.example.com"))
    }

    fn id(s: &str) -> Option<Target> {
        Some(Target::Id(s.into()))
    }

    #[test]
    fn routes_by_header_then_host_label() {
        assert_eq!(at(&headers(&[("host", "abc.local")])), id("abc"));
        assert_eq!(at(&headers(&[("host", "ABC.Local:9443")])), id("abc"));
        assert_eq!(
            at(&headers(&[
                ("host", "abc.local"),
                ("x-tensorlake-sandbox-id", "xyz")
            ])),
            id("xyz")
        );
        assert_eq!(at(&headers(&[("host", "localhost:9443")])), None);
        assert_eq!(at(&headers(&[("host", ".local")])), None);
        assert_eq!(at(&headers(&[("host", "a..local")])), None);
        assert_eq!(at(&headers(&[("host", "a.b.c.local")])), None);
        assert_eq!(at(&headers(&[])), None);
        // Browsers resolve *.localhost to loopback; a public URL's subdomains are served.
        assert_eq!(at(&headers(&[("host", "abc.localhost:9443")])), None);
        assert_eq!(at(&headers(&[("host", "abc.sbx.example.com")])), id("abc"));
        assert_eq!(at(&headers(&[("host", "abc.other.example.com")])), None);
        assert_eq!(at(&headers(&[("host", "sbx.example.com")])), None);
    }

    #[test]
    fn user_ports_are_routed_by_id() {
        let port = |port: u16, id: &str| {
            Some(Target::Port {
                port,
                id: id.into(),
            })
        };
        assert_eq!(
            at(&headers(&[("host", "8080-abc123.localhost:9443")])),
            port(8080, "abc123")
        );
        assert_eq!(
            at(&headers(&[("host", "3000-ABC.sbx.example.com")])),
            port(3000, "abc")
        );
        assert_eq!(at(&headers(&[("host", "80-abc.local")])), port(80, "abc"));
        // The management port is the sandbox itself.
        assert_eq!(at(&headers(&[("host", "9501-abc.local")])), id("abc"));
        // Not ports: out of range, zero, a non-hex id, a name.
        assert_eq!(
            at(&headers(&[("host", "99999-abc.local")])),
            id("99999-abc")
        );
        assert_eq!(at(&headers(&[("host", "0-abc.local")])), id("0-abc"));
        assert_eq!(at(&headers(&[("host", "8080-web.local")])), id("8080-web"));
        assert_eq!(
            at(&headers(&[("host", "8080-web.team.local")])),
            Some(Target::Named {
                name: "8080-web".into(),
                namespace: "team".into()
            })
        );
    }

    #[test]
    fn names_are_routed_only_with_their_namespace() {
        let named = |name: &str, ns: &str| {
            Some(Target::Named {
                name: name.into(),
                namespace: ns.into(),
            })
        };
        assert_eq!(
            at(&headers(&[("host", "web.team-a.local:9443")])),
            named("web", "team-a")
        );
        assert_eq!(
            at(&headers(&[("x-tensorlake-sandbox-id", "web.default")])),
            named("web", "default")
        );
        // A bare label is an id, never a name: `web.local` no longer finds `default`'s web.
        assert_eq!(at(&headers(&[("host", "web.local")])), id("web"));
    }
}
