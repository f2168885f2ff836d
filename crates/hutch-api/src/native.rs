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
