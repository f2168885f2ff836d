//! Import sources: recognising what a path holds (by content, never by name) and staging the
//! members of an archive into the store's `tmp/` so the layout readers only deal with
//! directories.
//!
//! Staged archives contain only regular files and directories. Archive members that are
//! symlinks or hardlinks (old `docker save` links duplicate `layer.tar`s this way) are resolved
//! lexically inside the archive and become hard links to the staged regular file; anything
//! else is refused.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::blob::not_an_image;
use crate::compression::decompressed;
use crate::error::{IoContext, StoreError};
use crate::unpack::normalize;

/// What an import source turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `oci-layout` + `index.json` + `blobs/`.
    Oci,
    /// `manifest.json` as written by `docker save`.
    Docker,
}

/// A directory holding the image, either the user's own or one staged from an archive.
pub(crate) struct SourceDir {
    pub(crate) dir: PathBuf,
    pub(crate) layout: Layout,
    /// True when `dir` is inside the store's staging area (so its files may be hard-linked).
    pub(crate) staged: bool,
}

/// What `source` is; a missing one is not an image.
pub(crate) fn metadata(source: &Path) -> Result<fs::Metadata, StoreError> {
    match fs::metadata(source) {
        Ok(meta) => Ok(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Err(not_an_image(source, "no such file or directory"))
        }
        Err(err) => Err(StoreError::io(
            format!("inspecting {}", source.display()),
            err,
        )),
    }
}

/// Resolves `source` to a directory with a recognised layout, staging it into `scratch` first
/// when it is an archive.
pub(crate) fn prepare(source: &Path, scratch: &Path) -> Result<SourceDir, StoreError> {
    let meta = metadata(source)?;
    let (dir, staged) = if meta.is_dir() {
        (source.to_path_buf(), false)
    } else if meta.is_file() {
        stage_archive(source, scratch)?;
        (scratch.to_path_buf(), true)
    } else {
        return Err(not_an_image(
            source,
            "it is neither a directory nor a regular file",
        ));
    };
    let layout = detect(&dir, source, staged)?;
    Ok(SourceDir {
        dir,
        layout,
        staged,
    })
}

fn detect(dir: &Path, source: &Path, staged: bool) -> Result<Layout, StoreError> {
    let is_file = |name: &str| fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file());
    if is_file("oci-layout") && is_file("index.json") {
        return Ok(Layout::Oci);
    }
    if is_file("manifest.json") {
        return Ok(Layout::Docker);
    }
    let what = if staged {
        "the archive"
    } else {
        "the directory"
    };
    Err(not_an_image(
        source,
        format!(
            "{what} has neither oci-layout + index.json (OCI layout) nor manifest.json (docker save)"
        ),
    ))
}

/// A link member whose target is resolved once every regular file has been staged.
struct PendingLink {
    path: Vec<Vec<u8>>,
    target: Vec<Vec<u8>>,
    shown: String,
}

fn stage_archive(source: &Path, scratch: &Path) -> Result<(), StoreError> {
    let file = File::open(source).ctx(|| format!("opening {}", source.display()))?;
    let stream = decompressed(file, "import archive")?;
    let mut archive = tar::Archive::new(stream);
    let mut links = Vec::new();
    // A failure before the first member means the file was never a tar at all.
    let mut seen_member = false;
    let unreadable = |seen_member: bool, err: io::Error| {
        if !seen_member {
            not_an_image(source, "it is not a tar archive")
        } else {
            not_an_image(
                source,
                format!("the archive is corrupt or truncated ({})", printable(&err)),
            )
        }
    };
    let entries = archive.entries().map_err(|e| unreadable(false, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unreadable(seen_member, e))?;
        seen_member = true;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let bad = |reason: &str| not_an_image(source, format!("archive member {shown:?} {reason}"));
        let components: Vec<Vec<u8>> = normalize(&raw)
            .map_err(bad)?
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        if kind.is_dir() {
            make_dirs(scratch, &components, &shown, source)?;
        } else if kind.is_file() || kind.is_contiguous() {
            let Some((_, parents)) = components.split_last() else {
                return Err(bad("is a file at the archive root"));
            };
            let parent = make_dirs(scratch, parents, &shown, source)?;
            let target = parent.join(OsStr::from_bytes(&components[components.len() - 1]));
            remove_existing_file(&target, &shown, source)?;
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&target)
                .ctx(|| format!("staging archive member {shown:?}"))?;
            io::copy(&mut entry, &mut out).map_err(|e| unreadable(true, e))?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let target = if kind.is_symlink() {
                resolve_symlink(&components, &link)
            } else {
                normalize(&link).ok().map(|c| {
                    c.iter()
                        .map(|part| part.as_bytes().to_vec())
                        .collect::<Vec<_>>()
                })
            };
            let target = target
                .filter(|t| !t.is_empty())
                .ok_or_else(|| bad("links outside the archive"))?;
            links.push(PendingLink {
                path: components,
                target,
                shown,
            });
        } else {
            return Err(bad(
                "is neither a regular file nor a directory; import archives may not contain devices or fifos",
            ));
        }
    }
    resolve_links(scratch, &links, source)
}

/// Error text of the tar reader can quote raw header bytes; keep it short and on one line.
fn printable(err: &io::Error) -> String {
    err.to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(160)
        .collect()
}

/// Lexically resolves a symlink's target against the symlink's own directory; `None` if it is
/// absolute or climbs out of the archive.
fn resolve_symlink(path: &[Vec<u8>], target: &[u8]) -> Option<Vec<Vec<u8>>> {
    if target.starts_with(b"/") || target.is_empty() {
        return None;
    }
    let (_, parent) = path.split_last()?;
    let mut resolved: Vec<Vec<u8>> = parent.to_vec();
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                resolved.pop()?;
            }
            _ => resolved.push(part.to_vec()),
        }
    }
    Some(resolved)
}

fn resolve_links(scratch: &Path, links: &[PendingLink], source: &Path) -> Result<(), StoreError> {
    let by_path: HashMap<&[Vec<u8>], &[Vec<u8>]> = links
        .iter()
        .map(|l| (l.path.as_slice(), l.target.as_slice()))
        .collect();
    for link in links {
        let bad = || {
            not_an_image(
                source,
                format!(
                    "archive member {:?} links to something that is not a regular file in the archive",
                    link.shown
                ),
            )
        };
        // Follow chains of links, bounded like the kernel's own symlink limit.
        let mut target = link.target.as_slice();
        for _ in 0..40 {
            match by_path.get(target) {
                Some(next) => target = next,
                None => break,
            }
        }
        let target_path = join(scratch, target);
        // The staging tree only ever contains directories and regular files, so `symlink_metadata`
        // on a lexically built path cannot be redirected.
        if !fs::symlink_metadata(&target_path).is_ok_and(|m| m.is_file()) {
            return Err(bad());
        }
        let Some((_, parents)) = link.path.split_last() else {
            return Err(bad());
        };
        make_dirs(scratch, parents, &link.shown, source)?;
        let link_path = join(scratch, &link.path);
        remove_existing_file(&link_path, &link.shown, source)?;
        fs::hard_link(&target_path, &link_path)
            .ctx(|| format!("staging archive member {:?}", link.shown))?;
    }
    Ok(())
}

fn join(base: &Path, components: &[Vec<u8>]) -> PathBuf {
    let mut path = base.to_path_buf();
    for component in components {
        path.push(OsStr::from_bytes(component));
    }
    path
}

/// Creates (as needed) the directories `components` under `base`; an existing non-directory in
/// the way makes the archive malformed.
fn make_dirs(
    base: &Path,
    components: &[Vec<u8>],
    shown: &str,
    source: &Path,
) -> Result<PathBuf, StoreError> {
    let mut current = base.to_path_buf();
    for component in components {
        current.push(OsStr::from_bytes(component));
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(not_an_image(
                    source,
                    format!("archive member {shown:?} needs a directory where a file already is"),
                ));
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&current)
                    .ctx(|| format!("staging archive member {shown:?}"))?;
            }
            Err(err) => {
                return Err(StoreError::io(
                    format!("staging archive member {shown:?}"),
                    err,
                ));
            }
        }
    }
    Ok(current)
}

/// A later member with the same name replaces an earlier file, as `tar -x` would.
fn remove_existing_file(path: &Path, shown: &str, source: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(not_an_image(
            source,
            format!("archive member {shown:?} is a file where a directory already is"),
        )),
        Ok(_) => fs::remove_file(path).ctx(|| format!("staging archive member {shown:?}")),
        Err(_) => Ok(()),
    }
}
