//! Managed processes: a process started with a `name`, a `restart` policy or a
//! `health_check` is supervised.
//!
//! - One task per managed process waits for each run to finish and decides, from the policy
//!   (`never`, `on_failure`, `always`) and `max_restarts`, whether to start it again, after
//!   a backoff that doubles from `initial_backoff_ms` up to `max_backoff_ms`. Each run is a
//!   new process (a new pid, its own output log); the name follows the newest run.
//! - A health check (TCP connect, or an HTTP GET of `path` answering 2xx/3xx, on the
//!   sandbox's loopback) runs every `interval_ms` after `initial_delay_ms`; after
//!   `failure_threshold` failures in a row the run is killed and started again, whatever the
//!   policy (within `max_restarts`).
//! - `DELETE` ends supervision (the process is killed and stays down); the SDK's
//!   `restart_process` starts a new run at once, without backoff.
//!
//! The record of each managed process (status, restarts, health, last exit) is what
//! `ProcessInfo.managed` shows, on every run's info.

use std::time::Duration;

use hutch_wire::clock::now_ms;
use hutch_wire::{
    HealthCheckKind, ProcessHealthCheck, ProcessManagedInfo, RestartPolicy, RestartPolicyConfig,
    StartProcess, SupervisedProcessExit, SupervisedProcessHealthStatus as Health,
    SupervisedProcessStatus as Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Processes, signal_group};

/// The most managed processes a sandbox keeps records of (running or not).
pub const MAX_MANAGED: usize = 256;

/// A managed process across its runs.
pub struct Managed {
    pub id: String,
    pub spec: StartProcess,
    pub restart: RestartPolicyConfig,
    /// The current (or last) run.
    pub pid: i32,
    pub status: Status,
    pub restart_count: u32,
    pub health: Health,
    pub consecutive_failures: u32,
    pub last_exit: Option<SupervisedProcessExit>,
    pub last_error: Option<String>,
    pub next_restart_at: Option<i64>,
    /// Set by `DELETE`: the run ends and no other follows.
    pub stopped: bool,
    /// Set by a restart request or a failed health check: the next run starts at once.
    pub restart_now: bool,
}

impl Managed {
    pub fn new(id: String, spec: StartProcess, pid: i32) -> Self {
        let health = if spec.health_check.is_some() {
            Health::Starting
        } else {
            Health::Disabled
        };
        Self {
            id,
            restart: spec.restart.clone().unwrap_or_default(),
            spec,
            pid,
            status: Status::Running,
            restart_count: 0,
            health,
            consecutive_failures: 0,
            last_exit: None,
            last_error: None,
            next_restart_at: None,
            stopped: false,
            restart_now: false,
        }
    }

    pub fn info(&self) -> ProcessManagedInfo {
        ProcessManagedInfo {
            id: self.id.clone(),
            name: self.spec.name.clone(),
            status: self.status,
            restart_count: self.restart_count,
            restart: self.restart.clone(),
            health_check: self.spec.health_check.clone(),
            health_status: self.health,
            consecutive_health_failures: self.consecutive_failures,
            last_exit: self.last_exit.clone(),
            last_error: self.last_error.clone(),
            next_restart_at: self.next_restart_at,
        }
    }

    /// Whether a run that ended so goes again, and if not, why.
    fn wants_restart(&self, exit: &SupervisedProcessExit) -> Result<(), String> {
        if self.stopped {
            return Err("stopped on request".into());
        }
        if let Some(max) = self.restart.max_restarts
            && self.restart_count >= max
        {
            return Err(format!("gave up after {max} restarts"));
        }
        if self.restart_now {
            return Ok(());
        }
        let failed = exit.exit_code != Some(0) || exit.signal.is_some() || exit.oom_killed;
        match self.restart.policy {
            RestartPolicy::Always => Ok(()),
            RestartPolicy::OnFailure if failed => Ok(()),
            RestartPolicy::OnFailure => Err("exited successfully".into()),
            RestartPolicy::Never => Err("its restart policy is never".into()),
        }
    }

    /// The wait before restart number `restart_count + 1`.
    fn backoff(&self) -> Duration {
        let shift = self.restart_count.min(20);
        let ms = self
            .restart
            .initial_backoff_ms
            .saturating_mul(1 << shift)
            .min(
                self.restart
                    .max_backoff_ms
                    .max(self.restart.initial_backoff_ms),
            );
        Duration::from_millis(ms)
    }
}

/// Supervises managed process `id` until it stops for good.
pub async fn supervise(procs: Processes, id: String) {
    if let Some(check) = procs
        .managed(&id, |m| m.spec.health_check.clone())
        .flatten()
    {
        tokio::spawn(health(procs.clone(), id.clone(), check));
    }
    loop {
        let Some(pid) = procs.managed(&id, |m| m.pid) else {
            return;
        };
        let exit = procs.wait_exit(pid).await;
        let ended = SupervisedProcessExit {
            exit_code: exit.exit_code,
            signal: exit.signal,
            oom_killed: exit.oom_killed,
            ended_at: now_ms(),
        };
        let decision = procs.managed(&id, |m| {
            m.last_exit = Some(ended.clone());
            match m.wants_restart(&ended) {
                Ok(()) if m.restart_now => Some(Duration::ZERO),
                Ok(()) => {
                    let wait = m.backoff();
                    m.status = Status::BackingOff;
                    m.next_restart_at = Some(now_ms() + wait.as_millis() as i64);
                    Some(wait)
                }
                Err(why) => {
                    m.status = Status::Stopped;
                    m.next_restart_at = None;
                    if !m.stopped {
                        m.last_error = Some(why);
                    }
                    None
                }
            }
        });
        let Some(Some(wait)) = decision else {
            return;
        };
        // A restart request during the backoff cuts it short.
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if procs.managed(&id, |m| m.restart_now || m.stopped) != Some(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20).min(wait)).await;
        }
        if procs.managed(&id, |m| m.stopped) != Some(false) {
            procs.managed(&id, |m| m.status = Status::Stopped);
            return;
        }
        match procs.respawn(&id) {
            Ok(()) => {}
            Err(e) => {
                // Counted as a run that failed at once: the policy and backoff apply.
                procs.managed(&id, |m| {
                    m.last_error = Some(e.message.clone());
                    m.restart_count += 1;
                });
                tokio::time::sleep(procs.managed(&id, |m| m.backoff()).unwrap_or_default()).await;
                if procs.respawn(&id).is_err() {
                    procs.managed(&id, |m| m.status = Status::Stopped);
                    return;
                }
            }
        }
    }
}

/// Runs the health check of managed process `id` while it is supervised.
async fn health(procs: Processes, id: String, check: ProcessHealthCheck) {
    let interval = Duration::from_millis(check.interval_ms.max(100));
    let mut run = procs.managed(&id, |m| m.pid);
    tokio::time::sleep(Duration::from_millis(check.initial_delay_ms)).await;
    loop {
        let Some((pid, status, stopped)) = procs.managed(&id, |m| (m.pid, m.status, m.stopped))
        else {
            return;
        };
        if stopped || status == Status::Stopped {
            return;
        }
        if Some(pid) != run {
            // A new run: it gets its initial delay again.
            run = Some(pid);
            tokio::time::sleep(Duration::from_millis(check.initial_delay_ms)).await;
            continue;
        }
        if status == Status::Running {
            let healthy = probe(&check).await;
            let kill = procs
                .managed(&id, |m| {
                    if healthy {
                        m.health = Health::Healthy;
                        m.consecutive_failures = 0;
                        return false;
                    }
                    m.consecutive_failures += 1;
                    if m.consecutive_failures < check.failure_threshold.max(1) {
                        return false;
                    }
                    m.health = Health::Unhealthy;
                    m.last_error = Some(format!(
                        "health check failed {} times in a row",
                        m.consecutive_failures
                    ));
                    m.restart_now = true;
                    true
                })
                .unwrap_or(false);
            if kill {
                signal_group(pid, libc::SIGKILL);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// One health check: a TCP connect, or an HTTP/1.0 GET answering 2xx or 3xx, within the
/// check's timeout.
async fn probe(check: &ProcessHealthCheck) -> bool {
    let timeout = Duration::from_millis(check.timeout_ms.max(10));
    let attempt = async {
        let mut stream = match tokio::net::TcpStream::connect(("127.0.0.1", check.port)).await {
            Ok(s) => s,
            Err(_) => tokio::net::TcpStream::connect(("::1", check.port))
                .await
                .ok()?,
        };
        if check.kind == HealthCheckKind::Tcp {
            return Some(true);
        }
        let path = check.path.as_deref().unwrap_or("/");
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // The status line is all that is read: 64 bytes bound what a sick server can send.
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        let line = String::from_utf8_lossy(&head[..n]);
        let code = line.split_whitespace().nth(1)?.parse::<u16>().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(policy: RestartPolicy, max: Option<u32>) -> Managed {
        let spec = StartProcess {
            command: "true".into(),
            restart: Some(RestartPolicyConfig {
                policy,
                max_restarts: max,
                initial_backoff_ms: 100,
                max_backoff_ms: 1000,
            }),
            ..StartProcess::default()
        };
        Managed::new("m".into(), spec, 1)
    }

    fn exit(code: Option<i64>, signal: Option<i64>) -> SupervisedProcessExit {
        SupervisedProcessExit {
            exit_code: code,
            signal,
            oom_killed: false,
            ended_at: 0,
        }
    }

    #[test]
    fn policies_decide_restarts_within_max() {
        let ok = exit(Some(0), None);
        let killed = exit(None, Some(9));
        assert!(
            managed(RestartPolicy::Always, None)
                .wants_restart(&ok)
                .is_ok()
        );
        assert!(
            managed(RestartPolicy::OnFailure, None)
                .wants_restart(&ok)
                .is_err()
        );
        assert!(
            managed(RestartPolicy::OnFailure, None)
                .wants_restart(&killed)
                .is_ok()
        );
        assert!(
            managed(RestartPolicy::Never, None)
                .wants_restart(&killed)
                .is_err()
        );
        let mut m = managed(RestartPolicy::Always, Some(2));
        m.restart_count = 2;
        assert!(m.wants_restart(&killed).unwrap_err().contains("gave up"));
        let mut m = managed(RestartPolicy::Never, None);
        m.restart_now = true;
        assert!(
            m.wants_restart(&ok).is_ok(),
            "a restart request overrides never"
        );
        m.stopped = true;
        assert!(m.wants_restart(&ok).is_err(), "a stop overrides everything");
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let mut m = managed(RestartPolicy::Always, None);
        let waits: Vec<u128> = (0..6)
            .map(|n| {
                m.restart_count = n;
                m.backoff().as_millis()
            })
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }
}
