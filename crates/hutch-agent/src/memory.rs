//! Per-process OOM semantics inside gVisor.
//!
//! A host cgroup limit, when hit, kills the whole sandbox (the host OOM killer takes the
//! Sentry). So the agent enforces the user's limit itself: it sums the resident memory of the
//! sandbox's processes and, past the limit, kills the largest one and marks the process it
//! belongs to `oom_killed`. The runtime sets the host cgroup limit higher, as a backstop.

use std::time::Duration;

use crate::process::Processes;

const INTERVAL: Duration = Duration::from_millis(20);

pub async fn watch(procs: Processes, limit_bytes: u64) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let me = std::process::id() as i32;
    loop {
        tokio::time::sleep(INTERVAL).await;
        let usage = resident(page, me);
        let total: u64 = usage.iter().map(|(_, rss)| rss).sum();
        if total <= limit_bytes {
            continue;
        }
        if let Some((victim, _)) = usage.iter().max_by_key(|(_, rss)| *rss) {
            procs.mark_oom(*victim);
            // SAFETY: kill(2) on a pid we just read from /proc.
            unsafe { libc::kill(*victim, libc::SIGKILL) };
        }
    }
}

/// `(pid, resident bytes)` of every process but the agent.
fn resident(page: u64, me: i32) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, pages * page))
    })
    .collect()
}
