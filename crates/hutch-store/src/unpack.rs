//! Safe extraction of one image layer (a plain or gzip tar) into an overlayfs-ready directory.
//!
//! Layers come from untrusted images and are unpacked as root, so this module never trusts a
//! path from the archive: every entry is normalized lexically (no absolute paths, no `..`),
//! every parent is walked with `lstat` and must be a real directory (never a symlink), final
//! components are created exclusively or with `*_NOFOLLOW` calls, and hard links may only point
//! at paths already unpacked in this same layer. OCI whiteouts are converted to the overlayfs
//! format (0:0 character devices and `trusted.overlay.opaque=y`). The decompressed stream is
//! hashed as it is read, so the layer's diff_id is verified without a second pass.
//!
//! What an archive may ask for is bounded too: device nodes are refused (a host-visible
//! device would outlive the sandbox's own restrictions), only `user.*` and
//! `security.capability` xattrs are applied, zero blocks are written as holes, and every
//! layer is held to an [`UnpackLimits`] budget of bytes (apparent sizes) and entries. The
//! same extractor serves ADD of a local archive in a build ([`unpack_archive`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::budget::{CappedReader, ImageBudget, LayerBudget, UnpackLimits, is_stream_too_long};
use crate::compression::decompressed;
use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, StoreError};
use crate::sparse::copy_sparse;
use crate::syscalls;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
/// overlayfs interprets its own xattrs on lower dirs (redirects, metacopy, ...); only the
/// whiteout conversion here may set them, never a layer's own PAX records.
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// The PAX sparse formats (GNU tar's 0.0, 0.1 and 1.0) keep the sparse map in records or in
/// the data, which the tar crate does not decode: unpacked naively they give a wrong file.
const PAX_SPARSE_PREFIX: &[u8] = b"GNU.sparse.";
/// Xattrs an image may set: `user.*` is unprivileged, and file capabilities are how images
/// grant `ping` and friends their rights. Everything else in `security.*` (SELinux labels,
/// IMA) and `trusted.*` is host policy, not image content.
fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}

/// Unpacks a stream of a (possibly compressed) layer blob into `dest` (an existing, empty
/// directory) and returns the total size of its regular files. Fails with `DigestMismatch`
/// when the decompressed stream does not hash to `diff_id`, and with `UnpackLimit` when it
/// goes over `limits` or the `image` budget; the caller discards `dest` on any error. A pull
/// calls this while it downloads; the caller must drain `blob` afterwards if it hashes it (a
/// compressed stream may go on past the end of the tar archive).
pub(crate) fn unpack_layer_from<R: Read>(
    blob: R,
    dest: &Path,
    diff_id: &Digest,
    layer: &str,
    limits: UnpackLimits,
    image: Option<ImageBudget>,
) -> Result<u64, StoreError> {
    let budget = LayerBudget::new(layer, limits, image);
    let (actual, size) = unpack_stream(blob, dest, layer, budget)?;
    if &actual != diff_id {
        return Err(StoreError::DigestMismatch {
            what: format!("uncompressed content (diff_id) of layer {layer}"),
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(size)
}

/// Extracts an untrusted tar archive (plain, gzip or zstd) into the existing directory `dest`
/// under exactly the rules a layer is unpacked by (see the module docs), held to the
/// per-layer `limits`; `what` names the archive in errors. Returns the bytes of file content
/// written. On error `dest` may hold part of the archive (never anything outside it): the
/// caller discards it. OCI whiteout names become overlayfs whiteouts, as in a layer.
pub fn unpack_archive<R: Read>(
    archive: R,
    dest: &Path,
    what: &str,
    limits: UnpackLimits,
) -> Result<u64, StoreError> {
    let budget = LayerBudget::new(what, limits, None);
    unpack_stream(archive, dest, what, budget).map(|(_, size)| size)
}

/// The extraction itself: returns the digest of the decompressed stream and the layer size.
fn unpack_stream<R: Read>(
    blob: R,
    dest: &Path,
    layer: &str,
    budget: LayerBudget,
) -> Result<(Digest, u64), StoreError> {
    let what = format!("layer {layer}");
    // The cap sits under the hasher, so the drain after the end of the archive is capped too.
    let capped = CappedReader::new(decompressed(blob, &what)?, budget.limit_bytes());
    let mut archive = tar::Archive::new(HashingReader::new(capped));
    let mut extractor = Extractor {
        root: dest,
        layer,
        dir_times: HashMap::new(),
        budget,
    };
    let read_error = |extractor: &Extractor<'_>, err: io::Error| {
        if is_stream_too_long(&err) {
            extractor.budget.stream_too_long()
        } else {
            StoreError::io(format!("reading the tar stream of layer {layer}"), err)
        }
    };
    let entries = archive
        .entries()
        .map_err(|err| read_error(&extractor, err))?;
    for entry in entries {
        let mut entry = entry.map_err(|err| read_error(&extractor, err))?;
        extractor.budget.charge_entry()?;
        extractor.extract(&mut entry)?;
    }
    let (actual, _) = archive
        .into_inner()
        .finish()
        .map_err(|err| read_error(&extractor, err))?;
    extractor.apply_dir_times()?;
    Ok((actual, extractor.budget.bytes()))
}

/// Ownership, permissions, times and xattrs of one entry, read before its data is consumed.
struct Metadata {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Extractor<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Directory mtimes are applied last: creating children would otherwise bump them.
    dir_times: HashMap<PathBuf, (i64, u32)>,
    budget: LayerBudget,
}

impl Extractor<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> StoreError {
        StoreError::UnsafeLayerEntry {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn extract<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), StoreError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let components =
            normalize(&raw_path).map_err(|reason| self.unsafe_entry(&shown, reason))?;
        let is_dir = kind.is_dir() || (kind.is_file() && raw_path.ends_with(b"/"));
        let Some((name, parents)) = components.split_last() else {
            if is_dir {
                return Ok(());
            }
            return Err(self.unsafe_entry(&shown, "names the layer root but is not a directory"));
        };
        let meta = self.metadata(entry, &shown)?;
        let parent = self.ensure_parents(parents, &shown)?;

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&parent, name.as_bytes(), hidden, &meta, &shown);
        }
        let target = parent.join(name);
        let ctx = |action: &str| format!("{action} {shown:?} of layer {}", self.layer);

        if is_dir {
            if !self.clear(&target, true, &shown)? {
                DirBuilder::new()
                    .mode(0o700)
                    .create(&target)
                    .ctx(|| ctx("creating directory"))?;
            }
            self.apply(&target, &meta, false, &shown)?;
            self.dir_times.insert(target, meta.mtime);
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            // Charged up front, at the apparent size (a GNU sparse entry's full length), so an
            // entry over the budget writes nothing.
            self.budget.charge_bytes(entry.size())?;
            self.clear(&target, false, &shown)?;
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&target)
                .ctx(|| ctx("creating file"))?;
            // The tar crate hands a sparse entry's holes over as zeros; they become holes again.
            copy_sparse(entry, &file).map_err(|err| {
                if is_stream_too_long(&err) {
                    self.budget.stream_too_long()
                } else {
                    StoreError::io(ctx("writing file"), err)
                }
            })?;
            drop(file);
            self.apply(&target, &meta, false, &shown)?;
            self.set_times(&target, meta.mtime, &shown)?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            if link.is_empty() {
                return Err(self.unsafe_entry(&shown, "is a symlink without a target"));
            }
            self.clear(&target, false, &shown)?;
            // The target is stored verbatim: it is resolved later inside the sandbox's root,
            // and nothing here ever follows it.
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                .ctx(|| ctx("creating symlink"))?;
            self.apply(&target, &meta, true, &shown)?;
            self.set_times(&target, meta.mtime, &shown)?;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            self.hard_link(&target, &link, &shown)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let header = entry.header();
            let bad = || self.unsafe_entry(&shown, "has an unreadable device number");
            // `None` only for pre-POSIX headers, which have no device fields at all.
            let major = header.device_major().map_err(|_| bad())?.unwrap_or(0);
            let minor = header.device_minor().map_err(|_| bad())?.unwrap_or(0);
            let node_kind = if kind.is_fifo() {
                libc::S_IFIFO
            } else if kind.is_character_special() && (major, minor) == (0, 0) {
                // An overlayfs-format whiteout: no device behind it.
                libc::S_IFCHR
            } else {
                // A device node in a layer is a host device node in the store, and one more
                // way into the host should a mount ever lose `nodev`; sandboxes get their
                // devices from the runtime, never from images.
                let node = if kind.is_block_special() {
                    "block"
                } else {
                    "character"
                };
                return Err(self.unsafe_entry(
                    &shown,
                    format!(
                        "is a {node} device ({major}:{minor}); device nodes are not allowed in images"
                    ),
                ));
            };
            self.clear(&target, false, &shown)?;
            syscalls::mknod(&target, node_kind, major, minor)
                .ctx(|| ctx("creating device node"))?;
            self.apply(&target, &meta, false, &shown)?;
            self.set_times(&target, meta.mtime, &shown)?;
        } else {
            return Err(self.unsafe_entry(
                &shown,
                format!(
                    "has unsupported tar entry type {:?}",
                    char::from(kind.as_byte())
                ),
            ));
        }
        Ok(())
    }

    fn metadata<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Metadata, StoreError> {
        let bad = |field: &str| self.unsafe_entry(shown, format!("has an unreadable {field}"));
        let header = entry.header();
        let uid = header.uid().map_err(|_| bad("uid"))?;
        let gid = header.gid().map_err(|_| bad("gid"))?;
        let uid = u32::try_from(uid).map_err(|_| bad("uid (out of range)"))?;
        let gid = u32::try_from(gid).map_err(|_| bad("gid (out of range)"))?;
        let mode = header.mode().map_err(|_| bad("mode"))? & 0o7777;
        let header_mtime = header.mtime().map_err(|_| bad("mtime"))?;
        let mut mtime = (i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|_| bad("PAX header"))? {
            for record in pax {
                let record = record.map_err(|_| bad("PAX header"))?;
                let key = record.key_bytes();
                if key.starts_with(PAX_SPARSE_PREFIX) {
                    return Err(self.unsafe_entry(
                        shown,
                        "uses the PAX sparse format, which is not supported (GNU sparse entries are)",
                    ));
                }
                if key == b"mtime" {
                    mtime = record
                        .value()
                        .ok()
                        .and_then(parse_pax_time)
                        .ok_or_else(|| bad("PAX mtime"))?;
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    if name.starts_with(OVERLAY_XATTR_PREFIX) {
                        tracing::warn!(
                            layer = self.layer,
                            entry = shown,
                            xattr = %String::from_utf8_lossy(name),
                            "ignoring overlayfs-private xattr from a layer"
                        );
                        continue;
                    }
                    if !xattr_allowed(name) {
                        tracing::debug!(
                            layer = self.layer,
                            entry = shown,
                            xattr = %String::from_utf8_lossy(name),
                            "dropping an xattr outside user.* and security.capability"
                        );
                        continue;
                    }
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Metadata {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    /// Walks (creating as needed) the parent directories of an entry, refusing to pass through
    /// anything but real directories, so no write can be redirected outside the layer.
    fn ensure_parents(&mut self, parents: &[&OsStr], shown: &str) -> Result<PathBuf, StoreError> {
        let mut current = self.root.to_path_buf();
        for (depth, component) in parents.iter().enumerate() {
            current.push(component);
            let prefix = || display_prefix(parents, depth);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(
                        shown,
                        format!("traverses symlink {:?} inside the layer", prefix()),
                    ));
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(self.unsafe_entry(
                        shown,
                        format!("has parent {:?} that is not a directory", prefix()),
                    ));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    // Implicit parents are entries too: one deep path must not create an
                    // unbounded number of directories for free.
                    self.budget.charge_entry()?;
                    let ctx = || format!("creating parent directory {:?} of {shown:?}", prefix());
                    DirBuilder::new().mode(0o755).create(&current).ctx(ctx)?;
                    // Explicit, because a setgid parent from an earlier entry would otherwise
                    // leak its group and setgid bit into directories the layer never declared.
                    syscalls::lchown(&current, 0, 0).ctx(ctx)?;
                    syscalls::chmod(&current, 0o755).ctx(ctx)?;
                }
                Err(err) => {
                    return Err(StoreError::io(
                        format!("inspecting {:?} of layer {}", prefix(), self.layer),
                        err,
                    ));
                }
            }
        }
        Ok(current)
    }

    /// Makes room for a new entry at `target`. Returns true when an existing directory is kept
    /// (a directory entry over a directory only updates metadata).
    fn clear(&self, target: &Path, keep_dir: bool, shown: &str) -> Result<bool, StoreError> {
        let ctx = || format!("replacing {shown:?} in layer {}", self.layer);
        match fs::symlink_metadata(target) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(StoreError::io(ctx(), err)),
            Ok(meta) if meta.is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(target).ctx(ctx)?;
                Ok(false)
            }
            Ok(_) => {
                fs::remove_file(target).ctx(ctx)?;
                Ok(false)
            }
        }
    }

    fn whiteout(
        &mut self,
        parent: &Path,
        name: &[u8],
        hidden: &[u8],
        meta: &Metadata,
        shown: &str,
    ) -> Result<(), StoreError> {
        if name == OPAQUE_MARKER {
            return syscalls::lsetxattr(parent, OPAQUE_XATTR, b"y").ctx(|| {
                format!(
                    "marking the directory of {shown:?} opaque in layer {} (the store's filesystem must support trusted.* xattrs)",
                    self.layer
                )
            });
        }
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.*` names are aufs bookkeeping with no meaning for overlayfs.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.unsafe_entry(shown, "is a whiteout of an invalid name"));
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        self.clear(&target, false, shown)?;
        syscalls::mknod(&target, libc::S_IFCHR, 0, 0)
            .ctx(|| format!("creating whiteout for {shown:?} in layer {}", self.layer))?;
        syscalls::lchown(&target, meta.uid, meta.gid)
            .ctx(|| format!("setting the owner of whiteout {shown:?}"))?;
        syscalls::chmod(&target, 0).ctx(|| format!("setting the mode of whiteout {shown:?}"))?;
        self.set_times(&target, meta.mtime, shown)
    }

    fn hard_link(&mut self, target: &Path, link: &[u8], shown: &str) -> Result<(), StoreError> {
        let link_shown = String::from_utf8_lossy(link).into_owned();
        let components = normalize(link).map_err(|reason| {
            self.unsafe_entry(
                shown,
                format!("is a hardlink whose target {link_shown:?} {reason}"),
            )
        })?;
        let missing = || {
            self.unsafe_entry(
                shown,
                format!(
                    "is a hardlink to {link_shown:?}, which does not exist earlier in this layer \
                     (hardlinks into lower layers are not supported)"
                ),
            )
        };
        let Some((name, parents)) = components.split_last() else {
            return Err(missing());
        };
        let mut source = self.root.to_path_buf();
        for (depth, component) in parents.iter().enumerate() {
            source.push(component);
            match fs::symlink_metadata(&source) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(self.unsafe_entry(
                        shown,
                        format!(
                            "is a hardlink whose target traverses symlink {:?}",
                            display_prefix(parents, depth)
                        ),
                    ));
                }
                Ok(meta) if meta.is_dir() => {}
                _ => return Err(missing()),
            }
        }
        source.push(name);
        match fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_dir() => {
                return Err(
                    self.unsafe_entry(shown, format!("is a hardlink to directory {link_shown:?}"))
                );
            }
            Ok(_) => {}
            Err(_) => return Err(missing()),
        }
        if source == target {
            return Ok(());
        }
        self.clear(target, false, shown)?;
        // std's hard_link uses linkat without AT_SYMLINK_FOLLOW: a symlink source is linked
        // itself, never resolved.
        fs::hard_link(&source, target).ctx(|| {
            format!(
                "creating hardlink {shown:?} -> {link_shown:?} in layer {}",
                self.layer
            )
        })
    }

    /// Owner first (chown clears setuid/setgid and file capabilities), then xattrs, then mode.
    fn apply(
        &self,
        target: &Path,
        meta: &Metadata,
        is_symlink: bool,
        shown: &str,
    ) -> Result<(), StoreError> {
        syscalls::lchown(target, meta.uid, meta.gid)
            .ctx(|| format!("setting the owner of {shown:?} in layer {}", self.layer))?;
        for (name, value) in &meta.xattrs {
            syscalls::lsetxattr(target, name, value).ctx(|| {
                format!(
                    "setting xattr {} on {shown:?} in layer {}",
                    String::from_utf8_lossy(name),
                    self.layer
                )
            })?;
        }
        if !is_symlink {
            syscalls::chmod(target, meta.mode)
                .ctx(|| format!("setting the mode of {shown:?} in layer {}", self.layer))?;
        }
        Ok(())
    }

    fn set_times(
        &self,
        target: &Path,
        (secs, nanos): (i64, u32),
        shown: &str,
    ) -> Result<(), StoreError> {
        syscalls::set_times_nofollow(target, secs, nanos)
            .ctx(|| format!("setting the mtime of {shown:?} in layer {}", self.layer))
    }

    /// Deepest first, so setting a child's time never disturbs an already-set parent.
    fn apply_dir_times(&mut self) -> Result<(), StoreError> {
        let mut dirs: Vec<(PathBuf, (i64, u32))> = self.dir_times.drain().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, time) in dirs {
            // A later entry may have replaced the directory, or one of its parents, with
            // something else (even a symlink out of the layer): re-walk before touching it.
            if self.is_real_dir(&path) {
                let shown = path
                    .strip_prefix(self.root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                self.set_times(&path, time, &shown)?;
            }
        }
        Ok(())
    }

    /// True if `path` and every directory between it and the layer root is a directory
    /// (checked with lstat, so never through a symlink).
    fn is_real_dir(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(self.root) else {
            return false;
        };
        let mut current = self.root.to_path_buf();
        relative.components().all(|component| {
            current.push(component);
            fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir())
        })
    }
}

/// Splits an archive path into safe components: a leading `./` and `.` components are dropped;
/// absolute paths, `..` and NUL bytes are refused.
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    if raw.starts_with(b"/") {
        return Err("is an absolute path");
    }
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut components = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("contains a '..' component"),
            _ => components.push(OsStr::from_bytes(part)),
        }
    }
    Ok(components)
}

fn display_prefix(parts: &[&OsStr], depth: usize) -> String {
    parts[..=depth]
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses a PAX time (`secs[.fraction]`, possibly negative) into seconds and nanoseconds.
fn parse_pax_time(value: &str) -> Option<(i64, u32)> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction
        .chars()
        .chain(std::iter::repeat('0'))
        .take(9)
        .collect();
    let nanos: u32 = digits.parse().ok()?;
    if nanos == 0 || !whole.starts_with('-') {
        return Some((secs, nanos));
    }
    // "-1.25" means 1.25 s before the epoch: one more whole second back, plus 0.75 s.
    Some((secs - 1, 1_000_000_000 - nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_entry_paths() {
        let ok = |raw: &[u8]| -> Vec<String> {
            normalize(raw)
                .expect("accepted")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(ok(b"./a/b"), ["a", "b"]);
        assert_eq!(ok(b"a//./b/"), ["a", "b"]);
        assert!(ok(b"./").is_empty());
        assert!(ok(b".").is_empty());
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"..").is_err());
        assert!(normalize(b"a\0b").is_err());
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time("1.0000000019"), Some((1, 1)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
    }
}
