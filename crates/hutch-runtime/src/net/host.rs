//! A sandbox's network on the host: its own network namespace wired to the host's by a
//! veth pair (a /30 of the sandbox CIDR per sandbox), NAT'd out, and fenced and policed by
//! nftables in the host's namespace, where the sandbox cannot reach.
//!
//! Machine-wide state, shared by every Hutch process and home on the host:
//! - `/run/hutch/net/slot-<n>`: slot `n` is taken; the file names its sandbox directory;
//! - netns `hutch-<n>`, host interface `hh<n>` (the sandbox's end is `eth0` in the netns);
//! - nftables tables `inet hutch` (the fence, and chain `s<n>` per sandbox) and
//!   `ip hutch_nat` (masquerade, and chain `d<n>` sending DNS to the upstream resolver).
//!
//! Every change is serialized by a flock on `/run/hutch/net/lock` and made with one
//! `nft -f` transaction, so a policy is either wholly in force or not at all. Nothing here
//! depends on the Hutch process staying alive: a `kill -9` of the server leaves every rule
//! in force. A slot whose sandbox directory is gone is reclaimed by the next allocation.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::policy::{Cidr, NameVerdict, ParsedPolicy};
use crate::error::{Result, RuntimeError};

const BACKEND: &str = "gvisor";
const STATE_DIR: &str = "/run/hutch/net";
/// The sandbox CIDR when none is configured.
pub const DEFAULT_CIDR: &str = "10.213.0.0/16";

/// Ranges no sandbox reaches whatever its policy: link-local (cloud metadata), multicast,
/// reserved and broadcast, and "this network". The sandbox CIDR (other sandboxes) and the
/// operator's `--deny-cidr` ranges are added to them.
const ALWAYS_FENCED: &[&str] = &["0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

/// How sandboxes' networks are laid out on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSettings {
    /// Where sandboxes' addresses come from (`hutch serve --sandbox-cidr`).
    pub cidr: Cidr,
    /// Upstream resolvers (`--sandbox-dns`); the first one serves.
    pub dns: Vec<Ipv4Addr>,
    /// More ranges to fence (`--deny-cidr`).
    pub deny: Vec<Cidr>,
}

impl NetSettings {
    /// From `HUTCH_SANDBOX_CIDR`, `HUTCH_SANDBOX_DNS` and `HUTCH_DENY_CIDR` (comma-separated),
    /// the defaults being 10.213.0.0/16, the host's non-loopback resolvers and nothing.
    pub fn from_env() -> Result<Self> {
        Self::resolve(None, &[], &[])
    }

    /// From what `hutch serve` was told (`--sandbox-cidr`, `--sandbox-dns`, `--deny-cidr`),
    /// the environment filling in what it was not.
    pub fn resolve(cidr: Option<&str>, dns: &[String], deny: &[String]) -> Result<Self> {
        let invalid = |var: &str, why: String| RuntimeError::InvalidSpec {
            reason: format!("{var}: {why}"),
        };
        let cidr_text = cidr.map(str::to_string).unwrap_or_else(|| {
            std::env::var("HUTCH_SANDBOX_CIDR").unwrap_or_else(|_| DEFAULT_CIDR.to_string())
        });
        let cidr = Cidr::parse(cidr_text.trim()).map_err(|e| invalid("HUTCH_SANDBOX_CIDR", e))?;
        if !(8..=24).contains(&cidr.prefix) {
            return Err(invalid(
                "HUTCH_SANDBOX_CIDR",
                format!("{cidr}: the prefix must be /8 to /24"),
            ));
        }
        let list = |var: &str, given: &[String]| -> Vec<String> {
            if !given.is_empty() {
                return given.to_vec();
            }
            std::env::var(var)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let dns = match list("HUTCH_SANDBOX_DNS", dns) {
            given if !given.is_empty() => given
                .iter()
                .map(|s| {
                    s.parse::<Ipv4Addr>().map_err(|_| {
                        invalid("HUTCH_SANDBOX_DNS", format!("{s:?} is not an IPv4 address"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            _ => host_resolvers(),
        };
        let deny = list("HUTCH_DENY_CIDR", deny)
            .iter()
            .map(|s| Cidr::parse(s).map_err(|e| invalid("HUTCH_DENY_CIDR", e)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cidr, dns, deny })
    }

    /// The most sandboxes with a network at once: one /30 each, the first kept back.
    pub fn slots(&self) -> u32 {
        (1u32 << (32 - u32::from(self.cidr.prefix))) / 4 - 1
    }

    fn addresses(&self, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
        let base = u32::from(self.cidr.addr) + slot * 4;
        (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
    }
}

/// The host's resolvers, from /etc/resolv.conf, without loopback ones (a sandbox's DNS is
/// forwarded to them from its own namespace, which cannot reach the host's loopback).
fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// One sandbox's network, as set up.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub slot: u32,
    /// The host's end: the sandbox's gateway and resolver.
    pub gateway: Ipv4Addr,
    /// The sandbox's address.
    pub address: Ipv4Addr,
}

impl Attachment {
    pub fn netns(&self) -> String {
        netns_name(self.slot)
    }

    /// The namespace's path, for the OCI spec.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(self.netns())
    }

    pub fn host_interface(&self) -> String {
        host_if(self.slot)
    }
}

fn netns_name(slot: u32) -> String {
    format!("hutch-{slot}")
}

fn host_if(slot: u32) -> String {
    format!("hh{slot}")
}

fn net_failure(message: String) -> RuntimeError {
    RuntimeError::BackendFailure {
        backend: BACKEND,
        message,
    }
}

/// The machine-wide lock every network change holds.
struct NetLock(#[allow(dead_code)] std::fs::File);

fn lock() -> Result<NetLock> {
    std::fs::create_dir_all(STATE_DIR)
        .map_err(|e| RuntimeError::io(format!("creating {STATE_DIR}"), e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(STATE_DIR).join("lock"))
        .map_err(|e| RuntimeError::io("opening the network lock", e))?;
    file.lock()
        .map_err(|e| RuntimeError::io("locking the network lock", e))?;
    Ok(NetLock(file))
}

fn slot_file(slot: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("slot-{slot}"))
}

/// Runs `program args` with `input` on stdin; its stderr in the error.
fn run(program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| net_failure(format!("running {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| net_failure(format!("waiting for {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(net_failure(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether this host can give sandboxes a network: root, `ip` and `nft` present.
pub fn host_support() -> std::result::Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("sandbox networks need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables)"
            ));
        }
    }
    Ok(())
}

/// Sets up a network for the sandbox whose directory is `owner`, under `policy`.
pub fn attach(settings: &NetSettings, owner: &Path, policy: &ParsedPolicy) -> Result<Attachment> {
    let _lock = lock()?;
    let fence = fence(settings)?;
    sweep_stale_locked();
    let slot = take_slot(settings, owner)?;
    let (gateway, address) = settings.addresses(slot);
    let attachment = Attachment {
        slot,
        gateway,
        address,
    };
    // The namespace and the rules are independent (rules name the interface, not its
    // index): made at once, the slower of the two is what a create waits for.
    let started = std::time::Instant::now();
    let (wired, applied) = std::thread::scope(|scope| {
        let wiring = scope.spawn(|| wire(&attachment));
        let applied = apply_based(settings, &attachment, policy, &fence);
        let wired = wiring
            .join()
            .unwrap_or_else(|_| Err(net_failure("wiring the network panicked".into())));
        (wired, applied)
    });
    tracing::debug!(slot, took = ?started.elapsed(), "network attached");
    let made = wired.and(applied);
    if let Err(e) = made {
        remove_locked(slot);
        return Err(e);
    }
    Ok(attachment)
}

/// Replaces the policy of a sandbox's network in one transaction: new connections see it at
/// once; established ones stay.
pub fn apply(settings: &NetSettings, attachment: &Attachment, policy: &ParsedPolicy) -> Result<()> {
    let _lock = lock()?;
    let fence = fence(settings)?;
    apply_based(settings, attachment, policy, &fence)
}

/// The sandbox's transaction, optimistically: the base tables are there on every create
/// but a host's first (checking costs a process or two, milliseconds of every create). When
/// the transaction fails, the base is made (or brought up to date) and it is tried again.
fn apply_based(
    settings: &NetSettings,
    a: &Attachment,
    policy: &ParsedPolicy,
    fence: &str,
) -> Result<()> {
    if apply_locked(settings, a, policy, fence).is_ok() {
        return Ok(());
    }
    ensure_base()?;
    apply_locked(settings, a, policy, fence)
}

/// Removes the network of every slot the sandbox directory `owner` holds. Found by the slot
/// files, not by the sandbox's own `net.json`, so that a teardown racing a create (the
/// slot taken, `net.json` not yet written) still finds it: both hold the lock, so whichever
/// comes second sees what the first did.
pub fn detach_owner(owner: &Path) {
    let Ok(_lock) = lock() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    let owner = owner.as_os_str().as_encoded_bytes();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(slot) = name
            .to_str()
            .and_then(|n| n.strip_prefix("slot-"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read(entry.path()).is_ok_and(|holder| holder == owner) {
            remove_locked(slot);
        }
    }
}

/// Removes the networks of slots whose sandbox directory is gone (a process killed between
/// removing the directory and the network, or a host whose homes were wiped).
fn sweep_stale_locked() {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let slot = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("slot-"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(slot) = slot
            && let Ok(holder) = std::fs::read_to_string(entry.path())
            && !Path::new(holder.trim()).exists()
        {
            tracing::info!(slot, %holder, "removing the network of a sandbox that is gone");
            remove_locked(slot);
        }
    }
}

/// Takes the next free slot after the last one taken (round robin: an address just freed
/// is the last to be given again, so what the kernel still tracks of an ended sandbox's
/// connections never meets a new one), reclaiming slots whose sandbox directory is gone.
fn take_slot(settings: &NetSettings, owner: &Path) -> Result<u32> {
    let hint_file = Path::new(STATE_DIR).join("next");
    let total = settings.slots();
    let start = std::fs::read_to_string(&hint_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| (1..=total).contains(n))
        .unwrap_or(1);
    for slot in (start..=total).chain(1..start) {
        let file = slot_file(slot);
        if let Ok(holder) = std::fs::read_to_string(&file) {
            if Path::new(holder.trim()).exists() {
                continue;
            }
            remove_locked(slot);
        }
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file);
        if let Ok(mut f) = created {
            f.write_all(owner.as_os_str().as_encoded_bytes())
                .map_err(|e| RuntimeError::io("writing a network slot", e))?;
            let _ = std::fs::write(&hint_file, (slot % total + 1).to_string());
            return Ok(slot);
        }
    }
    Err(RuntimeError::CapacityRejected {
        reason: format!(
            "every address of the sandbox CIDR {} is in use ({} sandboxes with a network)",
            settings.cidr,
            settings.slots()
        ),
    })
}

fn remove_locked(slot: u32) {
    // One transaction (a teardown is on `hutch run`'s path to its exit, and each `nft` is a
    // process): every object is added first, which does nothing when it exists, so the
    // deletes after cannot fail on something already gone. Only a missing base table fails
    // it; then each line goes on its own, best effort.
    let (s, d, r, ifname) = (
        format!("s{slot}"),
        format!("d{slot}"),
        format!("r{slot}"),
        host_if(slot),
    );
    let (a, x) = (format!("a{slot}"), format!("x{slot}"));
    let deletes = [
        format!("delete element inet hutch sandboxes {{ \"{ifname}\" }}"),
        format!("delete element inet hutch resolvers {{ \"{ifname}\" }}"),
        format!("delete element ip hutch_nat dns {{ \"{ifname}\" }}"),
        format!("flush chain inet hutch {s}"),
        format!("delete chain inet hutch {s}"),
        format!("delete chain inet hutch {r}"),
        format!("delete set inet hutch {a}"),
        format!("delete set inet hutch {x}"),
        format!("delete chain ip hutch_nat {d}"),
    ];
    let script = format!(
        "add chain inet hutch {s}\n\
         add chain inet hutch {r}\n\
         add set inet hutch {a} {{ type ipv4_addr; flags timeout; }}\n\
         add set inet hutch {x} {{ type ipv4_addr; flags timeout; }}\n\
         add element inet hutch sandboxes {{ \"{ifname}\" : jump {s} }}\n\
         add element inet hutch resolvers {{ \"{ifname}\" : jump {r} }}\n\
         add chain ip hutch_nat {d}\n\
         add element ip hutch_nat dns {{ \"{ifname}\" : jump {d} }}\n\
         {}\n",
        deletes.join("\n")
    );
    if run("nft", &["-f", "-"], &script).is_err() {
        for line in &deletes {
            let _ = run("nft", &["-f", "-"], line);
        }
    }
    if Path::new("/run/netns").join(netns_name(slot)).exists() {
        let _ = run("ip", &["netns", "delete", &netns_name(slot)], "");
    }
    // A veth whose namespace went some other way leaves its host end only if both did not go.
    if Path::new("/sys/class/net").join(&ifname).exists() {
        let _ = run("ip", &["link", "delete", &ifname], "");
    }
    let _ = std::fs::remove_file(slot_file(slot));
}

/// The namespace, the veth pair and the routes.
fn wire(a: &Attachment) -> Result<()> {
    let ns = a.netns();
    let ifname = a.host_interface();
    // A namespace left by a crash between slot and wiring would make `add` fail (looked
    // for first: each `ip` is a process).
    if Path::new("/run/netns").join(&ns).exists() {
        let _ = run("ip", &["netns", "delete", &ns], "");
    }
    if Path::new("/sys/class/net").join(&ifname).exists() {
        let _ = run("ip", &["link", "delete", &ifname], "");
    }
    run(
        "ip",
        &["-batch", "-"],
        &format!(
            "netns add {ns}\n\
             link add {ifname} type veth peer name eth0 netns {ns}\n\
             addr add {gw}/30 dev {ifname}\n\
             link set {ifname} up\n",
            gw = a.gateway
        ),
    )?;
    run(
        "ip",
        &["-n", &ns, "-batch", "-"],
        &format!(
            "addr add {addr}/30 dev eth0\n\
             link set eth0 up\n\
             link set lo up\n\
             route add default via {gw}\n",
            addr = a.address,
            gw = a.gateway
        ),
    )
}

/// The tables every sandbox shares, made once (under the lock), or brought up to date.
fn ensure_base() -> Result<()> {
    if !base_exists() {
        run("nft", &["-f", "-"], BASE_RULESET)
    } else if !resolvers_map_exists() {
        // Tables made by a Hutch from before host-name rules: add what they lack.
        run("nft", &["-f", "-"], RESOLVERS_MIGRATION)
    } else {
        Ok(())
    }
}

/// IPv4 forwarding on, and the fenced ranges of this process's settings as the first
/// statement of a sandbox's transaction (elements only ever added: other homes' ranges stay
/// fenced too).
fn fence(settings: &NetSettings) -> Result<String> {
    // IPv4 forwarding: the sandboxes' traffic is routed through the host.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| RuntimeError::io("enabling IPv4 forwarding", e))?;
    let mut fenced: Vec<String> = ALWAYS_FENCED.iter().map(|s| s.to_string()).collect();
    fenced.push(settings.cidr.to_string());
    fenced.extend(settings.deny.iter().map(ToString::to_string));
    Ok(format!(
        "add element inet hutch fenced {{ {} }}\n",
        fenced.join(", ")
    ))
}

/// Both tables are made in one transaction, so either both exist with their rules or
/// neither does; one `nft` call tells (each costs a few milliseconds of every create).
fn base_exists() -> bool {
    Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|o| {
            let tables = String::from_utf8_lossy(&o.stdout);
            tables.lines().any(|l| l.trim() == "table inet hutch")
                && tables.lines().any(|l| l.trim() == "table ip hutch_nat")
        })
}

fn resolvers_map_exists() -> bool {
    Command::new("nft")
        .args(["list", "map", "inet", "hutch", "resolvers"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

const RESOLVERS_MIGRATION: &str = r#"
add map inet hutch resolvers { type ifname : verdict; }
insert rule inet hutch input iifname "hh*" iifname vmap @resolvers
insert rule inet hutch input iifname "hh*" ct state established,related accept
"#;

/// The shared rules. Sandbox interfaces are `hh*`:
/// - nothing from a sandbox reaches the host itself (input), but replies, DNAT'd DNS and,
///   for a sandbox whose policy names hosts, DNS to the server's resolver on its gateway
///   (`resolvers` map, chain `r<n>`);
/// - nothing new reaches a sandbox (forward, towards `hh*`): not other sandboxes, not the
///   LAN; replies to what it opened do;
/// - no IPv6 leaves a sandbox;
/// - what a sandbox opens goes through its own chain (`sandboxes` map); an interface
///   without one is dropped.
const BASE_RULESET: &str = r#"
table inet hutch {
  set fenced { type ipv4_addr; flags interval; auto-merge; }
  map sandboxes { type ifname : verdict; }
  map resolvers { type ifname : verdict; }
  chain input {
    type filter hook input priority filter - 1; policy accept;
    iifname "hh*" ct state established,related accept
    iifname "hh*" iifname vmap @resolvers
    iifname "hh*" drop
  }
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    oifname "hh*" ct state established,related accept
    oifname "hh*" drop
    iifname "hh*" ct state established,related accept
    iifname "hh*" meta nfproto ipv6 drop
    iifname "hh*" iifname vmap @sandboxes
    iifname "hh*" drop
  }
}
table ip hutch_nat {
  map dns { type ifname : verdict; }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "hh*" iifname vmap @dns
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    iifname "hh*" oifname != "hh*" masquerade
  }
}
"#;

/// The sandbox's chains, replaced in one transaction.
fn apply_locked(
    settings: &NetSettings,
    a: &Attachment,
    policy: &ParsedPolicy,
    fence: &str,
) -> Result<()> {
    let (s, d, r, ifname) = (
        format!("s{}", a.slot),
        format!("d{}", a.slot),
        format!("r{}", a.slot),
        a.host_interface(),
    );
    let (allowed, denied) = (format!("a{}", a.slot), format!("x{}", a.slot));
    // Every verdict on a new connection goes to the egress audit log (`net::audit`).
    let group = super::audit::group();
    let (accept, drop) = (
        format!("log group {group} prefix \"A{} \" accept", a.slot),
        format!("log group {group} prefix \"D{} \" drop", a.slot),
    );
    let names = policy.has_names();
    let set = |cidrs: &[Cidr]| {
        cidrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The addresses the resolver admitted for host names, each for its TTL; a new policy
    // starts them afresh (the sandbox's next lookups fill them again).
    let mut script = format!(
        "{fence}add set inet hutch {allowed} {{ type ipv4_addr; flags timeout; }}\n\
         add set inet hutch {denied} {{ type ipv4_addr; flags timeout; }}\n\
         flush set inet hutch {allowed}\n\
         flush set inet hutch {denied}\n\
         add chain inet hutch {s}\n\
         flush chain inet hutch {s}\n\
         add rule inet hutch {s} ip saddr != {addr} drop\n",
        addr = a.address
    );
    let upstream = settings.dns.first().copied();
    if let Some(upstream) = upstream
        && !names
        && policy.dns_allowed(a.gateway)
    {
        script.push_str(&format!(
            "add rule inet hutch {s} ip daddr {upstream} meta l4proto {{ tcp, udp }} th dport 53 \
             ct status dnat ct original ip daddr {gw} {accept}\n",
            gw = a.gateway
        ));
    }
    script.push_str(&format!(
        "add rule inet hutch {s} ip daddr @fenced {drop}\n"
    ));
    if !policy.deny.is_empty() {
        script.push_str(&format!(
            "add rule inet hutch {s} ip daddr {{ {} }} {drop}\n",
            set(&policy.deny)
        ));
    }
    script.push_str(&format!(
        "add rule inet hutch {s} ip daddr @{denied} {drop}\n"
    ));
    if !policy.allow.is_empty() {
        script.push_str(&format!(
            "add rule inet hutch {s} ip daddr {{ {} }} {accept}\n",
            set(&policy.allow)
        ));
    }
    script.push_str(&format!(
        "add rule inet hutch {s} ip daddr @{allowed} {accept}\n"
    ));
    let last = if policy.default_accept() {
        &accept
    } else {
        &drop
    };
    script.push_str(&format!("add rule inet hutch {s} {last}\n"));
    script.push_str(&format!(
        "add element inet hutch sandboxes {{ \"{ifname}\" : jump {s} }}\n"
    ));
    // DNS to the server's resolver on the gateway, for a policy that names hosts.
    script.push_str(&format!(
        "add chain inet hutch {r}\nflush chain inet hutch {r}\n"
    ));
    if names && policy.dns_allowed(a.gateway) {
        script.push_str(&format!(
            "add rule inet hutch {r} ip daddr {gw} meta l4proto udp udp dport 53 accept\n",
            gw = a.gateway
        ));
    }
    script.push_str(&format!(
        "add element inet hutch resolvers {{ \"{ifname}\" : jump {r} }}\n"
    ));
    // DNS to the gateway goes to the upstream resolver.
    script.push_str(&format!(
        "add chain ip hutch_nat {d}\nflush chain ip hutch_nat {d}\n"
    ));
    if let Some(upstream) = upstream.filter(|_| !names) {
        script.push_str(&format!(
            "add rule ip hutch_nat {d} ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 dnat to {upstream}\n",
            gw = a.gateway
        ));
    }
    script.push_str(&format!(
        "add element ip hutch_nat dns {{ \"{ifname}\" : jump {d} }}\n"
    ));
    // The map elements point at the chains, which were flushed and refilled in place: when
    // they exist already, adding them again changes nothing.
    run("nft", &["-f", "-"], &script)
}

/// Admits addresses a DNS answer gave for a host name of the sandbox in `slot`'s policy,
/// each for `ttl` seconds (re-admitting refreshes the timeout). No lock: the sets belong to
/// that slot alone, and a teardown racing this makes it fail harmlessly.
pub fn admit(slot: u32, entries: &[(Ipv4Addr, NameVerdict, u32)]) -> Result<()> {
    let mut script = String::new();
    for (ip, verdict, ttl) in entries {
        let set = match verdict {
            NameVerdict::Allow => format!("a{slot}"),
            NameVerdict::Deny => format!("x{slot}"),
        };
        // `add` of an element that exists keeps its old timeout: add, delete, add again
        // (one transaction) sets the new one either way.
        script.push_str(&format!(
            "add element inet hutch {set} {{ {ip} timeout {ttl}s }}\n\
             delete element inet hutch {set} {{ {ip} }}\n\
             add element inet hutch {set} {{ {ip} timeout {ttl}s }}\n"
        ));
    }
    if script.is_empty() {
        return Ok(());
    }
    run("nft", &["-f", "-"], &script)
}

/// What is left on the host of slot `slot`, as descriptions (empty when it is gone):
/// for tests and `fsck`-like checks.
pub fn leftovers(slot: u32) -> Vec<String> {
    let mut found = Vec::new();
    if Path::new("/run/netns").join(netns_name(slot)).exists() {
        found.push(format!("netns {}", netns_name(slot)));
    }
    if Path::new("/sys/class/net").join(host_if(slot)).exists() {
        found.push(format!("interface {}", host_if(slot)));
    }
    for (kind, family, table, chain) in [
        ("chain", "inet", "hutch", format!("s{slot}")),
        ("chain", "ip", "hutch_nat", format!("d{slot}")),
        ("chain", "inet", "hutch", format!("r{slot}")),
        ("set", "inet", "hutch", format!("a{slot}")),
        ("set", "inet", "hutch", format!("x{slot}")),
    ] {
        let listed = Command::new("nft")
            .args(["list", kind, family, table, &chain])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if listed {
            found.push(format!("nft {kind} {family} {table} {chain}"));
        }
    }
    if slot_file(slot).exists() {
        found.push(format!("slot file {}", slot_file(slot).display()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_slash_30s_of_the_cidr_the_first_kept_back() {
        let settings = NetSettings {
            cidr: Cidr::parse("10.213.0.0/16").unwrap(),
            dns: vec![],
            deny: vec![],
        };
        assert_eq!(settings.slots(), 16383);
        assert_eq!(
            settings.addresses(1),
            (Ipv4Addr::new(10, 213, 0, 5), Ipv4Addr::new(10, 213, 0, 6))
        );
        assert_eq!(
            settings.addresses(16383),
            (
                Ipv4Addr::new(10, 213, 255, 253),
                Ipv4Addr::new(10, 213, 255, 254)
            )
        );
        assert!(
            host_if(16383).len() <= 15,
            "interface names are at most 15 bytes"
        );
    }
}
