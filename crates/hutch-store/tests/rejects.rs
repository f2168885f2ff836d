//! Imports that must fail: corrupt or non-image sources and hostile layer tars. Every failing
//! import is checked for its typed error, an exactly empty store, and nothing appearing
//! anywhere else; the hostile layers that are legal are checked for a safe outcome, with
//! nothing outside the store changed.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use fixture::{Entry, Env, Layer, Packing, image, tar_files};
use hutch_store::{Digest, StoreError};
use tar::EntryType;

/// Imports `source`, expecting failure; asserts the store and its surroundings are untouched.
fn import_fails(env: &Env, source: &Path) -> StoreError {
    let before = env.outside_store();
    let err = env
        .store
        .import(source, "victim")
        .expect_err("import must fail");
    assert_eq!(
        env.outside_store(),
        before,
        "files appeared outside the store"
    );
    env.assert_store_empty();
    err
}

fn import_layer_fails(layer: Vec<u8>) -> (Env, StoreError) {
    let env = Env::new();
    let img = image(vec![layer]).build();
    let dir = env.layout(&img.oci_files("latest"));
    let err = import_fails(&env, &dir);
    (env, err)
}

fn assert_unsafe(err: &StoreError, entry: &str, reason_part: &str) {
    match err {
        StoreError::UnsafeLayerEntry {
            entry: e, reason, ..
        } => {
            assert_eq!(e, entry, "{err}");
            assert!(reason.contains(reason_part), "{err}");
        }
        other => panic!("expected UnsafeLayerEntry for {entry:?}, got {other:?}"),
    }
}

fn assert_not_an_image(err: &StoreError, reason_part: &str) {
    match err {
        StoreError::NotAnImage { reason, .. } => assert!(reason.contains(reason_part), "{err}"),
        other => panic!("expected NotAnImage ({reason_part}), got {other:?}"),
    }
}

/// A path that must never come into existence.
fn unique_outside(tag: &str) -> PathBuf {
    PathBuf::from(format!("/hutch-escape-{tag}-{}", std::process::id()))
}

#[test]
fn corrupted_layer_blob_is_a_digest_mismatch() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"data").bytes()]).build();
    let dir = env.layout(&img.oci_files("latest"));
    let blob = dir.join(fixture::blob_name(&img.layer_blobs[0]));
    let mut bytes = fs::read(&blob).expect("blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).expect("corrupt");
    match import_fails(&env, &dir) {
        StoreError::DigestMismatch { expected, .. } => {
            assert_eq!(expected, Digest::of_bytes(&img.layer_blobs[0]))
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

#[test]
fn truncated_config_blob_is_a_size_mismatch() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"data").bytes()]).build();
    let dir = env.layout(&img.oci_files("latest"));
    fs::write(dir.join(fixture::blob_name(&img.config)), b"{}").expect("truncate");
    assert!(matches!(
        import_fails(&env, &dir),
        StoreError::SizeMismatch { .. }
    ));
}

#[test]
fn lying_diff_id_is_a_digest_mismatch() {
    let env = Env::new();
    let good = Layer::new().file("good", b"1").bytes();
    let layer = Layer::new().file("f", b"data").bytes();
    let lie = Digest::of_bytes(b"something else");
    let img = image(vec![good.clone(), layer])
        .diff_ids(vec![Digest::of_bytes(&good), lie.clone()])
        .build();
    match import_fails(&env, &env.layout(&img.oci_files("latest"))) {
        StoreError::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            assert_eq!(expected, lie);
            assert_eq!(actual, Digest::of_bytes(&img.layers[1]));
            assert!(what.contains("diff_id"), "{what}");
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

#[test]
fn docker_config_not_matching_its_name_is_a_digest_mismatch() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()])
        .packing(Packing::Plain)
        .build();
    let mut files = img.docker_files("x:latest");
    files[1].1.push(b' ');
    let archive = env.archive(&tar_files(&files, Packing::Plain));
    assert!(matches!(
        import_fails(&env, &archive),
        StoreError::DigestMismatch { .. }
    ));
}

#[test]
fn plain_file_is_not_an_image() {
    let env = Env::new();
    let path = env.src.join("notes.txt");
    fs::write(&path, "hello, this is not an image\n".repeat(40)).expect("write");
    assert_not_an_image(&import_fails(&env, &path), "not a tar archive");
    let tiny = env.src.join("tiny");
    fs::write(&tiny, b"hi").expect("write");
    assert!(matches!(
        import_fails(&env, &tiny),
        StoreError::NotAnImage { .. }
    ));
}

#[test]
fn empty_dir_and_missing_path_are_not_images() {
    let env = Env::new();
    let dir = env.src.join("empty");
    fs::create_dir(&dir).expect("mkdir");
    assert_not_an_image(&import_fails(&env, &dir), "oci-layout");
    assert_not_an_image(
        &import_fails(&env, &env.src.join("missing")),
        "no such file",
    );
}

#[test]
fn garbage_json_is_not_an_image() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    let mut files = img.oci_files("latest");
    files[1].1 = b"{\"manifests\": [oops".to_vec();
    assert_not_an_image(&import_fails(&env, &env.layout(&files)), "index.json");

    let docker = vec![("manifest.json".to_string(), b"not json at all".to_vec())];
    let archive = env.archive(&tar_files(&docker, Packing::Gzip));
    assert_not_an_image(&import_fails(&env, &archive), "manifest.json");
}

#[test]
fn missing_blob_is_not_an_image() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    let files: Vec<_> = img
        .oci_files("latest")
        .into_iter()
        .filter(|(name, _)| *name != fixture::blob_name(&img.layer_blobs[0]))
        .collect();
    assert_not_an_image(&import_fails(&env, &env.layout(&files)), "missing");
}

/// A digest of a layout (its index's or its manifest's) is checked as the store's sha256
/// digest before it names a file: one that would climb out of `blobs/sha256/`, or name
/// another algorithm's directory, is refused and nothing is read through it.
#[test]
fn hostile_digests_in_a_layout_never_name_a_file() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    let with_index_entry = |digest: &str| {
        let mut files = img.oci_files("latest");
        let mut index: serde_json::Value = serde_json::from_slice(&files[1].1).expect("index");
        index["manifests"][0]["digest"] = digest.into();
        files[1].1 = serde_json::to_vec(&index).expect("index");
        files
    };
    let with_layer_digest = |digest: &str| {
        let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        manifest["layers"][0]["digest"] = digest.into();
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let mut files = img.oci_files("latest");
        let mut index: serde_json::Value = serde_json::from_slice(&files[1].1).expect("index");
        index["manifests"][0] =
            fixture::descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        files[1].1 = serde_json::to_vec(&index).expect("index");
        files.push((fixture::blob_name(&manifest), manifest));
        files
    };
    let upper = format!("sha256:{}", "A".repeat(64));
    for bad in ["sha256:../../../../etc/passwd", "sha256:..", upper.as_str()] {
        let err = import_fails(&env, &env.layout(&with_index_entry(bad)));
        assert_not_an_image(&err, "index.json");
        let err = import_fails(&env, &env.layout(&with_layer_digest(bad)));
        assert_not_an_image(&err, "manifest");
    }
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    for files in [with_index_entry(&sha512), with_layer_digest(&sha512)] {
        match import_fails(&env, &env.layout(&files)) {
            StoreError::Unsupported { what } => assert!(what.contains("sha512"), "{what}"),
            other => panic!("expected Unsupported for a sha512 digest, got {other:?}"),
        }
    }
}

#[test]
fn a_corrupt_zstd_layer_is_a_typed_error() {
    let env = Env::new();
    let mut img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    // Valid digests over bytes that start like zstd and then are not.
    img.layer_blobs[0] = vec![0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
    let manifest: serde_json::Value = serde_json::json!({
        "schemaVersion": 2,
        "config": fixture::descriptor("application/vnd.oci.image.config.v1+json", &img.config),
        "layers": [fixture::descriptor("application/vnd.oci.image.layer.v1.tar+zstd", &img.layer_blobs[0])],
    });
    img.manifest = serde_json::to_vec(&manifest).expect("json");
    match import_fails(&env, &env.layout(&img.oci_files("latest"))) {
        StoreError::Io { .. } | StoreError::DigestMismatch { .. } => {}
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn hostile_outer_archive_members_are_refused() {
    let env = Env::new();
    let archive = env.archive(
        &Layer::new()
            .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .file("../escape", b"x")
            .bytes(),
    );
    assert_not_an_image(&import_fails(&env, &archive), "'..'");
    let archive = env.archive(&Layer::new().symlink("index.json", "/etc/passwd").bytes());
    assert_not_an_image(&import_fails(&env, &archive), "outside the archive");
    let archive = env.archive(
        &Layer::new()
            .entry(Entry::new("dev", EntryType::Char))
            .bytes(),
    );
    assert_not_an_image(&import_fails(&env, &archive), "devices");
}

#[test]
fn hostile_dotdot_entry() {
    let (_env, err) = import_layer_fails(Layer::new().file("../escape", b"x").bytes());
    assert_unsafe(&err, "../escape", "'..'");
}

#[test]
fn hostile_deep_dotdot_entry() {
    let env = Env::new();
    let target = format!("{}/escaped", env.top.path().display());
    let path = format!("a/../../../../../../../../../../../../..{target}");
    let img = image(vec![Layer::new().dir("a").file(&path, b"x").bytes()]).build();
    let err = import_fails(&env, &env.layout(&img.oci_files("latest")));
    assert_unsafe(&err, &path, "'..'");
}

#[test]
fn hostile_absolute_entry() {
    let outside = unique_outside("abs");
    let path = format!("{}/path", outside.display());
    let (_env, err) = import_layer_fails(Layer::new().file(&path, b"x").bytes());
    assert_unsafe(&err, &path, "absolute");
    assert!(!outside.exists());
}

#[test]
fn hostile_symlink_to_root_then_write_through_it() {
    let outside = unique_outside("root-link");
    let through = format!("link{}", outside.display());
    let (_env, err) = import_layer_fails(
        Layer::new()
            .symlink("link", "/")
            .file(&through, b"evil")
            .bytes(),
    );
    assert_unsafe(&err, &through, "traverses symlink \"link\"");
    assert!(!outside.exists());
}

#[test]
fn hostile_symlink_to_sentinel_dir_then_write_through_it() {
    let env = Env::new();
    let top = env.top.path().display().to_string();
    let img = image(vec![
        Layer::new()
            .symlink("link", &top)
            .file("link/evil", b"evil")
            .bytes(),
    ])
    .build();
    let err = import_fails(&env, &env.layout(&img.oci_files("latest")));
    assert_unsafe(&err, "link/evil", "traverses symlink");
}

#[test]
fn hostile_symlink_to_parent_then_write_through_it() {
    let (_env, err) = import_layer_fails(
        Layer::new()
            .symlink("link", "..")
            .file("link/evil", b"evil")
            .bytes(),
    );
    assert_unsafe(&err, "link/evil", "traverses symlink");
}

#[test]
fn hostile_dir_replaced_by_symlink_then_written_through() {
    let outside = unique_outside("swap");
    let path = format!("d{}/evil", outside.display());
    let (_env, err) = import_layer_fails(
        Layer::new()
            .dir("d")
            .symlink("d", "/")
            .file(&path, b"evil")
            .bytes(),
    );
    assert_unsafe(&err, &path, "traverses symlink \"d\"");
    assert!(!outside.exists());
}

#[test]
fn hostile_symlinked_parent_directory_for_a_directory_entry() {
    let (_env, err) = import_layer_fails(
        Layer::new()
            .symlink("etc", "/etc")
            .dir("etc/hutch-evil.d")
            .bytes(),
    );
    assert_unsafe(&err, "etc/hutch-evil.d", "traverses symlink \"etc\"");
    assert!(!Path::new("/etc/hutch-evil.d").exists());
}

fn passwd_links() -> u64 {
    fs::metadata("/etc/passwd").expect("/etc/passwd").nlink()
}

#[test]
fn hostile_hardlink_with_dotdot_target() {
    let links = passwd_links();
    let (_env, err) =
        import_layer_fails(Layer::new().hardlink("passwd", "../../etc/passwd").bytes());
    assert_unsafe(&err, "passwd", "'..'");
    assert_eq!(passwd_links(), links);
}

#[test]
fn hostile_hardlink_with_absolute_target() {
    let links = passwd_links();
    let (_env, err) = import_layer_fails(Layer::new().hardlink("passwd", "/etc/passwd").bytes());
    assert_unsafe(&err, "passwd", "absolute");
    assert_eq!(passwd_links(), links);
}

#[test]
fn hostile_hardlink_through_symlinked_dir() {
    let links = passwd_links();
    let (_env, err) = import_layer_fails(
        Layer::new()
            .symlink("host-etc", "/etc")
            .hardlink("passwd", "host-etc/passwd")
            .bytes(),
    );
    assert_unsafe(&err, "passwd", "traverses symlink");
    assert_eq!(passwd_links(), links);
}

#[test]
fn hardlink_to_a_file_of_a_lower_layer_is_refused() {
    let (_env, err) = import_layer_fails(Layer::new().hardlink("copy", "bin/busybox").bytes());
    assert_unsafe(&err, "copy", "does not exist earlier in this layer");
}

#[test]
fn hostile_file_used_as_a_directory() {
    let (_env, err) =
        import_layer_fails(Layer::new().file("f", b"x").file("f/child", b"y").bytes());
    assert_unsafe(&err, "f/child", "not a directory");
}

#[test]
fn hostile_whiteout_of_parent() {
    let (_env, err) = import_layer_fails(Layer::new().file("a/.wh...", b"").bytes());
    assert_unsafe(&err, "a/.wh...", "whiteout");
}

#[test]
fn non_directory_layer_root_is_refused() {
    let (_env, err) = import_layer_fails(Layer::new().symlink(".", "/").bytes());
    assert_unsafe(&err, ".", "layer root");
}

#[test]
fn hostile_directory_time_is_not_applied_through_a_replaced_parent() {
    let env = Env::new();
    let victim = env.top.path().join("victim");
    fs::create_dir_all(victim.join("b")).expect("victim");
    let before = fs::metadata(victim.join("b")).expect("victim").mtime();
    let img = image(vec![
        Layer::new()
            .dir("a")
            .entry(Entry {
                mtime: 1000,
                ..Entry::new("a/b", EntryType::Directory)
            })
            .symlink("a", &victim.display().to_string())
            .bytes(),
    ])
    .build();
    let layout = env.layout(&img.oci_files("latest"));
    let outside = env.outside_store();
    env.store
        .import(&layout, "times")
        .expect("a symlink replacing a directory is legal");
    assert_eq!(env.outside_store(), outside);
    assert_eq!(
        fs::metadata(victim.join("b")).expect("victim").mtime(),
        before
    );
}

// The hostile layer corpus, continued: every case below either fails with a typed error or
// has a safe outcome, and in both cases nothing outside the store changes.

/// Imports a one-layer image expecting success; asserts nothing appeared outside the store.
fn import_layer_safely(env: &Env, layer: Vec<u8>) -> PathBuf {
    let img = image(vec![layer]).build();
    let layout = env.layout(&img.oci_files("latest"));
    let before = env.outside_store();
    let imported = env
        .store
        .import(&layout, "safe")
        .expect("the layer is legal");
    assert_eq!(
        env.outside_store(),
        before,
        "files appeared outside the store"
    );
    env.store.layer_dir(&imported.layers[0])
}

/// A directory outside the store holding one file, to prove it is never written through.
fn sentinel(env: &Env) -> PathBuf {
    let dir = env.top.path().join("sentinel");
    fs::create_dir(&dir).expect("sentinel");
    fs::write(dir.join("victim"), b"intact").expect("victim");
    dir
}

fn assert_sentinel_intact(dir: &Path) {
    assert_eq!(
        fs::read(dir.join("victim")).expect("victim survives"),
        b"intact"
    );
    assert_eq!(
        fs::read_dir(dir).expect("ls").count(),
        1,
        "sentinel changed"
    );
    assert_eq!(
        fixture::lgetxattr(dir, "trusted.overlay.opaque"),
        None,
        "sentinel marked opaque"
    );
}

/// Content, link count and mtime of /etc/passwd, to prove it is never touched.
fn passwd_state() -> (Vec<u8>, u64, i64) {
    let meta = fs::metadata("/etc/passwd").expect("/etc/passwd");
    (
        fs::read("/etc/passwd").expect("/etc/passwd"),
        meta.nlink(),
        meta.mtime(),
    )
}

#[test]
fn hostile_symlink_to_etc_then_file_passwd() {
    let before = passwd_state();
    let (_env, err) = import_layer_fails(
        Layer::new()
            .symlink("etc", "/etc")
            .file("etc/passwd", b"root::0:0::/:/bin/sh\n")
            .bytes(),
    );
    assert_unsafe(&err, "etc/passwd", "traverses symlink \"etc\"");
    assert_eq!(passwd_state(), before);
}

#[test]
fn hostile_chains_of_dotdot_symlinks() {
    let cases: [(Layer, &str); 4] = [
        (
            Layer::new()
                .symlink("a", "..")
                .symlink("b", "a/..")
                .file("b/escape", b"x"),
            "b/escape",
        ),
        (
            Layer::new()
                .dir("d")
                .dir("d/e")
                .symlink("d/e/up", "../../../../../../..")
                .file("d/e/up/escape", b"x"),
            "d/e/up/escape",
        ),
        (
            Layer::new()
                .symlink("a", "../../..")
                .symlink("b", "a")
                .dir("b/escape.d"),
            "b/escape.d",
        ),
        (
            Layer::new()
                .symlink("a", "..")
                .symlink("a/evil", "/etc/passwd"),
            "a/evil",
        ),
    ];
    for (layer, entry) in cases {
        let (_env, err) = import_layer_fails(layer.bytes());
        assert_unsafe(&err, entry, "traverses symlink");
    }
}

#[test]
fn entries_over_a_symlink_replace_the_link_not_its_target() {
    let env = Env::new();
    let sentinel = sentinel(&env);
    let target = sentinel.display().to_string();
    let victim = sentinel.join("victim").display().to_string();
    let before = passwd_state();
    let fs_dir = import_layer_safely(
        &env,
        Layer::new()
            .symlink("passwd", "/etc/passwd")
            .file("passwd", b"mine")
            .symlink("victim", &victim)
            .entry(Entry::new("victim", EntryType::Fifo))
            .symlink("dir", &target)
            .dir("dir")
            .file("dir/inside", b"inside")
            .bytes(),
    );
    assert_eq!(passwd_state(), before);
    assert_sentinel_intact(&sentinel);
    assert_eq!(fs::read(fs_dir.join("passwd")).expect("file"), b"mine");
    assert!(
        fs::symlink_metadata(fs_dir.join("victim"))
            .expect("node")
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(fs_dir.join("dir"))
            .expect("dir")
            .is_dir()
    );
    assert_eq!(
        fs::read(fs_dir.join("dir/inside")).expect("inside"),
        b"inside"
    );
}

#[test]
fn hardlink_to_a_symlink_pointing_outside_links_the_symlink_itself() {
    let env = Env::new();
    let before = passwd_state();
    let fs_dir = import_layer_safely(
        &env,
        Layer::new()
            .symlink("s", "/etc/passwd")
            .hardlink("h", "s")
            .bytes(),
    );
    assert_eq!(passwd_state(), before, "/etc/passwd gained no link");
    let h = fs::symlink_metadata(fs_dir.join("h")).expect("h");
    assert!(
        h.file_type().is_symlink(),
        "h is the symlink, not its target"
    );
    assert_eq!(
        h.ino(),
        fs::symlink_metadata(fs_dir.join("s")).expect("s").ino()
    );
    assert_eq!(
        fs::read_link(fs_dir.join("h")).expect("target").to_str(),
        Some("/etc/passwd")
    );
}

#[test]
fn hostile_hardlinks_to_the_layer_root_or_through_a_replaced_directory() {
    for root in [".", "./", ""] {
        let (_env, err) = import_layer_fails(Layer::new().hardlink("x", root).bytes());
        assert_unsafe(&err, "x", "hardlink");
    }
    let before = passwd_state();
    let (_env, err) = import_layer_fails(
        Layer::new()
            .dir("d")
            .file("d/passwd", b"mine")
            .symlink("d", "/etc")
            .hardlink("x", "d/passwd")
            .bytes(),
    );
    assert_unsafe(&err, "x", "traverses symlink \"d\"");
    assert_eq!(passwd_state(), before);
}

#[test]
fn setuid_files_keep_their_exact_mode_inside_a_private_layer_dir() {
    let env = Env::new();
    let fs_dir = import_layer_safely(
        &env,
        Layer::new()
            .entry(Entry {
                mode: 0o4755,
                uid: 1000,
                gid: 1000,
                data: b"#!suid",
                ..Entry::new("suid", EntryType::Regular)
            })
            .entry(Entry {
                mode: 0o2711,
                data: b"#!sgid",
                ..Entry::new("sgid", EntryType::Regular)
            })
            .bytes(),
    );
    // Exactly the entry's bits: chown (which clears them) runs before chmod.
    for (name, mode) in [("suid", 0o4755), ("sgid", 0o2711)] {
        let meta = fs::symlink_metadata(fs_dir.join(name)).expect(name);
        assert_eq!(meta.mode() & 0o7777, mode, "{name}");
    }
    // Reachable by root only: unprivileged host users cannot use them.
    for dir in ["layers", "blobs", "tmp"] {
        let mode = fs::metadata(env.store.root().join(dir)).expect(dir).mode();
        assert_eq!(mode & 0o777, 0o700, "{dir}");
    }
    let layer_root = fs_dir.parent().expect("layers/<hex>");
    let mode = fs::metadata(layer_root).expect("layer dir").mode();
    assert_eq!(mode & 0o777, 0o700, "{}", layer_root.display());
}

#[test]
fn setgid_directory_does_not_leak_into_implicit_parents() {
    let env = Env::new();
    let fs_dir = import_layer_safely(
        &env,
        Layer::new()
            .entry(Entry {
                mode: 0o2775,
                gid: 1234,
                ..Entry::new("g", EntryType::Directory)
            })
            .file("g/sub/file", b"x")
            .bytes(),
    );
    let sub = fs::symlink_metadata(fs_dir.join("g/sub")).expect("sub");
    assert_eq!((sub.uid(), sub.gid(), sub.mode() & 0o7777), (0, 0, 0o755));
    let file = fs::symlink_metadata(fs_dir.join("g/sub/file")).expect("file");
    assert_eq!((file.gid(), file.mode() & 0o7777), (0, 0o644));
}

#[test]
fn hostile_path_longer_than_path_max() {
    // 5000 bytes of valid components: each fits NAME_MAX, the whole exceeds PATH_MAX.
    let long = format!("{}file", format!("{}/", "d".repeat(200)).repeat(25));
    let (_env, err) = import_layer_fails(
        Layer::new()
            .pax(&[("path", long.as_bytes())])
            .file("placeholder", b"x")
            .bytes(),
    );
    assert_os_error(&err, libc::ENAMETOOLONG);
    // One component longer than NAME_MAX.
    let name = "n".repeat(300);
    let (_env, err) = import_layer_fails(
        Layer::new()
            .pax(&[("path", name.as_bytes())])
            .file("placeholder", b"x")
            .bytes(),
    );
    assert_os_error(&err, libc::ENAMETOOLONG);
    // A symlink target longer than PATH_MAX.
    let target = "t/".repeat(3000);
    let (_env, err) = import_layer_fails(
        Layer::new()
            .pax(&[("linkpath", target.as_bytes())])
            .symlink("s", "placeholder")
            .bytes(),
    );
    assert_os_error(&err, libc::ENAMETOOLONG);
}

fn assert_os_error(err: &StoreError, errno: i32) {
    match err {
        StoreError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(errno), "{err}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn hostile_nul_bytes_in_pax_paths() {
    let (_env, err) = import_layer_fails(
        Layer::new()
            .pax(&[("path", b"ok\0/../../escape")])
            .file("placeholder", b"x")
            .bytes(),
    );
    assert_unsafe(&err, "ok\0/../../escape", "NUL");
    let (_env, err) = import_layer_fails(
        Layer::new()
            .file("f", b"x")
            .pax(&[("linkpath", b"f\0../../etc/passwd")])
            .hardlink("h", "placeholder")
            .bytes(),
    );
    assert_unsafe(&err, "h", "NUL");
    let (_env, err) = import_layer_fails(
        Layer::new()
            .pax(&[("linkpath", b"/etc/passwd\0junk")])
            .symlink("s", "placeholder")
            .bytes(),
    );
    // The symlink target cannot even be passed to symlink(2).
    match &err {
        StoreError::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{err}")
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn hostile_long_names_override_a_benign_header_name() {
    // A PAX `path` record.
    let (_env, err) = import_layer_fails(
        Layer::new()
            .pax(&[("path", b"../escape")])
            .file("benign", b"x")
            .bytes(),
    );
    assert_unsafe(&err, "../escape", "'..'");
    // A GNU long name (`L`) member.
    let (_env, err) = import_layer_fails(
        Layer::new()
            .entry(Entry {
                path: b"././@LongLink",
                data: b"/etc/hutch-escape\0",
                ..Entry::new("x", EntryType::GNULongName)
            })
            .file("benign", b"x")
            .bytes(),
    );
    assert_unsafe(&err, "/etc/hutch-escape", "absolute");
    assert!(!Path::new("/etc/hutch-escape").exists());
    // A GNU long link name (`K`) on a hardlink.
    let before = passwd_state();
    let (_env, err) = import_layer_fails(
        Layer::new()
            .entry(Entry {
                path: b"././@LongLink",
                data: b"../../../../etc/passwd\0",
                ..Entry::new("x", EntryType::GNULongLink)
            })
            .hardlink("h", "benign")
            .bytes(),
    );
    assert_unsafe(&err, "h", "'..'");
    assert_eq!(passwd_state(), before);
}

#[test]
fn odd_bytes_in_names_stay_inside_the_layer() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    let names: [&[u8]; 6] = [
        b"latin1-\xe9t\xe9",
        b"\xff\xfe",
        b"new\nline",
        b"back\\slash",
        b"-rf *",
        b"tab\there",
    ];
    let mut layer = Layer::new();
    for name in names {
        layer = layer.entry(Entry {
            path: name,
            data: b"odd",
            ..Entry::new("x", EntryType::Regular)
        });
    }
    let fs_dir = import_layer_safely(&env, layer.bytes());
    for name in names {
        assert_eq!(
            fs::read(fs_dir.join(OsStr::from_bytes(name))).expect("odd name"),
            b"odd"
        );
    }
    assert_eq!(fs::read_dir(&fs_dir).expect("ls").count(), names.len());
}

/// The `trusted.overlay.*` xattrs set on `path` (without following symlinks).
fn overlay_xattrs(path: &Path) -> Vec<String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid C string and a buffer whose pointer and length match.
    let len = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "llistxattr {}", path.display());
    buf.truncate(len as usize);
    buf.split(|b| *b == 0)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| n.starts_with("trusted.overlay."))
        .collect()
}

#[test]
fn overlay_xattrs_in_pax_records_are_never_set() {
    let env = Env::new();
    let overlay: [(&str, &[u8]); 10] = [
        // libarchive's spelling, base64 name: not read at all.
        ("LIBARCHIVE.xattr.dHJ1c3RlZC5vdmVybGF5Lm9wYXF1ZQ", b"y"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.trusted.overlay.metacopy", b""),
        ("SCHILY.xattr.trusted.overlay.origin", b"\x00\xfb"),
        ("SCHILY.xattr.trusted.overlay.upper", b"\x00\xfb"),
        ("SCHILY.xattr.trusted.overlay.whiteout", b"y"),
        ("SCHILY.xattr.trusted.overlay.nlink", b"U+1"),
        ("SCHILY.xattr.trusted.overlay.impure", b"y"),
        ("SCHILY.xattr.trusted.hutch-kept", b"1"),
    ];
    let fs_dir = import_layer_safely(
        &env,
        Layer::new()
            .pax(&overlay)
            .dir("dir")
            .pax(&overlay)
            .file("dir/file", b"x")
            .pax(&overlay[..9])
            .symlink("link", "/etc")
            .pax(&overlay)
            .entry(Entry::new("fifo", EntryType::Fifo))
            .bytes(),
    );
    for entry in ["dir", "dir/file", "link", "fifo"] {
        assert_eq!(
            overlay_xattrs(&fs_dir.join(entry)),
            Vec::<String>::new(),
            "{entry}"
        );
    }
    assert_eq!(
        fixture::lgetxattr(&fs_dir.join("dir/file"), "trusted.hutch-kept"),
        None,
        "no trusted.* xattr comes from an image"
    );
}

#[test]
fn hostile_whiteouts_of_invalid_names() {
    for entry in [".wh.", ".wh..", "d/.wh..", ".wh..."] {
        let (_env, err) = import_layer_fails(Layer::new().dir("d").file(entry, b"").bytes());
        assert_unsafe(&err, entry, "whiteout of an invalid name");
    }
}

#[test]
fn hostile_whiteouts_through_a_symlinked_directory() {
    for entry in ["link/.wh.victim", "link/.wh..wh..opq"] {
        let env = Env::new();
        let sentinel = sentinel(&env);
        let img = image(vec![
            Layer::new()
                .symlink("link", &sentinel.display().to_string())
                .file(entry, b"")
                .bytes(),
        ])
        .build();
        let err = import_fails(&env, &env.layout(&img.oci_files("latest")));
        assert_unsafe(&err, entry, "traverses symlink \"link\"");
        assert_sentinel_intact(&sentinel);
    }
}

#[test]
fn whiteout_of_a_symlink_to_a_host_directory_removes_only_the_link() {
    let env = Env::new();
    let sentinel = sentinel(&env);
    let fs_dir = import_layer_safely(
        &env,
        Layer::new()
            .symlink("s", &sentinel.display().to_string())
            .file(".wh.s", b"")
            .symlink("t", &sentinel.join("victim").display().to_string())
            .file(".wh.t", b"")
            .bytes(),
    );
    assert_sentinel_intact(&sentinel);
    for name in ["s", "t"] {
        let meta = fs::symlink_metadata(fs_dir.join(name)).expect("whiteout");
        assert!(meta.file_type().is_char_device(), "{name}");
        assert_eq!(meta.rdev(), 0);
    }
}
