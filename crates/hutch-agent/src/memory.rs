//! Per-process OOM semantics inside gVisor.
//!
//! A host cgroup limit, when hit, kills the whole sandbox (the host OOM killer takes the
//! Sentry). So the agent enforces the user's limit itself: past the limit, it kills the
//! largest process and marks the process it belongs to `oom_killed`. The runtime sets the
//! host cgroup limit higher, as a backstop.
//!
//! What counts is what the host cgroup will see: the resident memory of every process, the
//! agent's own included (it holds every process's output), and what the sandbox's tmpfs
//! mounts (runsc's `/tmp`) hold, which gVisor keeps in the Sentry's memory. The agent is
//! never the victim; a process is charged the output the agent buffers for it, so the
//! process that floods its output is the one killed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::process::Processes;

const INTERVAL: Duration = Duration::from_millis(20);
/// How long the watch waits, alone, before looking again anyway.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The next sample's delay: 20 ms near the limit, slower with room to spare (a process
/// that allocates several GiB/s still meets the check before the host backstop, which
/// sits 50% or 256 MiB above the limit).
fn pace(used: u64, limit: u64) -> Duration {
    if limit == 0 {
        return IDLE_CHECK;
    }
    match used.saturating_mul(100) / limit {
        0..50 => Duration::from_millis(100),
        50..80 => Duration::from_millis(40),
        _ => INTERVAL,
    }
}

/// The user's limit in force (0: none). A live resize changes it (`set_limit`).
static LIMIT: AtomicU64 = AtomicU64::new(0);
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Enforces `limit_bytes` from now on, starting the watch if it is not running yet. A
/// process already over the new limit is killed at the next sample.
pub fn set_limit(procs: &Processes, limit_bytes: u64) {
    LIMIT.store(limit_bytes, Ordering::SeqCst);
    if !WATCHING.swap(true, Ordering::SeqCst) {
        tokio::spawn(watch(procs.clone()));
    }
}

async fn watch(procs: Processes) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let me = std::process::id() as i32;
    let mut interval = INTERVAL;
    loop {
        tokio::time::sleep(interval).await;
        let seen = crate::process::spawn_count();
        let usage = Usage {
            resident: resident(page),
            agent: me,
            tmpfs: tmpfs_bytes(),
        };
        let limit_bytes = LIMIT.load(Ordering::SeqCst);
        // Alone, the agent waits for its next spawn instead of polling (its own memory is
        // bounded by what it buffers for processes; tmpfs needs a process to fill it).
        if usage.resident.iter().all(|(pid, _)| *pid == me) {
            crate::process::wait_for_spawn(seen, IDLE_CHECK).await;
            interval = INTERVAL;
            continue;
        }
        interval = pace(usage.total(), limit_bytes);
        if limit_bytes == 0 || usage.total() <= limit_bytes {
            continue;
        }
        if let Some(victim) = usage.victim(&procs.buffered_output()) {
            procs.mark_oom(victim);
            // SAFETY: kill(2) on a pid we just read from /proc.
            unsafe { libc::kill(victim, libc::SIGKILL) };
        }
    }
}

/// One sample of the sandbox's memory.
struct Usage {
    /// `(pid, resident bytes)` of every process, the agent included.
    resident: Vec<(i32, u64)>,
    agent: i32,
    /// Bytes held by tmpfs mounts.
    tmpfs: u64,
}

impl Usage {
    fn total(&self) -> u64 {
        self.resident
            .iter()
            .map(|(_, rss)| rss)
            .sum::<u64>()
            .saturating_add(self.tmpfs)
    }

    /// The process to kill: the largest, counting the output the agent buffers for it
    /// (`buffered`: `(pid, bytes)`); never the agent.
    fn victim(&self, buffered: &[(i32, u64)]) -> Option<i32> {
        self.resident
            .iter()
            .filter(|(pid, _)| *pid != self.agent)
            .map(|&(pid, rss)| {
                let held = buffered
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map_or(0, |(_, bytes)| *bytes);
                (pid, rss.saturating_add(held))
            })
            .max_by_key(|(_, bytes)| *bytes)
            .map(|(pid, _)| pid)
    }
}

/// `(pid, resident bytes)` of every process.
fn resident(page: u64) -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, pages.saturating_mul(page)))
    })
    .collect()
}

/// Bytes in the sandbox's tmpfs mounts: gVisor's `/proc/meminfo` reports them as `Shmem`
/// (its tmpfs accounting; the agent only runs under gVisor, where the figure is the
/// sandbox's own, not the host's).
fn tmpfs_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| shmem_bytes(&text))
        .unwrap_or(0)
}

fn shmem_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Shmem:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_and_tmpfs_count_but_the_agent_is_never_killed() {
        let usage = Usage {
            resident: vec![(1, 150 << 20), (20, 10 << 20), (21, 30 << 20)],
            agent: 1,
            tmpfs: 80 << 20,
        };
        // 190 MiB of processes, the agent's 150 among them, and 80 MiB of tmpfs.
        assert_eq!(usage.total(), 270 << 20);
        assert_eq!(usage.victim(&[]), Some(21));
    }

    #[test]
    fn buffered_output_is_charged_to_its_process() {
        let usage = Usage {
            resident: vec![(1, 100 << 20), (20, 1 << 20), (21, 30 << 20)],
            agent: 1,
            tmpfs: 0,
        };
        assert_eq!(usage.victim(&[(20, 40 << 20)]), Some(20));
    }

    #[test]
    fn shmem_is_read_from_meminfo() {
        let text = "MemTotal: 1000 kB\nShmem:       2048 kB\nCached: 5 kB\n";
        assert_eq!(shmem_bytes(text), Some(2 << 20));
        assert_eq!(shmem_bytes("MemTotal: 1 kB\n"), None);
    }
}
