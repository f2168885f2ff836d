//! Where a server-side pull may connect: the defence against SSRF through image references.
//!
//! When API clients name the images a server pulls, an image reference is a URL they choose:
//! `127.0.0.1:6379/x` would make the server dial its own Redis, `169.254.169.254/x` the
//! cloud's metadata service. An [`EgressPolicy`] bounds that: which registries may be named
//! (an allowlist, default any), and which addresses any connection of a pull may reach —
//! the registry, its token realm, and wherever it redirects blob downloads (CDNs) — checked
//! after DNS resolution, in the resolver the HTTP client connects through, so a name that
//! resolves differently the second time (DNS rebinding) is checked again on every connect.
//! The CLI pulling for its own user has no policy: a user reaching their own network is not
//! SSRF.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What a server's pulls may reach. The default allows any registry on a public address.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// `host[:port]` of the only registries image references may name (a host without a port
    /// allows every port of it); empty allows any. A listed host may also resolve to private
    /// addresses: naming it is the operator's decision to reach it.
    pub allowed: Vec<String>,
    /// Allow loopback, private (RFC 1918), unique-local and CGNAT addresses for any host.
    /// Link-local (the cloud metadata service), unspecified, multicast and reserved addresses
    /// stay refused unless a host is listed in `allowed`.
    pub allow_private: bool,
    /// Use the server user's Docker credentials for every registry, not only listed ones.
    pub registry_credentials: bool,
}

/// A connection the policy refuses; carried through the HTTP client's error chain so the
/// client can tell a refusal from a network failure.
#[derive(Debug)]
pub(crate) struct Denied {
    pub host: String,
    pub reason: String,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.host, self.reason)
    }
}

impl std::error::Error for Denied {}

/// `host[:port]` split, IPv6 in brackets (`[::1]:5000`); the host lowercased.
pub(crate) fn split_host_port(s: &str) -> (String, Option<u16>) {
    let s = s.trim().to_ascii_lowercase();
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host.to_string(), port);
    }
    match s.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host.to_string(), Some(port)),
            Err(_) => (s.clone(), None),
        },
        _ => (s, None),
    }
}

/// Docker Hub goes by several names; listing any of them allows it.
const DOCKER_HUB_NAMES: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => canonical(a) == canonical(b),
        _ => a == b || (DOCKER_HUB_NAMES.contains(&a) && DOCKER_HUB_NAMES.contains(&b)),
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl EgressPolicy {
    /// True when `registry` (`host[:port]` as a reference names it) may be pulled from.
    pub fn allows_registry(&self, registry: &str) -> bool {
        self.allowed.is_empty() || self.lists(registry)
    }

    /// True when the allowlist names `registry` itself (not merely allows every registry).
    pub fn lists(&self, registry: &str) -> bool {
        let (host, port) = split_host_port(registry);
        self.allowed.iter().any(|entry| {
            let (e_host, e_port) = split_host_port(entry);
            same_host(&e_host, &host) && (e_port.is_none() || e_port == port)
        })
    }

    /// True when the allowlist names `host` with any port: it may resolve anywhere.
    fn lists_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        self.allowed
            .iter()
            .any(|entry| same_host(&split_host_port(entry).0, &host))
    }

    /// Whether the server's Docker credentials may be sent for `registry`.
    pub fn credentials_for(&self, registry: &str) -> bool {
        self.registry_credentials || self.lists(registry)
    }

    /// Checks one address `host` resolved to (or is).
    pub(crate) fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Denied> {
        let Some(kind) = non_public(ip) else {
            return Ok(());
        };
        if self.lists_host(host) || (self.allow_private && kind.private_ok()) {
            return Ok(());
        }
        Err(Denied {
            host: host.to_string(),
            reason: format!(
                "is a {} address, which the server does not pull from (an operator allows it with `hutch serve --allow-registry HOST[:PORT]`{})",
                kind.name(),
                if kind.private_ok() {
                    " or --allow-private-registries"
                } else {
                    ""
                }
            ),
        })
    }

    /// Checks a URL before it is requested: its scheme, and its host when that is an IP
    /// address (names are checked when the client resolves them).
    pub(crate) fn check_url(&self, url: &reqwest::Url) -> Result<(), Denied> {
        let host = url.host_str().unwrap_or_default().to_string();
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Denied {
                host,
                reason: format!("uses the scheme {:?}, not https", url.scheme()),
            });
        }
        if host.is_empty() {
            return Err(Denied {
                host: url.to_string(),
                reason: "has no host".into(),
            });
        }
        // The URL parser has already normalised other spellings of an address (`2130706433`,
        // `0x7f.1`) to the dotted form, so parsing the host string sees them all.
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check_ip(&host, ip),
            Err(_) => Ok(()),
        }
    }
}

/// The resolver a policed client connects through: every address a name resolves to is
/// checked, on every connection (registry, realm and redirect targets alike).
pub(crate) struct Resolver {
    pub policy: Arc<EgressPolicy>,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // One refused address refuses the name: a mixed answer is how a rebinding
            // attack would slip a private address past a check that looked at the first.
            for addr in &addrs {
                policy.check_ip(&host, addr.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The kinds of non-public addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Unspecified,
    Loopback,
    Private,
    Cgnat,
    UniqueLocal,
    LinkLocal,
    Multicast,
    /// Documentation, benchmarking, broadcast, protocol assignments and other special ranges.
    Reserved,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Loopback => "loopback",
            Kind::Private => "private",
            Kind::Cgnat => "carrier-grade NAT",
            Kind::UniqueLocal => "unique-local",
            Kind::LinkLocal => "link-local",
            Kind::Multicast => "multicast",
            Kind::Reserved => "reserved",
        }
    }

    /// What `--allow-private-registries` opens: networks an operator may run a registry on.
    fn private_ok(self) -> bool {
        matches!(
            self,
            Kind::Loopback | Kind::Private | Kind::Cgnat | Kind::UniqueLocal
        )
    }
}

/// The kind of a non-public address; `None` for a public one.
pub(crate) fn non_public(ip: IpAddr) -> Option<Kind> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<Kind> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => Kind::Unspecified,
        (127, _, _) => Kind::Loopback,
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => Kind::Private,
        (100, 64..=127, _) => Kind::Cgnat,
        (169, 254, _) => Kind::LinkLocal,
        (224..=239, _, _) => Kind::Multicast,
        (240..=255, _, _)
        | (192, 0, 0)
        | (192, 0, 2)
        | (198, 51, 100)
        | (203, 0, 113)
        | (198, 18..=19, _) => Kind::Reserved,
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<Kind> {
    if ip.is_unspecified() {
        return Some(Kind::Unspecified);
    }
    if ip.is_loopback() {
        return Some(Kind::Loopback);
    }
    // Forms that carry an IPv4 address reach it: judge that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s[0] {
        // ::a.b.c.d (IPv4-compatible, deprecated) and the rest of ::/96.
        0 if s[1..6].iter().all(|&x| x == 0) => non_public_v4(embedded(s[6], s[7])),
        // NAT64 well-known prefix 64:ff9b::/96 reaches the embedded address.
        0x64 if s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0) => {
            non_public_v4(embedded(s[6], s[7]))
        }
        // 6to4: 2002:AABB:CCDD::/48 reaches AA.BB.CC.DD.
        0x2002 => non_public_v4(embedded(s[1], s[2])),
        x if x & 0xfe00 == 0xfc00 => Some(Kind::UniqueLocal),
        // fe80::/10 link-local; fec0::/10 site-local (deprecated, private in practice).
        x if x & 0xffc0 == 0xfe80 => Some(Kind::LinkLocal),
        x if x & 0xffc0 == 0xfec0 => Some(Kind::UniqueLocal),
        x if x & 0xff00 == 0xff00 => Some(Kind::Multicast),
        // 2001:db8::/32 documentation; 2001::/23 protocol assignments (Teredo included).
        0x2001 if s[1] == 0x0db8 || s[1] < 0x0200 => Some(Kind::Reserved),
        // 100::/64 discard-only; the rest of ::/8 (besides the forms above, NAT64's local
        // 64:ff9b:1::/48 included) is reserved.
        0x0100 if s[1..4].iter().all(|&x| x == 0) => Some(Kind::Reserved),
        0x0000..=0x00ff => Some(Kind::Reserved),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> Option<Kind> {
        non_public(s.parse().expect("an address"))
    }

    #[test]
    fn ipv4_ranges_are_classified() {
        for (ip, expected) in [
            ("0.0.0.0", Some(Kind::Unspecified)),
            ("0.1.2.3", Some(Kind::Unspecified)),
            ("127.0.0.1", Some(Kind::Loopback)),
            ("127.255.255.254", Some(Kind::Loopback)),
            ("10.0.0.1", Some(Kind::Private)),
            ("172.16.0.1", Some(Kind::Private)),
            ("172.31.255.255", Some(Kind::Private)),
            ("192.168.1.1", Some(Kind::Private)),
            ("100.64.0.1", Some(Kind::Cgnat)),
            ("100.127.255.255", Some(Kind::Cgnat)),
            ("169.254.169.254", Some(Kind::LinkLocal)),
            ("224.0.0.1", Some(Kind::Multicast)),
            ("255.255.255.255", Some(Kind::Reserved)),
            ("192.0.2.1", Some(Kind::Reserved)),
            ("198.18.0.1", Some(Kind::Reserved)),
            // Just outside the ranges.
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("192.169.0.1", None),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
        ] {
            assert_eq!(kind(ip), expected, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges_and_embedded_ipv4_are_classified() {
        for (ip, expected) in [
            ("::", Some(Kind::Unspecified)),
            ("::1", Some(Kind::Loopback)),
            ("::ffff:127.0.0.1", Some(Kind::Loopback)),
            ("::ffff:10.1.2.3", Some(Kind::Private)),
            ("::ffff:169.254.169.254", Some(Kind::LinkLocal)),
            ("::127.0.0.1", Some(Kind::Loopback)),
            ("64:ff9b::7f00:1", Some(Kind::Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(Kind::LinkLocal)),
            ("2002:7f00:1::", Some(Kind::Loopback)),
            ("2002:c0a8:101::1", Some(Kind::Private)),
            ("fc00::1", Some(Kind::UniqueLocal)),
            ("fd12:3456::1", Some(Kind::UniqueLocal)),
            ("fe80::1", Some(Kind::LinkLocal)),
            ("febf::1", Some(Kind::LinkLocal)),
            ("fec0::1", Some(Kind::UniqueLocal)),
            ("ff02::1", Some(Kind::Multicast)),
            ("2001:db8::1", Some(Kind::Reserved)),
            ("2001:0:4136:e378::1", Some(Kind::Reserved)),
            ("100::1", Some(Kind::Reserved)),
            // Public: mapped, NAT64 and 6to4 forms of public IPv4, and global unicast.
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::808:808", None),
            ("2002:808:808::1", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::1", None),
        ] {
            assert_eq!(kind(ip), expected, "{ip}");
        }
    }

    #[test]
    fn the_allowlist_names_registries_and_opens_their_addresses() {
        let policy = EgressPolicy {
            allowed: vec![
                "127.0.0.1:5000".into(),
                "Registry.Internal".into(),
                "[::1]:6000".into(),
            ],
            ..Default::default()
        };
        assert!(policy.allows_registry("127.0.0.1:5000"));
        assert!(!policy.allows_registry("127.0.0.1:5001"));
        assert!(policy.allows_registry("registry.internal:443"));
        assert!(policy.allows_registry("registry.internal"));
        assert!(policy.allows_registry("[::1]:6000"));
        assert!(!policy.allows_registry("docker.io"));
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert!(policy.check_ip("127.0.0.1", lo).is_ok());
        assert!(policy.check_ip("registry.internal", lo).is_ok());
        // The mapped form of a listed address is that address.
        assert!(
            policy
                .check_ip("::ffff:127.0.0.1", "::ffff:127.0.0.1".parse().expect("ip"))
                .is_ok()
        );
        assert!(policy.check_ip("evil.example", lo).is_err());
        assert!(
            policy
                .check_ip("127.0.0.2", "127.0.0.2".parse().expect("ip"))
                .is_err()
        );

        let open = EgressPolicy::default();
        assert!(open.allows_registry("ghcr.io") && !open.lists("ghcr.io"));
        assert!(!open.credentials_for("ghcr.io"));
        assert!(open.check_ip("x", lo).is_err());
        assert!(open.check_ip("x", "8.8.8.8".parse().expect("ip")).is_ok());

        let hub = EgressPolicy {
            allowed: vec!["docker.io".into()],
            ..Default::default()
        };
        assert!(hub.allows_registry("docker.io") && hub.credentials_for("docker.io"));
        assert!(hub.lists_host("registry-1.docker.io"));
    }

    #[test]
    fn allow_private_opens_private_networks_but_not_link_local() {
        let policy = EgressPolicy {
            allow_private: true,
            ..Default::default()
        };
        for ip in ["127.0.0.1", "10.0.0.1", "100.64.0.1", "fd00::1", "::1"] {
            assert!(policy.check_ip(ip, ip.parse().expect("ip")).is_ok(), "{ip}");
        }
        for ip in [
            "169.254.169.254",
            "0.0.0.0",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                policy.check_ip(ip, ip.parse().expect("ip")).is_err(),
                "{ip}"
            );
        }
    }

    #[test]
    fn urls_are_checked_by_scheme_and_literal_address() {
        let policy = EgressPolicy::default();
        let check = |u: &str| policy.check_url(&reqwest::Url::parse(u).expect("url"));
        assert!(check("https://registry.example/v2/").is_ok());
        assert!(check("https://127.0.0.1:5000/v2/").is_err());
        // The URL parser's other spellings of 127.0.0.1 are the same address.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
        assert!(check("https://[::ffff:7f00:1]/").is_err());
        assert!(check("file:///etc/passwd").is_err());
    }
}
