//! Snapshots of a directory tree as an image unpacker sees it: kind, mode (with
//! setuid/setgid/sticky), owner, content hash, symlink target, device numbers, xattrs and
//! hardlink structure of every entry, symlinks never followed. Two snapshots compare with `diff`,
//! which is how a pulled rootfs is checked against one unpacked by a trusted tool.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file, length of a symlink's target; 0 for the rest (a directory's size is the
    /// filesystem's business).
    pub size: u64,
    /// Hex sha256 of a regular file's content.
    pub sha256: Option<String>,
    /// Where a symlink points, as stored (not resolved).
    pub target: Option<PathBuf>,
    /// (major, minor) of a character or block device.
    pub rdev: Option<(u32, u32)>,
    /// The `user.*` and `security.capability` extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Link count of a non-directory (0 for directories, whose count depends on the filesystem).
    pub nlink: u64,
    /// When other paths in the snapshot share this entry's inode: the first of them all in path
    /// order (possibly this path itself). Equal values mean one inode.
    pub same_inode_as: Option<PathBuf>,
    /// Seconds since the epoch; only `diff_with_mtimes` compares it.
    pub mtime: i64,
}

/// Every entry under `root`, keyed by its path inside the tree written as absolute (`/`, `/etc`,
/// `/etc/passwd`), so keys read like paths in the image.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    let mut pending = vec![(root.to_path_buf(), PathBuf::from("/"))];
    while let Some((real, key)) = pending.pop() {
        let meta = std::fs::symlink_metadata(&real)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", real.display()));
        let kind = kind_of(meta.file_type());
        if kind == Kind::Dir {
            for entry in std::fs::read_dir(&real)
                .unwrap_or_else(|e| panic!("reading {}: {e}", real.display()))
            {
                let name = entry.unwrap().file_name();
                pending.push((real.join(&name), key.join(&name)));
            }
        } else if meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(key.clone());
        }
        nodes.insert(key, node(&real, &meta, kind));
    }
    for paths in inodes.into_values().filter(|paths| paths.len() > 1) {
        let first = paths.iter().min().unwrap().clone();
        for path in paths {
            nodes.get_mut(&path).unwrap().same_inode_as = Some(first.clone());
        }
    }
    nodes
}

/// What differs between two snapshots, one line per difference (`/path: what`), ignoring
/// mtimes; empty when the trees are equal.
pub fn diff(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    compare(a, b, false)
}

/// `diff`, and mtimes too.
pub fn diff_with_mtimes(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    compare(a, b, true)
}

fn compare(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>, mtimes: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (path, x) in a {
        let Some(y) = b.get(path) else {
            out.push(format!("{}: only in a ({:?})", path.display(), x.kind));
            continue;
        };
        let mut field = |what: &str, x: String, y: String| {
            if x != y {
                out.push(format!("{}: {what} {x} (a) vs {y} (b)", path.display()));
            }
        };
        field("kind", format!("{:?}", x.kind), format!("{:?}", y.kind));
        field("mode", format!("{:04o}", x.mode), format!("{:04o}", y.mode));
        field("uid", x.uid.to_string(), y.uid.to_string());
        field("gid", x.gid.to_string(), y.gid.to_string());
        field("size", x.size.to_string(), y.size.to_string());
        field(
            "sha256",
            format!("{:?}", x.sha256),
            format!("{:?}", y.sha256),
        );
        field(
            "target",
            format!("{:?}", x.target),
            format!("{:?}", y.target),
        );
        field("rdev", format!("{:?}", x.rdev), format!("{:?}", y.rdev));
        field("xattrs", show_xattrs(&x.xattrs), show_xattrs(&y.xattrs));
        field("nlink", x.nlink.to_string(), y.nlink.to_string());
        field(
            "same inode as",
            format!("{:?}", x.same_inode_as),
            format!("{:?}", y.same_inode_as),
        );
        if mtimes {
            field("mtime", x.mtime.to_string(), y.mtime.to_string());
        }
    }
    for (path, y) in b {
        if !a.contains_key(path) {
            out.push(format!("{}: only in b ({:?})", path.display(), y.kind));
        }
    }
    out
}

fn show_xattrs(xattrs: &BTreeMap<String, Vec<u8>>) -> String {
    let pairs: Vec<_> = xattrs
        .iter()
        .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v).escape_debug()))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

fn kind_of(t: std::fs::FileType) -> Kind {
    if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else if t.is_char_device() {
        Kind::Char
    } else if t.is_block_device() {
        Kind::Block
    } else if t.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    }
}

fn node(real: &Path, meta: &std::fs::Metadata, kind: Kind) -> Node {
    let (size, sha256, target) = match kind {
        Kind::File => {
            let mut hasher = Sha256::new();
            let mut file = std::fs::File::open(real)
                .unwrap_or_else(|e| panic!("opening {}: {e}", real.display()));
            std::io::copy(&mut file, &mut hasher).unwrap();
            (meta.len(), Some(hex::encode(hasher.finalize())), None)
        }
        Kind::Symlink => (meta.len(), None, Some(std::fs::read_link(real).unwrap())),
        _ => (0, None, None),
    };
    let rdev = matches!(kind, Kind::Char | Kind::Block)
        .then(|| (libc::major(meta.rdev()), libc::minor(meta.rdev())));
    Node {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        sha256,
        target,
        rdev,
        xattrs: xattrs(real),
        nlink: if kind == Kind::Dir { 0 } else { meta.nlink() },
        same_inode_as: None,
        mtime: meta.mtime(),
    }
}

/// The `user.*` and `security.capability` xattrs of `path` itself (not a symlink's target).
/// Others (`security.selinux`, `trusted.*`, overlay's) belong to the host, not the image.
fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    let Some(names) = read_sized(|buf, len| unsafe {
        // SAFETY: `buf` points to `len` writable bytes (or is null with len 0, a size query).
        libc::llistxattr(c_path.as_ptr(), buf.cast(), len)
    }) else {
        return out;
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !(name.starts_with(b"user.") || name == b"security.capability") {
            continue;
        }
        let c_name = CString::new(name).unwrap();
        let value = read_sized(|buf, len| unsafe {
            // SAFETY: as above; both strings are NUL-terminated.
            libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.cast(), len)
        });
        if let Some(value) = value {
            let name = OsStr::from_bytes(name).to_string_lossy().into_owned();
            out.insert(name, value);
        }
    }
    out
}

/// Calls a size-query-then-fill libc function (`llistxattr`, `lgetxattr`) until the buffer is
/// big enough; None when the call fails (no xattr support, attribute gone).
fn read_sized(call: impl Fn(*mut u8, usize) -> isize) -> Option<Vec<u8>> {
    loop {
        let len = usize::try_from(call(std::ptr::null_mut(), 0)).ok()?;
        if len == 0 {
            return Some(Vec::new());
        }
        let mut buf = vec![0u8; len];
        match usize::try_from(call(buf.as_mut_ptr(), len)) {
            Ok(n) => {
                buf.truncate(n);
                return Some(buf);
            }
            // Grew between the two calls: ask again.
            Err(_) if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) => {}
            Err(_) => return None,
        }
    }
}

/// The merged root filesystem of a stored image: its layers stacked read-only by overlayfs,
/// as a sandbox would see them, at `mountpoint` (unmounted by the returned guard). A
/// one-layer image is its layer directory (overlayfs wants two lower dirs without an upper).
pub struct Merged(pub std::path::PathBuf, bool);

impl Merged {
    pub fn mount(home: &super::Home, name: &str, mountpoint: &Path) -> Merged {
        let store = hutch_store::Store::open(&home.path().join("store")).unwrap();
        let image = store.image(name).unwrap();
        let lower: Vec<String> = store
            .lower_dirs(&image)
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        if lower.len() == 1 {
            return Merged(lower[0].clone().into(), false);
        }
        std::fs::create_dir_all(mountpoint).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lower.join(":")))
            .arg(mountpoint)
            .status()
            .unwrap();
        assert!(status.success(), "overlay mount failed");
        Merged(mountpoint.to_path_buf(), true)
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
}
