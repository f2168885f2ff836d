//! COPY and ADD (and WORKDIR's directory): files staged in a scratch directory of the store
//! (whose `tmp/` a later open sweeps when a build dies mid-step), with the image's parent
//! directories, that becomes the step's layer. ADD of a local archive unpacks it through the
//! store's hardened extractor.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::BuildRequest;
use super::Engine;
use super::state::State;
use crate::context::{EntryKind, digest_sources, resolve_sources, walk};
use crate::dockerfile::CopyOptions;
use crate::error::BuildError;
use crate::ignore::DockerIgnore;
use crate::merged::{MergedView, resolve_owner};

impl Engine<'_> {
    /// WORKDIR creates its directory when the image lacks it (a small layer), owned by the
    /// current USER like the parents it creates, as buildah does.
    pub(super) async fn ensure_dir(&self, state: &mut State, dir: &str) -> Result<(), BuildError> {
        if self.cached(state)? {
            return Ok(());
        }
        // One read-only view of the image serves the lookups and the parents' metadata.
        let view = self.view(state)?;
        let user = state.config["config"]["User"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let owner = if user.is_empty() {
            (0, 0)
        } else {
            resolve_owner(&view, &user).unwrap_or((0, 0))
        };
        if view.is_dir(dir) {
            drop(view);
            self.commit(state).await?;
            return Ok(());
        }
        let scratch = self.store.scratch_dir("build-workdir")?;
        let staged = scratch.path().join("tree");
        stage_parents(
            &view,
            &staged,
            &format!("{}/x", dir.trim_end_matches('/')),
            Some(owner),
        )?;
        drop(view);
        self.add_layer_from(state, &staged, &[]).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn copy(
        &self,
        state: &mut State,
        req: &BuildRequest,
        ignore: &DockerIgnore,
        stage: usize,
        line: usize,
        (sources, inline): (&[String], &[(String, Vec<u8>)]),
        dest: &str,
        from: Option<&State>,
        chown: Option<&str>,
        chmod: Option<&str>,
        options: &CopyOptions,
        add: bool,
    ) -> Result<(), BuildError> {
        let file = &req.dockerfile_name;
        let err = |message: String| BuildError::Dockerfile {
            file: file.clone(),
            line,
            message,
        };
        let verb = if add { "ADD" } else { "COPY" };
        let from_view = match from {
            Some(s) => Some(self.view(s)?),
            None => None,
        };
        let no_ignore = DockerIgnore::parse("");
        let (root, ign): (&Path, &DockerIgnore) = match &from_view {
            Some(v) => (v.root(), &no_ignore),
            None => (&req.context, ignore),
        };
        // `--exclude` patterns apply to what the sources name and to everything below them.
        let excluded = DockerIgnore::parse(&options.exclude.join("\n"));
        let is_excluded = |rel: &Path| {
            !options.exclude.is_empty() && excluded.is_excluded(&rel.to_string_lossy())
        };
        let entries: Vec<_> = if sources.is_empty() {
            Vec::new()
        } else {
            resolve_sources(root, ign, sources)
                .map_err(|e| err(format!("{verb}: {e}")))?
                .into_iter()
                .filter(|e| !is_excluded(&e.rel))
                .collect()
        };
        let mut inputs =
            digest_sources(&entries, ign, root).map_err(|e| err(format!("{verb}: {e}")))?;
        for (name, data) in inline {
            inputs.push_str(&format!(
                " <<{name}:{}",
                hex::encode(sha2::Sha256::digest(data))
            ));
        }
        let names: Vec<String> = sources
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| format!("<<{n}")))
            .collect();
        let text = format!("{verb} {} {dest}", names.join(" "));
        state.chain(
            format!(
                "{text} chown={chown:?} chmod={chmod:?} options={options:?} from={} inputs={inputs}",
                from.map_or("", |s| s.key.as_str())
            )
            .as_bytes(),
        );
        if self.cached(state)? {
            self.step(stage, line, &text, true);
            return Ok(());
        }
        self.step(stage, line, &text, false);
        let absolute = state.absolute(dest);
        let view = self.view(state)?;
        let owner = match chown {
            Some(spec) => {
                Some(resolve_owner(&view, spec).map_err(|e| err(format!("{verb} --chown: {e}")))?)
            }
            None => None,
        };
        let dest_is_dir = view.is_dir(&absolute);
        // Docker: a destination ending in `/` (or `.`), several sources, a directory source
        // or an existing directory is a directory to copy into; otherwise the file's new path.
        let into_dir = options.parents
            || absolute.ends_with('/')
            || absolute.ends_with("/.")
            || dest == "."
            || entries.len() + inline.len() > 1
            || dest_is_dir
            || entries.iter().any(|e| matches!(e.kind, EntryKind::Dir));
        let mode = match chmod {
            Some(m) => {
                Some(ChmodSpec::parse(m).map_err(|e| err(format!("{verb} --chmod={m}: {e}")))?)
            }
            None => None,
        };
        let scratch = self.store.scratch_dir("build-copy")?;
        let staged = scratch.path().join("tree");
        std::fs::create_dir_all(&staged).map_err(|e| BuildError::io("staging", e))?;
        let dest_rel = PathBuf::from(
            absolute
                .trim_start_matches('/')
                .trim_end_matches('.')
                .trim_end_matches('/'),
        );
        let parent_of = if into_dir {
            format!("/{}/x", dest_rel.display())
        } else {
            format!("/{}", dest_rel.display())
        };
        stage_parents(&view, &staged, &parent_of, owner)?;
        drop(view);
        let keep_owners = from.is_some();
        // Hardlinked files stay hardlinked (within this COPY), as buildah keeps them.
        let mut links: std::collections::HashMap<(u64, u64), PathBuf> =
            std::collections::HashMap::new();
        for entry in &entries {
            let base = if options.parents {
                // The source's own path under the destination: from the context root, or
                // from the `/./` pivot the source names.
                staged.join(&dest_rel).join(parents_path(entry, sources))
            } else if into_dir {
                match entry.kind {
                    EntryKind::Dir => staged.join(&dest_rel),
                    _ => staged
                        .join(&dest_rel)
                        .join(entry.rel.file_name().unwrap_or_default()),
                }
            } else {
                staged.join(&dest_rel)
            };
            if add && matches!(entry.kind, EntryKind::File) && looks_like_tar(&entry.abs) {
                let dir = if into_dir {
                    staged.join(&dest_rel)
                } else {
                    base.clone()
                };
                std::fs::create_dir_all(&dir).map_err(|e| BuildError::io("staging", e))?;
                extract_tar(&entry.abs, &dir, self.store.unpack_limits())
                    .map_err(|e| err(format!("ADD {}: {e}", entry.rel.display())))?;
                continue;
            }
            let items = walk(root, entry, ign).map_err(|e| err(format!("{verb}: {e}")))?;
            let mut skipped_dirs: Vec<PathBuf> = Vec::new();
            for item in &items {
                if !options.exclude.is_empty() && item.rel != entry.rel {
                    let below = item.rel.strip_prefix(&entry.rel).unwrap_or(&item.rel);
                    if skipped_dirs.iter().any(|d| item.rel.starts_with(d))
                        || is_excluded(&item.rel)
                        || is_excluded(below)
                    {
                        if item.kind == EntryKind::Dir {
                            skipped_dirs.push(item.rel.clone());
                        }
                        continue;
                    }
                }
                // A `.` source's items are named from the context root.
                let sub = if entry.rel == Path::new(".") {
                    if item.rel == Path::new(".") {
                        Path::new("")
                    } else {
                        item.rel.as_path()
                    }
                } else {
                    item.rel.strip_prefix(&entry.rel).unwrap_or(Path::new(""))
                };
                let target = if sub.as_os_str().is_empty() {
                    base.clone()
                } else {
                    base.join(sub)
                };
                let is_dest_dir =
                    matches!(entry.kind, EntryKind::Dir) && sub.as_os_str().is_empty();
                if let Ok(meta) = std::fs::symlink_metadata(&item.abs)
                    && meta.is_file()
                    && meta.nlink() > 1
                {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        let _ = std::fs::remove_file(&target);
                        std::fs::hard_link(first, &target)
                            .map_err(|e| err(format!("{verb} {}: {e}", item.rel.display())))?;
                        continue;
                    }
                    links.insert((meta.dev(), meta.ino()), target.clone());
                }
                copy_item(
                    &item.abs,
                    &target,
                    owner,
                    mode.as_ref(),
                    keep_owners,
                    is_dest_dir,
                )
                .map_err(|e| err(format!("{verb} {}: {e}", item.rel.display())))?;
            }
        }
        // Heredoc files: 0644 (or `--chmod`), owned by `--chown` or root, as BuildKit makes
        // them.
        for (name, data) in inline {
            let target = if into_dir {
                staged.join(&dest_rel).join(name)
            } else {
                staged.join(&dest_rel)
            };
            let file_mode = mode.as_ref().map_or(0o644, |m| m.apply(0o644, false));
            write_inline(&target, data, owner, file_mode)
                .map_err(|e| err(format!("{verb} <<{name}: {e}")))?;
        }
        if into_dir {
            let d = staged.join(&dest_rel);
            std::fs::create_dir_all(&d).map_err(|e| BuildError::io("staging", e))?;
        }
        self.add_layer_from(state, &staged, &[]).await
    }
}

/// Creates `path`'s parent directories under `staged`: each with the metadata it has in the
/// image (`view`) when it exists there (a layer's directory entry replaces the one below),
/// else as root 0755, or owned by `owner` when the instruction names one.
pub(super) fn stage_parents(
    view: &MergedView,
    staged: &Path,
    path: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), BuildError> {
    let mut rel = PathBuf::new();
    let comps: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        rel.push(comp);
        let target = staged.join(&rel);
        std::fs::create_dir_all(&target).map_err(|e| BuildError::io("staging a directory", e))?;
        // Image content: looked up as the image sees it, never through a host symlink.
        match view.metadata(&rel) {
            Ok(meta) if meta.is_dir() => {
                let _ = std::fs::set_permissions(
                    &target,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                );
                let _ = std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid()));
                if let Ok(real) = view.real_path(&rel) {
                    copy_mtime(&real, &target);
                }
            }
            _ => {
                let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
                let (uid, gid) = owner.unwrap_or((0, 0));
                let _ = std::os::unix::fs::chown(&target, Some(uid), Some(gid));
            }
        }
    }
    Ok(())
}

fn copy_mtime(from: &Path, to: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(from) {
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        if let Ok(c) =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(to.as_os_str()))
        {
            // SAFETY: valid path and times array.
            unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
        }
    }
}

/// Copies one item (a file, a symlink, or a directory without its contents) to `dst`,
/// keeping modes and times. Owners become `owner` when given, else root (Docker's rule for
/// the context), while content from another stage or image keeps its owners. `--chmod`
/// applies to everything copied except the destination directory itself (buildah).
pub(super) fn copy_item(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<&ChmodSpec>,
    keep_owners: bool,
    is_dest_dir: bool,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let (uid, gid) = owner.unwrap_or(if keep_owners {
        (meta.uid(), meta.gid())
    } else {
        (0, 0)
    });
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(target, dst)?;
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        let m = match mode {
            Some(m) if !is_dest_dir => m.apply(meta.mode() & 0o7777, true),
            _ => meta.mode() & 0o7777,
        };
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m))?;
        std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
    } else {
        std::fs::copy(src, dst)?;
        std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
        std::fs::set_permissions(
            dst,
            std::fs::Permissions::from_mode(mode.map_or(meta.mode() & 0o7777, |m| {
                m.apply(meta.mode() & 0o7777, false)
            })),
        )?;
    }
    copy_mtime(src, dst);
    Ok(())
}

/// Writes a heredoc's file into the staged tree (which holds nothing but what this step
/// staged: no symlink of the image or the context is on the way).
fn write_inline(
    target: &Path,
    data: &[u8],
    owner: Option<(u32, u32)>,
    mode: u32,
) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        return Err(std::io::Error::other(
            "a directory of the same name is being copied here",
        ));
    }
    // A symlink staged by this same COPY (a context source of that name) is replaced, never
    // written through.
    if std::fs::symlink_metadata(target).is_ok() {
        std::fs::remove_file(target)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(target)?;
    file.write_all(data)?;
    drop(file);
    let (uid, gid) = owner.unwrap_or((0, 0));
    std::os::unix::fs::chown(target, Some(uid), Some(gid))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
}

/// Where `--parents` puts a source under the destination: its path from the context root,
/// or from the `/./` pivot in the pattern that matched it.
fn parents_path(entry: &crate::context::ContextEntry, sources: &[String]) -> PathBuf {
    let rel = entry.rel.strip_prefix(".").unwrap_or(&entry.rel);
    for pattern in sources {
        if let Some((before, _)) = pattern.split_once("/./") {
            let pivot = Path::new(before.trim_start_matches("./").trim_start_matches('/'));
            if let Ok(rest) = rel.strip_prefix(pivot) {
                return rest.to_path_buf();
            }
        }
    }
    rel.to_path_buf()
}

/// `--chmod`: an octal mode (`0755`) or symbolic clauses (`u+x`, `go=rX`, `a-w,u=rwx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ChmodSpec {
    Octal(u32),
    /// (who mask, op, permission bits, `X`).
    Symbolic(Vec<(u32, char, u32, bool)>),
}

impl ChmodSpec {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if !text.is_empty() && text.chars().all(|c| c.is_digit(8)) {
            return u32::from_str_radix(text, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(ChmodSpec::Octal)
                .ok_or_else(|| "not a file mode".to_string());
        }
        let bad = || "expected an octal mode or symbolic clauses like u+x,go=rX".to_string();
        let mut clauses = Vec::new();
        for clause in text.split(',') {
            let op_at = clause.find(['+', '-', '=']).ok_or_else(bad)?;
            let mut who = 0u32;
            for c in clause[..op_at].chars() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => return Err(bad()),
                };
            }
            if who == 0 {
                who = 0o7777;
            }
            // One op and its permissions at a time: `u+x-w` is two.
            let mut rest = &clause[op_at..];
            while let Some(op) = rest.chars().next() {
                let end = rest[1..]
                    .find(['+', '-', '='])
                    .map_or(rest.len(), |i| i + 1);
                let (mut bits, mut big_x) = (0u32, false);
                for c in rest[1..end].chars() {
                    bits |= match c {
                        'r' => 0o444,
                        'w' => 0o222,
                        'x' => 0o111,
                        'X' => {
                            big_x = true;
                            0
                        }
                        's' => 0o6000,
                        't' => 0o1000,
                        _ => return Err(bad()),
                    };
                }
                clauses.push((who, op, bits, big_x));
                rest = &rest[end..];
            }
        }
        if clauses.is_empty() {
            return Err(bad());
        }
        Ok(ChmodSpec::Symbolic(clauses))
    }

    /// The new mode of an item whose mode is `old`.
    pub(super) fn apply(&self, old: u32, is_dir: bool) -> u32 {
        match self {
            ChmodSpec::Octal(m) => *m,
            ChmodSpec::Symbolic(clauses) => {
                let mut mode = old & 0o7777;
                for &(who, op, bits, big_x) in clauses {
                    let mut bits = bits;
                    // `X`: execute for directories, and for files someone may execute.
                    if big_x && (is_dir || mode & 0o111 != 0) {
                        bits |= 0o111;
                    }
                    let bits = bits & who;
                    mode = match op {
                        '+' => mode | bits,
                        '-' => mode & !bits,
                        _ => (mode & !who) | bits,
                    };
                }
                mode
            }
        }
    }
}

fn looks_like_tar(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (n >= 262 && &head[257..262] == b"ustar")
}

/// ADD of a local archive: its contents, extracted into `dir` by the store's hardened
/// unpacker, under the rules and the budget an image layer gets (no path out of `dir`, no
/// device nodes, host-only xattrs dropped, sparse files sparse): a build context is as
/// untrusted as an image.
fn extract_tar(
    path: &Path,
    dir: &Path,
    limits: hutch_store::UnpackLimits,
) -> Result<(), hutch_store::StoreError> {
    let what = format!("ADD archive {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| hutch_store::StoreError::Io {
        context: format!("opening {what}"),
        source: e,
    })?;
    hutch_store::unpack_archive(file, dir, &what, limits).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::ChmodSpec;

    #[test]
    fn chmod_modes_octal_and_symbolic() {
        let apply =
            |spec: &str, old: u32, dir: bool| ChmodSpec::parse(spec).unwrap().apply(old, dir);
        assert_eq!(apply("0640", 0o777, false), 0o640);
        assert_eq!(apply("755", 0o600, true), 0o755);
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("go-w", 0o666, false), 0o644);
        assert_eq!(apply("u=rwx,go=rx", 0o600, false), 0o755);
        assert_eq!(apply("a=r", 0o777, false), 0o444);
        assert_eq!(apply("go=rX", 0o700, true), 0o755);
        assert_eq!(apply("go=rX", 0o600, false), 0o644);
        assert_eq!(apply("go=rX", 0o700, false), 0o755);
        assert_eq!(apply("u+s", 0o755, false), 0o4755);
        assert_eq!(apply("+t", 0o777, true), 0o1777);
        assert_eq!(apply("u+x-w", 0o644, false), 0o544);
        for bad in ["", "8", "u+q", "z+x", "u", "07777777"] {
            assert!(ChmodSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
