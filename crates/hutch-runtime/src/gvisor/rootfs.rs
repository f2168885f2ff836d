//! A sandbox's root filesystem: an overlay of the image's read-only layer directories with
//! the sandbox's own upper directory, where everything it writes (and every deletion, as a
//! whiteout) lands.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// Mount data must fit in one page.
const MAX_MOUNT_DATA: usize = 4000;

/// Mounts `lower` (bottom layer first) under `upper` at `target`.
pub fn mount_overlay(lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    if lower.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            reason: "an overlay needs at least one lower layer".into(),
        });
    }
    // overlayfs lists lower dirs top-most first.
    let lowerdir: Vec<String> = lower
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(RuntimeError::InvalidSpec {
            reason: format!(
                "the image has too many layers ({}) for one overlay mount",
                lower.len()
            ),
        });
    }
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes());
    let (Ok(target_c), Ok(data_c)) = (c(target), CString::new(data)) else {
        return Err(RuntimeError::InvalidSpec {
            reason: "paths must not contain NUL bytes".into(),
        });
    };
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target_c.as_ptr(),
            c"overlay".as_ptr(),
            // Layers hold image-controlled setuid binaries and device nodes; on the host they
            // must mean nothing (gVisor applies their meaning inside, itself).
            libc::MS_NOSUID | libc::MS_NODEV,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::io(
            format!("mounting the overlay rootfs at {}", target.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts `target` if it is mounted; lazily if it is busy.
pub fn unmount(target: &Path) -> Result<()> {
    let Ok(target_c) = CString::new(target.as_os_str().as_bytes()) else {
        return Ok(());
    };
    // SAFETY: valid NUL-terminated string.
    if unsafe { libc::umount2(target_c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()), // not mounted
        Some(libc::EBUSY) => {
            // SAFETY: as above.
            if unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                Err(RuntimeError::io(
                    format!("unmounting {}", target.display()),
                    std::io::Error::last_os_error(),
                ))
            }
        }
        _ => Err(RuntimeError::io(
            format!("unmounting {}", target.display()),
            err,
        )),
    }
}

/// Whether anything is mounted at or below `dir` (read from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}
