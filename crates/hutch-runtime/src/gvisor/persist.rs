//! What must survive the process that created a sandbox: its record beside its directories.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::SandboxSpec;
use crate::error::{Result, RuntimeError};

pub const RECORD_FILE: &str = "sandbox.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub image: String,
    pub image_id: String,
    pub layers: Vec<String>,
    pub created_at: i64,
    pub spec: SandboxSpec,
    /// The secret its agent proves itself with when it dials home (hex); absent in records
    /// of sandboxes started by versions without one, whose agents send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_secret: Option<String>,
}

impl SandboxRecord {
    pub fn save(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".sandbox.json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| RuntimeError::InvalidSpec {
            reason: format!("serializing the sandbox record: {e}"),
        })?;
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, dir.join(RECORD_FILE)))
            .map_err(|e| RuntimeError::io(format!("saving {}", dir.display()), e))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RECORD_FILE);
        let bytes = std::fs::read(&path)
            .map_err(|e| RuntimeError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::BackendFailure {
            backend: "gvisor",
            message: format!("corrupt sandbox record {}: {e}", path.display()),
        })
    }
}
