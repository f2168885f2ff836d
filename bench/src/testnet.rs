//! The benches' test host: a network namespace on the last /29 of TEST-NET-3 (which the
//! tests' slots leave alone when slot 31 is free), linked to the host. Nothing a bench does
//! there reaches any other address.

use std::process::{Child, Command};

use anyhow::bail;

/// The test host: the last /29 of TEST-NET-3, which the tests' slots (0-30) leave alone
/// when slot 31 is free; the bench refuses to run over an existing one.
pub const NS: &str = "hbench-net";
pub const HOST_IF: &str = "hbn0";
pub const HOST_SIDE: &str = "203.0.113.249";
pub const TEST_HOST: &str = "203.0.113.250";

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test host's namespace and link, removed on drop.
pub struct TestNet;

impl TestNet {
    pub fn make() -> anyhow::Result<Self> {
        if std::path::Path::new(&format!("/run/netns/{NS}")).exists() {
            bail!("network namespace {NS} exists: another bench is running, or remove it");
        }
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip").args(args).output()?;
            if !out.status.success() {
                bail!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        ip(&["netns", "add", NS])?;
        let net = Self;
        ip(&[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NS,
        ])?;
        ip(&["addr", "add", &format!("{HOST_SIDE}/29"), "dev", HOST_IF])?;
        ip(&["link", "set", HOST_IF, "up"])?;
        ip(&[
            "-n",
            NS,
            "addr",
            "add",
            &format!("{TEST_HOST}/29"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", NS, "link", "set", "eth0", "up"])?;
        ip(&["-n", NS, "link", "set", "lo", "up"])?;
        ip(&["-n", NS, "route", "add", "default", "via", HOST_SIDE])?;
        Ok(net)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", HOST_IF])
            .output();
        let _ = Command::new("ip").args(["netns", "delete", NS]).output();
    }
}
