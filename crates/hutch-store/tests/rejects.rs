//! Imports that must fail: corrupt or non-image sources and hostile layer tars. Every test
//! checks the typed error, that the store is left exactly empty, and that nothing appeared
//! anywhere else.

mod fixture;

use std::fs;
use std::os::unix::fs::MetadataExt;
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
