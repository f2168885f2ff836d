//! The static agent embedded in `hutch`, extracted once per version into the state directory.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

static AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hutch-agent"));
static AGENT_ID: &str = include_str!(concat!(env!("OUT_DIR"), "/hutch-agent.id"));

/// Path of the agent binary for this build of `hutch`, writing it on first use.
pub fn ensure(home: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HUTCH_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let dir = home.join("bin");
    let path = dir.join(format!("hutch-agent-{AGENT_ID}"));
    if path.metadata().is_ok_and(|m| m.len() == AGENT.len() as u64) {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".hutch-agent-{}.tmp", std::process::id()));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(AGENT)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    Ok(path)
}
