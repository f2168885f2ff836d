//! Reading `COPY`/`ADD` sources out of a build context without ever leaving it.
//!
//! Source patterns are cleaned lexically first (as Docker does), with absolute paths taken
//! relative to the context root; a `..` that climbs above the root is refused rather than
//! clamped. Symlinks on a source's path, and a source that is itself a symlink, are followed
//! as Docker follows them, but only while they stay inside the context: one that leads out is
//! an error, never a read of the host. Symlinks met while walking a source directory are
//! copied as symlinks and never followed. Paths excluded by `.dockerignore` are invisible,
//! exactly as if they had not been sent to the builder.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::glob::Glob;
use crate::ignore::DockerIgnore;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// The path as the source names it, relative to the context (`.` for the root). Its last
    /// component is the name Docker gives the copy inside a destination directory, and the
    /// entries [`walk`] returns extend it, so `rel.strip_prefix(&source.rel)` places a
    /// descendant under the destination.
    pub rel: PathBuf,
    /// Where the entry really is. For a source from [`resolve_sources`]: inside the context,
    /// with every symlink on the way (its own name included) resolved. For a walked
    /// descendant: its own path, symlinks not followed.
    pub abs: PathBuf,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// Every variant names the `COPY`/`ADD` source it is about. (Display and Error are written by
/// hand: thiserror would take a field called `source` for the underlying error.)
#[derive(Debug)]
pub enum ContextError {
    Escapes {
        source: String,
    },
    NotFound {
        source: String,
    },
    Io {
        source: String,
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An empty source (an unset variable, typically) would otherwise print as nothing.
        let shown = |source: &str| match source {
            "" => "\"\"".to_string(),
            _ => source.to_string(),
        };
        match self {
            ContextError::Escapes { source } => {
                write!(f, "{}: outside the build context", shown(source))
            }
            ContextError::NotFound { source } => write!(
                f,
                "{}: not found in the build context (missing, or excluded by .dockerignore)",
                shown(source)
            ),
            ContextError::Io {
                source,
                path,
                error,
            } => {
                write!(
                    f,
                    "reading {} for source {source:?}: {error}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for ContextError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ContextError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Linux's limit on symlinks followed while resolving one path.
const MAX_SYMLINKS: usize = 40;

/// Resolves COPY/ADD source patterns (globs `*`, `?`, `[..]` per path component; `.` is the
/// whole context) against `context`. Each pattern must match something visible; the matches of
/// one pattern come back sorted by path, patterns in the order given. A source that is a
/// symlink is followed (Docker copies its target's content under the link's name); it must
/// lead somewhere inside the context.
pub fn resolve_sources(
    context: &Path,
    ignore: &DockerIgnore,
    patterns: &[String],
) -> Result<Vec<ContextEntry>, ContextError> {
    let mut out = Vec::new();
    for pattern in patterns {
        let found = Resolver {
            context,
            ignore,
            source: pattern,
        }
        .resolve()?;
        if found.is_empty() {
            return Err(ContextError::NotFound {
                source: pattern.clone(),
            });
        }
        out.extend(found);
    }
    Ok(out)
}

/// Everything `entry` (from [`resolve_sources`]) stands for, in copy order: the entry itself,
/// then (for a directory) every visible descendant, parents before children, siblings sorted
/// by name. Symlinks below a source are never followed: they are returned as symlinks.
/// Sockets, fifos and devices are skipped. An excluded directory appears only when something
/// below it is re-included by a `!` pattern.
pub fn walk(
    context: &Path,
    entry: &ContextEntry,
    ignore: &DockerIgnore,
) -> Result<Vec<ContextEntry>, ContextError> {
    let source = entry.rel.to_string_lossy();
    let Ok(real) = entry.abs.strip_prefix(context) else {
        return Err(ContextError::Escapes {
            source: source.into_owned(),
        });
    };
    let mut out = vec![entry.clone()];
    if entry.kind == EntryKind::Dir {
        let (named, real) = (&entry.rel, real.to_path_buf());
        walk_dir(&entry.abs, named, &real, ignore, &source, &mut out)?;
    }
    Ok(out)
}

/// A sha256 (hex) over the relative path, type, permission bits and content (or link target)
/// of everything the entries would copy, in copy order: the build cache key of a COPY.
/// Ownership and timestamps are left out, as Docker leaves them out of its context checksums.
pub fn digest_sources(
    entries: &[ContextEntry],
    ignore: &DockerIgnore,
    context: &Path,
) -> Result<String, ContextError> {
    let mut hasher = Sha256::new();
    for entry in entries {
        let source = entry.rel.to_string_lossy();
        for item in walk(context, entry, ignore)? {
            let io_err = |error| io_error(&source, &item.abs, error);
            let meta = fs::symlink_metadata(&item.abs).map_err(io_err)?;
            let tag: &[u8] = match item.kind {
                EntryKind::File => b"file",
                EntryKind::Dir => b"dir",
                EntryKind::Symlink => b"symlink",
            };
            field(&mut hasher, tag);
            field(&mut hasher, item.rel.as_os_str().as_bytes());
            field(&mut hasher, &(meta.mode() & 0o7777).to_le_bytes());
            match item.kind {
                EntryKind::File => {
                    let mut file = fs::File::open(&item.abs).map_err(io_err)?;
                    hasher.update(meta.len().to_le_bytes());
                    io::copy(&mut file, &mut hasher).map_err(io_err)?;
                }
                EntryKind::Symlink => {
                    let target = fs::read_link(&item.abs).map_err(io_err)?;
                    field(&mut hasher, target.as_os_str().as_bytes());
                }
                EntryKind::Dir => {}
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Length-prefixed, so no two different sequences of fields hash the same bytes.
fn field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

fn io_error(source: &str, path: &Path, error: io::Error) -> ContextError {
    ContextError::Io {
        source: source.to_string(),
        path: path.to_path_buf(),
        error,
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn kind_of(meta: &fs::Metadata) -> Option<EntryKind> {
    let t = meta.file_type();
    if t.is_symlink() {
        Some(EntryKind::Symlink)
    } else if t.is_dir() {
        Some(EntryKind::Dir)
    } else if t.is_file() {
        Some(EntryKind::File)
    } else {
        None
    }
}

/// `rel/name`, where the root (`.` or empty) contributes nothing.
fn child_rel(rel: &Path, name: &OsString) -> PathBuf {
    if rel.as_os_str().is_empty() || rel == Path::new(".") {
        PathBuf::from(name)
    } else {
        rel.join(name)
    }
}

fn sorted_children(dir: &Path, source: &str) -> Result<Vec<OsString>, ContextError> {
    let read = fs::read_dir(dir).map_err(|e| io_error(source, dir, e))?;
    let mut names = read
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_error(source, dir, e))?;
    names.sort();
    Ok(names)
}

/// Appends the visible descendants of the directory at `abs`, named under `named`;
/// `.dockerignore` is checked against `real`, the directory's true place in the context.
fn walk_dir(
    abs: &Path,
    named: &Path,
    real: &Path,
    ignore: &DockerIgnore,
    source: &str,
    out: &mut Vec<ContextEntry>,
) -> Result<(), ContextError> {
    for name in sorted_children(abs, source)? {
        let child_abs = abs.join(&name);
        let (child_named, child_real) = (child_rel(named, &name), child_rel(real, &name));
        let meta = fs::symlink_metadata(&child_abs).map_err(|e| io_error(source, &child_abs, e))?;
        let Some(kind) = kind_of(&meta) else { continue };
        let real_str = child_real.to_string_lossy();
        let entry = ContextEntry {
            rel: child_named.clone(),
            abs: child_abs.clone(),
            kind,
        };
        if !ignore.is_excluded(&real_str) {
            out.push(entry);
            if kind == EntryKind::Dir {
                walk_dir(&child_abs, &child_named, &child_real, ignore, source, out)?;
            }
        } else if kind == EntryKind::Dir && ignore.may_include_below(&real_str) {
            let mut below = Vec::new();
            walk_dir(
                &child_abs,
                &child_named,
                &child_real,
                ignore,
                source,
                &mut below,
            )?;
            if !below.is_empty() {
                out.push(entry);
                out.extend(below);
            }
        }
    }
    Ok(())
}

struct Resolver<'a> {
    context: &'a Path,
    ignore: &'a DockerIgnore,
    source: &'a str,
}

impl Resolver<'_> {
    fn escapes(&self) -> ContextError {
        ContextError::Escapes {
            source: self.source.to_string(),
        }
    }

    fn io(&self, path: &Path, error: io::Error) -> ContextError {
        io_error(self.source, path, error)
    }

    fn resolve(&self) -> Result<Vec<ContextEntry>, ContextError> {
        // An empty source (typically `$UNSET`) is not the whole context.
        if self.source.is_empty() {
            return Ok(Vec::new());
        }
        let components = self.lexical_components()?;
        if components.is_empty() {
            let root = ContextEntry {
                rel: PathBuf::from("."),
                abs: self.context.to_path_buf(),
                kind: EntryKind::Dir,
            };
            return Ok(vec![root]);
        }
        // Directories reached so far: (path as named by the pattern, real path).
        let mut dirs = vec![(PathBuf::new(), PathBuf::new())];
        let mut found = Vec::new();
        for (i, component) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            let glob = if component.contains(['*', '?', '[', '\\']) {
                let bad = || io::Error::new(io::ErrorKind::InvalidInput, "syntax error in pattern");
                let glob = Glob::component(component).ok_or_else(|| self.io(self.context, bad()));
                Some(glob?)
            } else {
                None
            };
            let mut next = Vec::new();
            for (named_dir, real_dir) in &dirs {
                let names = match &glob {
                    Some(glob) => sorted_children(&self.context.join(real_dir), self.source)?
                        .into_iter()
                        .filter(|n| glob.matches(&n.to_string_lossy()))
                        .collect(),
                    None => vec![OsString::from(component)],
                };
                for name in names {
                    let real = match self.follow(&child_rel(real_dir, &name)) {
                        // A wildcard merely passing over a link that leads outside is not an
                        // attempt to read through it; a named path or a final match is.
                        Err(ContextError::Escapes { .. }) if glob.is_some() && !last => continue,
                        Err(e) => return Err(e),
                        Ok(None) => continue,
                        Ok(Some(real)) => real,
                    };
                    let abs = self.context.join(&real);
                    let meta = fs::symlink_metadata(&abs).map_err(|e| self.io(&abs, e))?;
                    let Some(kind) = kind_of(&meta) else { continue };
                    let named = child_rel(named_dir, &name);
                    if last {
                        if self.visible(&real, kind)? {
                            found.push(ContextEntry {
                                rel: named,
                                abs,
                                kind,
                            });
                        }
                    } else if kind == EntryKind::Dir && self.walkable(&real) {
                        next.push((named, real));
                    }
                }
            }
            dirs = next;
        }
        found.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(found)
    }

    /// The pattern's components after `path.Clean`, rooted at the context; `..` above the
    /// root is an escape, not a no-op.
    fn lexical_components(&self) -> Result<Vec<&str>, ContextError> {
        let mut parts = Vec::new();
        for part in self.source.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop().ok_or_else(|| self.escapes())?;
                }
                _ => parts.push(part),
            }
        }
        Ok(parts)
    }

    /// Whether the real path `real` is part of the context as Docker would send it.
    fn visible(&self, real: &Path, kind: EntryKind) -> Result<bool, ContextError> {
        let rel = real.to_string_lossy();
        if !self.ignore.is_excluded(&rel) {
            return Ok(true);
        }
        if kind != EntryKind::Dir || !self.ignore.may_include_below(&rel) {
            return Ok(false);
        }
        let mut below = Vec::new();
        let abs = self.context.join(real);
        walk_dir(&abs, real, real, self.ignore, self.source, &mut below)?;
        Ok(!below.is_empty())
    }

    /// Whether the directory `real` is sent at all, or at least walked for re-included paths.
    fn walkable(&self, real: &Path) -> bool {
        let rel = real.to_string_lossy();
        !self.ignore.is_excluded(&rel) || self.ignore.may_include_below(&rel)
    }

    /// Resolves every symlink in `rel` (relative targets against the link's directory,
    /// absolute ones only if they point into the context) to a real path inside the context.
    /// `None` if something is missing, or a link on the way is itself excluded (and so was
    /// never sent); `Escapes` if a link leads outside.
    fn follow(&self, rel: &Path) -> Result<Option<PathBuf>, ContextError> {
        let mut queue: VecDeque<OsString> = rel
            .components()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut real = PathBuf::new();
        let mut links = 0;
        while let Some(part) = queue.pop_front() {
            if part == ".." {
                if !real.pop() {
                    return Err(self.escapes());
                }
                continue;
            }
            if part.is_empty() || part == "." {
                continue;
            }
            real.push(&part);
            let abs = self.context.join(&real);
            let meta = match fs::symlink_metadata(&abs) {
                Ok(meta) => meta,
                Err(e) if is_missing(&e) => return Ok(None),
                Err(e) => return Err(self.io(&abs, e)),
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            if self.ignore.is_excluded(&real.to_string_lossy()) {
                return Ok(None);
            }
            links += 1;
            if links > MAX_SYMLINKS {
                let error = io::Error::other("too many levels of symbolic links");
                return Err(self.io(&abs, error));
            }
            let target = fs::read_link(&abs).map_err(|e| self.io(&abs, e))?;
            real.pop();
            let target = if target.is_absolute() {
                real = PathBuf::new();
                self.inside_context(&target).ok_or_else(|| self.escapes())?
            } else {
                target
            };
            for part in target.components().rev() {
                if !matches!(part, Component::RootDir | Component::CurDir) {
                    queue.push_front(part.as_os_str().to_os_string());
                }
            }
        }
        Ok(Some(real))
    }

    /// An absolute link target as a path relative to the context, if it points into it.
    fn inside_context(&self, target: &Path) -> Option<PathBuf> {
        if let Ok(rest) = target.strip_prefix(self.context) {
            return Some(rest.to_path_buf());
        }
        let canonical = self.context.canonicalize().ok()?;
        target.strip_prefix(canonical).ok().map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests;
