//! Invoking `runsc`: the global flags every call shares, and the few subcommands used.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::{Child, Command};

use crate::error::{Result, RuntimeError};

const BACKEND: &str = "gvisor";

/// Where a sandbox's stdio (its agent's, and so a boot process's) goes.
pub enum SupervisorStdio {
    /// A console log file (stdin is /dev/null).
    Log(std::path::PathBuf),
    /// These.
    Given {
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    },
}

#[derive(Clone, Debug)]
pub struct Runsc {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub platform: String,
}

/// What `runsc state`/`list` report for one container.
#[derive(Debug, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: i64,
}

impl Runsc {
    /// Finds `runsc` on PATH (or `$HUTCH_RUNSC`) and picks the best platform it offers:
    /// systrap where the build has it, else ptrace (kvm hangs on these PVM hosts).
    pub fn detect(root: PathBuf) -> Result<Self> {
        let binary = std::env::var_os("HUTCH_RUNSC")
            .map(PathBuf::from)
            .or_else(|| find_on_path("runsc"))
            .ok_or_else(|| RuntimeError::BackendFailure {
                backend: BACKEND,
                message: "runsc (gVisor) is not installed: apt-get install runsc".into(),
            })?;
        std::fs::create_dir_all(&root)
            .map_err(|e| RuntimeError::io(format!("creating {}", root.display()), e))?;
        let platform = match std::env::var("HUTCH_RUNSC_PLATFORM") {
            Ok(p) => p,
            Err(_) => detect_platform(&binary, &root),
        };
        Ok(Self {
            binary,
            root,
            platform,
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--root={}", self.root.display()))
            .arg(format!("--platform={}", self.platform))
            .arg("--network=none")
            .arg("--host-uds=open")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Starts `runsc run` in the foreground, in its own session, as the sandbox's supervisor:
    /// it lives as long as the sandbox (outliving the caller if need be) and, when the agent
    /// exits, tears the sandbox down and removes runsc's state itself. That teardown is the
    /// same fast path a plain `runsc run` takes; `runsc delete --force` is seconds slower.
    ///
    /// Without `cgroups`, runsc leaves the sandbox in the caller's cgroup. Joining a cgroup
    /// costs about 23 ms here (the first write to a v1 `cgroup.procs` waits for an RCU grace
    /// period, seen in `runsc --debug` logs), a sixth of a whole `runsc run`; a sandbox with
    /// no CPU or memory limit has no use for one.
    pub fn spawn_supervisor(
        &self,
        id: &str,
        bundle: &Path,
        stdio: SupervisorStdio,
        cgroups: bool,
    ) -> Result<Child> {
        let mut cmd = self.command();
        if !cgroups {
            cmd.arg("--ignore-cgroups");
        }
        match stdio {
            SupervisorStdio::Log(console_log) => {
                let log = std::fs::File::create(&console_log).map_err(|e| {
                    RuntimeError::io(format!("creating {}", console_log.display()), e)
                })?;
                let log_err = log
                    .try_clone()
                    .map_err(|e| RuntimeError::io("duplicating the console log", e))?;
                cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
            }
            SupervisorStdio::Given {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            }
        }
        cmd.arg("run")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(id)
            .kill_on_drop(false)
            // Its own process group: a Ctrl-C meant for the caller must not reach it.
            .process_group(0);
        cmd.spawn()
            .map_err(|e| RuntimeError::io("starting runsc", e))
    }

    async fn simple(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .await
            .map_err(|e| RuntimeError::io("running runsc", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!(
                    "runsc {} failed: {}",
                    args.first().unwrap_or(&""),
                    last_lines(&String::from_utf8_lossy(&out.stderr), 4)
                ),
            })
        }
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.simple(&["kill", "--all", id, signal]).await.map(drop)
    }

    /// Kills (if needed) and deletes; succeeds if runsc no longer knows the container.
    pub async fn delete_force(&self, id: &str) -> Result<()> {
        match self.simple(&["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(e) => match self.state(id).await? {
                None => Ok(()),
                Some(_) => Err(e),
            },
        }
    }

    /// The container's state, `None` if runsc does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        if !self.knows(id) {
            return Ok(None);
        }
        let json = self.simple(&["state", id]).await?;
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!("unreadable runsc state: {e}"),
            })
    }

    /// Whether runsc holds state for `id`, read from its state directory without running it.
    /// A lock file alone does not count: `runsc list` and `state` re-create the lock of a
    /// container that is being destroyed (see [`Self::remove_stale_locks`]).
    pub fn knows(&self, id: &str) -> bool {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(&format!("{id}_")) && !name.ends_with(".lock")
                })
            })
            .unwrap_or(false)
    }

    /// Removes lock files of `id` once no state remains for it.
    pub fn remove_stale_locks(&self, id: &str) {
        if self.knows(id) {
            return;
        }
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&format!("{id}_")) && name.ends_with(".lock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Every container runsc keeps state for, read from the state files without running
    /// runsc (which would take locks, and costs a Go process start). A container whose
    /// sandbox process is gone is reported `stopped`, whatever its file says.
    pub fn scan(&self) -> Vec<ContainerState> {
        #[derive(Deserialize)]
        struct StateFile {
            id: String,
            status: String,
            #[serde(default)]
            sandbox: Option<SandboxPid>,
        }
        #[derive(Deserialize)]
        struct SandboxPid {
            #[serde(default)]
            pid: i64,
        }
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        // runsc rewrites a state file in place (truncate, then write): a read in between sees
        // it empty or cut short. Such a container is not gone, so read it again.
        let read_state = |path: &Path| -> Option<StateFile> {
            for attempt in 0..5 {
                if let Ok(bytes) = std::fs::read(path)
                    && let Ok(state) = serde_json::from_slice::<StateFile>(&bytes)
                {
                    return Some(state);
                }
                if attempt < 4 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            None
        };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".state"))
            .filter_map(|e| read_state(&e.path()))
            .map(|f| {
                let pid = f.sandbox.map_or(0, |s| s.pid);
                // SAFETY: signal 0 only checks that the process exists.
                let alive = pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0;
                ContainerState {
                    id: f.id,
                    status: if alive { f.status } else { "stopped".into() },
                    pid,
                }
            })
            .collect()
    }

    pub async fn list(&self) -> Result<Vec<ContainerState>> {
        let json = self.simple(&["list", "--format=json"]).await?;
        if json.trim().is_empty() || json.trim() == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(&json).map_err(|e| RuntimeError::BackendFailure {
            backend: BACKEND,
            message: format!("unreadable runsc list: {e}"),
        })
    }
}

/// Asks runsc which platforms it has, remembering the answer per runsc binary: the probe
/// costs a Go process start, which `hutch run` should not pay every time.
fn detect_platform(binary: &Path, root: &Path) -> String {
    let fingerprint = std::fs::metadata(binary)
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", binary.display(), m.size(), m.mtime())
        })
        .unwrap_or_default();
    let cache = root.join("platform");
    if let Ok(cached) = std::fs::read_to_string(&cache)
        && let Some((fp, platform)) = cached.trim().rsplit_once(' ')
        && fp == fingerprint
    {
        return platform.to_string();
    }
    let help = std::process::Command::new(binary)
        .arg("flags")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let platform = if help.contains("systrap") {
        "systrap"
    } else {
        "ptrace"
    };
    let tmp = root.join(format!(".platform.{}", std::process::id()));
    if std::fs::write(&tmp, format!("{fingerprint} {platform}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, &cache);
    }
    platform.to_string()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
