//! The resolver of a sandbox whose policy names hosts: it listens on the sandbox's gateway
//! (UDP 53), passes each query to the upstream resolver, and before the answer goes back
//! admits the addresses answered for a name of the policy into the sandbox's nftables sets
//! (`a<n>` allowed, `x<n>` denied), each for its TTL. So a host-name rule follows DNS: a
//! CDN's rotating addresses are admitted as they are answered, and expire when their TTL
//! does. Sandboxes whose policy names no host keep DNS DNAT'd straight to the upstream.
//!
//! It runs in the process that owns the backend (`hutch serve`); a restarted server starts
//! it again when it adopts the sandbox. While no server runs, such sandboxes have no DNS.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::audit::AuditLog;
use super::host::{self, Attachment};
use super::policy::{NameVerdict, ParsedPolicy};
use crate::error::{Result, RuntimeError};

/// Queries in flight per sandbox; more are dropped (the client retries).
const IN_FLIGHT: usize = 32;
/// How long the upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// An admitted address lasts at least this (a TTL of 0 would admit nothing usable) and at
/// most a day.
const MIN_TTL: u32 = 5;
const MAX_TTL: u32 = 86_400;
/// The largest DNS message over UDP (EDNS0 clients may ask for up to this).
const MAX_MESSAGE: usize = 4096;

pub struct Resolver {
    task: JoinHandle<()>,
    policy: Arc<RwLock<ParsedPolicy>>,
    admitted: Arc<Admitted>,
}

/// Addresses already in the sandbox's sets, with when their admission ends. A sandbox that
/// asks for the same name again and again would otherwise start an `nft` process per
/// answer on the host; an address is admitted again only once half its time is gone.
#[derive(Default)]
pub struct Admitted(std::sync::Mutex<HashMap<(Ipv4Addr, NameVerdict), Instant>>);

/// Admissions remembered per sandbox; past it the expired are dropped, then all.
const ADMITTED_MAX: usize = 4096;

impl Admitted {
    /// Of `entries`, those the sets need (new, or past half their time), remembered as
    /// admitted from `now`.
    pub fn needed(
        &self,
        entries: Vec<(Ipv4Addr, NameVerdict, u32)>,
        now: Instant,
    ) -> Vec<(Ipv4Addr, NameVerdict, u32)> {
        let Ok(mut known) = self.0.lock() else {
            return entries;
        };
        if known.len() >= ADMITTED_MAX {
            known.retain(|_, until| *until > now);
            if known.len() >= ADMITTED_MAX {
                known.clear();
            }
        }
        entries
            .into_iter()
            .filter(|&(ip, verdict, ttl)| {
                let ttl = Duration::from_secs(u64::from(ttl));
                let fresh = known
                    .get(&(ip, verdict))
                    .is_some_and(|until| until.saturating_duration_since(now) > ttl / 2);
                if !fresh {
                    known.insert((ip, verdict), now + ttl);
                }
                !fresh
            })
            .collect()
    }

    /// Forgets everything: the sets were emptied (a new policy).
    pub fn clear(&self) {
        if let Ok(mut known) = self.0.lock() {
            known.clear();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// Listens on `a`'s gateway. Call from within a tokio runtime.
    pub fn start(
        a: &Attachment,
        upstream: Ipv4Addr,
        policy: ParsedPolicy,
        audit: Option<Arc<AuditLog>>,
    ) -> Result<Self> {
        let std_socket = std::net::UdpSocket::bind((a.gateway, 53)).map_err(|e| {
            RuntimeError::io(format!("binding the resolver on {}:53", a.gateway), e)
        })?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| RuntimeError::io("setting up the resolver's socket", e))?;
        let socket = Arc::new(
            UdpSocket::from_std(std_socket)
                .map_err(|e| RuntimeError::io("setting up the resolver's socket", e))?,
        );
        let policy = Arc::new(RwLock::new(policy));
        let admitted = Arc::new(Admitted::default());
        let (slot, sandbox) = (a.slot, a.address);
        let (shared, known) = (Arc::clone(&policy), Arc::clone(&admitted));
        let task = tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let Ok((n, src)) = socket.recv_from(&mut buf).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Only the sandbox itself asks here (the nftables chain admits no one else).
                if src.ip() != std::net::IpAddr::V4(sandbox) {
                    continue;
                }
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    continue;
                };
                let query = buf[..n].to_vec();
                let (socket, policy, audit, known) = (
                    Arc::clone(&socket),
                    Arc::clone(&shared),
                    audit.clone(),
                    Arc::clone(&known),
                );
                tokio::spawn(async move {
                    let _permit = permit;
                    let answered =
                        resolve(slot, upstream, &policy, &known, audit.as_deref(), &query);
                    if let Some(answer) = answered.await {
                        let _ = socket.send_to(&answer, src).await;
                    }
                });
            }
        });
        Ok(Self {
            task,
            policy,
            admitted,
        })
    }

    /// The policy the next answers are judged by (its `apply` emptied the sets).
    pub fn set_policy(&self, policy: ParsedPolicy) {
        if let Ok(mut p) = self.policy.write() {
            *p = policy;
        }
        self.admitted.clear();
    }
}

async fn resolve(
    slot: u32,
    upstream: Ipv4Addr,
    policy: &RwLock<ParsedPolicy>,
    known: &Admitted,
    audit: Option<&AuditLog>,
    query: &[u8],
) -> Option<Vec<u8>> {
    let id = query.get(..2)?.to_vec();
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    socket
        .connect(SocketAddr::from((upstream, 53)))
        .await
        .ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await.ok()?;
            if buf.get(..2) == Some(&id[..]) {
                return Some(buf[..n].to_vec());
            }
        }
    })
    .await
    .ok()??;
    // An answer the resolver cannot read goes back as it came, admitting nothing.
    let Some(msg) = parse(&answer) else {
        return Some(answer);
    };
    // The audit log names the addresses it sees by what they were answered for.
    if let Some(audit) = audit
        && let Some(name) = msg.questions.first()
    {
        for r in &msg.records {
            if let Data::A(ip) = r.data {
                audit.remember(slot, ip, name);
            }
        }
    }
    let admitted = {
        let policy = policy.read().ok()?;
        known.needed(admissions(&policy, &msg), Instant::now())
    };
    if !admitted.is_empty() {
        // Admitted before the answer goes back: the connection that follows it passes.
        match tokio::task::spawn_blocking(move || host::admit(slot, &admitted)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(slot, error = %e, "admitting resolved addresses"),
            Err(e) => tracing::warn!(slot, error = %e, "admitting resolved addresses"),
        }
    }
    Some(answer)
}

/// The addresses `answer` gives for names of the policy, with the verdict and how long. A
/// name anywhere in the answer's chain (the question, CNAME owners and targets) speaks for
/// every address in it; `deny_out` wins.
pub fn admissions(policy: &ParsedPolicy, msg: &Message) -> Vec<(Ipv4Addr, NameVerdict, u32)> {
    let mut verdict = None;
    for name in msg.names() {
        match policy.name_verdict(name) {
            Some(NameVerdict::Deny) => {
                verdict = Some(NameVerdict::Deny);
                break;
            }
            Some(NameVerdict::Allow) => verdict = Some(NameVerdict::Allow),
            None => {}
        }
    }
    let Some(verdict) = verdict else {
        return Vec::new();
    };
    msg.records
        .iter()
        .filter_map(|r| match r.data {
            Data::A(ip) => Some((ip, verdict, r.ttl.clamp(MIN_TTL, MAX_TTL))),
            Data::Cname(_) | Data::Other => None,
        })
        .collect()
}

/// The parts of a DNS message the resolver reads.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub questions: Vec<String>,
    pub records: Vec<Record>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub owner: String,
    pub ttl: u32,
    pub data: Data,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Cname(String),
    Other,
}

impl Message {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.questions
            .iter()
            .map(String::as_str)
            .chain(self.records.iter().flat_map(|r| {
                let target = match &r.data {
                    Data::Cname(t) => Some(t.as_str()),
                    _ => None,
                };
                std::iter::once(r.owner.as_str()).chain(target)
            }))
    }
}

/// Parses a DNS message's questions and answer records; `None` for anything malformed.
pub fn parse(msg: &[u8]) -> Option<Message> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *msg.get(at)?,
            *msg.get(at + 1)?,
        ])))
    };
    let (qd, an) = (count(4)?, count(6)?);
    let mut pos = 12;
    let mut questions = Vec::new();
    for _ in 0..qd {
        let (name, next) = read_name(msg, pos)?;
        questions.push(name);
        pos = next + 4;
    }
    let mut records = Vec::new();
    for _ in 0..an {
        let (owner, next) = read_name(msg, pos)?;
        let rtype = count(next)?;
        let ttl = u32::from_be_bytes(msg.get(next + 4..next + 8)?.try_into().ok()?);
        let len = count(next + 8)?;
        let start = next + 10;
        let rdata = msg.get(start..start + len)?;
        let data = match rtype {
            1 if len == 4 => Data::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
            5 => Data::Cname(read_name(msg, start)?.0),
            _ => Data::Other,
        };
        records.push(Record { owner, ttl, data });
        pos = start + len;
    }
    Some(Message { questions, records })
}

/// A (possibly compressed) name at `pos`: the name, lowercased without the root's dot, and
/// where the bytes after it start. Pointers may only go backwards, so a loop cannot form.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    let mut total = 0usize;
    loop {
        let len = *msg.get(pos)?;
        match len {
            0 => {
                let after = end.unwrap_or(pos + 1);
                return Some((labels.join("."), after));
            }
            l if l & 0xC0 == 0xC0 => {
                let target = usize::from(u16::from_be_bytes([l & 0x3F, *msg.get(pos + 1)?]));
                if target >= pos {
                    return None;
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            l if l & 0xC0 == 0 => {
                let label = msg.get(pos + 1..pos + 1 + usize::from(l))?;
                total += label.len() + 1;
                if total > 255 {
                    return None;
                }
                labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
                pos += 1 + usize::from(l);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(out: &mut Vec<u8>, n: &str) {
        for label in n.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// An answer to `q`: a CNAME `q` → `target` (compressed to the question) and A records
    /// of `target`.
    fn answer(q: &str, target: &str, ips: &[[u8; 4]], ttl: u32) -> Vec<u8> {
        let mut m = vec![
            0x12,
            0x34,
            0x81,
            0x80,
            0,
            1,
            0,
            (1 + ips.len()) as u8,
            0,
            0,
            0,
            0,
        ];
        name(&mut m, q);
        m.extend_from_slice(&[0, 1, 0, 1]);
        // CNAME, owner by pointer to the question (offset 12).
        m.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1]);
        m.extend_from_slice(&ttl.to_be_bytes());
        let mut t = Vec::new();
        name(&mut t, target);
        m.extend_from_slice(&(t.len() as u16).to_be_bytes());
        let target_at = m.len();
        m.extend_from_slice(&t);
        for ip in ips {
            m.extend_from_slice(&[0xC0, target_at as u8, 0, 1, 0, 1]);
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&[0, 4]);
            m.extend_from_slice(ip);
        }
        m
    }

    fn policy(allow: &[&str], deny: &[&str]) -> ParsedPolicy {
        ParsedPolicy {
            allow_internet_access: false,
            allow_names: allow.iter().map(|s| s.to_string()).collect(),
            deny_names: deny.iter().map(|s| s.to_string()).collect(),
            ..ParsedPolicy::default()
        }
    }

    #[test]
    fn answers_are_read_through_compression_and_cnames() {
        let m = parse(&answer("Web.Test", "cdn.example", &[[203, 0, 113, 9]], 30)).unwrap();
        assert_eq!(m.questions, ["web.test"]);
        assert_eq!(m.records[0].owner, "web.test");
        assert_eq!(m.records[0].data, Data::Cname("cdn.example".into()));
        assert_eq!(m.records[1].owner, "cdn.example");
        assert_eq!(m.records[1].data, Data::A(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(m.records[1].ttl, 30);
    }

    #[test]
    fn names_of_the_policy_admit_their_addresses_for_their_ttl() {
        let a = answer("web.test", "cdn.example", &[[1, 2, 3, 4], [1, 2, 3, 5]], 0);
        assert_eq!(
            admissions(&policy(&["web.test"], &[]), &parse(&a).unwrap()),
            [
                (Ipv4Addr::new(1, 2, 3, 4), NameVerdict::Allow, MIN_TTL),
                (Ipv4Addr::new(1, 2, 3, 5), NameVerdict::Allow, MIN_TTL)
            ]
        );
        // The CNAME's target names them too, and deny wins.
        let both = policy(&["web.test"], &["cdn.example"]);
        assert!(
            admissions(&both, &parse(&a).unwrap())
                .iter()
                .all(|e| e.1 == NameVerdict::Deny)
        );
        assert!(admissions(&policy(&["other.test"], &[]), &parse(&a).unwrap()).is_empty());
        let long = answer("web.test", "cdn.example", &[[1, 2, 3, 4]], u32::MAX);
        assert_eq!(
            admissions(&policy(&["web.test"], &[]), &parse(&long).unwrap())[0].2,
            MAX_TTL
        );
    }

    #[test]
    fn a_repeated_answer_admits_again_only_past_half_its_time() {
        let known = Admitted::default();
        let ip = Ipv4Addr::new(1, 2, 3, 4);
        let t0 = Instant::now();
        let entry = vec![(ip, NameVerdict::Allow, 60)];
        assert_eq!(known.needed(entry.clone(), t0).len(), 1);
        // The same answer a moment later starts no `nft` process.
        assert!(
            known
                .needed(entry.clone(), t0 + Duration::from_secs(1))
                .is_empty()
        );
        assert!(
            known
                .needed(entry.clone(), t0 + Duration::from_secs(29))
                .is_empty()
        );
        // Past half its TTL, it is refreshed; another verdict is its own entry.
        assert_eq!(
            known
                .needed(entry.clone(), t0 + Duration::from_secs(31))
                .len(),
            1
        );
        assert_eq!(known.needed(vec![(ip, NameVerdict::Deny, 60)], t0).len(), 1);
        // A new policy emptied the sets: everything is admitted again.
        known.clear();
        assert_eq!(known.needed(entry, t0 + Duration::from_secs(32)).len(), 1);
        // Bounded: a flood of distinct addresses never holds more than the bound.
        let many: Vec<_> = (0..(ADMITTED_MAX as u32 + 100))
            .map(|i| (Ipv4Addr::from(i), NameVerdict::Allow, 60))
            .collect();
        let _ = known.needed(many.clone(), t0);
        let _ = known.needed(many, t0);
        assert!(known.0.lock().unwrap().len() <= ADMITTED_MAX + 100);
    }

    #[test]
    fn hostile_messages_are_refused_not_followed() {
        // A pointer to itself, a forward pointer, truncation, a reserved label type.
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xC0, 12]);
        assert!(parse(&m).is_none());
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xC0, 40]);
        assert!(parse(&m).is_none());
        let a = answer("web.test", "cdn.example", &[[1, 2, 3, 4]], 30);
        for cut in 0..a.len() {
            let _ = parse(&a[..cut]);
        }
        assert!(parse(&a[..a.len() - 1]).is_none());
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x80];
        m.push(0);
        assert!(parse(&m).is_none());
        // A name longer than 255 bytes.
        let mut m = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.push(0);
        m.extend_from_slice(&[0, 1, 0, 1]);
        assert!(parse(&m).is_none());
    }
}
