//! Hutch's own control-plane routes: `/healthz` and `/hutch/v1/images/...`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz`: liveness, and which state directory this server serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// A fingerprint of the state directory, which the CLI compares with its own.
    pub state_id: String,
    /// The HMAC answer to the `x-hutch-challenge` header, when one was sent and this
    /// server published `serve.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// `POST /hutch/v1/images/pull`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImageRequest {
    /// An image reference (`busybox`, `ghcr.io/org/app:1.2`, `...@sha256:...`).
    pub reference: String,
}

/// Whether a connection attempt passed the sandbox's egress policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EgressVerdict {
    Allowed,
    Denied,
}

/// One connection attempt of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressEntry {
    /// Counts from 1 per sandbox; a gap means older entries were dropped (the log keeps the
    /// last 1024).
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    /// `tcp`, `udp`, `icmp` or the IP protocol number.
    pub protocol: String,
    /// The destination address.
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The host name the sandbox's resolver answered this address for, when it did (policies
    /// that name hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub verdict: EgressVerdict,
    /// Both directions' bytes, once an allowed connection ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// `GET /hutch/v1/sandboxes/{id}/egress?after=N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressLog {
    /// Oldest first.
    pub entries: Vec<EgressEntry>,
    /// Pass as `after` to get only what came since.
    pub last_seq: u64,
}

/// Where the build of the server's default image stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageBuildState {
    /// In the store: creates use it at once.
    Ready,
    /// Being built; creates that need it wait (pending).
    Building,
    /// The last build failed (`error`); the next create that needs it starts another.
    Failed,
}

/// `GET /hutch/v1/default-image`: the image a create that names none gets, and its build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DefaultImageStatus {
    /// The store name (`hutch/debian:bookworm` unless `hutch serve --default-image` says
    /// otherwise).
    pub image: String,
    pub state: ImageBuildState,
    /// What the build does now (`update`, `download`, `extract`, `install`, `clean`,
    /// `pack`, `import`), while building.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Phases done, of `steps`.
    pub step: u32,
    pub steps: u32,
    /// Whether the root filesystem came from the machine's cache (no download).
    pub cached: bool,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
