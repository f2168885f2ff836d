//! Where clients reach sandboxes: the `ingress_endpoint` and `sandbox_url` the API reports,
//! and the host names the proxy routes.
//!
//! - With `--public-url https://sbx.example.com` (a wildcard DNS record `*.sbx.example.com`
//!   pointing at the proxy, TLS in front of it), `ingress_endpoint` is that URL,
//!   `sandbox_url` is `https://<id>.sbx.example.com` and a user port is
//!   `https://<port>-<id>.sbx.example.com` (the SDK's `sandbox_url_from_ingress_endpoint`).
//! - Without it, both are `http://<host>:<proxy port>`: `localhost` on loopback (the SDKs
//!   then send `Host: <id>.local`; user ports are `<port>-<id>.localhost`, which browsers
//!   resolve to loopback), the proxy's own address when it is bound to one, and the host the
//!   client reached the API at when it listens on every address, so a remote client is not
//!   sent to its own machine.

use std::net::{IpAddr, SocketAddr};

/// The port the SDK reserves for the sandbox's management API: `9501-<id>` is `<id>`.
pub const MANAGEMENT_PORT: u16 = 9501;

#[derive(Clone, Debug)]
pub struct Ingress {
    public: Option<PublicUrl>,
    proxy: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PublicUrl {
    scheme: &'static str,
    /// Lowercased, no trailing dot; IPv6 literals are refused (no wildcard names under them).
    host: String,
    port: Option<u16>,
}

/// What one answer reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ingress_endpoint: String,
    /// `{id}` stands where the sandbox id goes.
    sandbox_url: String,
}

impl Endpoint {
    pub fn sandbox_url(&self, id: &str) -> String {
        self.sandbox_url.replace("{id}", id)
    }
}

impl Ingress {
    pub fn new(public_url: Option<&str>, proxy: SocketAddr) -> anyhow::Result<Self> {
        let public = public_url.map(parse_public_url).transpose()?;
        Ok(Self { public, proxy })
    }

    /// The host names under which the proxy serves `<id>`, `<port>-<id>` and
    /// `<name>.<namespace>` labels, besides `.local` and `.localhost`.
    pub fn public_host(&self) -> Option<&str> {
        self.public.as_ref().map(|p| p.host.as_str())
    }

    /// The endpoint for a client that reached the API at `api_host` (its Host header).
    pub fn endpoint(&self, api_host: Option<&str>) -> Endpoint {
        if let Some(p) = &self.public {
            let port = p.port.map(|n| format!(":{n}")).unwrap_or_default();
            return Endpoint {
                ingress_endpoint: format!("{}://{}{port}", p.scheme, p.host),
                sandbox_url: format!("{}://{{id}}.{}{port}", p.scheme, p.host),
            };
        }
        let ip = self.proxy.ip();
        let host = if ip.is_loopback() {
            "localhost".to_string()
        } else if ip.is_unspecified() {
            api_host
                .and_then(host_of)
                .filter(|h| !is_loopback_name(h))
                .unwrap_or_else(|| "localhost".to_string())
        } else {
            bracket(ip)
        };
        let url = format!("http://{host}:{}", self.proxy.port());
        Endpoint {
            ingress_endpoint: url.clone(),
            sandbox_url: url,
        }
    }
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host[:port]` → the host as it may stand in a URL (IPv6 bracketed), lowercased.
fn host_of(authority: &str) -> Option<String> {
    let authority = authority.trim().to_ascii_lowercase();
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        authority[..=end].to_string()
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h)
            .to_string()
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    ok.then_some(host)
}

fn parse_public_url(url: &str) -> anyhow::Result<PublicUrl> {
    let bad = || {
        anyhow::anyhow!(
            "--public-url {url:?}: expected http(s)://host[:port] (a DNS name with a wildcard \
             record for its subdomains, no path)"
        )
    };
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest)
    } else {
        return Err(bad());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@', '[']) {
        return Err(bad());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        None => (rest, None),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(PublicUrl { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_reports_localhost() {
        let i = Ingress::new(None, addr("127.0.0.1:9443")).unwrap();
        let e = i.endpoint(Some("203.0.113.5:8900"));
        assert_eq!(e.ingress_endpoint, "http://localhost:9443");
        assert_eq!(e.sandbox_url("abc"), "http://localhost:9443");
    }

    #[test]
    fn every_address_reports_the_host_the_client_used() {
        let i = Ingress::new(None, addr("0.0.0.0:9443")).unwrap();
        assert_eq!(
            i.endpoint(Some("203.0.113.5:8900")).sandbox_url("abc"),
            "http://203.0.113.5:9443"
        );
        assert_eq!(
            i.endpoint(Some("box.lan")).ingress_endpoint,
            "http://box.lan:9443"
        );
        assert_eq!(
            i.endpoint(Some("[2001:db8::1]:8900")).ingress_endpoint,
            "http://[2001:db8::1]:9443"
        );
        assert_eq!(
            i.endpoint(Some("127.0.0.1:8900")).ingress_endpoint,
            "http://localhost:9443"
        );
        assert_eq!(i.endpoint(None).ingress_endpoint, "http://localhost:9443");
        // Garbage in Host is not echoed into URLs.
        assert_eq!(
            i.endpoint(Some("a b/c")).ingress_endpoint,
            "http://localhost:9443"
        );
        let bound = Ingress::new(None, addr("198.51.100.7:9443")).unwrap();
        assert_eq!(
            bound.endpoint(Some("x:1")).ingress_endpoint,
            "http://198.51.100.7:9443"
        );
    }

    #[test]
    fn a_public_url_gives_wildcard_names() {
        let i = Ingress::new(Some("https://Sbx.Example.com/"), addr("0.0.0.0:9443")).unwrap();
        let e = i.endpoint(Some("10.0.0.1:8900"));
        assert_eq!(e.ingress_endpoint, "https://sbx.example.com");
        assert_eq!(e.sandbox_url("abc"), "https://abc.sbx.example.com");
        assert_eq!(i.public_host(), Some("sbx.example.com"));
        let i = Ingress::new(Some("http://sbx.test:8443"), addr("0.0.0.0:9443")).unwrap();
        assert_eq!(
            i.endpoint(None).sandbox_url("abc"),
            "http://abc.sbx.test:8443"
        );
        for bad in [
            "sbx.example.com",
            "ftp://sbx.example.com",
            "https://sbx.example.com/path",
            "https://user@sbx.example.com",
            "https://[::1]:9443",
            "https://-bad.example.com",
            "https://sbx.example.com:99999",
            "https://",
        ] {
            assert!(
                Ingress::new(Some(bad), addr("0.0.0.0:9443")).is_err(),
                "{bad}"
            );
        }
    }
}
