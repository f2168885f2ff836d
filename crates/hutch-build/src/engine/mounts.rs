//! `RUN --mount`: what each mount type becomes in the step's sandbox.
//!
//! - `bind`: a copy of the source (from the context, honouring `.dockerignore`, or from a
//!   stage or an image), read-only unless `rw`, whose writes are then discarded with the copy.
//!   The host never mounts a context or image path itself, so no symlink there is ever
//!   followed on the host, and nothing the step does reaches the context.
//! - `cache`: a directory of the store (`build-cache/`) kept across builds, keyed by the
//!   build's scope (the CLI's store, a server namespace) and the mount's `id`; `sharing`
//!   becomes a lock; bounded by [`cache_limit`] and pruned oldest first after each build.
//! - `tmpfs`: a tmpfs of the sandbox's own.
//! - `secret`: the secret's bytes in a private file of the store's `tmp/`, bound read-only
//!   (or given as an environment variable with `env=`); never in a layer, the step cache key
//!   or the build's output.
//!
//! Every mount's target is left out of the step's layer, and so are the directories the
//! sandbox had to make for it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hutch_runtime::{ExtraMount, ExtraMountKind};
use hutch_store::ScratchDir;
use sha2::{Digest as _, Sha256};

use super::Engine;
use super::copy::copy_item;
use super::state::State;
use crate::context::{EntryKind, digest_sources, resolve_sources, walk};
use crate::dockerfile::{MountType, RunMount, Sharing};
use crate::ignore::DockerIgnore;

/// The largest secret a build takes (BuildKit's limit).
pub const MAX_SECRET_BYTES: usize = 500 << 10;

/// The store's directory of cache mounts.
const CACHE_DIR: &str = "build-cache";

/// The most bytes the cache mounts of a store keep (`HUTCH_BUILD_CACHE_MB`, default 10 GiB).
pub fn cache_limit() -> u64 {
    std::env::var("HUTCH_BUILD_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(10 * 1024)
        << 20
}

/// A mount with its values expanded and its `from` resolved.
pub(super) struct Resolved<'a> {
    pub mount: &'a RunMount,
    pub target: String,
    pub source: Option<String>,
    pub id: Option<String>,
    /// The stage or image `from=` names.
    pub from: Option<State>,
}

/// What a step's mounts became: the sandbox's mounts and extra environment, the text they
/// add to the step's cache key, and what must live as long as the step.
#[derive(Default)]
pub(super) struct Prepared {
    pub mounts: Vec<ExtraMount>,
    pub env: BTreeMap<String, String>,
    /// Absolute targets (left out of the layer).
    pub targets: Vec<String>,
    _scratch: Vec<ScratchDir>,
    _locks: Vec<CacheInUse>,
    pub used_cache: bool,
}

/// A cache mount held for a step: its lock, and its `used` stamp touched again when the step
/// lets go, so a size recorded while it was in use counts as stale ([`prune_caches`]).
struct CacheInUse {
    _lock: File,
    dir: PathBuf,
}

impl Drop for CacheInUse {
    fn drop(&mut self) {
        // Before the lock goes (fields drop after this).
        touch(&self.dir.join("used"));
    }
}

/// What a step's mounts add to its cache key: a bind mount's content (its digest over the
/// context, or the key of the stage it comes from), a cache's id (never its content), a
/// secret's id and whether it was given (never its value).
pub(super) fn mounts_key(
    mounts: &[Resolved<'_>],
    context: &Path,
    ignore: &DockerIgnore,
    secrets: &BTreeMap<String, Vec<u8>>,
) -> Result<String, String> {
    let mut key = String::new();
    for m in mounts {
        let target = &m.target;
        match m.mount.kind {
            MountType::Tmpfs => key.push_str(&format!(" tmpfs:{target}:{:?}", m.mount.size)),
            MountType::Bind => {
                let source = m.source.clone().unwrap_or_else(|| ".".into());
                let digest = match &m.from {
                    Some(state) => format!("{}:{source}", state.key),
                    None => {
                        let entries =
                            resolve_sources(context, ignore, std::slice::from_ref(&source))
                                .map_err(|e| e.to_string())?;
                        digest_sources(&entries, ignore, context).map_err(|e| e.to_string())?
                    }
                };
                let read_only = m.mount.read_only.unwrap_or(true);
                key.push_str(&format!(" bind:{target}:{digest}:ro={read_only}"));
            }
            MountType::Cache => {
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                key.push_str(&format!(" cache:{target}:{id}"));
            }
            MountType::Secret => {
                let id = m.id.clone().unwrap_or_default();
                let given = secrets.contains_key(&id);
                key.push_str(&format!(" secret:{id}:{target}:{:?}:{given}", m.mount.env));
            }
        }
    }
    Ok(key)
}

impl Engine<'_> {
    pub(super) async fn prepare_mounts(
        &self,
        mounts: &[Resolved<'_>],
        context: &Path,
        ignore: &DockerIgnore,
        scope: &str,
        secrets: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Prepared, String> {
        let mut out = Prepared::default();
        for m in mounts {
            let target = m.target.clone();
            match m.mount.kind {
                MountType::Tmpfs => {
                    out.mounts.push(ExtraMount {
                        destination: target.clone(),
                        kind: ExtraMountKind::Tmpfs { size: m.mount.size },
                    });
                }
                MountType::Bind => {
                    let scratch = self
                        .store
                        .scratch_dir("build-mount")
                        .map_err(|e| e.to_string())?;
                    let source = m.source.clone().unwrap_or_else(|| ".".into());
                    let staged = match &m.from {
                        Some(state) => {
                            let view = self.view(state).map_err(|e| e.to_string())?;
                            let none = DockerIgnore::parse("");
                            stage_source(view.root(), &none, &source, scratch.path(), true)?
                        }
                        None => stage_source(context, ignore, &source, scratch.path(), false)?,
                    };
                    let read_only = m.mount.read_only.unwrap_or(true);
                    out.mounts.push(ExtraMount {
                        destination: target.clone(),
                        kind: ExtraMountKind::Bind {
                            source: staged,
                            read_only,
                        },
                    });
                    out._scratch.push(scratch);
                }
                MountType::Cache => {
                    let id = m.id.clone().unwrap_or_else(|| target.clone());
                    let dir = cache_dir(self.store.root(), scope, &id);
                    let data = dir.join("data");
                    let fresh = !data.is_dir();
                    std::fs::create_dir_all(&dir).map_err(|e| format!("cache {id}: {e}"))?;
                    let lock = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(dir.join("lock"))
                        .map_err(|e| format!("cache {id}: {e}"))?;
                    let source_dir = match m.mount.sharing {
                        Sharing::Shared => {
                            flock(&lock, libc::LOCK_SH).await?;
                            data.clone()
                        }
                        Sharing::Locked => {
                            flock(&lock, libc::LOCK_EX).await?;
                            data.clone()
                        }
                        Sharing::Private => {
                            if try_flock(&lock, libc::LOCK_EX) {
                                data.clone()
                            } else {
                                // In use: this step gets a cache of its own, dropped after it.
                                let scratch = self
                                    .store
                                    .scratch_dir("build-cache-private")
                                    .map_err(|e| e.to_string())?;
                                let path = scratch.path().join("data");
                                out._scratch.push(scratch);
                                make_cache_root(&path, m.mount, &self.view_root(m)?)?;
                                path
                            }
                        }
                    };
                    if fresh && source_dir == data {
                        // Made whole in a scratch directory, then renamed: a build killed
                        // here leaves no half-seeded cache.
                        let scratch = self
                            .store
                            .scratch_dir("build-cache-seed")
                            .map_err(|e| e.to_string())?;
                        let seed = scratch.path().join("data");
                        make_cache_root(&seed, m.mount, &self.view_root(m)?)?;
                        if !data.is_dir() {
                            std::fs::rename(&seed, &data)
                                .map_err(|e| format!("cache {id}: {e}"))?;
                        }
                    }
                    touch(&dir.join("used"));
                    out._locks.push(CacheInUse {
                        _lock: lock,
                        dir: dir.clone(),
                    });
                    out.used_cache = true;
                    out.mounts.push(ExtraMount {
                        destination: target.clone(),
                        kind: ExtraMountKind::Bind {
                            source: source_dir,
                            read_only: m.mount.read_only.unwrap_or(false),
                        },
                    });
                }
                MountType::Secret => {
                    let id = m.id.clone().unwrap_or_default();
                    let Some(value) = secrets.get(&id) else {
                        if m.mount.required {
                            return Err(format!(
                                "the secret {id:?} is required: give it with --secret id={id},src=FILE or env=VAR"
                            ));
                        }
                        continue;
                    };
                    if let Some(var) = &m.mount.env {
                        let text = String::from_utf8(value.clone())
                            .map_err(|_| format!("the secret {id:?} is not text: it cannot be an environment variable"))?;
                        out.env.insert(var.clone(), text);
                        if m.mount.target.is_none() {
                            continue;
                        }
                    }
                    let scratch = self
                        .store
                        .scratch_dir("build-secret")
                        .map_err(|e| e.to_string())?;
                    std::fs::set_permissions(
                        scratch.path(),
                        std::fs::Permissions::from_mode(0o700),
                    )
                    .map_err(|e| e.to_string())?;
                    let file = scratch.path().join("secret");
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o400)
                        .open(&file)
                        .map_err(|e| e.to_string())?;
                    f.write_all(value).map_err(|e| e.to_string())?;
                    drop(f);
                    std::fs::set_permissions(
                        &file,
                        std::fs::Permissions::from_mode(m.mount.mode.unwrap_or(0o400)),
                    )
                    .map_err(|e| e.to_string())?;
                    std::os::unix::fs::chown(
                        &file,
                        Some(m.mount.uid.unwrap_or(0)),
                        Some(m.mount.gid.unwrap_or(0)),
                    )
                    .map_err(|e| e.to_string())?;
                    out.mounts.push(ExtraMount {
                        destination: target.clone(),
                        kind: ExtraMountKind::Bind {
                            source: file,
                            read_only: true,
                        },
                    });
                    out._scratch.push(scratch);
                }
            }
            out.targets.push(target);
        }
        Ok(out)
    }

    /// The root of a cache mount's `from=` (the stage or image to seed it from).
    fn view_root(
        &self,
        m: &Resolved<'_>,
    ) -> Result<Option<(crate::merged::MergedView, String)>, String> {
        match &m.from {
            Some(state) => Ok(Some((
                self.view(state).map_err(|e| e.to_string())?,
                m.source.clone().unwrap_or_else(|| ".".into()),
            ))),
            None => Ok(None),
        }
    }
}

/// Where `scope`'s cache `id` lives in the store.
fn cache_dir(store_root: &Path, scope: &str, id: &str) -> PathBuf {
    let mut hash = Sha256::new();
    hash.update(scope.as_bytes());
    hash.update([0]);
    hash.update(id.as_bytes());
    store_root
        .join(CACHE_DIR)
        .join(&hex::encode(hash.finalize())[..32])
}

/// A new cache's root: `mode` (0755), `uid`:`gid` (0:0), seeded from `from`'s source.
fn make_cache_root(
    path: &Path,
    mount: &RunMount,
    from: &Option<(crate::merged::MergedView, String)>,
) -> Result<(), String> {
    match from {
        Some((view, source)) => {
            let none = DockerIgnore::parse("");
            let staged = stage_source(view.root(), &none, source, path, true)?;
            if staged != path {
                return Err(format!("a cache's from={source} must be a directory"));
            }
        }
        None => std::fs::create_dir_all(path).map_err(|e| e.to_string())?,
    }
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mount.mode.unwrap_or(0o755)),
    )
    .map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(
        path,
        Some(mount.uid.unwrap_or(0)),
        Some(mount.gid.unwrap_or(0)),
    )
    .map_err(|e| e.to_string())
}

/// Copies `source` (a file or a directory, resolved in `root` without leaving it) to `into`:
/// a directory's contents become `into` itself, a file becomes `into/<name>`. Returns what to
/// mount. Owners are kept from a stage or an image, root's otherwise (the context).
fn stage_source(
    root: &Path,
    ignore: &DockerIgnore,
    source: &str,
    into: &Path,
    keep_owners: bool,
) -> Result<PathBuf, String> {
    let entries =
        resolve_sources(root, ignore, &[source.to_string()]).map_err(|e| e.to_string())?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "source {source:?} names {} paths: a mount takes one",
            entries.len()
        ));
    };
    if entry.kind != EntryKind::Dir {
        std::fs::create_dir_all(into).map_err(|e| e.to_string())?;
        let name = entry
            .rel
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| "file".into());
        let file = into.join(name);
        copy_item(&entry.abs, &file, None, None, keep_owners, false).map_err(|e| e.to_string())?;
        return Ok(file);
    }
    for item in walk(root, entry, ignore).map_err(|e| e.to_string())? {
        let sub = if entry.rel == Path::new(".") {
            item.rel.clone()
        } else {
            item.rel
                .strip_prefix(&entry.rel)
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        let target = if sub.as_os_str().is_empty() || sub == Path::new(".") {
            into.to_path_buf()
        } else {
            into.join(sub)
        };
        copy_item(&item.abs, &target, None, None, keep_owners, false).map_err(|e| e.to_string())?;
    }
    Ok(into.to_path_buf())
}

async fn flock(file: &File, how: i32) -> Result<(), String> {
    let file = file.try_clone().map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: flock on a descriptor this closure owns.
        (unsafe { libc::flock(file.as_raw_fd(), how) } == 0)
            .then_some(())
            .ok_or_else(|| std::io::Error::last_os_error().to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn try_flock(file: &File, how: i32) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor we hold.
    unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) == 0 }
}

fn touch(path: &Path) {
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// The bytes below `path`, symlinks not followed.
fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
            }
        }
    }
    total
}

/// A cache's size: the one recorded in its `size` file when that was written after the cache
/// was last used, else measured (a walk of its tree) and recorded. So a prune after a step
/// walks only the caches used since the last one, not every cache of the store.
fn cache_size(dir: &Path, used: SystemTime) -> u64 {
    let record = dir.join("size");
    let recorded = std::fs::symlink_metadata(&record)
        .ok()
        .filter(|m| m.is_file() && m.modified().is_ok_and(|t| t > used))
        .and_then(|_| std::fs::read_to_string(&record).ok())
        .and_then(|text| text.trim().parse().ok());
    if let Some(size) = recorded {
        return size;
    }
    let size = tree_size(dir);
    // Written whole and renamed: a reader never sees half a number.
    let tmp = dir.join("size.new");
    if std::fs::write(&tmp, size.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, &record);
    }
    size
}

/// Drops cache mounts, least recently used first, until the store's caches hold at most
/// `limit` bytes (`0`: all of them); caches in use (locked) are kept. Returns (removed,
/// bytes freed). What a killed prune left half-removed (`*.removing`) goes too.
pub fn prune_caches(store_root: &Path, limit: u64) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(store_root.join(CACHE_DIR)) else {
        return (0, 0);
    };
    let mut caches: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "removing") {
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        let used = std::fs::symlink_metadata(path.join("used"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        caches.push((used, cache_size(&path, used), path));
    }
    let mut total: u64 = caches.iter().map(|c| c.1).sum();
    caches.sort();
    let (mut removed, mut freed) = (0, 0);
    for (_, size, dir) in caches {
        if total <= limit && limit > 0 {
            break;
        }
        let Ok(lock) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join("lock"))
        else {
            continue;
        };
        if !try_flock(&lock, libc::LOCK_EX) {
            continue;
        }
        // Renamed away first, so no build finds a half-removed cache.
        let doomed = dir.with_extension("removing");
        if std::fs::rename(&dir, &doomed).is_ok() && std::fs::remove_dir_all(&doomed).is_ok() {
            removed += 1;
            freed += size;
            total = total.saturating_sub(size);
        }
    }
    (removed, freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of `bytes` under `root`, last used `age` seconds ago.
    fn cache(root: &Path, scope: &str, id: &str, bytes: usize, age: u64) -> PathBuf {
        let dir = cache_dir(root, scope, id);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/blob"), vec![7u8; bytes]).unwrap();
        std::fs::write(dir.join("lock"), "").unwrap();
        let used = std::fs::File::create(dir.join("used")).unwrap();
        used.set_modified(SystemTime::now() - std::time::Duration::from_secs(age))
            .unwrap();
        dir
    }

    #[test]
    fn caches_are_scoped_and_pruned_oldest_first_within_the_bound() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // The same id in two scopes is two caches.
        assert_ne!(
            cache_dir(r, "namespace:a", "pip"),
            cache_dir(r, "namespace:b", "pip")
        );
        let old = cache(r, "local", "old", 1 << 20, 300);
        let mid = cache(r, "local", "mid", 1 << 20, 200);
        let new = cache(r, "local", "new", 1 << 20, 100);
        // A cache in use (locked) is kept even when it is the oldest.
        let busy = cache(r, "local", "busy", 1 << 20, 400);
        let lock = std::fs::File::open(busy.join("lock")).unwrap();
        assert!(try_flock(&lock, libc::LOCK_SH));
        // Room for about two of the four: the oldest free ones go.
        let (removed, freed) = prune_caches(r, (2 << 20) + (64 << 10));
        assert_eq!(removed, 2, "removed {removed}");
        assert!(freed >= 2 << 20, "freed {freed}");
        assert!(!old.exists() && !mid.exists());
        assert!(new.exists() && busy.exists());
        // 0: everything not in use.
        assert_eq!(prune_caches(r, 0).0, 1);
        assert!(!new.exists() && busy.exists());
        drop(lock);
        assert_eq!(prune_caches(r, 0).0, 1);
        assert!(!busy.exists());
    }

    #[test]
    fn a_prune_measures_only_caches_used_since_their_size_was_recorded() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let dir = cache(r, "local", "pip", 1 << 20, 100);
        // A prune that removes nothing records the size.
        assert_eq!(prune_caches(r, 64 << 20), (0, 0));
        assert!(dir.join("size").is_file());
        // Grown behind the record's back, unused since: the record stands (no walk), so
        // the cache is under a 2 MiB bound.
        std::fs::write(dir.join("data/more"), vec![1u8; 3 << 20]).unwrap();
        assert_eq!(prune_caches(r, 2 << 20), (0, 0));
        // Used after the record: measured again, over the bound, dropped.
        let used = std::fs::File::options()
            .write(true)
            .open(dir.join("used"))
            .unwrap();
        used.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        let (removed, freed) = prune_caches(r, 2 << 20);
        assert_eq!(removed, 1);
        assert!(freed >= 4 << 20, "freed {freed}");
        // What a killed prune left half-removed goes with the next prune.
        let leftover = r.join(CACHE_DIR).join("0123.removing");
        std::fs::create_dir_all(leftover.join("data")).unwrap();
        std::fs::write(leftover.join("data/blob"), b"x").unwrap();
        prune_caches(r, 64 << 20);
        assert!(!leftover.exists());
    }
}
