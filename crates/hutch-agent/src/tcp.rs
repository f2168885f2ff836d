//! TCP streams to ports inside the sandbox (`POST /hutch/v1/tcp?port=N`): the host's proxy
//! reaches a sandbox's own servers through the agent, never through the sandbox's network, so
//! exposed ports and tunnels work for sandboxes without a network and for servers bound to
//! loopback only.
//!
//! The request body is written to the connection, the response body is what the connection
//! sends back. The end of the request body half-closes the connection (the client sent its
//! FIN); the end of the response body is the server's FIN. A refused connection is an error
//! answer before any stream exists, so the host can tell the client exactly why.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{self, ApiError, Body};

/// Streams open at once; each holds a socket and up to `QUEUED` chunks of `CHUNK` bytes.
pub const MAX_STREAMS: usize = 256;
const CHUNK: usize = 256 * 1024;
const QUEUED: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams open now; a stream's slot is given back when both its pumps are done.
static OPEN: AtomicUsize = AtomicUsize::new(0);

struct Slot;

impl Slot {
    fn take() -> Option<Arc<Slot>> {
        OPEN.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| Arc::new(Slot))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn port(query: Option<String>) -> Result<u16, ApiError> {
    query
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| ApiError::invalid("`port` must be a TCP port, 1-65535"))
}

/// Connects to `port` on the sandbox's loopback (IPv4, then IPv6) and streams both ways.
pub async fn open(port: u16, input: Incoming) -> Result<Response<Body>, ApiError> {
    let slot = Slot::take().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{MAX_STREAMS} TCP streams are open in this sandbox already"),
        )
    })?;
    let socket = connect(port).await?;
    let _ = socket.set_nodelay(true);
    let (mut reader, mut writer) = socket.into_split();
    let (tx, body) = http::channel(QUEUED);
    let held = Arc::clone(&slot);
    let writing = tokio::spawn(async move {
        let _slot = held;
        let mut input = input;
        while let Some(frame) = input.frame().await {
            let Ok(frame) = frame else { return };
            if let Ok(data) = frame.into_data()
                && writer.write_all(&data).await.is_err()
            {
                return;
            }
        }
        // The client's FIN; the read half keeps the connection open for the reply.
        let _ = writer.shutdown().await;
    });
    tokio::spawn(async move {
        let _slot = slot;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                // The server's FIN: the client may still be sending.
                Ok(0) => return,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        // The host is gone or the connection reset: nothing more is delivered either way.
        writing.abort();
    });
    Ok(http::streaming("application/octet-stream", body))
}

async fn connect(port: u16) -> Result<TcpStream, ApiError> {
    let mut last = None;
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(socket)) => return Ok(socket),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "connect_timeout",
                    format!("nothing answered on port {port} within {CONNECT_TIMEOUT:?}"),
                ));
            }
        }
    }
    let e = last.expect("tried at least one address");
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "connection_refused",
        format!("nothing listens on port {port} in the sandbox ({e})"),
    ))
}
