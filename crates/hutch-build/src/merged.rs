//! A read-only view of an image's root filesystem as a sandbox would see it: its layer
//! directories stacked by overlayfs (one layer is its own directory, none an empty one).
//! The engine reads users, groups and existing directories from it, and `COPY --from`
//! copies out of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::BuildError;

/// The largest `/etc/passwd` or `/etc/group` read (image content decides their size).
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

pub struct MergedView {
    root: PathBuf,
    mounted: bool,
    _scratch: tempfile::TempDir,
}

impl MergedView {
    /// `lower` is top layer first (as `Store::lower_dirs` gives them).
    pub fn new(lower: &[PathBuf]) -> Result<MergedView, BuildError> {
        let scratch = tempfile::Builder::new()
            .prefix("hutch-merged")
            .tempdir()
            .map_err(|e| BuildError::io("creating a scratch directory", e))?;
        let root = scratch.path().join("root");
        std::fs::create_dir_all(&root).map_err(|e| BuildError::io("creating a mount point", e))?;
        let (root, mounted) = match lower {
            [] => (root, false),
            [only] => (only.clone(), false),
            _ => {
                let dirs: Vec<String> = lower.iter().map(|d| d.display().to_string()).collect();
                let status = Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o"])
                    .arg(format!("ro,nosuid,nodev,lowerdir={}", dirs.join(":")))
                    .arg(&root)
                    .status()
                    .map_err(|e| BuildError::io("running mount", e))?;
                if !status.success() {
                    return Err(BuildError::Internal(format!(
                        "mounting the image's layers read-only at {} failed",
                        root.display()
                    )));
                }
                (root, true)
            }
        };
        Ok(MergedView {
            root,
            mounted,
            _scratch: scratch,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `path` (absolute in the image) is a directory as the image sees it: symlinks
    /// resolve inside the image, never on the host.
    pub fn is_dir(&self, path: &str) -> bool {
        hutch_store::rooted::is_dir(&self.root, Path::new(path))
    }

    /// The metadata of `path` as the image sees it.
    pub fn metadata(&self, path: &Path) -> std::io::Result<std::fs::Metadata> {
        hutch_store::rooted::metadata(&self.root, path)
    }

    /// `path` on the host, resolved inside the image into a path with no symlink.
    pub fn real_path(&self, path: &Path) -> std::io::Result<PathBuf> {
        hutch_store::rooted::real_path(&self.root, path)
    }

    /// A small text file of the image (`/etc/passwd`), read as the image sees it; empty when
    /// missing or unreadable.
    pub fn read_text(&self, path: &str) -> String {
        hutch_store::rooted::read(&self.root, Path::new(path), MAX_ACCOUNT_FILE)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
        }
    }
}

/// Resolves `user[:group]` (names or ids) against the image's `/etc/passwd` and `/etc/group`.
pub fn resolve_owner(view: &MergedView, spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = view.read_text("/etc/passwd");
    let groups = view.read_text("/etc/group");
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            passwd
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid))
                        .then(|| f[3].parse().ok())?
                })
                .next(),
        ),
        Err(_) => passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() > 3 && f[0] == user {
                    Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()))
                } else {
                    None
                }
            })
            .ok_or_else(|| format!("unknown user {user} (not in the image's /etc/passwd)"))?,
    };
    let gid = match group {
        // A bare uid keeps it as the gid too (Docker); a bare name takes the primary group.
        None if user.parse::<u32>().is_ok() => uid,
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[0] == g).then(|| f[2].parse().ok())?
                })
                .next()
                .ok_or_else(|| format!("unknown group {g} (not in the image's /etc/group)"))?,
        },
    };
    Ok((uid, gid))
}
