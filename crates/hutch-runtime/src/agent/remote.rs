//! Reaching an agent through a `hutch serve` sandbox proxy instead of its dial-home link:
//! the same requests, sent over HTTP/1.1 with the proxy's routing header on the process's
//! pooled client. This is how a CLI drives a sandbox that a server owns.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use super::http::{HttpClient, http_client};
use super::link::RequestBody;
use crate::error::{AgentUnreachable, Result, RuntimeError};

/// Where a sandbox's proxy is and how to address the sandbox on it.
#[derive(Debug)]
pub struct ProxyRoute {
    /// `host:port` of the proxy.
    authority: String,
    client: HttpClient,
    /// `<sandbox id>.local`: the proxy routes by Host.
    host: HeaderValue,
    bearer: Option<HeaderValue>,
}

impl ProxyRoute {
    /// `proxy_url` is `http://host:port` (a sandbox's `sandbox_url`).
    pub fn new(proxy_url: &str, sandbox_id: &str, api_key: Option<&str>) -> Result<Self> {
        let invalid = |reason: String| RuntimeError::InvalidSpec { reason };
        let rest = proxy_url
            .strip_prefix("http://")
            .ok_or_else(|| invalid(format!("{proxy_url}: only http:// proxies are supported")))?;
        let host = rest.split('/').next().unwrap_or_default();
        // `localhost` may resolve to ::1 first; the proxy binds both, but 127.0.0.1 skips a
        // resolver round trip.
        let host = host.replacen("localhost:", "127.0.0.1:", 1);
        let authority = if host.contains(':') {
            host
        } else {
            format!("{host}:80")
        };
        let header = |v: String| {
            HeaderValue::from_str(&v).map_err(|_| invalid(format!("{v:?} is not a header value")))
        };
        Ok(Self {
            authority,
            client: http_client().clone(),
            host: header(format!("{sandbox_id}.local"))?,
            bearer: api_key
                .filter(|k| !k.is_empty())
                .map(|k| header(format!("Bearer {k}")))
                .transpose()?,
        })
    }

    /// Sends one request on a pooled connection. A proxy that cannot reach the agent
    /// (502/503) is reported like a dropped link, so callers retry and reattach the same way.
    /// `wait` is for the dial-home link: here waiting for the agent is the proxy's business,
    /// and connecting to the proxy is bounded by the client's [`super::CONNECT_TIMEOUT`].
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        _wait: Duration,
    ) -> Result<Response<Incoming>> {
        // Until the request is written nothing reached the agent.
        let unconnected = |reason: String| RuntimeError::AgentUnavailable {
            kind: AgentUnreachable::NeverConnected,
            reason,
        };
        let unavailable = RuntimeError::agent_disrupted;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("http://{}{path}", self.authority)
            .parse()
            .map_err(|e| unconnected(format!("addressing {}: {e}", self.authority)))?;
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        if let Some(bearer) = &self.bearer {
            req.headers_mut().insert(AUTHORIZATION, bearer.clone());
        }
        let resp = self.client.request(req).await.map_err(|e| {
            // A request on a reused connection that closed before it was written is retried
            // by the pool; a failed connect means nothing was sent.
            if e.is_connect() {
                unconnected(format!(
                    "connecting to {}: {}",
                    self.authority,
                    error_chain(&e)
                ))
            } else {
                unavailable(format!(
                    "request through the proxy failed: {}",
                    error_chain(&e)
                ))
            }
        })?;
        if matches!(
            resp.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ) {
            let status = resp.status();
            let body = super::client::collect(resp.into_body())
                .await
                .unwrap_or_default();
            return Err(unavailable(format!(
                "the proxy answered {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(resp)
    }
}

/// The error and its causes: the client's own message alone ("client error (Connect)")
/// does not say what went wrong.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_proxy_that_cannot_be_reached_never_received_the_request() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let remote = ProxyRoute::new(&format!("http://127.0.0.1:{port}"), "sbx", None).unwrap();
        let req = Request::builder()
            .uri("/api/v1/health")
            .body(super::super::client::empty())
            .unwrap();
        match remote.send(req, Duration::from_secs(2)).await {
            Err(RuntimeError::AgentUnavailable { kind, reason }) => {
                assert_eq!(kind, AgentUnreachable::NeverConnected, "{reason}")
            }
            other => panic!(
                "expected the agent to be unavailable, got {:?}",
                other.err()
            ),
        }
    }

    #[tokio::test]
    async fn a_proxy_502_or_503_is_a_disrupted_agent_and_the_connection_is_kept() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let status = match req.uri().path() {
                            "/bad-gateway" => StatusCode::BAD_GATEWAY,
                            "/unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                            _ => StatusCode::OK,
                        };
                        let host = req.headers()[HOST].to_str().unwrap_or_default().to_string();
                        let mut resp = Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(format!("host {host}")),
                        ));
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let remote =
            ProxyRoute::new(&format!("http://localhost:{port}"), "sbx1", Some("k")).unwrap();
        let get = |path: &str| {
            Request::builder()
                .uri(path)
                .body(super::super::client::empty())
                .unwrap()
        };
        for path in ["/bad-gateway", "/unavailable"] {
            match remote.send(get(path), Duration::from_secs(2)).await {
                Err(RuntimeError::AgentUnavailable { kind, reason }) => {
                    assert_eq!(kind, AgentUnreachable::Disrupted, "{reason}");
                    assert!(reason.contains("host sbx1.local"), "{reason}");
                }
                other => panic!("{path}: {:?}", other.map(|r| r.status())),
            }
        }
        let ok = remote
            .send(get("/api/v1/health"), Duration::from_secs(2))
            .await;
        assert_eq!(ok.unwrap().status(), StatusCode::OK);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
    }
}
