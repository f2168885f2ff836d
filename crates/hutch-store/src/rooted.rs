//! Paths inside an untrusted tree (an image's layers, a sandbox's root filesystem or its run
//! directory) looked up the way the sandbox would see them, never through the host's.
//!
//! Image content is hostile: `/tmp` may be a symlink to `/etc`, `/etc/passwd` one to the
//! host's `/etc/shadow`. `Path::join` plus `metadata`, `read` or a bind mount would follow
//! such links on the host. Everything here goes through `openat2(2)` instead:
//! `RESOLVE_IN_ROOT` resolves every symlink (and `..`) against the tree's own root, as a
//! chroot would, and `RESOLVE_NO_MAGICLINKS` refuses `/proc`-style links. [`real_path`] then
//! names the result by a path with no symlink in it at all, checked a second time with
//! `RESOLVE_NO_SYMLINKS`, so it can be handed to a tool that resolves paths itself (runsc's
//! bind mounts) as long as nothing rewrites the tree in between.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// How `openat2` may resolve a path below the root.
#[derive(Clone, Copy)]
enum Resolve {
    /// Symlinks followed, each resolved against the root (a chroot's view).
    InRoot,
    /// No symlink anywhere on the way, no escape by `..`.
    NoSymlinks,
}

fn openat2(dir: &OwnedFd, path: &Path, flags: i32, resolve: Resolve) -> io::Result<OwnedFd> {
    let rel = relative(path);
    let c = CString::new(if rel.as_os_str().is_empty() {
        b".".to_vec()
    } else {
        rel.as_os_str().as_bytes().to_vec()
    })
    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let resolve = match resolve {
        Resolve::InRoot => libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        Resolve::NoSymlinks => {
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS
        }
    };
    // SAFETY: zeroed is a valid `open_how` (all fields are integers); the fields set below are
    // the only ones the kernel reads for this size.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: `c` and `how` are valid for the duration of the call; the kernel copies
        // `size_of::<open_how>()` bytes from `how`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a descriptor the kernel just returned to us and nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let err = io::Error::last_os_error();
        // openat2 fails with EAGAIN when a concurrent rename may have let `..` escape.
        if err.raw_os_error() != Some(libc::EAGAIN) && err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `path` with its root and `.` components dropped: openat2 treats it relative to the root.
fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::Prefix(_) | Component::CurDir
            )
        })
        .collect()
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    // The root itself is the host's own path (a sandbox or layer directory Hutch made).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(root)?;
    Ok(file.into())
}

/// Opens `path` as seen from inside `root` (symlinks resolved against `root`), with
/// `flags` (`O_RDONLY`, `O_PATH`, `O_DIRECTORY`...).
pub fn open(root: &Path, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    openat2(&open_root(root)?, path, flags, Resolve::InRoot)
}

/// Opens `path` below `root` refusing any symlink on the way (and the final component).
pub fn open_no_symlinks(root: &Path, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    openat2(&open_root(root)?, path, flags, Resolve::NoSymlinks)
}

/// The metadata of `path` as seen from inside `root` (a final symlink followed inside).
pub fn metadata(root: &Path, path: &Path) -> io::Result<Metadata> {
    File::from(open(root, path, libc::O_PATH)?).metadata()
}

/// Whether `path`, seen from inside `root`, is a directory.
pub fn is_dir(root: &Path, path: &Path) -> bool {
    metadata(root, path).is_ok_and(|m| m.is_dir())
}

/// Reads the regular file `path` as seen from inside `root`, at most `max` bytes (more is
/// an error: image content decides the size).
pub fn read(root: &Path, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_fd(open(root, path, libc::O_RDONLY)?, max)
}

/// Reads the regular file `name` directly in the host directory `dir`, which a sandbox can
/// write into (its run directory): a symlink planted there is refused, not followed.
pub fn read_no_follow(dir: &Path, name: &Path, max: u64) -> io::Result<Vec<u8>> {
    read_fd(open_no_symlinks(dir, name, libc::O_RDONLY)?, max)
}

fn read_fd(fd: OwnedFd, max: u64) -> io::Result<Vec<u8>> {
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// The host path of `path` as seen from inside `root`, with every symlink resolved inside
/// `root`: a path below `root` that contains no symlink, so that a tool resolving it on the
/// host (a bind mount) reaches exactly what the sandbox would. Valid while nothing changes
/// the tree (callers use it before the sandbox starts, on layers that are immutable).
pub fn real_path(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let root_fd = open_root(root)?;
    let fd = openat2(&root_fd, path, libc::O_PATH, Resolve::InRoot)?;
    let root_real = std::fs::read_link(format!("/proc/self/fd/{}", root_fd.as_raw_fd()))?;
    // The path the kernel reached, named by our own descriptor (not by image content).
    let reached = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let found = File::from(fd).metadata()?;
    let below = reached
        .strip_prefix(&root_real)
        .map_err(|_| escaped(path))?
        .to_path_buf();
    // Checked again with no symlink allowed at all: the same inode, reached lexically.
    let again = File::from(openat2(
        &root_fd,
        &below,
        libc::O_PATH,
        Resolve::NoSymlinks,
    )?)
    .metadata()?;
    if (again.dev(), again.ino()) != (found.dev(), found.ino()) {
        return Err(escaped(path));
    }
    Ok(root.join(below))
}

fn escaped(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{} does not resolve inside the tree", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("var/tmp/real")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(outside.path().join("secret"), "host secret").unwrap();
        (root, outside)
    }

    #[test]
    fn symlinks_resolve_against_the_tree_not_the_host() {
        let (root, outside) = tree();
        let r = root.path();
        // An absolute link to a host directory lands on the tree's own path of that name.
        symlink(outside.path(), r.join("abs")).unwrap();
        assert!(read(r, Path::new("abs/secret"), 1 << 20).is_err());
        // `..` cannot climb above the root either.
        symlink("../../../../../../..", r.join("up")).unwrap();
        let seen = real_path(r, Path::new("up")).unwrap();
        assert_eq!(seen, r.join(""));
        symlink(outside.path().join("secret"), r.join("etc/shadowlink")).unwrap();
        assert!(read(r, Path::new("/etc/shadowlink"), 1 << 20).is_err());
        assert_eq!(
            read(r, Path::new("/etc/passwd"), 1 << 20).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
    }

    #[test]
    fn real_path_follows_links_inside_and_names_no_symlink() {
        let (root, _outside) = tree();
        let r = root.path();
        symlink("/var/tmp/real", r.join("tmp")).unwrap();
        assert_eq!(
            real_path(r, Path::new("/tmp")).unwrap(),
            r.join("var/tmp/real")
        );
        assert!(is_dir(r, Path::new("/tmp")));
        // A chain through a symlinked parent at every depth stays inside too.
        symlink("var", r.join("v")).unwrap();
        symlink("/v/tmp", r.join("vt")).unwrap();
        assert_eq!(
            real_path(r, Path::new("vt/real")).unwrap(),
            r.join("var/tmp/real")
        );
    }

    #[test]
    fn run_directory_reads_refuse_planted_symlinks() {
        let (root, outside) = tree();
        let r = root.path();
        symlink(outside.path().join("secret"), r.join("boot-outcome.json")).unwrap();
        assert!(read_no_follow(r, Path::new("boot-outcome.json"), 1 << 20).is_err());
        std::fs::write(r.join("agent.log"), vec![b'x'; 100]).unwrap();
        assert!(read_no_follow(r, Path::new("agent.log"), 10).is_err());
        assert_eq!(
            read_no_follow(r, Path::new("agent.log"), 100)
                .unwrap()
                .len(),
            100
        );
    }
}
