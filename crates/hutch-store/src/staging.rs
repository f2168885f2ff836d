//! The store's `tmp/` staging area and its `store.lock`.
//!
//! Imports build everything (blobs, unpacked layers) in a private `tmp/import-*` directory that
//! holds its own flock for as long as the import runs, so a later `Store::open` can tell an
//! abandoned directory (lock free) from a live one (lock held). [`ScratchDir`]s, the working
//! directories callers outside the store keep in `tmp/` (build contexts, archives being
//! assembled), are staging directories too (`tmp/scratch-*`). Small files written
//! atomically (records, pins) and directories being deleted by gc are only created while the
//! store lock is held, so whoever holds that lock may remove them outright.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, StoreError};
use crate::syscalls;

const STAGING_LOCK: &str = ".lock";
const STAGING_LOCK_PENDING: &str = ".lock.pending";
/// Name prefixes of staging directories: one without its lock file yet is still being set
/// up, not abandoned.
const IMPORT_PREFIX: &str = "import";
const SCRATCH_PREFIX: &str = "scratch";
/// Entries of `tmp/` whose owner cannot be determined are left alone for this long.
const LEFTOVER_AGE: Duration = Duration::from_secs(60 * 60);

/// An exclusive `flock` on `store.lock`, released on drop.
pub(crate) struct StoreLock {
    _file: File,
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))
}

impl StoreLock {
    /// Blocks until the lock is free. Every call opens its own file description, so threads
    /// of one process exclude each other just like separate processes do.
    pub(crate) fn acquire(path: &Path) -> Result<StoreLock, StoreError> {
        let file = open_lock_file(path)?;
        syscalls::flock_exclusive(&file, true).ctx(|| format!("locking {}", path.display()))?;
        Ok(StoreLock { _file: file })
    }

    pub(crate) fn try_acquire(path: &Path) -> Result<Option<StoreLock>, StoreError> {
        let file = open_lock_file(path)?;
        let locked = syscalls::flock_exclusive(&file, false)
            .ctx(|| format!("locking {}", path.display()))?;
        Ok(locked.then_some(StoreLock { _file: file }))
    }
}

/// A name no other process or thread will pick: pid, time and a process-wide counter.
pub(crate) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// A private directory under `tmp/`, removed with everything in it when dropped, whether the
/// import succeeded, failed or panicked.
pub(crate) struct Staging {
    dir: PathBuf,
    _lock: File,
}

impl Staging {
    pub(crate) fn new(tmp: &Path) -> Result<Staging, StoreError> {
        Self::named(tmp, IMPORT_PREFIX)
    }

    fn named(tmp: &Path, prefix: &str) -> Result<Staging, StoreError> {
        let dir = tmp.join(unique_name(prefix));
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .ctx(|| format!("creating staging directory {}", dir.display()))?;
        let staging = Staging {
            _lock: Self::lock(&dir).inspect_err(|_| {
                let _ = fs::remove_dir_all(&dir);
            })?,
            dir,
        };
        Ok(staging)
    }

    /// The lock file only appears under its final name once it is locked, so cleanup never
    /// mistakes a directory that is still being set up for an abandoned one.
    fn lock(dir: &Path) -> Result<File, StoreError> {
        let pending = dir.join(STAGING_LOCK_PENDING);
        let file = open_lock_file(&pending)?;
        syscalls::flock_exclusive(&file, true).ctx(|| format!("locking {}", pending.display()))?;
        fs::rename(&pending, dir.join(STAGING_LOCK))
            .ctx(|| format!("publishing {}", pending.display()))?;
        Ok(file)
    }

    /// A fresh subdirectory of the staging area.
    pub(crate) fn subdir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let path = self.dir.join(name);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .ctx(|| format!("creating staging directory {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), %err, "could not remove staging directory");
        }
    }
}

/// A working directory in the store's `tmp/` for callers outside the store, removed with
/// everything in it on drop. It holds the same lock as an import's staging directory, so
/// neither `Store::open` nor `fsck --repair` in any process removes it while it lives, and
/// both remove it once its owner is gone.
///
/// [`ScratchDir::path`] is an empty subdirectory: the lock file stays beside it, out of
/// whatever the caller puts there (a build context must not grow a `.lock`).
pub struct ScratchDir {
    staging: Staging,
    path: PathBuf,
}

impl ScratchDir {
    /// `label` says whose directory it is (`[a-z0-9-]`, e.g. `build-context`); it only
    /// shows in the directory's name.
    pub(crate) fn new(tmp: &Path, label: &str) -> Result<ScratchDir, StoreError> {
        let valid = !label.is_empty()
            && label.len() <= 32
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(StoreError::InvalidName {
                name: label.to_string(),
                reason: "a scratch directory's label is 1 to 32 of [a-z0-9-]".to_string(),
            });
        }
        let staging = Staging::named(tmp, &format!("{SCRATCH_PREFIX}-{label}"))?;
        let path = staging.subdir("work")?;
        Ok(ScratchDir { staging, path })
    }

    /// The directory to work in; empty when created.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for ScratchDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDir")
            .field("dir", &self.staging.dir)
            .finish()
    }
}

/// Removes what earlier processes left in `tmp/`: staging directories whose lock is free,
/// and anything else when we hold the store lock or it is older than an hour.
pub(crate) fn clean_leftovers(tmp: &Path, holding_store_lock: bool) -> Result<(), StoreError> {
    for leftover in leftovers(tmp, holding_store_lock)? {
        let path = &leftover.path;
        let removed = if leftover.is_dir {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        match removed {
            Ok(()) => tracing::debug!(path = %path.display(), "removed leftover staging data"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "could not remove leftover staging data")
            }
        }
    }
    Ok(())
}

/// An entry of `tmp/` that no live import or store-lock holder owns.
pub(crate) struct Leftover {
    pub(crate) path: PathBuf,
    pub(crate) is_dir: bool,
}

/// What [`clean_leftovers`] would remove, in name order.
pub(crate) fn leftovers(tmp: &Path, holding_store_lock: bool) -> Result<Vec<Leftover>, StoreError> {
    let entries = fs::read_dir(tmp).ctx(|| format!("listing {}", tmp.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let abandoned = if meta.is_dir() {
            match staging_lock_is_free(&path) {
                Some(free) => free,
                None => is_old(&meta) || (holding_store_lock && !is_staging_dir(&path)),
            }
        } else {
            holding_store_lock || is_old(&meta)
        };
        if abandoned {
            found.push(Leftover {
                path,
                is_dir: meta.is_dir(),
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn is_staging_dir(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        [IMPORT_PREFIX, SCRATCH_PREFIX]
            .iter()
            .any(|p| n.strip_prefix(p).is_some_and(|rest| rest.starts_with('-')))
    })
}

/// `Some(true)` if the directory has a staging lock nobody holds, `Some(false)` if it is held,
/// `None` if it has no lock file.
fn staging_lock_is_free(dir: &Path) -> Option<bool> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(STAGING_LOCK))
        .ok()?;
    syscalls::flock_exclusive(&file, false).ok()
}

fn is_old(meta: &fs::Metadata) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age > LEFTOVER_AGE)
}

/// Writes `bytes` to `dest` so readers see either the old file or the complete new one: the
/// data goes to a temporary file in `tmp/`, is flushed, then renamed over `dest`.
/// Callers hold the store lock (see the module doc).
pub(crate) fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = tmp.join(unique_name("write"));
    let ctx = || format!("writing {}", dest.display());
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.ctx(ctx)
}
