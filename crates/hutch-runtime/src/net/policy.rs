//! The egress policy a sandbox runs under, as the Tensorlake SDK documents it
//! (`NetworkConfig`), parsed into what the host enforces.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// The SDK's network policy, as sent.
///
/// - `allow_internet_access` with an empty `allow_out` is the switch: everything (but the
///   fenced ranges and `deny_out`) or nothing (no DNS either).
/// - A non-empty `allow_out` makes the sandbox default-deny; `allow_internet_access` then
///   only decides whether the sandbox's resolver is reachable.
/// - `deny_out` wins over `allow_out`, for the resolver too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    #[serde(default = "yes")]
    pub allow_internet_access: bool,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        Self {
            allow_internet_access: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
        }
    }
}

/// The most entries `allow_out` and `deny_out` may hold together.
pub const MAX_ENTRIES: usize = 256;

impl NetworkPolicy {
    /// No network at all: loopback only, no namespace, nothing to police.
    pub fn is_offline(&self) -> bool {
        !self.allow_internet_access && self.allow_out.is_empty()
    }

    /// Parses every entry, naming the first bad one.
    pub fn parse(&self) -> Result<ParsedPolicy> {
        if self.allow_out.len() + self.deny_out.len() > MAX_ENTRIES {
            return Err(RuntimeError::InvalidSpec {
                reason: format!("a network policy holds at most {MAX_ENTRIES} entries"),
            });
        }
        let parse_all = |field: &str, entries: &[String]| -> Result<(Vec<Cidr>, Vec<String>)> {
            let (mut nets, mut names) = (Vec::new(), Vec::new());
            for e in entries {
                match parse_entry(e).map_err(|why| RuntimeError::InvalidSpec {
                    reason: format!("network.{field} entry {e:?}: {why}"),
                })? {
                    Entry::Net(c) => nets.push(c),
                    Entry::Name(n) => names.push(n),
                }
            }
            names.sort();
            names.dedup();
            Ok((nets, names))
        };
        let (allow, allow_names) = parse_all("allow_out", &self.allow_out)?;
        let (deny, deny_names) = parse_all("deny_out", &self.deny_out)?;
        Ok(ParsedPolicy {
            allow_internet_access: self.allow_internet_access,
            allow,
            deny,
            allow_names,
            deny_names,
        })
    }
}

/// An IPv4 network: `addr/prefix`, `addr` its first address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d` or `a.b.c.d/n`; the address must be the network's first.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => {
                let p: u8 = p
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| format!("bad prefix length {p:?} (0 to 32)"))?;
                (a, p)
            }
            None => (text, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let cidr = Self { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "{text} has host bits set (the network is {}/{prefix})",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A policy whose entries are networks and host names (lowercase, no trailing dot). A host
/// name stands for the addresses the sandbox's resolver answers for it, for their TTL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedPolicy {
    pub allow_internet_access: bool,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub allow_names: Vec<String>,
    pub deny_names: Vec<String>,
}

/// What a name in a DNS answer does to its addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameVerdict {
    Allow,
    Deny,
}

impl ParsedPolicy {
    /// Whether the sandbox needs the server's resolver (its host names follow DNS).
    pub fn has_names(&self) -> bool {
        !self.allow_names.is_empty() || !self.deny_names.is_empty()
    }

    /// The verdict for `name` (a name in a DNS answer): `deny_out` wins.
    pub fn name_verdict(&self, name: &str) -> Option<NameVerdict> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if self.deny_names.contains(&name) {
            Some(NameVerdict::Deny)
        } else if self.allow_names.contains(&name) {
            Some(NameVerdict::Allow)
        } else {
            None
        }
    }

    /// Whether the sandbox may ask its resolver (at `resolver`): denied by a `deny_out`
    /// covering it; otherwise allowed with internet access or when `allow_out` covers it.
    pub fn dns_allowed(&self, resolver: Ipv4Addr) -> bool {
        if self.deny.iter().any(|c| c.contains(resolver)) {
            return false;
        }
        self.allow_internet_access || self.allow.iter().any(|c| c.contains(resolver))
    }

    /// What a destination outside every entry gets: everything when there is no
    /// `allow_out` and internet access is on.
    pub fn default_accept(&self) -> bool {
        self.allow.is_empty() && self.allow_names.is_empty() && self.allow_internet_access
    }
}

enum Entry {
    Net(Cidr),
    Name(String),
}

/// One `allow_out`/`deny_out` entry: an IPv4 address, a CIDR or a host name, with an
/// optional `:port` that is accepted and ignored (the SDK documents rules as not
/// port-specific).
fn parse_entry(entry: &str) -> std::result::Result<Entry, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("empty".into());
    }
    if entry.contains('[') || entry.matches(':').count() > 1 {
        return Err("IPv6 is off in sandboxes: only IPv4 addresses and CIDRs apply".into());
    }
    let host = match entry.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("bad port {port:?} (1 to 65535)"))?;
            host
        }
        None => entry,
    };
    let looks_numeric = host
        .split('/')
        .next()
        .is_some_and(|a| a.chars().all(|c| c.is_ascii_digit() || c == '.'));
    if looks_numeric {
        return Cidr::parse(host).map(Entry::Net);
    }
    if valid_hostname(host) {
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        Ok(Entry::Name(name))
    } else {
        Err(format!(
            "{host:?} is neither an IPv4 address, a CIDR nor a host name"
        ))
    }
}

fn valid_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(internet: bool, allow: &[&str], deny: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            allow_internet_access: internet,
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn entries_are_addresses_or_networks_with_an_ignored_port() {
        let p = policy(true, &["8.8.8.8", "10.0.0.0/8", "203.0.113.7:443"], &[])
            .parse()
            .unwrap();
        assert_eq!(
            p.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["8.8.8.8/32", "10.0.0.0/8", "203.0.113.7/32"]
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for (entry, why) in [
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.1/8", "host bits"),
            ("300.1.1.1", "not an IPv4"),
            ("1.2.3.4:0", "bad port"),
            ("1.2.3.4:99999", "bad port"),
            ("", "empty"),
            ("2001:db8::1", "IPv6"),
            ("[2001:db8::1]:80", "IPv6"),
            ("bad name!", "neither"),
            ("-x.example.com", "neither"),
            ("a..b", "neither"),
        ] {
            let err = policy(true, &[], &[entry]).parse().unwrap_err().to_string();
            assert!(err.contains("deny_out"), "{err}");
            assert!(err.contains(why), "{entry}: {err}");
        }
    }

    #[test]
    fn host_names_follow_their_answers_and_deny_wins() {
        let p = policy(
            true,
            &["API.example.com.", "pypi.org:443", "1.2.3.4"],
            &["evil.example.com", "api.example.com"],
        )
        .parse()
        .unwrap();
        assert!(p.has_names());
        assert_eq!(p.allow_names, ["api.example.com", "pypi.org"]);
        assert_eq!(p.name_verdict("pypi.org."), Some(NameVerdict::Allow));
        assert_eq!(p.name_verdict("Api.Example.com"), Some(NameVerdict::Deny));
        assert_eq!(p.name_verdict("evil.example.com"), Some(NameVerdict::Deny));
        assert_eq!(p.name_verdict("sub.pypi.org"), None);
        assert!(!policy(true, &["1.2.3.4"], &[]).parse().unwrap().has_names());
        // A name in allow_out makes the policy default deny, like any entry.
        assert!(
            !policy(true, &["pypi.org"], &[])
                .parse()
                .unwrap()
                .default_accept()
        );
    }

    #[test]
    fn the_sdk_semantics() {
        // The switch.
        assert!(policy(false, &[], &[]).is_offline());
        assert!(!policy(false, &["1.2.3.4"], &[]).is_offline());
        let open = policy(true, &[], &["10.0.0.0/8"]).parse().unwrap();
        assert!(open.default_accept());
        // allow_out makes it default deny, in both modes.
        assert!(
            !policy(true, &["1.2.3.4"], &[])
                .parse()
                .unwrap()
                .default_accept()
        );
        assert!(
            !policy(false, &["1.2.3.4"], &[])
                .parse()
                .unwrap()
                .default_accept()
        );
        // DNS: implicit with internet access, else only when listed; deny wins.
        let gw = Ipv4Addr::new(10, 213, 0, 1);
        assert!(
            policy(true, &["1.2.3.4"], &[])
                .parse()
                .unwrap()
                .dns_allowed(gw)
        );
        assert!(
            !policy(false, &["1.2.3.4"], &[])
                .parse()
                .unwrap()
                .dns_allowed(gw)
        );
        assert!(
            policy(false, &["1.2.3.4", "10.213.0.1"], &[])
                .parse()
                .unwrap()
                .dns_allowed(gw)
        );
        assert!(
            !policy(true, &["10.213.0.0/16"], &["10.213.0.1"])
                .parse()
                .unwrap()
                .dns_allowed(gw)
        );
    }

    #[test]
    fn too_many_entries_are_refused() {
        let many: Vec<String> = (0..=MAX_ENTRIES)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect();
        let p = NetworkPolicy {
            allow_internet_access: true,
            allow_out: many,
            deny_out: vec![],
        };
        assert!(p.parse().unwrap_err().to_string().contains("at most"));
    }
}
