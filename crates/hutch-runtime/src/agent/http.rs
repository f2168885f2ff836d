//! The HTTP/1.1 client a process uses to reach `hutch serve` (its lifecycle API and its
//! sandbox proxy): one connection pool with keep-alive, built on first use and shared by
//! every caller, so a CLI command or a bench does not pay a TCP connect per request.

use std::sync::OnceLock;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::link::RequestBody;

/// A pooled client for bodies of any kind (full buffers or live streams).
pub type HttpClient = Client<HttpConnector, RequestBody>;

/// How long connecting to a server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections are dropped well before the server's header deadline (10 s, see
/// `hutch-server`'s `listen.rs`) closes them, so a request never races that close.
const POOL_IDLE: Duration = Duration::from_secs(5);

/// The process's client. Connections belong to the tokio runtime that opened them; a
/// process has one (the CLI, the server, a bench), and a connection whose runtime is gone
/// counts as closed and is never handed out again.
pub fn http_client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::Request;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    #[tokio::test]
    async fn requests_reuse_one_kept_alive_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let host = req.headers()["host"].to_str().unwrap().to_string();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(host)),
                        ))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        for i in 0..5 {
            let req = Request::builder()
                .uri(format!("http://127.0.0.1:{port}/n/{i}"))
                .header("host", format!("sbx{i}.local"))
                .body(crate::agent::empty())
                .unwrap();
            let resp = http_client().request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], format!("sbx{i}.local").as_bytes(), "Host kept");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
    }
}
