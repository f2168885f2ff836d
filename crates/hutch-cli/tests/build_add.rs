//! ADD of a local tar archive in `hutch image build`: the archive is as untrusted as an image
//! layer and goes through the store's hardened unpacker. Hostile archives (`..` names,
//! symlink-then-write-through, device nodes, decompression bombs) fail the build with nothing
//! written outside the image; a legitimate one keeps its modes and `user.*` xattrs and loses
//! host-only xattrs. No RUN step: these builds start no sandbox.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Home, stderr};
use hutch_store::Store;
use tar::{EntryType, Header};

/// One raw tar entry; names are written byte for byte so `..` can be expressed.
struct Raw<'a> {
    path: &'a str,
    kind: EntryType,
    mode: u32,
    link: &'a str,
    data: &'a [u8],
    device: (u32, u32),
}

fn raw(path: &str, kind: EntryType) -> Raw<'_> {
    Raw {
        path,
        kind,
        mode: if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        },
        link: "",
        data: b"",
        device: (0, 0),
    }
}

fn tar_of(entries: &[Raw<'_>], pax: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        if !pax.is_empty() && entry.kind == EntryType::Regular {
            builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (*k, *v)))
                .unwrap();
        }
        let mut header = Header::new_gnu();
        header.as_old_mut().name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        header.as_old_mut().linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_size(entry.data.len() as u64);
        header.set_device_major(entry.device.0).unwrap();
        header.set_device_minor(entry.device.1).unwrap();
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A context holding `archive` as `a.tar` and a Dockerfile that ADDs it at `/`.
fn context_with(archive: &[u8]) -> tempfile::TempDir {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("a.tar"), archive).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nADD a.tar /\n",
    )
    .unwrap();
    context
}

fn build(home: &Home, context: &Path, extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = home.hutch();
    cmd.args(["image", "build", "-t", "added:1"])
        .arg(context)
        .stdin(std::process::Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Builds expecting failure with `message_part` in the error; nothing named `added:1` exists.
fn build_fails(home: &Home, archive: &[u8], env: &[(&str, &str)], message_part: &str) {
    let context = context_with(archive);
    let out = build(home, context.path(), env);
    let err = stderr(&out);
    assert!(!out.status.success(), "the build must fail");
    assert!(err.contains(message_part), "{message_part:?} in: {err}");
    let store = Store::open(&home.path().join("store")).unwrap();
    assert!(
        store.image("added:1").is_err(),
        "no image from a failed build"
    );
}

/// A host directory outside everything the build owns, holding one file.
fn sentinel() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("hutch-add-sentinel")
        .tempdir_in("/tmp")
        .unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"intact").unwrap();
    (dir, victim)
}

fn assert_sentinel_intact(dir: &Path, victim: &Path) {
    assert_eq!(std::fs::read(victim).unwrap(), b"intact");
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        1,
        "sentinel changed"
    );
}

#[test]
fn add_of_a_hostile_local_tar_writes_nothing_outside_the_image() {
    let home = Home::private();
    let (dir, victim) = sentinel();
    let target = dir.path().to_str().unwrap().to_string();

    // `..` climbing out of the image root towards the sentinel.
    let climb = format!("../../../../../../../../../..{target}/escaped");
    build_fails(
        &home,
        &tar_of(&[raw(&climb, EntryType::Regular)], &[]),
        &[],
        "'..'",
    );
    // A symlink to the sentinel, then a write through it: over a file and into a new one.
    for through in ["link/victim", "link/new"] {
        let archive = tar_of(
            &[
                Raw {
                    link: &target,
                    mode: 0o777,
                    ..raw("link", EntryType::Symlink)
                },
                Raw {
                    data: b"pwned",
                    ..raw(through, EntryType::Regular)
                },
            ],
            &[],
        );
        build_fails(&home, &archive, &[], "traverses symlink \"link\"");
    }
    // A hardlink to the host file through the symlink.
    let archive = tar_of(
        &[
            Raw {
                link: &target,
                mode: 0o777,
                ..raw("link", EntryType::Symlink)
            },
            Raw {
                link: "link/victim",
                ..raw("hard", EntryType::Link)
            },
        ],
        &[],
    );
    build_fails(&home, &archive, &[], "traverses symlink");
    assert_sentinel_intact(dir.path(), &victim);
    assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
}

#[test]
fn add_of_a_tar_with_a_device_node_fails() {
    let home = Home::private();
    let archive = tar_of(
        &[
            raw("dev", EntryType::Directory),
            Raw {
                mode: 0o666,
                device: (8, 0),
                ..raw("dev/sda", EntryType::Block)
            },
        ],
        &[],
    );
    build_fails(&home, &archive, &[], "block device (8:0)");
}

#[test]
fn add_of_a_decompression_bomb_stops_at_the_layer_budget() {
    let home = Home::private();
    let zeros = vec![0u8; 8 << 20];
    let archive = gzip(&tar_of(
        &[Raw {
            data: &zeros,
            ..raw("bomb", EntryType::Regular)
        }],
        &[],
    ));
    assert!(
        archive.len() < 1 << 20,
        "the archive is small, its content is not"
    );
    build_fails(
        &home,
        &archive,
        &[("HUTCH_MAX_LAYER_BYTES", "1048576")],
        "HUTCH_MAX_LAYER_BYTES",
    );
}

#[test]
fn add_of_a_legitimate_tar_keeps_modes_and_user_xattrs_only() {
    let home = Home::private();
    let archive = tar_of(
        &[
            raw("opt", EntryType::Directory),
            Raw {
                mode: 0o4755,
                data: b"#!suid",
                ..raw("opt/tool", EntryType::Regular)
            },
        ],
        &[
            ("SCHILY.xattr.user.note", b"kept"),
            ("SCHILY.xattr.trusted.evil", b"1"),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:shadow_t:s0",
            ),
        ],
    );
    let context = context_with(&archive);
    let out = build(&home, context.path(), &[]);
    assert!(out.status.success(), "build: {}", stderr(&out));
    let store = Store::open(&home.path().join("store")).unwrap();
    let image = store.image("added:1").unwrap();
    let tool = image
        .layers
        .iter()
        .map(|l| store.layer_dir(l).join("opt/tool"))
        .find(|p| p.exists())
        .expect("the archive's file is in a layer");
    assert_eq!(std::fs::read(&tool).unwrap(), b"#!suid");
    assert_eq!(
        std::fs::symlink_metadata(&tool).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(xattr(&tool, "user.note").as_deref(), Some(&b"kept"[..]));
    assert_eq!(xattr(&tool, "trusted.evil"), None);
    assert_eq!(xattr(&tool, "security.selinux"), None);
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer whose pointer and length match.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}
