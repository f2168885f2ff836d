//! Thin, safe wrappers over the few libc calls std does not expose without following symlinks
//! (lchown, mknod, lsetxattr, utimensat with AT_SYMLINK_NOFOLLOW) plus flock and syncfs.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Changes owner without following a final symlink.
pub(crate) fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

/// Sets permission bits (including setuid/setgid/sticky). Callers only use it on paths they
/// just created as non-symlinks, under parents already checked to contain no symlink.
pub(crate) fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::fchmodat(libc::AT_FDCWD, c.as_ptr(), mode as libc::mode_t, 0) })
}

/// Creates a device node or fifo; `kind` is one of `S_IFCHR`, `S_IFBLK`, `S_IFIFO`.
pub(crate) fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) })
}

/// Sets an extended attribute on the path itself, never on a symlink's target.
pub(crate) fn lsetxattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    let n = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "xattr name contains a NUL byte",
        )
    })?;
    // SAFETY: both strings are valid and NUL-terminated; `value` is a live slice whose pointer
    // and length are passed together.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Sets atime and mtime without following a final symlink.
pub(crate) fn set_times_nofollow(path: &Path, secs: i64, nanos: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    let times = [ts, ts];
    // SAFETY: `c` is valid and NUL-terminated; `times` is an array of two timespecs as required.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Takes an exclusive flock on `file`; with `wait == false` returns `Ok(false)` when another
/// open file description holds it.
pub(crate) fn flock_exclusive(file: &File, wait: bool) -> io::Result<bool> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: the descriptor is owned by `file`, which is alive for the call.
        let ret = unsafe { libc::flock(file.as_raw_fd(), op) };
        if ret == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Flushes the filesystem holding `file` so renames that publish data never overtake the data.
pub(crate) fn syncfs(file: &File) -> io::Result<()> {
    // SAFETY: the descriptor is owned by `file`, which is alive for the call.
    check(unsafe { libc::syncfs(file.as_raw_fd()) })
}
