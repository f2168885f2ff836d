//! Reaching an agent through a `hutch serve` sandbox proxy instead of its dial-home link:
//! the same requests, sent over HTTP/1.1 with the proxy's routing header. This is how a CLI
//! drives a sandbox that a server owns.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::link::RequestBody;
use crate::error::{Result, RuntimeError};

/// Where a sandbox's proxy is and how to address the sandbox on it.
#[derive(Debug)]
pub struct ProxyRoute {
    /// `host:port` of the proxy.
    authority: String,
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
            host: header(format!("{sandbox_id}.local"))?,
            bearer: api_key
                .filter(|k| !k.is_empty())
                .map(|k| header(format!("Bearer {k}")))
                .transpose()?,
        })
    }

    /// Sends one request on a fresh connection. A proxy that cannot reach the agent (502/503)
    /// is reported like a dropped link, so callers retry and reattach the same way.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        wait: Duration,
    ) -> Result<Response<Incoming>> {
        let unavailable = |reason: String| RuntimeError::AgentUnavailable { reason };
        let stream = tokio::time::timeout(wait, tokio::net::TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unavailable(format!("connecting to {} timed out", self.authority)))?
            .map_err(|e| unavailable(format!("connecting to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable(format!("handshake with {}: {e}", self.authority)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        req.headers_mut().insert(HOST, self.host.clone());
        if let Some(bearer) = &self.bearer {
            req.headers_mut().insert(AUTHORIZATION, bearer.clone());
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unavailable(format!("request through the proxy failed: {e}")))?;
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
