//! The file API: streamed read and write (with a mode and an owner), list, stat, exists,
//! mkdir (with parents), rename, copy (trees too), delete (trees too); watches are in
//! `watch.rs`.
//!
//! Paths are resolved by the sandbox's own kernel (gVisor), so nothing here can reach the
//! host; the checks below are about clear errors: a path must be absolute (or relative to the
//! default working directory), free of control characters, and free of `..`. Writes go to a
//! temporary file beside the target and are renamed into place, so a reader never sees half a
//! file and a failed upload leaves the old content intact.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt;
use hutch_wire::{DirectoryEntry, FileKind, FileStat, ListDirectoryResponse};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{self, ApiError, Body};
use crate::process::Processes;
use crate::users;

const READ_CHUNK: usize = 256 * 1024;

/// The validated path named by the `path` query parameter.
pub fn request_path(req: &Request<Incoming>, procs: &Processes) -> Result<PathBuf, ApiError> {
    let raw = http::query_param(req, "path")
        .ok_or_else(|| ApiError::invalid("the `path` query parameter is required"))?;
    let base = procs.config().working_dir.unwrap_or_else(|| "/".into());
    sandbox_path(&raw, &base)
}

pub fn sandbox_path(raw: &str, base: &str) -> Result<PathBuf, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid("path must not be empty"));
    }
    if raw.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("path {raw:?} contains control characters"),
        ));
    }
    let path = Path::new(raw);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("path {raw:?} contains `..`; give a normalized path"),
        ));
    }
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(base).join(path)
    })
}

pub async fn read(path: PathBuf) -> Result<Response<Body>, ApiError> {
    let display = path.display().to_string();
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::io(&format!("cannot read {display}"), &e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::io(&format!("cannot stat {display}"), &e))?;
    if meta.is_dir() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "is_a_directory",
            format!("{display} is a directory; use /api/v1/files/list"),
        ));
    }
    let (tx, body) = http::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match file.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    // No Content-Length: a file's stat size need not be what reading it yields (procfs
    // reports 0, a log grows while it streams), and a mismatch breaks the HTTP/2 stream.
    Ok(http::streaming("application/octet-stream", body))
}

/// A write's `mode` (octal, e.g. `0755`) and `owner` (`uid[:gid]` or a user name), from its
/// query parameters.
#[derive(Default)]
pub struct WriteAttrs {
    mode: Option<u32>,
    owner: Option<(u32, u32)>,
}

impl WriteAttrs {
    pub fn from_query(mode: Option<&str>, owner: Option<&str>) -> Result<Self, ApiError> {
        let mode = mode
            .map(|m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| {
                        ApiError::invalid(format!("mode {m:?} is not an octal mode (0 to 7777)"))
                    })
            })
            .transpose()?;
        let owner = owner
            .map(|o| {
                users::resolve(o)
                    .map(|id| (id.uid, id.gid))
                    .map_err(|_| ApiError::invalid(format!("owner {o:?} is not a user here")))
            })
            .transpose()?;
        Ok(Self { mode, owner })
    }
}

/// Whether `path` exists (a dangling symlink does), and what it is.
pub async fn exists(path: PathBuf) -> serde_json::Value {
    match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) => serde_json::json!({
            "exists": true,
            "is_dir": meta.is_dir(),
            "is_symlink": meta.file_type().is_symlink(),
        }),
        Err(_) => serde_json::json!({"exists": false, "is_dir": false, "is_symlink": false}),
    }
}

/// Copies a file or a directory tree: modes, owners and times kept, symlinks copied as
/// links (never followed). Refuses to replace an existing target unless `overwrite`, and to
/// copy a directory into itself.
pub async fn copy(from: PathBuf, to: PathBuf, overwrite: bool) -> Result<(), ApiError> {
    if to.starts_with(&from) {
        return Err(ApiError::invalid(format!(
            "cannot copy {} into itself",
            from.display()
        )));
    }
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::symlink_metadata(&from)
            .map_err(|e| ApiError::io(&format!("cannot copy {}", from.display()), &e))?;
        if std::fs::symlink_metadata(&to).is_ok() {
            if !overwrite {
                return Err(ApiError::conflict(format!(
                    "{} exists; pass overwrite: true to replace it",
                    to.display()
                )));
            }
            let gone = if std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&to)
            } else {
                std::fs::remove_file(&to)
            };
            gone.map_err(|e| ApiError::io(&format!("cannot replace {}", to.display()), &e))?;
        }
        copy_tree(&from, &to, &meta)
            .map_err(|e| ApiError::io(&format!("cannot copy to {}", to.display()), &e))
    })
    .await
    .map_err(|e| ApiError::invalid(format!("copy failed: {e}")))?
}

/// Copies the tree at `from` (whose metadata is `meta`) to `to`, without recursion: a
/// sandbox can nest directories as deep as its paths allow, and the agent's blocking
/// threads have small stacks (a deep tree must not take PID 1 down). Directories get their
/// mode and owner after their contents are in.
fn copy_tree(from: &Path, to: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let mut pending = vec![(from.to_path_buf(), to.to_path_buf(), meta.clone())];
    let mut dirs = Vec::new();
    while let Some((from, to, meta)) = pending.pop() {
        let kind = meta.file_type();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
        } else if kind.is_dir() {
            std::fs::create_dir(&to)?;
            for entry in std::fs::read_dir(&from)? {
                let entry = entry?;
                let child = to.join(entry.file_name());
                pending.push((entry.path(), child, entry.metadata()?));
            }
            dirs.push((to, meta));
        } else if kind.is_file() {
            std::fs::copy(&from, &to)?;
            set_owner_and_mode(&to, &meta)?;
        }
        // Devices, fifos and sockets are not content.
    }
    for (dir, meta) in dirs.iter().rev() {
        set_owner_and_mode(dir, meta)?;
    }
    Ok(())
}

fn set_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode()))
}

pub async fn write(
    path: PathBuf,
    body: Incoming,
    procs: &Processes,
    attrs: WriteAttrs,
) -> Result<(), ApiError> {
    let display = path.display().to_string();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| ApiError::invalid(format!("cannot write to {display}")))?
        .to_path_buf();
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "is_a_directory",
            format!("{display} is a directory"),
        ));
    }
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(|e| ApiError::io(&format!("cannot create {}", parent.display()), &e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(
        ".{name}.hutch-upload-{}",
        hutch_wire::clock::now_ms()
    ));
    let result = write_to(&tmp, body).await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    // Keep an existing file's mode and owner; a new file belongs to the default user.
    let owner = match std::fs::metadata(&path) {
        Ok(old) => {
            let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(old.mode()));
            Some((old.uid(), old.gid()))
        }
        Err(_) => procs
            .config()
            .user
            .and_then(|u| users::resolve(&u).ok())
            .map(|id| (id.uid, id.gid)),
    };
    if let Some((uid, gid)) = attrs.owner.or(owner) {
        let _ = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid));
    }
    if let Some(mode) = attrs.mode {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ApiError::io(&format!("cannot set the mode of {display}"), &e))?;
    }
    tokio::fs::rename(&tmp, &path).await.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ApiError::io(&format!("cannot write {display}"), &e)
    })
}

async fn write_to(tmp: &Path, mut body: Incoming) -> Result<(), ApiError> {
    let display = tmp.display().to_string();
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| ApiError::io(&format!("cannot create {display}"), &e))?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid(format!("upload interrupted: {e}")))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data)
                .await
                .map_err(|e| ApiError::io("write failed", &e))?;
        }
    }
    file.flush()
        .await
        .map_err(|e| ApiError::io("write failed", &e))?;
    Ok(())
}

pub async fn delete(path: PathBuf) -> Result<(), ApiError> {
    let display = path.display().to_string();
    if path == Path::new("/") {
        return Err(ApiError::invalid("refusing to delete /"));
    }
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| ApiError::io(&format!("cannot delete {display}"), &e))?;
    let result = if meta.is_dir() {
        tokio::fs::remove_dir_all(&path).await
    } else {
        tokio::fs::remove_file(&path).await
    };
    result.map_err(|e| ApiError::io(&format!("cannot delete {display}"), &e))
}

pub async fn list(path: PathBuf) -> Result<ListDirectoryResponse, ApiError> {
    let display = path.display().to_string();
    let mut dir = tokio::fs::read_dir(&path)
        .await
        .map_err(|e| ApiError::io(&format!("cannot list {display}"), &e))?;
    let mut entries = Vec::new();
    while let Some(entry) = dir
        .next_entry()
        .await
        .map_err(|e| ApiError::io(&format!("cannot list {display}"), &e))?
    {
        let Ok(meta) = entry.metadata().await else {
            continue;
        };
        entries.push(DirectoryEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            is_dir: meta.is_dir(),
            size: (!meta.is_dir()).then_some(meta.len() as i64),
            modified_at: Some(meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ListDirectoryResponse {
        path: display,
        entries,
    })
}

pub async fn stat(path: PathBuf) -> Result<FileStat, ApiError> {
    let display = path.display().to_string();
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(|e| ApiError::io(&format!("cannot stat {display}"), &e))?;
    let kind = if meta.is_dir() {
        FileKind::Dir
    } else if meta.is_file() {
        FileKind::File
    } else if meta.file_type().is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let link_target = match kind {
        FileKind::Symlink => tokio::fs::read_link(&path)
            .await
            .ok()
            .map(|t| t.to_string_lossy().into_owned()),
        _ => None,
    };
    Ok(FileStat {
        path: display,
        kind,
        size: meta.len(),
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        modified_at: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
        link_target,
    })
}

pub async fn mkdir(path: PathBuf) -> Result<(), ApiError> {
    let display = path.display().to_string();
    tokio::fs::create_dir_all(&path)
        .await
        .map_err(|e| ApiError::io(&format!("cannot create directory {display}"), &e))
}

pub async fn rename(from: PathBuf, to: PathBuf) -> Result<(), ApiError> {
    tokio::fs::rename(&from, &to).await.map_err(|e| {
        ApiError::io(
            &format!("cannot rename {} to {}", from.display(), to.display()),
            &e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deep_tree_copies_on_a_small_stack() {
        let root = std::env::temp_dir().join(format!("hutch-copy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut deep = root.join("from");
        for _ in 0..400 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("leaf"), b"x").unwrap();
        let (from, to) = (root.join("from"), root.join("to"));
        // The agent's blocking threads have 256 KiB stacks.
        let copied = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let meta = std::fs::symlink_metadata(&from).unwrap();
                copy_tree(&from, &to, &meta)
            })
            .unwrap()
            .join()
            .unwrap();
        copied.unwrap();
        let mut leaf = root.join("to");
        for _ in 0..400 {
            leaf.push("d");
        }
        assert_eq!(std::fs::read(leaf.join("leaf")).unwrap(), b"x");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
