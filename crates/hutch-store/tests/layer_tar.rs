//! A directory written as a layer with `write_layer`, then ingested and unpacked by the
//! store, comes back the same: whiteouts, opaque directories, hardlinks, symlinks, owners,
//! modes and xattrs.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hutch_store::{Digest, IngestLayer, Store, write_layer};

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr {name} on {}", path.display());
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: as above.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn a_written_layer_unpacks_to_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let upper = tmp.path().join("upper");
    fs::create_dir_all(upper.join("etc/opaque")).unwrap();
    fs::write(upper.join("etc/opaque/new"), b"new").unwrap();
    setxattr(&upper.join("etc/opaque"), "trusted.overlay.opaque", b"y");
    fs::write(upper.join("etc/a"), b"hello").unwrap();
    fs::hard_link(upper.join("etc/a"), upper.join("etc/b")).unwrap();
    std::os::unix::fs::symlink("../etc/a", upper.join("etc/link")).unwrap();
    fs::write(upper.join("etc/suid"), b"#!").unwrap();
    fs::set_permissions(upper.join("etc/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::lchown(upper.join("etc/a"), Some(1234), Some(5678)).unwrap();
    setxattr(&upper.join("etc/a"), "user.hutch", b"yes");
    let gone = CString::new(upper.join("etc/gone").as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod of an overlay whiteout (0/0 character device) in our temp dir.
    assert_eq!(unsafe { libc::mknod(gone.as_ptr(), libc::S_IFCHR, 0) }, 0);
    fs::create_dir_all(upper.join("run/hutch")).unwrap();

    let layer = tmp.path().join("layer.tar");
    let (digest, size) = write_layer(
        &upper,
        &["run/hutch".into()],
        fs::File::create(&layer).unwrap(),
    )
    .unwrap();
    assert_eq!(size, fs::metadata(&layer).unwrap().len());
    // The same tree gives the same bytes.
    let (again, _) = write_layer(&upper, &["run/hutch".into()], std::io::sink()).unwrap();
    assert_eq!(again, digest);

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let ingest = store.ingest().unwrap();
    ingest
        .add_layer(
            fs::File::open(&layer).unwrap(),
            &digest,
            Some(size),
            &digest,
            "test layer",
        )
        .unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest.to_string()]}});
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = Digest::of_bytes(&config);
    ingest.add_bytes(&config, &config_digest, "config").unwrap();
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest.to_string(), "size": size}]});
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = Digest::of_bytes(&manifest);
    ingest
        .add_bytes(&manifest, &manifest_digest, "manifest")
        .unwrap();
    let image = ingest
        .commit(
            "built:1",
            &manifest_digest,
            &config_digest,
            &[IngestLayer {
                diff_id: digest.clone(),
                blob: digest.clone(),
            }],
        )
        .unwrap();
    let fs_dir = store.layer_dir(&image.layers[0]);

    let meta = |p: &str| fs::symlink_metadata(fs_dir.join(p)).unwrap();
    assert_eq!(fs::read(fs_dir.join("etc/opaque/new")).unwrap(), b"new");
    assert_eq!(
        getxattr(&fs_dir.join("etc/opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(meta("etc/a").ino(), meta("etc/b").ino());
    assert_eq!((meta("etc/a").uid(), meta("etc/a").gid()), (1234, 5678));
    assert_eq!(
        getxattr(&fs_dir.join("etc/a"), "user.hutch").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        fs::read_link(fs_dir.join("etc/link")).unwrap(),
        Path::new("../etc/a")
    );
    assert_eq!(meta("etc/suid").mode() & 0o7777, 0o4755);
    let gone = meta("etc/gone");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &gone.file_type()
    ));
    assert_eq!(gone.rdev(), 0);
    assert!(
        !fs_dir.join("run/hutch").exists(),
        "excluded paths stay out"
    );
}
