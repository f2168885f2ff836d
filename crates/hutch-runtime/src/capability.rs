//! What a backend can do, each capability supported or unsupported with a reason, so callers
//! decide up front instead of discovering a silent no-op.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityName {
    SandboxCreate,
    SandboxStop,
    SandboxKill,
    SandboxDelete,
    SandboxList,
    SandboxSuspend,
    CpuLimit,
    MemoryLimit,
    ProcessOomReporting,
    NetworkNone,
    NetworkEgress,
    ProcessRun,
    ProcessStart,
    ProcessStream,
    ProcessStdin,
    ProcessSignal,
    ProcessPty,
    ProcessReattach,
    FilesystemRead,
    FilesystemWrite,
    FilesystemList,
    FilesystemStat,
    FilesystemWatch,
    SnapshotFilesystem,
    SnapshotMemory,
    WarmPool,
    /// A one-shot sandbox whose first process runs on the caller's stdio
    /// ([`crate::Backend::run_attached`]).
    SandboxRunAttached,
    /// A stopped sandbox's writes as a directory a build turns into a layer
    /// ([`crate::Backend::writable_layer`]).
    SandboxWritableLayer,
    /// A unix socket the host listens on inside a sandbox, such as the build channel
    /// ([`crate::Backend::listen_in_sandbox`]).
    SandboxSocket,
    /// Joining a running sandbox to a network ([`crate::Backend::attach_network`]).
    NetworkAttach,
    /// The log of a sandbox's connection attempts ([`crate::Backend::egress`]).
    NetworkAudit,
    /// Saving a sandbox's state to a directory ([`crate::Backend::checkpoint`]).
    SandboxCheckpoint,
    /// A new sandbox from a checkpoint ([`crate::Backend::restore`]).
    SandboxRestore,
    /// Changing a running sandbox's cpus and memory ([`crate::Backend::resize`]).
    SandboxResize,
}

impl fmt::Display for CapabilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_value(self).ok();
        let name = json
            .as_ref()
            .and_then(|v| v.as_str())
            .unwrap_or("capability");
        f.pad(name)
    }
}

/// Why a capability is unavailable, and so what would make it available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CapabilityReason {
    /// This backend will never offer it.
    Permanent { detail: String },
    /// Implemented behind a feature or in a later release.
    FeatureGated { feature: String },
    /// The host lacks something (a kernel feature, a binary, a device).
    HostGated { detail: String },
    /// Available once the sandbox is in another state.
    StateGated { detail: String },
}

impl fmt::Display for CapabilityReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Permanent { detail } => write!(f, "{detail}"),
            Self::FeatureGated { feature } => write!(f, "not available yet ({feature})"),
            Self::HostGated { detail } => write!(f, "this host cannot: {detail}"),
            Self::StateGated { detail } => write!(f, "{detail}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Capability {
    Supported,
    Unsupported { reason: CapabilityReason },
}

/// What runs the sandboxes, as the backend found it: which build of which runtime, on which
/// platform, and what that means for the capabilities (an old build's notes say what it
/// lacks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDetails {
    /// E.g. `runsc`.
    pub runtime: String,
    /// E.g. `0.0~20240729.0`.
    pub version: String,
    /// E.g. `systrap` or `ptrace`.
    pub platform: String,
    /// Deliberate choices and limits of this build, one sentence each.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeDetails>,
    #[serde(default)]
    pub features: BTreeMap<CapabilityName, Capability>,
}

impl Capabilities {
    pub fn supported(mut self, names: &[CapabilityName]) -> Self {
        for name in names {
            self.features.insert(*name, Capability::Supported);
        }
        self
    }

    pub fn unsupported(mut self, name: CapabilityName, reason: CapabilityReason) -> Self {
        self.features
            .insert(name, Capability::Unsupported { reason });
        self
    }

    pub fn with_runtime(mut self, runtime: RuntimeDetails) -> Self {
        self.runtime = Some(runtime);
        self
    }

    pub fn runtime(&self) -> Option<&RuntimeDetails> {
        self.runtime.as_ref()
    }

    /// The entry for `name`; a capability a backend does not mention is unsupported.
    pub fn get(&self, name: CapabilityName) -> Capability {
        self.features
            .get(&name)
            .cloned()
            .unwrap_or(Capability::Unsupported {
                reason: CapabilityReason::Permanent {
                    detail: "not offered by this backend".into(),
                },
            })
    }

    pub fn is_supported(&self, name: CapabilityName) -> bool {
        matches!(self.get(name), Capability::Supported)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&CapabilityName, &Capability)> {
        self.features.iter()
    }
}
