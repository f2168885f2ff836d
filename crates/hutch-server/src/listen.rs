//! The accept loop of both listeners (API and proxy), with the bounds a server facing
//! untrusted clients needs: a cap on open connections, a deadline for every request head
//! (which also ends idle keep-alive connections), HTTP/2 keep-alive pings, and graceful
//! shutdown that lets open connections finish.
//!
//! `axum::serve` has none of these knobs, so connections are served with hyper's own
//! builders; the protocol (HTTP/1.1 or HTTP/2 with prior knowledge) is told apart here,
//! under the same deadline, because hyper's header timeout only starts once it reads.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_PING: Duration = Duration::from_secs(20);

/// The bounds of one listener kind (API or proxy).
#[derive(Clone, Copy, Debug)]
pub struct HttpBounds {
    /// Connections open at once; more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// How long a client may take to send a request head, and how long a keep-alive
    /// connection may sit idle between requests.
    pub header_timeout: Duration,
}

impl Default for HttpBounds {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listeners` until `stop` turns true, then waits for open connections
/// to finish. `slots` is shared by every listener of one kind (IPv4 and IPv6 twins).
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Router,
    bounds: HttpBounds,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(
            listener,
            router.clone(),
            bounds,
            Arc::clone(&slots),
            stop.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    bounds: HttpBounds,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let mut connections = tokio::task::JoinSet::new();
    let mut full = false;
    loop {
        // A slot first, then the accept: over the cap, connections wait in the backlog.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                full = false;
                slot
            }
            Err(_) => {
                if !full {
                    tracing::warn!(
                        ?local,
                        max = bounds.max_connections,
                        "connection limit reached; new connections wait"
                    );
                    full = true;
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = stopped(&mut stop) => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        // Reap finished connection tasks so the set stays as small as the open ones.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY a response written in pieces waits out the client's delayed
        // ACK (40 ms per exec through the proxy, measured).
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            serve_connection(tcp, router, bounds, stop).await;
            tracing::trace!(%peer, "connection closed");
            drop(slot);
        });
    }
    // Graceful: no new connections; the open ones finish what they serve.
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[derive(Debug, PartialEq)]
enum Protocol {
    Http1,
    Http2,
}

/// Which protocol the client speaks, from its first bytes (left unread for hyper).
/// `None`: it closed, failed or sent nothing useful in time.
async fn sniff(tcp: &TcpStream, deadline: Duration) -> Option<Protocol> {
    let sniffing = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // A partial preface: peek returns at once while bytes wait, so pause.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(deadline, sniffing)
        .await
        .ok()
        .flatten()
}

async fn serve_connection(
    tcp: TcpStream,
    router: Router,
    bounds: HttpBounds,
    mut stop: watch::Receiver<bool>,
) {
    let Some(protocol) = sniff(&tcp, bounds.header_timeout).await else {
        return;
    };
    let service = TowerToHyperService::new(router);
    let io = TokioIo::new(tcp);
    let result = match protocol {
        Protocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING)
                .keep_alive_timeout(H2_PING)
                .enable_connect_protocol();
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_protocol_is_told_from_the_first_bytes() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let got = sniff(&server, Duration::from_secs(30)).await;
        assert_eq!(got, Some(Protocol::Http1));

        let (mut client, server) = pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        let got = sniff(&server, Duration::from_secs(30)).await;
        assert_eq!(got, Some(Protocol::Http2));
    }

    #[tokio::test]
    async fn a_silent_or_partial_client_gets_nothing_past_the_deadline() {
        use tokio::io::AsyncWriteExt;
        let (_client, server) = pair().await;
        assert_eq!(sniff(&server, Duration::from_millis(50)).await, None);
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HT").await.unwrap();
        assert_eq!(sniff(&server, Duration::from_millis(50)).await, None);
    }
}
