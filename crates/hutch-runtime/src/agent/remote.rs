//! Reaching an agent through a `hutch serve` sandbox proxy instead of its dial-home link:
//! the same requests, sent over HTTP/1.1 with the proxy's routing header on the process's
//! pooled client. This is how a CLI drives a sandbox that a server owns.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use super::http::{HttpClient, http_client, read_capped};
use super::link::RequestBody;
use crate::error::{AgentUnreachable, Result, RuntimeError};

/// The most of a 502/503 body from the proxy that is read into the error.
const PROXY_ERROR_BYTES: usize = 16 << 10;

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
    /// and connecting to the proxy is bounded by the client's [`super::CONNECT_TIMEOUT`]
    /// (the one shorter `wait`, shutdown's, comes with its own bound on the whole request,
    /// and no caller shuts a sandbox down through a proxy).
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
            // The proxy's own error body, shown in a message: a little of it is plenty.
            let body = read_capped(resp.into_body(), PROXY_ERROR_BYTES)
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
    use http_body_util::Full;

    use super::super::http::test_server::serve;
    use super::*;

    fn get(path: &str) -> Request<RequestBody> {
        Request::builder()
            .uri(path)
            .body(super::super::client::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_proxy_that_cannot_be_reached_never_received_the_request() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let remote = ProxyRoute::new(&format!("http://127.0.0.1:{port}"), "sbx", None).unwrap();
        match remote
            .send(get("/api/v1/health"), Duration::from_secs(2))
            .await
        {
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
        let server = serve(|req: Request<Incoming>| async move {
            let status = match req.uri().path() {
                "/bad-gateway" => StatusCode::BAD_GATEWAY,
                "/unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::OK,
            };
            let host = req.headers()[HOST].to_str().unwrap_or_default().to_string();
            let mut resp = Response::new(Full::new(bytes::Bytes::from(format!("host {host}"))));
            *resp.status_mut() = status;
            resp
        })
        .await;
        let remote = ProxyRoute::new(
            &format!("http://localhost:{}", server.port),
            "sbx1",
            Some("k"),
        )
        .unwrap();
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
        assert_eq!(server.accepted(), 1, "one kept-alive connection");
    }

    #[tokio::test]
    async fn an_agents_answer_past_the_cap_is_refused_not_buffered() {
        use super::super::AgentClient;
        use super::super::http::MAX_ANSWER_BYTES;

        // A health answer padded with JSON whitespace past the cap: read whole, it would
        // parse and say healthy.
        let server = serve(|_| async move {
            let mut body = vec![b' '; MAX_ANSWER_BYTES];
            body.extend_from_slice(br#"{"healthy":true}"#);
            Response::new(Full::new(bytes::Bytes::from(body)))
        })
        .await;
        let agent =
            AgentClient::via_proxy(&format!("http://127.0.0.1:{}", server.port), "sbx", None)
                .unwrap();
        match agent.health().await {
            Err(RuntimeError::AgentUnavailable { kind, reason }) => {
                assert_eq!(kind, AgentUnreachable::Disrupted);
                assert!(reason.contains("length limit"), "{reason}");
            }
            other => panic!("expected the answer refused, got {other:?}"),
        }
    }
}
