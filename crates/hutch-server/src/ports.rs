//! The sandbox's own servers, through the proxy: exposed ports (`<port>-<id>.<ingress host>`,
//! HTTP and upgrades such as websockets) and TCP tunnels (`/api/v1/tunnels/tcp?port=N`, the
//! SDK's `create_tunnel`, binary websocket messages carrying the bytes).
//!
//! Both ride [`AgentClient::tcp`]: the agent connects to the port on the sandbox's loopback,
//! so nothing on the host connects into a sandbox's network, and sandboxes without a
//! network serve ports too.

use std::time::Duration;

use axum::body::Body;
use axum::http::Uri;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hutch_runtime::RuntimeError;
use hutch_runtime::agent::{AgentClient, AgentTcp};
use hutch_state::keys::SECRET_PREFIX;
use hutch_state::sandboxes::Sandboxes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;

use crate::error::ApiError;

/// The most one tunnel websocket message may carry (the SDKs send 16 KiB).
const TUNNEL_MESSAGE: usize = 1 << 20;
/// Keeps quiet tunnels open through idle-closing middleboxes.
const TUNNEL_PING: Duration = Duration::from_secs(15);
/// How long an exposed port may take to answer the request head.
const RESPONSE_HEAD: Duration = Duration::from_secs(300);

/// Hop-by-hop headers (the proxy's list, `host` included) stop here; `connection` and
/// `upgrade` are put back for upgrades.
use crate::proxy::HOP_BY_HOP;

/// The sandbox's refusal to connect, as the client should see it.
fn connect_failed(id: &str, port: u16, e: &RuntimeError) -> Response {
    match e {
        RuntimeError::ProcessFailure { code, message } => {
            let (status, code) = match code.as_str() {
                "connection_refused" => (StatusCode::BAD_GATEWAY, "PORT_NOT_LISTENING"),
                "connect_timeout" => (StatusCode::GATEWAY_TIMEOUT, "PORT_TIMEOUT"),
                "too_many_streams" => (StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_CONNECTIONS"),
                _ => (StatusCode::BAD_GATEWAY, "PROXY_ERROR"),
            };
            ApiError::new(
                status,
                code,
                format!("sandbox {id}, port {port}: {message}"),
            )
            .into_response()
        }
        e => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "SANDBOX_UNREACHABLE",
            format!("sandbox {id}: {e}"),
        )
        .into_response(),
    }
}

/// Connections to the sandboxes' ports, kept alive and reused like any reverse proxy's
/// upstream connections: a request on an idle one costs no connect, and a server that starts
/// a thread per connection (Python's) none either, which inside gVisor is most of a fresh
/// connection's cost. A pooled connection is keyed by sandbox and port; the pool's bounds
/// are [`POOL_IDLE`] and [`POOL_MAX_IDLE`] each.
#[derive(Clone)]
pub struct PortClient(Client<PortConnector, Body>);

/// How long an idle connection to a port is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per sandbox port.
const POOL_MAX_IDLE: usize = 8;
/// The pool key's host: `p<port>.<sandbox id>.sandbox.invalid` (never resolved).
const POOL_HOST: &str = "sandbox.invalid";

impl PortClient {
    pub fn new(sandboxes: Arc<Sandboxes>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .set_host(false)
            .build(PortConnector { sandboxes });
        Self(client)
    }
}

#[derive(Clone)]
struct PortConnector {
    sandboxes: Arc<Sandboxes>,
}

/// Why a connection to a port failed: the agent's typed refusal, kept whole so the client
/// gets the same answer a fresh connection would.
#[derive(Debug)]
struct ConnectFailed(RuntimeError);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ConnectFailed {}

impl tower_service::Service<Uri> for PortConnector {
    type Response = PortStream;
    type Error = ConnectFailed;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<PortStream, ConnectFailed>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let sandboxes = Arc::clone(&self.sandboxes);
        Box::pin(async move {
            let invalid = || {
                ConnectFailed(RuntimeError::InvalidSpec {
                    reason: format!("no sandbox port in {uri}"),
                })
            };
            let host = uri.host().ok_or_else(invalid)?;
            let rest = host.strip_suffix(POOL_HOST).ok_or_else(invalid)?;
            let (port, id) = rest
                .strip_prefix('p')
                .and_then(|r| r.trim_end_matches('.').split_once('.'))
                .ok_or_else(invalid)?;
            let port: u16 = port.parse().map_err(|_| invalid())?;
            let row = match sandboxes.by_id(id) {
                Ok(Some(row)) => row,
                _ => return Err(ConnectFailed(RuntimeError::NotFound { id: id.into() })),
            };
            let agent = sandboxes.agent(&row).await.map_err(|e| {
                ConnectFailed(RuntimeError::AgentUnavailable {
                    kind: hutch_runtime::AgentUnreachable::NeverConnected,
                    reason: format!("sandbox {id}: {e}"),
                })
            })?;
            let tcp = agent.tcp(port).await.map_err(ConnectFailed)?;
            Ok(PortStream(TokioIo::new(tcp.into_io())))
        })
    }
}

/// One connection to a sandbox's port, as the pool holds it.
struct PortStream(TokioIo<tokio::io::DuplexStream>);

impl Connection for PortStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for PortStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PortStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The agent's refusal inside a pooled client's error, if that is what it is.
fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a RuntimeError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(ConnectFailed(inner)) = err.downcast_ref::<ConnectFailed>() {
            return Some(inner);
        }
        cur = err.source();
    }
    None
}

/// Forwards one request to `port` in the sandbox on a pooled connection, and bridges the
/// connection when the server switches protocols (websockets).
pub async fn forward(client: &PortClient, id: &str, port: u16, mut req: Request<Body>) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://p{port}.{id}.{POOL_HOST}{path}"));
    for (name, value) in &parts.headers {
        if passed_on(name.as_str(), value) {
            upstream = upstream.header(name, value);
        }
    }
    if let Some(protocol) = &upgrade {
        upstream = upstream
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, protocol.as_str());
    }
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = &host {
        upstream = upstream
            .header(header::HOST, host)
            .header("x-forwarded-host", host);
    }
    let upstream = match upstream.body(body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string())
                .into_response();
        }
    };
    let mut resp = match tokio::time::timeout(RESPONSE_HEAD, client.0.request(upstream)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            return match refusal(&e) {
                Some(refused) => connect_failed(id, port, refused),
                None => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "PROXY_ERROR",
                    format!("sandbox {id}, port {port}: {e}"),
                )
                .into_response(),
            };
        }
        Err(_) => {
            return ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "PORT_TIMEOUT",
                format!("sandbox {id}, port {port}: no answer within {RESPONSE_HEAD:?}"),
            )
            .into_response();
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let server_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(client), Ok(server)) = tokio::join!(client_upgrade, server_upgrade) {
                let mut client = TokioIo::new(client);
                let mut server = TokioIo::new(server);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = resp.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    Response::from_parts(parts, Body::new(body))
}

/// Whether a client's header goes on to the sandbox's server. Hop-by-hop headers stop here,
/// and so does an `Authorization` that carries a Hutch key: the sandbox must never see one.
/// Any other `Authorization` and the cookies are the application's own.
fn passed_on(name: &str, value: &HeaderValue) -> bool {
    if HOP_BY_HOP.contains(&name) || name == "x-forwarded-host" {
        return false;
    }
    if name == "authorization" || name == "proxy-authorization" {
        return !hutch_key(value);
    }
    true
}

fn hutch_key(value: &HeaderValue) -> bool {
    let v = value.to_str().unwrap_or_default().trim();
    let token = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .unwrap_or(v)
        .trim();
    token.starts_with(SECRET_PREFIX)
}

/// The port of a tunnel request: `?port=N`.
pub fn tunnel_port(query: Option<&str>) -> Result<u16, ApiError> {
    query
        .and_then(|q| hutch_wire::query::param(q, "port"))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| ApiError::bad_request("a tunnel needs ?port=N, a TCP port 1-65535"))
}

/// Opens the connection first, so a closed port is an HTTP error the client can read, then
/// upgrades and moves binary messages both ways.
///
/// The SDKs' tunnel sends a Close when its local socket reads EOF and then waits for the
/// rest of the answer: a Close is the client's FIN, not the end. A websocket library answers
/// a Close with its own and sends nothing after it, which cut answers short, so tunnels
/// speak the (small) framing here themselves: the client's Close half-closes the
/// sandbox's connection, the sandbox's FIN is sent as our Close after everything before it.
pub async fn tunnel(agent: AgentClient, id: &str, port: u16, mut req: Request<Body>) -> Response {
    let key = match ws_key(&req) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let tcp = match agent.tcp(port).await {
        Ok(tcp) => tcp,
        Err(e) => return connect_failed(id, port, &e),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(io) = upgrade.await {
            relay(TokioIo::new(io), tcp).await;
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Body::empty())
        .unwrap_or_else(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string())
                .into_response()
        })
}

/// The client's `Sec-WebSocket-Key`, once the request is a websocket upgrade.
fn ws_key(req: &Request<Body>) -> Result<String, ApiError> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let upgrade = req.method() == axum::http::Method::GET
        && has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && h.get("sec-websocket-version").map(|v| v.as_bytes()) == Some(b"13");
    let key = h.get("sec-websocket-key").and_then(|v| v.to_str().ok());
    match (upgrade, key) {
        (true, Some(key)) if !key.is_empty() => Ok(key.to_string()),
        _ => Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "UPGRADE_REQUIRED",
            "a tunnel is a websocket (version 13): GET with Connection: upgrade, \
             Upgrade: websocket and Sec-WebSocket-Key",
        )),
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One unmasked (server) frame.
fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    frame(OP_CLOSE, &payload)
}

/// A client frame: (opcode, unmasked payload). Client frames must be masked (RFC 6455
/// 5.1); a payload past `max` is refused before it is read.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<(u8, Vec<u8>), (u16, &'static str)> {
    use tokio::io::AsyncReadExt;
    let eof = (1006, "");
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.map_err(|_| eof)?;
    let opcode = head[0] & 0x0F;
    if head[1] & 0x80 == 0 {
        return Err((1002, "client frames must be masked"));
    }
    let len = match head[1] & 0x7F {
        126 => u64::from(r.read_u16().await.map_err(|_| eof)?),
        127 => r.read_u64().await.map_err(|_| eof)?,
        n => u64::from(n),
    };
    if len > max as u64 {
        return Err((1009, "message too big"));
    }
    let mut mask = [0u8; 4];
    r.read_exact(&mut mask).await.map_err(|_| eof)?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.map_err(|_| eof)?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok((opcode, payload))
}

async fn relay<S>(io: S, tcp: AgentTcp)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut from_client, mut to_client) = tokio::io::split(io);
    let AgentTcp { writer, mut reader } = tcp;
    // Frames to the client, from both directions' tasks, written by one.
    let (frames, mut queue) = tokio::sync::mpsc::channel::<Bytes>(16);
    let sending = tokio::spawn(async move {
        while let Some(f) = queue.recv().await {
            if to_client.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = to_client.shutdown().await;
    });
    let answers = frames.clone();
    let mut upstream = tokio::spawn(async move {
        let mut ping = tokio::time::interval(TUNNEL_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                data = reader.next() => {
                    let f = match data {
                        Ok(Some(data)) => frame(OP_BINARY, &data),
                        Ok(None) => {
                            let _ = answers.send(close_frame(1000, "")).await;
                            return;
                        }
                        Err(_) => {
                            let _ = answers
                                .send(close_frame(1011, "the sandbox's connection broke"))
                                .await;
                            return;
                        }
                    };
                    if answers.send(f).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if answers.send(frame(OP_PING, b"")).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut writer = Some(writer);
    loop {
        tokio::select! {
            read = read_frame(&mut from_client, TUNNEL_MESSAGE) => match read {
                Ok((OP_BINARY | OP_CONTINUATION, data)) => {
                    if let Some(w) = &writer
                        && w.send(Bytes::from(data)).await.is_err()
                    {
                        break;
                    }
                }
                Ok((OP_PING, data)) => {
                    if frames.send(frame(OP_PONG, &data)).await.is_err() {
                        break;
                    }
                }
                Ok((OP_PONG, _)) => {}
                // The client's FIN; the sandbox's answer goes on until its own.
                Ok((OP_CLOSE, _)) => writer = None,
                Ok((OP_TEXT, _)) => {
                    let _ = frames.send(close_frame(1003, "tunnels carry binary messages")).await;
                    break;
                }
                Ok(_) => {
                    let _ = frames.send(close_frame(1002, "unknown opcode")).await;
                    break;
                }
                // The client's connection ended: nothing more can be delivered.
                Err((1006, _)) => break,
                Err((code, reason)) => {
                    let _ = frames.send(close_frame(code, reason)).await;
                    break;
                }
            },
            // The sandbox's FIN went out (our Close); what the client still sends is moot.
            _ = &mut upstream => {
                drop(writer);
                drop(frames);
                let _ = tokio::time::timeout(Duration::from_secs(5), sending).await;
                return;
            }
        }
    }
    upstream.abort();
    drop(writer);
    drop(frames);
    let _ = tokio::time::timeout(Duration::from_secs(5), sending).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hutch_keys_stop_at_the_proxy_and_the_apps_own_credentials_pass() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(!passed_on("authorization", &v("Bearer hutch_abc")));
        assert!(!passed_on("authorization", &v("hutch_abc")));
        assert!(passed_on("authorization", &v("Bearer app-token")));
        assert!(passed_on("authorization", &v("Basic dXNlcjpwdw==")));
        assert!(passed_on("cookie", &v("session=1")));
        assert!(!passed_on("connection", &v("keep-alive")));
        assert!(!passed_on("host", &v("x")));
        assert!(passed_on("x-tensorlake-sandbox-id", &v("abc")));
    }

    #[tokio::test]
    async fn client_frames_are_read_masked_and_bounded() {
        // "Hello" masked, as RFC 6455 5.7 has it.
        let masked = [
            0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (op, payload) = read_frame(&mut &masked[..], 16).await.unwrap();
        assert_eq!((op, payload.as_slice()), (OP_TEXT, &b"Hello"[..]));
        let unmasked = [0x82u8, 0x05, b'H', b'e', b'l', b'l', b'o'];
        assert_eq!(
            read_frame(&mut &unmasked[..], 16).await.unwrap_err().0,
            1002
        );
        assert_eq!(read_frame(&mut &masked[..], 4).await.unwrap_err().0, 1009);
        let big = [0x82u8, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            read_frame(&mut &big[..], 1 << 20).await.unwrap_err().0,
            1009
        );
        assert_eq!(read_frame(&mut &masked[..3], 16).await.unwrap_err().0, 1006);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        assert_eq!(&frame(OP_BINARY, b"ab")[..], &[0x82, 2, b'a', b'b']);
        let mid = frame(OP_BINARY, &[0; 300]);
        assert_eq!(&mid[..4], &[0x82, 126, 1, 44]);
        let long = frame(OP_BINARY, &vec![0; 70_000]);
        assert_eq!(&long[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(&close_frame(1000, "")[..], &[0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn tunnel_ports_are_checked() {
        assert_eq!(tunnel_port(Some("port=8080")).unwrap(), 8080);
        assert_eq!(tunnel_port(Some("x=1&port=22")).unwrap(), 22);
        for bad in [
            None,
            Some(""),
            Some("port=0"),
            Some("port=65536"),
            Some("port=a"),
        ] {
            assert_eq!(tunnel_port(bad).unwrap_err().status, 400, "{bad:?}");
        }
    }
}
