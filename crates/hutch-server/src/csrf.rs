//! What a browser on the same machine could make the server do. A server on loopback that
//! needs no key is reachable by any web page the user opens:
//!
//! - by DNS rebinding: `evil.example` re-resolves to 127.0.0.1, and the page's requests
//!   arrive with `Host: evil.example` and read the answers. Only loopback, `localhost`,
//!   `*.localhost` and `*.local` hosts (the proxy's routing names) are served, plus the
//!   host of `--public-url` and, when the server listens beyond loopback, IP literals
//!   (a rebinding attack always brings a name, never an address).
//! - by cross-site requests: a form or a `no-cors` fetch POSTs `text/plain` without a
//!   preflight. The API's bodies must be `application/json` (which a page cannot send
//!   cross-origin without the CORS preflight this server never grants), and any request
//!   whose `Origin` is another site is refused.
//!
//! Both listeners get these checks as one middleware layer; the proxy skips the body type,
//! because its file and stdin routes carry raw bytes.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::App;
use crate::error::ApiError;

/// The hosts and origins a server accepts besides loopback ones.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The host of `--public-url`, lowercased, without port.
    public_host: Option<String>,
    /// Accept any IP literal host: the server listens beyond loopback.
    ip_literals: bool,
}

impl Policy {
    /// `public_url` is where clients reach the server from elsewhere (`http://host[:port]`);
    /// `beyond_loopback` says whether either listener is on a non-loopback address.
    pub fn new(public_url: Option<&str>, beyond_loopback: bool) -> anyhow::Result<Self> {
        let public_host = match public_url {
            Some(url) => Some(url_host(url).ok_or_else(|| {
                anyhow::anyhow!("--public-url {url:?}: expected http(s)://host[:port]")
            })?),
            None => None,
        };
        Ok(Self {
            public_host,
            ip_literals: beyond_loopback,
        })
    }

    fn host_allowed(&self, host: &str) -> bool {
        if let Some(ip) = ip_literal(host) {
            return self.ip_literals || is_loopback(ip);
        }
        host == "localhost"
            || host.ends_with(".localhost")
            || host.ends_with(".local")
            || self.public_host.as_deref().is_some_and(|p| {
                host == p || host.strip_suffix(p).is_some_and(|h| h.ends_with('.'))
            })
    }

    /// A browser's origin may call here if it is this very host (a page the proxy serves
    /// calling its own sandbox), a loopback one, or the public URL's.
    fn origin_allowed(&self, origin: &str, request_authority: Option<&str>) -> bool {
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            // `null` (sandboxed frames, file: pages) and anything else unparsable.
            return false;
        };
        if request_authority.is_some_and(|a| a.eq_ignore_ascii_case(authority)) {
            return true;
        }
        let Some(host) = authority_host(authority) else {
            return false;
        };
        // A page a sandbox serves on one of its ports is the sandbox's, and hostile: it may
        // call that very port (same authority, above) and nothing else here.
        if sandbox_port_origin(&host) {
            return false;
        }
        match ip_literal(&host) {
            Some(ip) => is_loopback(ip),
            None => {
                host == "localhost"
                    || host.ends_with(".localhost")
                    || self.public_host.as_deref() == Some(host.as_str())
            }
        }
    }
}

/// The middleware of the lifecycle and platform API: host, origin and JSON bodies.
pub async fn api(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match check(&app.browser_policy, &req, true) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The middleware of the sandbox proxy: host and origin; bodies are the sandbox's business.
pub async fn proxy(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match check(&app.browser_policy, &req, false) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(policy: &Policy, req: &Request, json_bodies: bool) -> Result<(), ApiError> {
    // HTTP/2 carries the authority in the URI, HTTP/1.1 in Host.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok());
    let host = authority.and_then(authority_host);
    if !host.as_deref().is_some_and(|h| policy.host_allowed(h)) {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "host {:?} is not served here: use a loopback address, localhost or \
                 <sandbox>.local (or start the server with --public-url)",
                authority.unwrap_or_default()
            ),
        ));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !policy.origin_allowed(origin, authority) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("requests from origin {origin:?} are not accepted"),
            ));
        }
    }
    if json_bodies
        && [Method::POST, Method::PUT, Method::PATCH].contains(req.method())
        && !json_or_empty(req.headers())
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be sent as Content-Type: application/json",
        ));
    }
    Ok(())
}

/// A JSON body, or none at all (the SDKs send body-less POSTs without a type).
fn json_or_empty(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        Some(value) => {
            let media = value
                .to_str()
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            media == "application/json"
                || (media.starts_with("application/") && media.ends_with("+json"))
        }
        None => match headers.get(header::CONTENT_LENGTH) {
            Some(len) => len.as_bytes() == b"0",
            None => !headers.contains_key(header::TRANSFER_ENCODING),
        },
    }
}

/// `host[:port]` or `[v6][:port]` → the host, lowercased, brackets and a trailing dot gone.
fn authority_host(authority: &str) -> Option<String> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        v6
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    (!host.is_empty() && !host.contains('@')).then_some(host)
}

/// `<port>-<hex id>.…`: the origin of a sandbox's exposed port.
fn sandbox_port_origin(host: &str) -> bool {
    let label = host.split('.').next().unwrap_or_default();
    label.split_once('-').is_some_and(|(port, id)| {
        is_port(port) && !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    authority_host(rest.split('/').next()?)
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    host.parse().ok()
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, pairs: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri("/sandboxes");
        for (k, v) in pairs {
            builder = builder.header(*k, *v);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    fn status(policy: &Policy, method: &str, pairs: &[(&str, &str)]) -> u16 {
        check(policy, &request(method, pairs), true).map_or_else(|e| e.status.as_u16(), |()| 200)
    }

    #[test]
    fn only_loopback_and_local_hosts_are_served() {
        let p = Policy::default();
        for host in [
            "localhost",
            "localhost:8900",
            "LOCALHOST.",
            "127.0.0.1:8900",
            "127.1.2.3",
            "[::1]:8900",
            "[::ffff:127.0.0.1]",
            "abc.local:9443",
            "web.team.local",
            "app.localhost:3000",
        ] {
            assert_eq!(status(&p, "GET", &[("host", host)]), 200, "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8900",
            "localhost.evil.example",
            "10.0.0.1:8900",
            "[fe80::1]",
            "user@localhost",
            "localhost:http",
        ] {
            assert_eq!(status(&p, "GET", &[("host", host)]), 421, "{host}");
        }
        assert_eq!(status(&p, "GET", &[]), 421, "no host at all");
        let public = Policy::new(Some("https://hutch.example.com:8443/x"), true).unwrap();
        assert_eq!(
            status(&public, "GET", &[("host", "hutch.example.com")]),
            200
        );
        assert_eq!(status(&public, "GET", &[("host", "10.0.0.1:8900")]), 200);
        assert_eq!(status(&public, "GET", &[("host", "evil.example")]), 421);
        // The proxy's wildcard names.
        assert_eq!(
            status(&public, "GET", &[("host", "8080-abc.hutch.example.com")]),
            200
        );
        assert_eq!(
            status(&public, "GET", &[("host", "evilhutch.example.com")]),
            421
        );
        let sandbox_page = [
            ("host", "hutch.example.com"),
            ("origin", "https://8080-abc.hutch.example.com"),
        ];
        assert_eq!(status(&public, "GET", &sandbox_page), 403);
        assert!(Policy::new(Some("hutch.example.com"), false).is_err());
    }

    #[test]
    fn foreign_origins_are_refused() {
        let p = Policy::default();
        let host = ("host", "localhost:8900");
        for origin in [
            "http://localhost:8900",
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
            "http://app.localhost",
        ] {
            assert_eq!(
                status(&p, "GET", &[host, ("origin", origin)]),
                200,
                "{origin}"
            );
        }
        for origin in [
            "https://evil.example",
            "null",
            "http://abc.local:9443",
            "http://localhost.evil.example",
            // A sandbox's exposed port: its pages are the sandbox's.
            "http://8080-abc123.localhost:9443",
            "http://8080-abc123.local:9443",
        ] {
            assert_eq!(
                status(&p, "GET", &[host, ("origin", origin)]),
                403,
                "{origin}"
            );
        }
        // A page the proxy serves for a sandbox may call that sandbox, not another one.
        let own = [
            ("host", "abc.local:9443"),
            ("origin", "http://abc.local:9443"),
        ];
        assert_eq!(status(&p, "GET", &own), 200);
        let other = [
            ("host", "xyz.local:9443"),
            ("origin", "http://abc.local:9443"),
        ];
        assert_eq!(status(&p, "GET", &other), 403);
    }

    #[test]
    fn api_bodies_must_be_json() {
        let p = Policy::default();
        let host = ("host", "127.0.0.1:8900");
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(
            status(&p, "POST", &[host, json, ("content-length", "2")]),
            200
        );
        // The SDKs' body-less POSTs.
        assert_eq!(status(&p, "POST", &[host, ("content-length", "0")]), 200);
        assert_eq!(status(&p, "POST", &[host]), 200);
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let pairs = [host, ("content-type", ct), ("content-length", "2")];
            assert_eq!(status(&p, "POST", &pairs), 415, "{ct}");
        }
        assert_eq!(status(&p, "PATCH", &[host, ("content-length", "2")]), 415);
        assert_eq!(
            status(&p, "PUT", &[host, ("transfer-encoding", "chunked")]),
            415
        );
        assert_eq!(
            status(&p, "GET", &[host, ("content-type", "text/plain")]),
            200
        );
        let raw = request(
            "POST",
            &[host, ("content-type", "application/octet-stream")],
        );
        assert!(check(&p, &raw, false).is_ok(), "the proxy takes raw bytes");
    }
}
