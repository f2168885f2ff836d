//! Invoking `runsc`: the global flags every call shares, and the few subcommands used.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

use crate::error::{Result, RuntimeError};

const BACKEND: &str = "gvisor";

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
        let platform = std::env::var("HUTCH_RUNSC_PLATFORM").unwrap_or_else(|_| {
            let help = std::process::Command::new(&binary)
                .arg("flags")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if help.contains("systrap") { "systrap" } else { "ptrace" }.to_string()
        });
        std::fs::create_dir_all(&root)
            .map_err(|e| RuntimeError::io(format!("creating {}", root.display()), e))?;
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

    /// Creates and starts the container; its init's stdio goes to `console_log`.
    pub async fn run_detached(&self, id: &str, bundle: &Path, console_log: &Path) -> Result<()> {
        let log = std::fs::File::create(console_log)
            .map_err(|e| RuntimeError::io(format!("creating {}", console_log.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| RuntimeError::io("duplicating the console log", e))?;
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--detach")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(id)
            .stdout(log)
            .stderr(log_err);
        let status = cmd
            .status()
            .await
            .map_err(|e| RuntimeError::io("running runsc", e))?;
        if status.success() {
            return Ok(());
        }
        let tail = std::fs::read_to_string(console_log).unwrap_or_default();
        Err(RuntimeError::BackendFailure {
            backend: BACKEND,
            message: format!("runsc run failed ({status}): {}", last_lines(&tail, 6)),
        })
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
        match self.simple(&["state", id]).await {
            Ok(json) => serde_json::from_str(&json).map(Some).map_err(|e| {
                RuntimeError::BackendFailure {
                    backend: BACKEND,
                    message: format!("unreadable runsc state: {e}"),
                }
            }),
            Err(_) if !self.root.join(id).exists() && !self.has_state_file(id) => Ok(None),
            Err(e) => {
                if self.list().await?.iter().any(|c| c.id == id) {
                    Err(e)
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn has_state_file(&self, id: &str) -> bool {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(id))
            })
            .unwrap_or(false)
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

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
