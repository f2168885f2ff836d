//! Layer sharing, removal, pins and gc, name handling and staging cleanup.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::fs;

use fixture::{Env, Layer, image};
use hutch_store::{Removal, Store, StoreError};

#[test]
fn shared_layers_are_stored_once_and_freed_last() {
    let env = Env::new();
    let base = Layer::new()
        .dir("etc")
        .file("etc/os-release", b"hutch")
        .bytes();
    let a = image(vec![base.clone(), Layer::new().file("a", b"aaaa").bytes()]).build();
    let b = image(vec![base, Layer::new().file("b", b"bb").bytes()]).build();
    let image_a = env
        .store
        .import(&env.layout(&a.oci_files("latest")), "a")
        .expect("a");
    let image_b = env
        .store
        .import(&env.layout(&b.oci_files("latest")), "b")
        .expect("b");
    assert_eq!(a.diff_ids[0], b.diff_ids[0]);
    assert_eq!(env.layer_count(), 3, "the base layer is stored once");
    let names: Vec<String> = env
        .store
        .images()
        .expect("ls")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["a:latest", "b:latest"]);

    let removed = env.store.remove_image("a").expect("rm a");
    assert_eq!(removed.layers_freed, 1);
    assert!(removed.bytes_freed >= 4);
    assert!(
        env.store.layer_dir(&a.diff_ids[0]).is_dir(),
        "shared base kept"
    );
    assert!(!env.store.layer_dir(&a.diff_ids[1]).exists());
    assert!(env.store.image("a").expect_err("gone").is_not_found());
    assert_eq!(env.store.image("b").expect("b"), image_b);

    env.store.pin("sbx-1", &image_b.layers).expect("pin");
    assert_eq!(env.store.holders("b").expect("holders"), ["sbx-1"]);
    let removed = env.store.remove_image("b:latest").expect("rm b");
    assert_eq!(removed.layers_freed, 0, "pinned layers stay");
    assert_eq!(
        removed.blobs_freed, 4,
        "blobs of b go: manifest, config, 2 layers"
    );
    assert!(env.store.layer_dir(&image_b.layers[0]).is_dir());
    assert!(env.store.layer_dir(&image_b.layers[1]).is_dir());
    assert_eq!(env.store.gc().expect("gc"), Removal::default());

    env.store.unpin("sbx-1").expect("unpin");
    env.store.unpin("sbx-1").expect("unpin is idempotent");
    let freed = env.store.gc().expect("gc");
    assert_eq!(freed.layers_freed, 2);
    assert_eq!(freed.bytes_freed, (b"hutch".len() + b"bb".len()) as u64);
    env.assert_store_empty();
    drop(image_a);
}

#[test]
fn pins_require_present_layers_and_valid_holders() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "p")
        .expect("import");
    let missing = hutch_store::Digest::of_bytes(b"no such layer");
    let err = env.store.pin("sbx", &[missing]).expect_err("missing layer");
    assert!(matches!(err, StoreError::LayerMissing { .. }), "{err}");
    assert!(err.is_not_found());
    for bad in ["", "../x", "a/b", ".hidden"] {
        let err = env
            .store
            .pin(bad, &imported.layers)
            .expect_err("bad holder");
        assert!(matches!(err, StoreError::InvalidName { .. }), "{err}");
    }
    env.store.pin("sbx", &imported.layers).expect("pin");
    // Re-pinning replaces the holder's set.
    env.store.pin("sbx", &[]).expect("repin");
    env.store.remove_image("p").expect("rm");
    assert_eq!(env.layer_count(), 0);
}

#[test]
fn names_are_normalized_and_validated() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    let dir = env.layout(&img.oci_files("latest"));
    let imported = env.store.import(&dir, "ghcr.io/org/tool").expect("import");
    assert_eq!(imported.name, "ghcr.io/org/tool:latest");
    assert!(
        env.store
            .root()
            .join("images/ghcr.io+org+tool:latest.json")
            .is_file()
    );
    assert_eq!(
        env.store.image("ghcr.io/org/tool:latest").expect("full"),
        imported
    );

    for bad in ["Upper", "../../etc/passwd", "a@sha256:00", "x:"] {
        let err = env.store.import(&dir, bad).expect_err("bad name");
        assert!(
            matches!(err, StoreError::InvalidName { .. }),
            "{bad}: {err}"
        );
        assert!(matches!(
            env.store.image(bad),
            Err(StoreError::InvalidName { .. })
        ));
    }
    let err = env.store.remove_image("nothere").expect_err("missing");
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("nothere:latest"));
}

#[test]
fn open_cleans_abandoned_staging_but_not_live_imports() {
    let env = Env::new();
    let tmp = env.store.root().join("tmp");
    // An import that died: its staging lock file exists but nobody holds it.
    let dead = tmp.join("import-1-2-3");
    fs::create_dir_all(dead.join("layers/x/fs")).expect("dead");
    fs::write(dead.join(".lock"), b"").expect("lock");
    // A live one: the lock is held by this open file.
    let live = tmp.join("import-4-5-6");
    fs::create_dir(&live).expect("live");
    let held = fs::File::create(live.join(".lock")).expect("lock");
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor owned by `held`, alive for the call.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    }
    // A temporary file of an interrupted atomic write.
    fs::write(tmp.join("write-1-2-3"), b"partial").expect("write");

    Store::open(env.store.root()).expect("reopen");
    assert!(!dead.exists(), "abandoned staging removed");
    assert!(live.exists(), "live staging kept");
    assert!(!tmp.join("write-1-2-3").exists());
    drop(held);
    Store::open(env.store.root()).expect("reopen");
    assert!(!live.exists());
}

#[test]
fn corrupt_records_are_reported_not_collected_around() {
    let env = Env::new();
    let img = image(vec![Layer::new().file("f", b"x").bytes()]).build();
    env.store
        .import(&env.layout(&img.oci_files("latest")), "ok")
        .expect("import");
    fs::write(
        env.store.root().join("images/broken:latest.json"),
        b"{not json",
    )
    .expect("write");
    assert!(matches!(
        env.store.images(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(env.store.gc(), Err(StoreError::Corrupt { .. })));
    assert_eq!(
        env.layer_count(),
        1,
        "nothing collected while a record is unreadable"
    );
    env.store
        .remove_image("broken")
        .expect("a corrupt record can still be removed");
    assert_eq!(env.store.images().expect("ls").len(), 1);
}
