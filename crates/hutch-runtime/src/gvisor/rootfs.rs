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

/// The smallest and largest per-sandbox disks.
pub const MIN_DISK_MB: u64 = 64;
pub const MAX_DISK_MB: u64 = 1 << 20;

/// Gives the sandbox in `dir` a disk of its own of `mb` MiB: a sparse ext4 image
/// (`disk.img`, host bytes only as written) mounted at `disk/` (loop, `nosuid,nodev`), with
/// the overlay's `upper/` and `work/` inside it. A sandbox that fills it gets ENOSPC; the
/// host's disk is untouched, and `df` inside shows the disk's size (overlayfs reports its
/// upper filesystem). Returns (upper, work).
pub fn make_disk(dir: &Path, mb: u64) -> Result<(PathBuf, PathBuf)> {
    if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&mb) {
        return Err(RuntimeError::InvalidSpec {
            reason: format!("disk_mb must be {MIN_DISK_MB} to {MAX_DISK_MB}, got {mb}"),
        });
    }
    let image = dir.join("disk.img");
    let mount = dir.join("disk");
    let io = |what: String| move |e| RuntimeError::io(what, e);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&image)
        .map_err(io(format!("creating {}", image.display())))?;
    file.set_len(mb << 20)
        .map_err(io(format!("sizing {}", image.display())))?;
    drop(file);
    // No journal (a sandbox's scratch does not outlive the host), no reserved blocks, one
    // inode per 8 KiB (package trees are many small files), lazy init: ~40 ms at any size.
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-i", "8192", "-O", "^has_journal"])
        .args(["-E", "nodiscard,lazy_itable_init=1"])
        .arg(&image)
        .output()
        .map_err(io("running mkfs.ext4 (apt-get install -y e2fsprogs)".into()))?;
    if !out.status.success() {
        return Err(RuntimeError::io(
            format!("making the sandbox's disk {}", image.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    std::fs::create_dir_all(&mount).map_err(io(format!("creating {}", mount.display())))?;
    let out = std::process::Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
        .arg(&image)
        .arg(&mount)
        .output()
        .map_err(io("running mount".into()))?;
    if !out.status.success() {
        return Err(RuntimeError::io(
            format!("mounting the sandbox's disk at {}", mount.display()),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    let _ = std::fs::remove_dir(mount.join("lost+found"));
    let (upper, work) = (mount.join("upper"), mount.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    Ok((upper, work))
}

/// The overlay's upper directory of the sandbox in `dir`: on its own disk when it has one.
pub fn upper_of(dir: &Path) -> PathBuf {
    let on_disk = dir.join("disk").join("upper");
    if on_disk.is_dir() {
        on_disk
    } else {
        dir.join("upper")
    }
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
