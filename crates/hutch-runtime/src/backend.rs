//! The one runtime API every backend implements, and the types it speaks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::AgentClient;
use crate::capability::Capabilities;
use crate::error::Result;

/// How a sandbox reaches the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Outbound access through the host (a later backend feature).
    Egress,
}

/// What to create. Image defaults (env, workdir, user) apply where a field is unset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Chosen by the backend when unset.
    #[serde(default)]
    pub id: Option<String>,
    /// A name in the image store, e.g. `busybox:latest`.
    pub image: String,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// `KEY=VALUE` entries layered over the image's environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub network: NetworkMode,
    /// Caller's bookkeeping, kept with the sandbox's record (e.g. which server owns it).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Keep `/tmp` in the root filesystem, so that what is written there is part of the
    /// sandbox's writable layer (image builds); by default runsc mounts a fresh tmpfs there.
    #[serde(default)]
    pub tmp_in_rootfs: bool,
    /// The most processes (and threads) that may exist in the sandbox at once; `None` is
    /// [`DEFAULT_PIDS_LIMIT`]. There is always a limit: every process in a sandbox costs
    /// the host processes and threads, so a fork bomb must end inside it (`EAGAIN`).
    #[serde(default)]
    pub pids_limit: Option<u32>,
}

/// The pids limit of a sandbox whose spec names none.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;
/// The largest pids limit a spec may ask for.
pub const MAX_PIDS_LIMIT: u32 = 32768;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Stopped,
    /// The backend has a record but the runtime does not know the sandbox.
    Lost,
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub state: SandboxState,
    pub image: String,
    pub image_id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub spec: SandboxSpec,
}

/// A sandbox and the client to its agent.
#[derive(Clone)]
pub struct Sandbox {
    pub info: SandboxInfo,
    pub agent: AgentClient,
}

/// A sandbox runtime. Implementations must clean up after every failure, including ones
/// halfway through `create`: no mount, runtime container, process or directory is left.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Creates and starts a sandbox; returns once its agent answers.
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox>;
    /// Connects to an existing sandbox's agent (after a restart of the caller, say).
    async fn attach(&self, id: &str) -> Result<Sandbox>;
    async fn inspect(&self, id: &str) -> Result<SandboxInfo>;
    async fn list(&self) -> Result<Vec<SandboxInfo>>;
    /// SIGTERM to everything inside, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    async fn kill(&self, id: &str) -> Result<()>;
    /// Kills if needed and removes every trace of the sandbox.
    async fn delete(&self, id: &str) -> Result<()>;
}
