//! The lifecycle API's bodies: create, get, list, update and delete sandboxes.
//!
//! Requests refuse unknown fields (a misspelt option is a 400, not silently ignored), as the
//! Tensorlake server does; the SDKs omit what they leave unset. A field the server refuses
//! whatever it holds (file system mounts, GPUs, a live resize) is parsed no further than it
//! needs to be refused, so any value of it gets the same `unsupported_capability` answer; its
//! schema still shows the shape the SDKs send.
//!
//! serde also reads a struct from a JSON array, field by field, where a `default` field may
//! be left out. Only the fields the server has always defaulted say `default` (an absent
//! `Option` is `None` without it), so an array body is refused exactly as it always was, and
//! `[]` is not an empty create.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST .../sandboxes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// A template (name or id) or an image reference; the default template when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<CreateSandboxResources>,
    /// Lifetime in seconds, counted from the start; 0 for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub timeout_secs: Option<i64>,
    /// The command the sandbox starts with; a template's ENTRYPOINT and CMD when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// Restore from a snapshot (not supported yet: 400 `unsupported_capability`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// `false` requires a `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_access: Option<bool>,
    /// Ports routed through the proxy (none yet: a non-empty list is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: Option<String>,
    /// File systems to mount (not supported yet: a non-empty list is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FileSystemMount>)]
    pub file_systems: Vec<serde_json::Value>,
    /// `false`: answer 202 with [`SandboxAccepted`] as soon as the sandbox is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// Longest the sandbox may wait for capacity before it fails with `no_capacity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_secs: Option<u64>,
    /// Hutch extension: environment for the entrypoint and processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Hutch extension: end the sandbox after this many seconds with no API or proxy
    /// traffic (0 or absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// Resources asked for at create; `-1` (what the SDK sends for "unset") means the default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxResources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// This host has none to give: a non-empty list is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<GpuResources>>)]
    pub gpus: Option<Vec<serde_json::Value>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuResources {
    pub count: u32,
    pub model: String,
}

/// An egress policy; only "no internet" (`allow_internet_access: false`, no `allow_out`)
/// can be honoured today.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default = "yes")]
    pub allow_internet_access: bool,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A file system mount as the SDKs send it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileSystemMount {
    pub file_system_id: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// How a blocking create ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreateOutcome {
    /// 200: the sandbox runs.
    Running,
    /// 504: still pending when the client's timeout ran out.
    Timeout,
    /// 422: it failed to start.
    Failed,
}

/// The answer to a blocking create.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateSandboxResponse {
    pub sandbox_id: String,
    pub status: CreateOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The sandbox proxy's address (`running` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_url: Option<String>,
    /// Where user ports are reached: `<port>-<sandbox_id>.<host of this URL>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_endpoint: Option<String>,
    // `failed` only (an ended sandbox always has its reason), as is `termination_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TerminationReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<TerminationReason>,
    // `failed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<ErrorDetails>,
}

/// The 202 answer to a create with `wait: false`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxAccepted {
    pub sandbox_id: String,
    /// Always `pending`.
    pub state: SandboxStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxStatus {
    Pending,
    Running,
    Terminated,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Terminated => "terminated",
        }
    }
}

/// Why a sandbox ended; the first reason recorded wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    UserRequested,
    Cancelled,
    Timeout,
    StartupFailed,
    NoCapacity,
    /// It died while nobody asked (runtime crash, host reboot, found dead after a restart).
    Lost,
    /// Stopped gracefully (`POST .../stop`): SIGTERM to every process, SIGKILL after the
    /// grace period.
    Stopped,
    /// No API or proxy traffic for its `idle_timeout_secs`.
    IdleTimeout,
}

/// `error_details` of a sandbox that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetails {
    pub message: Option<String>,
}

/// The resources a sandbox has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerResources {
    pub cpus: f64,
    pub memory_mb: i64,
    pub disk_mb: i64,
}

/// One sandbox, in the SDK's `SandboxInfo` shape. It carries `sandbox_id` only: the SDK
/// takes `id` as an alias and refuses a body with both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    pub sandbox_id: String,
    pub namespace: String,
    pub status: SandboxStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The template's name for a sandbox made from one (as it was asked for), else the
    /// store image's name.
    pub image: String,
    /// Always `gvisor`.
    pub runtime: String,
    pub resources: ContainerResources,
    /// 0 for none.
    pub timeout_secs: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    pub network_policy: NetworkConfig,
    pub auto_resume: bool,
    /// Whether exposed ports answer without an API key off loopback.
    pub allow_unauthenticated_access: bool,
    /// Ports the proxy routes at `<port>-<sandbox_id>.<ingress host>`, ascending.
    #[serde(default)]
    pub exposed_ports: Vec<u16>,
    pub file_systems: Vec<FileSystemMount>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// `running` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_url: Option<String>,
    /// Where user ports are reached: `<port>-<sandbox_id>.<host of this URL>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_endpoint: Option<String>,
    /// `pending` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// `terminated` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<TerminationReason>,
    /// `terminated` only; the same as `termination_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TerminationReason>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_details: Option<ErrorDetails>,
    /// Hutch extension: the template it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// The pool it was claimed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// The latest live resize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_resize: Option<SandboxResourceResizeInfo>,
    /// Hutch extension: seconds without API or proxy traffic after which it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// A live resize: what was asked, and how it went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxResourceResizeInfo {
    /// Counts resizes of this sandbox from 1.
    pub generation: u64,
    pub requested: ContainerResources,
    /// `succeeded` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// `GET .../sandboxes`: a page, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListSandboxesResponse {
    pub sandboxes: Vec<SandboxInfo>,
    /// Where the next page starts; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET .../sandboxes?cursor=&limit=&include_terminated=`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListSandboxesQuery {
    /// The `cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Hutch extension: include terminated sandboxes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_terminated: bool,
}

/// `PATCH .../sandboxes/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandboxRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_access: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Vec<u16>>,
    /// Absent: keep; `null`: unrestricted egress (refused today); an object: replace.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<NetworkConfig>)]
    pub network: Option<Option<NetworkConfig>>,
    /// Live resize of cpus and memory (the answer's `resource_resize` says how it went);
    /// not combined with other fields.
    // Read as create's resources, `gpus` included (refused), as the server always has; the
    // schema shows the SDK's resize shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ResizeSandboxResources>)]
    pub resources: Option<CreateSandboxResources>,
    /// Hutch extension: a new lifetime in seconds, counted from the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub timeout_secs: Option<i64>,
    /// Hutch extension: a new idle timeout in seconds (0: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// Distinguishes a present `null` from an absent key.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<NetworkConfig>>, D::Error> {
    Option::<NetworkConfig>::deserialize(d).map(Some)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeSandboxResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// `POST .../sandboxes/{id}/{action}`: lifecycle actions the gvisor backend does not offer
/// yet (501 `unsupported_capability` once the sandbox is found).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxAction {
    /// Hutch: a graceful stop (body `{"grace_secs": N}`, 10 by default).
    Stop,
    /// Hutch: counts as traffic for the idle timeout.
    Keepalive,
    Suspend,
    Resume,
    Snapshot,
    Snapshots,
    Copy,
    FileSystems,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_running_sandbox_serializes_as_the_server_answers() {
        let info = SandboxInfo {
            sandbox_id: "sbx1".into(),
            namespace: "default".into(),
            status: SandboxStatus::Running,
            name: Some("web".into()),
            image: "busybox:latest".into(),
            runtime: "gvisor".into(),
            resources: ContainerResources {
                cpus: 1.0,
                memory_mb: 1024,
                disk_mb: 0,
            },
            timeout_secs: 0,
            entrypoint: None,
            network_policy: NetworkConfig {
                allow_internet_access: false,
                allow_out: vec![],
                deny_out: vec![],
            },
            auto_resume: true,
            allow_unauthenticated_access: false,
            exposed_ports: vec![8080],
            file_systems: vec![],
            created_at: 5,
            sandbox_url: Some("http://127.0.0.1:9443".into()),
            ingress_endpoint: Some("http://127.0.0.1:9443".into()),
            pending_reason: None,
            termination_reason: None,
            outcome: None,
            terminated_at: None,
            error_details: None,
            template_id: None,
            pool_id: None,
            resource_resize: None,
            idle_timeout_secs: None,
        };
        assert_eq!(
            serde_json::to_value(&info).unwrap(),
            json!({
                "sandbox_id": "sbx1", "namespace": "default", "status": "running", "name": "web",
                "image": "busybox:latest", "runtime": "gvisor",
                "resources": {"cpus": 1.0, "memory_mb": 1024, "disk_mb": 0},
                "timeout_secs": 0,
                "network_policy": {"allow_internet_access": false, "allow_out": [], "deny_out": []},
                "auto_resume": true, "allow_unauthenticated_access": false, "file_systems": [],
                "exposed_ports": [8080],
                "created_at": 5, "sandbox_url": "http://127.0.0.1:9443",
                "ingress_endpoint": "http://127.0.0.1:9443",
            })
        );
    }

    #[test]
    fn a_failed_create_carries_its_reason_and_details() {
        let failed = CreateSandboxResponse {
            sandbox_id: "sbx1".into(),
            status: CreateOutcome::Failed,
            name: None,
            sandbox_url: None,
            ingress_endpoint: None,
            reason: Some(TerminationReason::StartupFailed),
            termination_reason: Some(TerminationReason::StartupFailed),
            error_details: Some(ErrorDetails { message: None }),
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            json!({"sandbox_id": "sbx1", "status": "failed", "reason": "startup_failed",
                   "termination_reason": "startup_failed", "error_details": {"message": null}})
        );
    }

    #[test]
    fn requests_refuse_unknown_fields_and_keep_an_explicit_null_network() {
        assert!(serde_json::from_str::<CreateSandboxRequest>(r#"{"imag": "x"}"#).is_err());
        let sdk: CreateSandboxRequest = serde_json::from_value(json!({
            "image": "t", "resources": {"cpus": -1.0, "memory_mb": -1},
            "network": {"allow_internet_access": false}, "wait": false
        }))
        .unwrap();
        assert_eq!(sdk.resources.unwrap().memory_mb, Some(-1));
        assert_eq!(sdk.network.unwrap().allow_out, Vec::<String>::new());
        let keep: UpdateSandboxRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(keep.network, None);
        let clear: UpdateSandboxRequest = serde_json::from_str(r#"{"network": null}"#).unwrap();
        assert_eq!(clear.network, Some(None));
    }

    #[test]
    fn an_array_is_not_an_empty_request() {
        for body in ["[]", r#"["busybox"]"#] {
            assert!(serde_json::from_str::<CreateSandboxRequest>(body).is_err());
            assert!(serde_json::from_str::<UpdateSandboxRequest>(body).is_err());
        }
        assert!(serde_json::from_str::<CreateSandboxResources>("[]").is_err());
    }

    #[test]
    fn refused_fields_parse_whatever_they_hold() {
        // So the server's answer is `unsupported_capability`, not a parse error.
        let create: CreateSandboxRequest = serde_json::from_value(json!({
            "file_systems": [1, {"x": true}], "resources": {"gpus": ["A100"]}
        }))
        .unwrap();
        assert_eq!(create.file_systems.len(), 2);
        assert_eq!(create.resources.unwrap().gpus.unwrap().len(), 1);
        let resize: UpdateSandboxRequest =
            serde_json::from_value(json!({"resources": {"gpus": []}})).unwrap();
        assert!(resize.resources.is_some());
    }
}

/// `POST .../sandbox-pools` and `PUT .../sandbox-pools/{id}`: what every sandbox of the pool
/// is made from (a create body's fields), and how many to keep.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxPoolRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<CreateSandboxResources>,
    /// The lifetime of a claimed sandbox, counted from its claim (0: none). Warm sandboxes
    /// wait without a limit.
    #[serde(default)]
    pub timeout_secs: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The most sandboxes the pool has at once: warm, booting and claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<i64>,
    /// How many booted, unclaimed sandboxes the pool keeps ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_containers: Option<i64>,
    /// On update: absent keeps the policy, `null` clears it, an object replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Option<NetworkConfig>>,
    /// Hutch extension: environment of every sandbox of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
}

/// The answer to a pool create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateSandboxPoolResponse {
    pub pool_id: String,
    pub namespace: String,
}

/// One sandbox of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolContainerInfo {
    /// The sandbox's id.
    pub id: String,
    /// `warm` (booted, unclaimed), `booting`, `claimed` or `evicting` (of an older pool
    /// configuration, being removed).
    pub state: String,
    /// Claimed sandboxes only: the id clients use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Always `local`.
    pub executor_id: String,
}

/// Hutch extension: a pool's sandboxes, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolCounts {
    pub warm: usize,
    pub booting: usize,
    pub claimed: usize,
    pub evicting: usize,
}

/// A pool, in the SDK's `SandboxPoolInfo` shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxPoolInfo {
    pub pool_id: String,
    pub namespace: String,
    pub image: String,
    pub resources: ContainerResources,
    pub timeout_secs: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_containers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_containers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkConfig>,
    pub containers: Vec<PoolContainerInfo>,
    /// Hutch extension: warm, booting, claimed and evicting counts.
    pub status: PoolCounts,
    /// Hutch extension: why the last attempt to make a sandbox for the pool failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Hutch extension: the configuration's generation (bumped by every change).
    pub generation: i64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET .../sandbox-pools`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListSandboxPoolsResponse {
    pub pools: Vec<SandboxPoolInfo>,
}

/// `POST .../sandbox-pools/{id}/sandboxes` (optional): claim-time settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimSandboxRequest {
    /// File systems to mount in the claimed sandbox; none are supported here.
    #[serde(default)]
    pub file_systems: Vec<serde_json::Value>,
}

/// The answer to a claim: a create's answer, and whether the sandbox came warm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClaimSandboxResponse {
    #[serde(flatten)]
    pub sandbox: CreateSandboxResponse,
    pub pool_id: String,
    /// Hutch extension: `true` when a booted sandbox was handed over, `false` when the
    /// claim had to create one.
    pub warm: bool,
    /// The claim's settings were applied (there are none to apply but an empty list).
    pub claim_configuration_applied: bool,
}

/// An ended sandbox, as `archived-sandboxes` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArchivedSandboxInfo {
    #[serde(flatten)]
    pub sandbox: SandboxInfo,
    /// Milliseconds since the epoch: when it ended.
    pub archived_at: u64,
}

/// `GET .../archived-sandboxes`: newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListArchivedSandboxesResponse {
    pub sandboxes: Vec<ArchivedSandboxInfo>,
    /// Pass with `direction=backward` for the newer page; absent on the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_cursor: Option<String>,
    /// Pass (with `direction=forward`, the default) for the older page; absent on the
    /// oldest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Which way an `archived-sandboxes` page goes from its cursor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PageDirection {
    /// Older sandboxes.
    #[default]
    Forward,
    /// Newer sandboxes.
    Backward,
}

/// `GET .../archived-sandboxes?limit=&cursor=&direction=`.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListArchivedSandboxesQuery {
    /// 1 to 1000; 100 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<PageDirection>,
}

/// `POST .../sandboxes/{id}/stop`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopSandboxRequest {
    /// How long processes have after SIGTERM before SIGKILL: 0 to 300 seconds, 10 by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
}
