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
}

impl fmt::Display for CapabilityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_value(self).ok();
        let name = json
            .as_ref()
            .and_then(|v| v.as_str())
            .unwrap_or("capability");
        f.write_str(name)
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities(BTreeMap<CapabilityName, Capability>);

impl Capabilities {
    pub fn supported(mut self, names: &[CapabilityName]) -> Self {
        for name in names {
            self.0.insert(*name, Capability::Supported);
        }
        self
    }

    pub fn unsupported(mut self, name: CapabilityName, reason: CapabilityReason) -> Self {
        self.0.insert(name, Capability::Unsupported { reason });
        self
    }

    /// The entry for `name`; a capability a backend does not mention is unsupported.
    pub fn get(&self, name: CapabilityName) -> Capability {
        self.0
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
        self.0.iter()
    }
}
