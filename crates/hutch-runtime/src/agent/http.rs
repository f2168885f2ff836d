//! The HTTP/1.1 client a process uses to reach `hutch serve` (its lifecycle API and its
//! sandbox proxy): one connection pool with keep-alive, built on first use and shared by
//! every caller, so a CLI command or a bench does not pay a TCP connect per request. Also
//! the one way an answer is read whole: with a cap.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::link::{BoxError, RequestBody};

/// A pooled client for bodies of any kind (full buffers or live streams).
pub type HttpClient = Client<HttpConnector, RequestBody>;

/// How long connecting to a server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections are dropped well before the server's header deadline (10 s, see
/// `hutch-server`'s `listen.rs`) closes them, so a request never races that close.
const POOL_IDLE: Duration = Duration::from_secs(5);
/// Idle connections kept per server address; a burst of concurrent requests opens more, and
/// those are closed when done rather than kept.
const POOL_MAX_IDLE_PER_HOST: usize = 8;

/// The most of an answer that is read whole (a JSON document, an error body). The other
/// side may be a sandbox's agent, which must not make its reader buffer without end; the
/// largest legitimate answer, a process's 8 MiB output as JSON lines, fits.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The process's client. Connections belong to the tokio runtime that opened them; a
/// process has one (the CLI, the server, a bench), and a connection whose runtime is gone
/// counts as closed and is never handed out again.
pub fn http_client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(build)
}

fn build() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// `body` read whole, or an error as soon as it passes `max` bytes (nothing past that is
/// buffered).
pub async fn read_capped(body: Incoming, max: usize) -> Result<Bytes, BoxError> {
    Limited::new(body, max)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
}

/// A local HTTP/1.1 server for the client's tests, counting its connections.
#[cfg(test)]
pub(super) mod test_server {
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    pub struct TestServer {
        pub port: u16,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
    }

    impl TestServer {
        /// Connections accepted so far.
        pub fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        /// Connections the client has not closed yet.
        pub fn open(&self) -> usize {
            self.open.load(Ordering::SeqCst)
        }
    }

    /// Serves every request with `answer` on 127.0.0.1, on a port of its own, for as long
    /// as the test's runtime lives.
    pub async fn serve<F, Fut>(answer: F) -> TestServer
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = TestServer {
            port: listener.local_addr().unwrap().port(),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let (accepted, open) = (Arc::clone(&server.accepted), Arc::clone(&server.open));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (answer, open) = (answer.clone(), Arc::clone(&open));
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let answer = answer.clone();
                        async move { Ok::<_, Infallible>(answer(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        server
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use http_body_util::Full;
    use hyper::{Request, Response};

    use super::test_server::serve;
    use super::*;

    #[tokio::test]
    async fn requests_reuse_one_kept_alive_connection() {
        let server = serve(|req: Request<Incoming>| async move {
            let host = req.headers()["host"].to_str().unwrap().to_string();
            Response::new(Full::new(Bytes::from(host)))
        })
        .await;
        for i in 0..5 {
            let req = Request::builder()
                .uri(format!("http://127.0.0.1:{}/n/{i}", server.port))
                .header("host", format!("sbx{i}.local"))
                .body(crate::agent::empty())
                .unwrap();
            let resp = http_client().request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], format!("sbx{i}.local").as_bytes(), "Host kept");
        }
        assert_eq!(server.accepted(), 1, "one connection for all");
    }

    #[tokio::test]
    async fn a_burst_of_requests_leaves_a_bounded_number_of_idle_connections() {
        let burst = POOL_MAX_IDLE_PER_HOST + 4;
        // Every answer waits for the whole burst: each request holds a connection of its own.
        let all_in = Arc::new(tokio::sync::Barrier::new(burst));
        let server = serve(move |_| {
            let all_in = Arc::clone(&all_in);
            async move {
                all_in.wait().await;
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        })
        .await;
        let client = build();
        let requests: Vec<_> = (0..burst)
            .map(|_| {
                let req = Request::builder()
                    .uri(format!("http://127.0.0.1:{}/", server.port))
                    .body(crate::agent::empty())
                    .unwrap();
                let client = client.clone();
                tokio::spawn(async move {
                    let resp = client.request(req).await.unwrap();
                    resp.into_body().collect().await.unwrap();
                })
            })
            .collect();
        for request in requests {
            request.await.unwrap();
        }
        assert_eq!(server.accepted(), burst);
        // The pool keeps at most its bound; the rest are closed, well before the idle timeout.
        let deadline = Instant::now() + POOL_IDLE / 2;
        while server.open() > POOL_MAX_IDLE_PER_HOST && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let open = server.open();
        assert!(open <= POOL_MAX_IDLE_PER_HOST, "{open} connections kept");
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_refused_not_buffered() {
        const CAP: usize = 1 << 20;
        let server = serve(|req: Request<Incoming>| async move {
            // Spaces are JSON whitespace: read whole, the answer would parse.
            let len: usize = req.uri().path()[1..].parse().unwrap();
            let mut body = vec![b' '; len];
            body.extend_from_slice(b"{}");
            Response::new(Full::new(Bytes::from(body)))
        })
        .await;
        let get = |len: usize| {
            let req = Request::builder()
                .uri(format!("http://127.0.0.1:{}/{len}", server.port))
                .body(crate::agent::empty())
                .unwrap();
            http_client().request(req)
        };
        let within = get(CAP - 2).await.unwrap().into_body();
        assert_eq!(read_capped(within, CAP).await.unwrap().len(), CAP);
        let past = get(CAP).await.unwrap().into_body();
        let err = read_capped(past, CAP).await.unwrap_err();
        assert!(err.to_string().contains("length limit"), "{err}");
    }
}
