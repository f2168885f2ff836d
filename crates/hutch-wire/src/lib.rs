//! Wire types shared by `hutch-agent`, the runtime and the server.
//!
//! This crate owns the *shapes* of the data-plane API, nothing else: the JSON bodies the
//! Tensorlake sandbox SDKs send to and parse from `/api/v1/...` (kept field-for-field
//! compatible with the `tensorlake` crate 0.5.160), Hutch's own extensions under
//! `/hutch/v1/...`, the binary framing of raw output streams, and the PTY protocol (the SDK's
//! websocket messages and the length-prefixed stream that carries them). It has no I/O and no
//! async: the agent, which must stay small, depends on it and on nothing else of Hutch. The
//! one exception is what every crate above needs the same way: random ids (`ids`, read from
//! the kernel) and the millisecond clock (`clock`).

pub mod build_channel;
pub mod clock;
pub mod error;
pub mod files;
pub mod frame;
pub mod ids;
pub mod process;
pub mod pty;
pub mod query;

pub use error::ErrorBody;
pub use files::{DirectoryEntry, FileKind, FileStat, ListDirectoryResponse};
pub use frame::{Frame, FrameDecoder, FrameKind};
pub use process::{
    DaemonInfo, ExitInfo, HealthCheckKind, HealthResponse, ListProcessesResponse, OutputEvent,
    OutputMode, OutputResponse, ProcessExitReason, ProcessHealthCheck, ProcessInfo,
    ProcessManagedInfo, ProcessStatus, ProcessUser, RestartPolicy, RestartPolicyConfig, RunEvent,
    SendSignalRequest, SendSignalResponse, StartProcess, StdinMode, SupervisedProcessExit,
    SupervisedProcessHealthStatus, SupervisedProcessStatus,
};
pub use pty::{
    CreatePty, ListPtySessions, PtyFrameDecoder, PtyMessage, PtyMessageError, PtySession, PtyStatus,
};

/// Path, inside the sandbox, of the directory holding the agent's dial-home socket.
pub const AGENT_SOCKET_DIR: &str = "/run/hutch";
/// File name of the dial-home socket inside [`AGENT_SOCKET_DIR`].
pub const AGENT_SOCKET_NAME: &str = "agent.sock";
/// File name, inside [`AGENT_SOCKET_DIR`], of the per-boot secret the agent proves itself
/// with on every dial. The host writes it before the sandbox starts; the agent reads it and
/// removes it before any other process exists, so code in the sandbox cannot dial home as
/// the agent (and take over the link the proxy forwards clients' requests over).
pub const AGENT_SECRET_FILE: &str = "agent.secret";
/// What the agent writes first on every connection, followed by the secret (hex) and `\n`.
pub const AGENT_PREFACE_TAG: &[u8] = b"HUTCH-AGENT-1 ";
/// Length of the secret in hex characters.
pub const AGENT_SECRET_LEN: usize = 64;
/// Environment variable through which the runtime hands the agent its boot configuration.
pub const AGENT_CONFIG_ENV: &str = "HUTCH_AGENT_CONFIG";
/// File name, inside [`AGENT_SOCKET_DIR`], of the [`BootOutcome`] the agent writes when its
/// boot process (see [`AgentConfig::boot`]) ended in a way its exit code does not tell: a
/// signal, out of memory, or a failed start.
pub const BOOT_OUTCOME_FILE: &str = "boot-outcome.json";
/// File name, inside [`AGENT_SOCKET_DIR`], of the agent's own log while its stdio belongs to
/// the boot process.
pub const AGENT_LOG_FILE: &str = "agent.log";
/// The managed-process name of the boot process.
pub const BOOT_PROCESS_NAME: &str = "hutch-boot";

/// How the boot process ended: its exit, or why it could not start.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootOutcome {
    Exit(ExitInfo),
    Error(ErrorBody),
}

/// What the runtime tells the agent at boot (JSON in [`AGENT_CONFIG_ENV`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentConfig {
    /// Environment every process starts with (the image's, then the sandbox request's).
    #[serde(default)]
    pub env: Vec<String>,
    /// Default working directory for processes.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Default user for processes: `name`, `uid`, `name:group` or `uid:gid`.
    #[serde(default)]
    pub user: Option<String>,
    /// The user's memory limit for the whole sandbox, in bytes. The agent kills the largest
    /// process (and reports it `oom_killed`) before the host cgroup limit, which is set
    /// higher as a backstop, would take down the whole sandbox.
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// The most processes and threads the sandbox may hold. The agent ends the session
    /// that passes it (a fork bomb), before the host's cgroup backstop, set well above,
    /// would take down the whole sandbox.
    #[serde(default)]
    pub pids_limit: Option<u32>,
    /// Bytes of output kept per process for late followers.
    #[serde(default)]
    pub output_buffer_bytes: Option<usize>,
    /// A one-shot sandbox's command: the agent starts it before anything else, with the
    /// agent's own stdin, stdout and stderr (those of `runsc run`, so the caller's), and
    /// when it ends exits with its shell exit code, which ends the sandbox (after writing
    /// [`BOOT_OUTCOME_FILE`] if the code does not say everything). Its output is not
    /// captured: it is already the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<StartProcess>,
}
