//! What the sandbox service admits: how many sandboxes run and wait at once, and how big one
//! may be on this host. A create over either bound is refused (`CapacityExceeded`,
//! `ExceedsHost`) instead of queued or started against capacity that is not there.

use std::time::Duration;

use crate::error::StateError;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Sandboxes pending or running at once; more wait (see `max_pending_secs`).
    pub max_sandboxes: usize,
    /// Creates that may wait for room beyond `max_sandboxes`; more are answered 429 rather
    /// than queued without bound.
    pub max_queued: usize,
    /// Sandboxes booting at once: boots are CPU-bound, and a crowd slows every one of them.
    pub concurrent_boots: usize,
    /// The most one sandbox may ask for: the host's CPUs and memory.
    pub host: HostCapacity,
    /// How long the rows of ended sandboxes are kept (they answer `get` and `ls --all`).
    pub retention: Duration,
    /// The most processes each sandbox may hold (the agent ends a session past it; the host
    /// cgroup is a backstop above).
    pub pids_limit: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sandboxes: 256,
            max_queued: 64,
            concurrent_boots: 8,
            host: HostCapacity::detect(),
            retention: Duration::from_secs(24 * 3600),
            pids_limit: hutch_runtime::DEFAULT_PIDS_LIMIT,
        }
    }
}

/// What this host has to give one sandbox.
#[derive(Clone, Copy, Debug)]
pub struct HostCapacity {
    /// CPUs this process may run on (affinity and cgroup quota counted).
    pub cpus: f64,
    /// Physical memory, in MiB.
    pub memory_mb: u64,
}

impl HostCapacity {
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kb| kb / 1024);
        Self { cpus, memory_mb }
    }

    /// Refuses a sandbox no bigger host could ever run here, naming the field.
    pub fn admit(&self, cpus: Option<f64>, memory_mb: Option<u64>) -> Result<(), StateError> {
        let refuse = StateError::ExceedsHost;
        if let Some(c) = cpus
            && c > self.cpus
        {
            return Err(refuse(format!(
                "resources.cpus asks for {c} CPUs; this host has {}",
                self.cpus
            )));
        }
        if let Some(m) = memory_mb
            && m > self.memory_mb
        {
            return Err(refuse(format!(
                "resources.memory_mb asks for {m} MiB; this host has {} MiB",
                self.memory_mb
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_bigger_than_the_host_is_refused_naming_the_field() {
        let host = HostCapacity {
            cpus: 2.0,
            memory_mb: 4096,
        };
        assert!(host.admit(Some(2.0), Some(4096)).is_ok());
        let e = host.admit(Some(1024.0), None).unwrap_err().to_string();
        assert!(e.contains("resources.cpus") && e.contains('2'), "{e}");
        let e = host.admit(None, Some(4 << 20)).unwrap_err();
        assert_eq!(e.code(), "exceeds_host_capacity");
        let e = e.to_string();
        assert!(
            e.contains("resources.memory_mb") && e.contains("4096"),
            "{e}"
        );
    }

    #[test]
    fn the_host_is_measured() {
        let host = HostCapacity::detect();
        assert!(host.cpus >= 1.0);
        assert!(host.memory_mb > 16 && host.memory_mb < u64::MAX);
    }
}
