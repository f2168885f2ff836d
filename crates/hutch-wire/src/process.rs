//! Process API shapes, field-for-field those of the `tensorlake` crate 0.5.160
//! (`src/sandboxes/models.rs`) and the Python SDK 0.5.161 that sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdinMode {
    #[default]
    Closed,
    Pipe,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    #[default]
    Capture,
    Discard,
}

/// `"root"`, `"1000:1000"`, `"app:staff"`, or `{"name":..,"uid":..,"gid":..}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProcessUser {
    Spec(String),
    Ids {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        uid: Option<u32>,
        #[serde(default)]
        gid: Option<u32>,
    },
}

/// Body of `POST /api/v1/processes` and `POST /api/v1/processes/run`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StartProcess {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub stdin_mode: StdinMode,
    #[serde(default)]
    pub stdout_mode: OutputMode,
    #[serde(default)]
    pub stderr_mode: OutputMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ProcessUser>,
    /// A managed-process name: the process is addressable by it as well as by pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds after which the agent SIGKILLs the process group (`run` and `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Restart policy: the process is supervised (restarted on exit as the policy says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartPolicyConfig>,
    /// A health check: a process that fails it `failure_threshold` times in a row is
    /// restarted (killed; its restart policy brings it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<ProcessHealthCheck>,
}

impl StartProcess {
    /// Whether the agent supervises it: it has a name, a restart policy or a health check.
    pub fn is_managed(&self) -> bool {
        self.name.is_some() || self.restart.is_some() || self.health_check.is_some()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

/// When and how fast a supervised process comes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicyConfig {
    #[serde(default)]
    pub policy: RestartPolicy,
    /// Restarts after which it stays down; none: no limit.
    #[serde(default)]
    pub max_restarts: Option<u32>,
    /// The first wait before a restart; doubled after each one, up to `max_backoff_ms`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

impl Default for RestartPolicyConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::Never,
            max_restarts: None,
            initial_backoff_ms: default_initial_backoff(),
            max_backoff_ms: default_max_backoff(),
        }
    }
}

fn default_initial_backoff() -> u64 {
    500
}
fn default_max_backoff() -> u64 {
    30_000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A GET of `path` on the port answers 2xx or 3xx.
    Http,
    /// A TCP connection to the port opens.
    Tcp,
}

/// A check of a supervised process, on the sandbox's loopback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHealthCheck {
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "default_initial_delay")]
    pub initial_delay_ms: u64,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default = "default_check_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

fn default_initial_delay() -> u64 {
    5000
}
fn default_interval() -> u64 {
    1000
}
fn default_check_timeout() -> u64 {
    500
}
fn default_failure_threshold() -> u32 {
    3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisedProcessStatus {
    Starting,
    Running,
    BackingOff,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisedProcessHealthStatus {
    Disabled,
    Starting,
    Healthy,
    Unhealthy,
}

/// How a supervised process's last run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisedProcessExit {
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    /// Milliseconds since the Unix epoch.
    pub ended_at: i64,
}

/// The supervision of a managed process (`ProcessInfo.managed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessManagedInfo {
    /// Its name when it has one, else an id of the agent's.
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub status: SupervisedProcessStatus,
    pub restart_count: u32,
    pub restart: RestartPolicyConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<ProcessHealthCheck>,
    pub health_status: SupervisedProcessHealthStatus,
    pub consecutive_health_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<SupervisedProcessExit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Milliseconds since the Unix epoch, while backing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    Running,
    Exited,
    Signaled,
    OomKilled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i64,
    pub status: ProcessStatus,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub stdin_writable: bool,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its supervision, for a managed process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ProcessManagedInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListProcessesResponse {
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    pub signal: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendSignalResponse {
    pub success: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputResponse {
    pub pid: i64,
    pub lines: Vec<String>,
    pub line_count: i64,
}

/// One line of output, as sent in `.../follow` and `run` event streams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputEvent {
    pub line: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    #[serde(default)]
    pub stream: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessExitReason {
    Exited,
    Signaled,
    OomKilled,
    TimedOut,
}

/// How a process ended. Also the payload of the raw stream's exit frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitInfo {
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub signal: Option<i64>,
    #[serde(default)]
    pub oom_killed: bool,
    pub reason: ProcessExitReason,
}

impl ExitInfo {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(code), _) => code as i32,
            (None, Some(signal)) => 128 + signal as i32,
            (None, None) => 255,
        }
    }
}

/// The events of `POST /api/v1/processes/run`, untagged as the SDK parses them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunEvent {
    Started { pid: i64, started_at: i64 },
    Output(OutputEvent),
    Exited(ExitInfo),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub healthy: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub uptime_secs: i64,
    pub running_processes: i64,
    pub total_processes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_process_accepts_the_python_sdk_payload() {
        let body = r#"{"command":"sh","args":["-c","echo hi"],"env":{"A":"1"},
            "working_dir":"/tmp","stdin_mode":"pipe","user":"1000:1000","timeout":2.5}"#;
        let spec: StartProcess = serde_json::from_str(body).expect("parses");
        assert_eq!(spec.stdin_mode, StdinMode::Pipe);
        assert_eq!(spec.user, Some(ProcessUser::Spec("1000:1000".into())));
        assert_eq!(spec.timeout, Some(2.5));
    }

    #[test]
    fn structured_user_parses() {
        let spec: StartProcess =
            serde_json::from_str(r#"{"command":"id","user":{"uid":5,"gid":6}}"#).expect("parses");
        assert_eq!(
            spec.user,
            Some(ProcessUser::Ids {
                name: None,
                uid: Some(5),
                gid: Some(6)
            })
        );
    }

    #[test]
    fn exit_event_serializes_as_the_sdk_expects() {
        let event = RunEvent::Exited(ExitInfo {
            exit_code: None,
            signal: Some(9),
            oom_killed: false,
            reason: ProcessExitReason::Signaled,
        });
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["signal"], 9);
        assert_eq!(json["reason"], "signaled");
        assert_eq!(
            ExitInfo {
                exit_code: None,
                signal: Some(9),
                oom_killed: false,
                reason: ProcessExitReason::Signaled
            }
            .shell_code(),
            137
        );
    }
}
