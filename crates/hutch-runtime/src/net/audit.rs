//! The egress audit log: every connection a sandbox opens, or is refused, with its time,
//! destination, the host name its resolver answered for that address (when it did), the
//! verdict and, once an allowed connection ends, its bytes.
//!
//! - Verdicts: every terminal rule of a sandbox's chain `s<n>` logs the connection's first
//!   packet to NFLOG group [`NFLOG_GROUP`] with the prefix `A<n> ` or `D<n> ` (allowed,
//!   denied; only new connections reach that chain). A thread reads the group over
//!   netlink (`NETLINK_NETFILTER`, subsystem ULOG) with the first 64 bytes of each packet.
//! - Bytes: a second thread reads conntrack's destroy events (accounting switched on) and
//!   adds both directions' bytes to the entry of the connection that ended.
//! - Bounds: [`PER_SANDBOX`] entries per sandbox (oldest dropped first, sequence numbers
//!   keep counting, so a follower sees the gap), [`NAMES_PER_SANDBOX`] remembered answers.
//!
//! Only `hutch serve` runs it (one reader per group on a host), and only for sandboxes its
//! backend attached: entries live in its memory and end with the sandbox.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The first NFLOG group a server tries ("HU"); each server reads a group of its own, the
/// first free one of [`GROUPS`] from here, and its sandboxes' rules log to it.
pub const NFLOG_GROUP: u16 = 0x4855;
const GROUPS: u16 = 256;

/// The group this process's sandbox rules log to.
static GROUP: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(NFLOG_GROUP);

/// The NFLOG group the rules made by this process name.
pub fn group() -> u16 {
    GROUP.load(std::sync::atomic::Ordering::Acquire)
}
/// Entries kept per sandbox.
pub const PER_SANDBOX: usize = 1024;
/// Host names remembered per sandbox (address → the name it was answered for).
pub const NAMES_PER_SANDBOX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allowed,
    Denied,
}

/// One connection attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEntry {
    /// Counts from 1 for the sandbox; a gap means entries were dropped (the bound).
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// `tcp`, `udp`, `icmp` or the IP protocol number.
    pub protocol: String,
    /// The destination address.
    pub ip: Ipv4Addr,
    /// The destination port (TCP and UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The name the sandbox's resolver answered this address for, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub verdict: Verdict,
    /// Both directions' bytes, once an allowed connection ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

struct Logged {
    entry: EgressEntry,
    proto: u8,
    sport: u16,
}

#[derive(Default)]
struct Ring {
    next: u64,
    entries: VecDeque<Logged>,
    names: HashMap<Ipv4Addr, String>,
}

/// Every attached sandbox's entries, by network slot.
#[derive(Default)]
pub struct AuditLog {
    slots: Mutex<HashMap<u32, Ring>>,
}

impl AuditLog {
    /// Keeps a log for the sandbox in `slot` (an empty one if there is none yet).
    pub fn open(&self, slot: u32) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.entry(slot).or_default();
        }
    }

    /// Drops the log of `slot` (its sandbox ended).
    pub fn close(&self, slot: u32) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.remove(&slot);
        }
    }

    /// Remembers that the sandbox's resolver answered `ip` for `name`.
    pub fn remember(&self, slot: u32, ip: Ipv4Addr, name: &str) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(ring) = slots.get_mut(&slot)
        {
            if ring.names.len() >= NAMES_PER_SANDBOX && !ring.names.contains_key(&ip) {
                ring.names.clear();
            }
            ring.names.insert(ip, name.to_string());
        }
    }

    /// Entries after sequence number `after`, oldest first.
    pub fn entries(&self, slot: u32, after: u64) -> Vec<EgressEntry> {
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        slots.get(&slot).map_or_else(Vec::new, |ring| {
            ring.entries
                .iter()
                .filter(|l| l.entry.seq > after)
                .map(|l| l.entry.clone())
                .collect()
        })
    }

    fn record(&self, slot: u32, packet: &Packet, verdict: Verdict) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let Some(ring) = slots.get_mut(&slot) else {
            return;
        };
        ring.next += 1;
        let entry = EgressEntry {
            seq: ring.next,
            time_ms: hutch_wire::clock::now_ms(),
            protocol: match packet.proto {
                6 => "tcp".into(),
                17 => "udp".into(),
                1 => "icmp".into(),
                n => n.to_string(),
            },
            ip: packet.dst,
            port: packet.dport,
            hostname: ring.names.get(&packet.dst).cloned(),
            verdict,
            bytes: None,
        };
        if ring.entries.len() >= PER_SANDBOX {
            ring.entries.pop_front();
        }
        ring.entries.push_back(Logged {
            entry,
            proto: packet.proto,
            sport: packet.sport.unwrap_or(0),
        });
    }

    fn account(&self, slot: u32, ended: &Ended) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let Some(ring) = slots.get_mut(&slot) else {
            return;
        };
        if let Some(l) = ring.entries.iter_mut().rev().find(|l| {
            l.entry.verdict == Verdict::Allowed
                && l.entry.bytes.is_none()
                && l.proto == ended.proto
                && l.entry.ip == ended.dst
                && l.entry.port == Some(ended.dport)
                && l.sport == ended.sport
        }) {
            l.entry.bytes = Some(ended.bytes);
        }
    }
}

/// The first bytes of a logged packet, read.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    proto: u8,
    dst: Ipv4Addr,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn packet(ip: &[u8]) -> Option<Packet> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    let proto = ip[9];
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let ports = matches!(proto, 6 | 17)
        .then(|| ip.get(ihl..ihl + 4))
        .flatten()
        .map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        });
    Some(Packet {
        proto,
        dst,
        sport: ports.map(|p| p.0),
        dport: ports.map(|p| p.1),
    })
}

/// A conntrack entry that ended.
#[derive(Debug, PartialEq, Eq)]
struct Ended {
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    bytes: u64,
}

// ---- netlink -------------------------------------------------------------------------------

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const NLMSG_ERROR: u16 = 2;

/// `(type, payload)` of each netlink attribute in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([buf[0], buf[1]]));
        let kind = u16::from_le_bytes([buf[2], buf[3]]) & 0x3FFF;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// `(type, payload after the nfgenmsg)` of each netlink message in `buf`.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
        let kind = u16::from_le_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            return None;
        }
        let body = &buf[16..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, body))
    })
}

/// A logged packet's slot, verdict and packet, from an NFLOG message's attributes.
fn nflog_packet(body: &[u8]) -> Option<(u32, Verdict, Packet)> {
    let attrs_at = body.get(4..)?;
    let prefix = attr(attrs_at, NFULA_PREFIX)?;
    let prefix = std::str::from_utf8(prefix)
        .ok()?
        .trim_end_matches('\0')
        .trim();
    let (verdict, slot) = match prefix.split_at_checked(1)? {
        ("A", slot) => (Verdict::Allowed, slot),
        ("D", slot) => (Verdict::Denied, slot),
        _ => return None,
    };
    let slot = slot.parse().ok()?;
    Some((slot, verdict, packet(attr(attrs_at, NFULA_PAYLOAD)?)?))
}

fn conntrack_ended(body: &[u8]) -> Option<Ended> {
    let attrs_at = body.get(4..)?;
    let tuple = attr(attrs_at, CTA_TUPLE_ORIG)?;
    let ip = attr(tuple, 1)?;
    let proto = attr(tuple, 2)?;
    let addr = |p: &[u8]| -> Option<Ipv4Addr> {
        let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    let port = |p: &[u8]| -> Option<u16> { Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?)) };
    let bytes = |kind: u16| -> u64 {
        attr(attrs_at, kind)
            .and_then(|c| attr(c, 2))
            .and_then(|b| b.get(..8))
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes)
    };
    Some(Ended {
        proto: *attr(proto, 1)?.first()?,
        src: addr(attr(ip, 1)?)?,
        dst: addr(attr(ip, 2)?)?,
        sport: attr(proto, 2).and_then(port).unwrap_or(0),
        dport: attr(proto, 3).and_then(port).unwrap_or(0),
        bytes: bytes(CTA_COUNTERS_ORIG) + bytes(CTA_COUNTERS_REPLY),
    })
}

fn socket(groups: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        let bound = libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        if bound < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let size: libc::c_int = 4 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        Ok(fd)
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reading into a buffer we own.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends one NFLOG config request and reads its acknowledgement.
fn configure(fd: &OwnedFd, group: u16, attr_kind: u16, payload: &[u8]) -> std::io::Result<()> {
    let attr_len = 4 + payload.len();
    let mut msg = Vec::new();
    let total = 16 + 4 + ((attr_len + 3) & !3);
    msg.extend_from_slice(&(total as u32).to_le_bytes());
    msg.extend_from_slice(&(NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG).to_le_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    // nfgenmsg: AF_UNSPEC, version 0, the group (big-endian).
    msg.extend_from_slice(&[0, 0]);
    msg.extend_from_slice(&group.to_be_bytes());
    msg.extend_from_slice(&(attr_len as u16).to_le_bytes());
    msg.extend_from_slice(&attr_kind.to_le_bytes());
    msg.extend_from_slice(payload);
    msg.resize(total, 0);
    // SAFETY: sending a buffer we own on a socket we own (to the kernel: address zeroed).
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 4096];
    let n = recv(fd, &mut buf)?;
    for (kind, body) in messages(&buf[..n]) {
        if kind == NLMSG_ERROR {
            // `body` starts after the nlmsghdr: an i32 error (0 is the ack).
            let code = i32::from_le_bytes(
                body.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 4]),
            );
            if code != 0 {
                return Err(std::io::Error::from_raw_os_error(-code));
            }
        }
    }
    Ok(())
}

/// Starts both readers into `log`; `cidr` is the sandbox CIDR, which tells the conntrack
/// reader whose connections are sandboxes'. Fails when every group is taken or the kernel
/// lacks NFLOG or conntrack events.
pub fn start(log: Arc<AuditLog>, cidr: super::Cidr) -> std::io::Result<()> {
    // Conntrack's byte counters are off by default.
    let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1");
    // The first group nobody reads (binding a taken one fails).
    let mut bound = None;
    let mut last = std::io::Error::other("no NFLOG group tried");
    for group in NFLOG_GROUP..NFLOG_GROUP + GROUPS {
        let nflog = socket(0)?;
        match configure(&nflog, group, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]) {
            Ok(()) => {
                bound = Some((nflog, group));
                break;
            }
            Err(e) => last = e,
        }
    }
    let (nflog, group) = bound.ok_or(last)?;
    let mut mode = 64u32.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    configure(&nflog, group, NFULA_CFG_MODE, &mode)?;
    GROUP.store(group, std::sync::atomic::Ordering::Release);
    let conntrack = socket(1 << (NFNLGRP_CONNTRACK_DESTROY - 1))?;
    let verdicts = Arc::clone(&log);
    read_forever("egress-nflog", nflog, move |kind, body| {
        if kind == NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
            && let Some((slot, verdict, packet)) = nflog_packet(body)
        {
            verdicts.record(slot, &packet, verdict);
        }
    })?;
    read_forever("egress-conntrack", conntrack, move |kind, body| {
        if kind == NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
            && let Some(ended) = conntrack_ended(body)
            && let Some(slot) = slot_of(cidr, ended.src)
        {
            log.account(slot, &ended);
        }
    })
}

/// Reads netlink messages from `fd` on a thread of its own, for ever, handing each to
/// `handle`.
fn read_forever(
    name: &str,
    fd: OwnedFd,
    mut handle: impl FnMut(u16, &[u8]) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match recv(&fd, &mut buf) {
                    Ok(n) => {
                        for (kind, body) in messages(&buf[..n]) {
                            handle(kind, body);
                        }
                    }
                    Err(e) => {
                        if let Some(pause) = pause_after(&e) {
                            std::thread::sleep(pause);
                        }
                    }
                }
            }
        })
        .map(drop)
}

/// How long to wait after a failed read: not at all when messages were lost (ENOBUFS: the
/// kernel's queue overflowed) or the call was interrupted; otherwise a pause, so a socket
/// that fails for good cannot spin a CPU.
fn pause_after(e: &std::io::Error) -> Option<std::time::Duration> {
    match e.raw_os_error() {
        Some(libc::ENOBUFS | libc::EINTR) => None,
        _ => Some(std::time::Duration::from_millis(100)),
    }
}

/// The slot whose sandbox has address `ip`: sandboxes are the second address of each /30
/// of the sandbox CIDR.
fn slot_of(cidr: super::Cidr, ip: Ipv4Addr) -> Option<u32> {
    if !cidr.contains(ip) {
        return None;
    }
    let offset = u32::from(ip) - u32::from(cidr.network());
    (offset % 4 == 2).then_some(offset / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_syn(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 213, 0, 6];
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p
    }

    fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = ((4 + payload.len()) as u16).to_le_bytes().to_vec();
        a.extend_from_slice(&kind.to_le_bytes());
        a.extend_from_slice(payload);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    #[test]
    fn nflog_messages_give_slot_verdict_and_destination() {
        let mut body = vec![2, 0, 0x48, 0x55];
        body.extend(nla(NFULA_PREFIX, b"D12 \0"));
        body.extend(nla(NFULA_PAYLOAD, &tcp_syn([203, 0, 113, 9], 40000, 443)));
        let (slot, verdict, p) = nflog_packet(&body).unwrap();
        assert_eq!((slot, verdict), (12, Verdict::Denied));
        assert_eq!(p.dst, Ipv4Addr::new(203, 0, 113, 9));
        assert_eq!((p.sport, p.dport), (Some(40000), Some(443)));
        // Someone else's prefix, a truncated packet: nothing.
        let mut other = vec![2, 0, 0x48, 0x55];
        other.extend(nla(NFULA_PREFIX, b"other \0"));
        other.extend(nla(NFULA_PAYLOAD, &tcp_syn([1, 1, 1, 1], 1, 2)));
        assert!(nflog_packet(&other).is_none());
        assert!(packet(&tcp_syn([1, 1, 1, 1], 1, 2)[..19]).is_none());
        // A bad attribute length ends the walk instead of reading past the buffer.
        assert_eq!(attrs(&[200, 0, 1, 0, 1, 2]).count(), 0);
    }

    #[test]
    fn conntrack_destroy_events_give_the_tuple_and_both_directions_bytes() {
        let nested = |kind: u16, inner: Vec<u8>| nla(kind | 0x8000, &inner);
        let mut ip = nla(1, &[10, 213, 0, 6]);
        ip.extend(nla(2, &[203, 0, 113, 9]));
        let mut proto = nla(1, &[6]);
        proto.extend(nla(2, &40000u16.to_be_bytes()));
        proto.extend(nla(3, &80u16.to_be_bytes()));
        let mut tuple = nested(1, ip);
        tuple.extend(nested(2, proto));
        let mut body = vec![2, 0, 0, 0];
        body.extend(nested(CTA_TUPLE_ORIG, tuple));
        let counters = |bytes: u64| {
            let mut c = nla(1, &3u64.to_be_bytes());
            c.extend(nla(2, &bytes.to_be_bytes()));
            c
        };
        body.extend(nested(CTA_COUNTERS_ORIG, counters(100)));
        body.extend(nested(CTA_COUNTERS_REPLY, counters(5000)));
        assert_eq!(
            conntrack_ended(&body),
            Some(Ended {
                proto: 6,
                src: Ipv4Addr::new(10, 213, 0, 6),
                dst: Ipv4Addr::new(203, 0, 113, 9),
                sport: 40000,
                dport: 80,
                bytes: 5100,
            })
        );
        // Sandbox addresses are the second of each /30 of the CIDR.
        let cidr = super::super::Cidr::parse("10.213.0.0/16").unwrap();
        assert_eq!(slot_of(cidr, Ipv4Addr::new(10, 213, 0, 6)), Some(1));
        assert_eq!(slot_of(cidr, Ipv4Addr::new(10, 213, 0, 5)), None);
        assert_eq!(slot_of(cidr, Ipv4Addr::new(10, 214, 0, 6)), None);
    }

    #[test]
    fn a_broken_socket_pauses_the_reader_and_lost_messages_do_not() {
        let err = std::io::Error::from_raw_os_error;
        assert_eq!(pause_after(&err(libc::ENOBUFS)), None);
        assert_eq!(pause_after(&err(libc::EINTR)), None);
        assert!(pause_after(&err(libc::EBADF)).is_some());
        assert!(pause_after(&std::io::Error::other("x")).is_some());
    }

    #[test]
    fn the_ring_is_bounded_and_bytes_land_on_their_connection() {
        let log = AuditLog::default();
        log.open(3);
        log.remember(3, Ipv4Addr::new(203, 0, 113, 9), "web.test");
        for sport in 0..(PER_SANDBOX as u16 + 10) {
            let p = packet(&tcp_syn([203, 0, 113, 9], sport, 80)).unwrap();
            log.record(3, &p, Verdict::Allowed);
        }
        let all = log.entries(3, 0);
        assert_eq!(all.len(), PER_SANDBOX);
        assert_eq!(all[0].seq, 11);
        assert_eq!(all[0].hostname.as_deref(), Some("web.test"));
        log.account(
            3,
            &Ended {
                proto: 6,
                src: Ipv4Addr::new(10, 213, 0, 14),
                dst: Ipv4Addr::new(203, 0, 113, 9),
                sport: 500,
                dport: 80,
                bytes: 1234,
            },
        );
        let with_bytes: Vec<_> = log
            .entries(3, 0)
            .into_iter()
            .filter(|e| e.bytes.is_some())
            .collect();
        assert_eq!(with_bytes.len(), 1);
        assert_eq!(with_bytes[0].bytes, Some(1234));
        assert_eq!(log.entries(3, PER_SANDBOX as u64 + 9).len(), 1);
        // A slot nobody opened records nothing; a closed one forgets.
        log.record(
            4,
            &packet(&tcp_syn([1, 1, 1, 1], 1, 2)).unwrap(),
            Verdict::Denied,
        );
        assert!(log.entries(4, 0).is_empty());
        log.close(3);
        assert!(log.entries(3, 0).is_empty());
    }
}
