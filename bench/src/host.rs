//! Host-side memory of a sandbox: the runsc processes whose command line names it.

use std::collections::HashSet;

pub struct HostProcess {
    pub what: String,
    pub rss_kib: u64,
}

/// A `kB` field of a `/proc/*/status` or `/proc/meminfo` text, in KiB.
pub fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

struct Proc {
    pid: u32,
    ppid: u32,
    name: String,
    /// Its command line names the sandbox.
    names_sandbox: bool,
    rss_kib: u64,
}

fn scan(id: &str) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let (Ok(cmdline), Ok(status)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("status")),
        ) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let name = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_else(|| {
                let comm = status.lines().next().and_then(|l| l.strip_prefix("Name:"));
                format!("[{}]", comm.unwrap_or_default().trim())
            });
        out.push(Proc {
            pid,
            ppid: kib_field(&status, "PPid:").unwrap_or(0) as u32,
            name,
            names_sandbox: args.iter().any(|a| a.contains(id)),
            rss_kib: kib_field(&status, "VmRSS:").unwrap_or(0),
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// The Sentry (`runsc-sandbox`), the gofer, the `runsc run` supervisor, and the Sentry's
/// children (with the ptrace platform, the stub processes that run the sandbox's threads).
pub fn processes(id: &str) -> Vec<HostProcess> {
    let all = scan(id);
    let sentries: HashSet<u32> = all
        .iter()
        .filter(|p| p.names_sandbox && p.name == "runsc-sandbox")
        .map(|p| p.pid)
        .collect();
    let mut out = Vec::new();
    let mut stubs = (0usize, 0u64);
    for p in &all {
        let what = if sentries.contains(&p.ppid) {
            stubs.0 += 1;
            stubs.1 += p.rss_kib;
            None
        } else if !p.names_sandbox {
            continue;
        } else {
            Some(match p.name.as_str() {
                "runsc-sandbox" => "runsc-sandbox (the Sentry)".to_string(),
                "runsc-gofer" => "runsc-gofer".to_string(),
                "runsc" => "`runsc run` (the supervisor)".to_string(),
                other => format!("`{other}`"),
            })
        };
        eprintln!(
            "hutch-bench: host process {} (parent {}) {}: VmRSS {} KiB",
            p.pid, p.ppid, p.name, p.rss_kib
        );
        if let Some(what) = what {
            out.push(HostProcess {
                what,
                rss_kib: p.rss_kib,
            });
        }
    }
    if stubs.0 > 0 {
        out.push(HostProcess {
            what: format!(
                "{} child process(es) of the Sentry (ptrace stubs), total",
                stubs.0
            ),
            rss_kib: stubs.1,
        });
    }
    let total: u64 = out.iter().map(|p| p.rss_kib).sum();
    if out.len() > 1 {
        out.push(HostProcess {
            what: "sum of the above (pages shared between them count in each)".into(),
            rss_kib: total,
        });
    }
    out
}
