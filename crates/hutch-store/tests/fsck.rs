//! `Store::fsck`: what it finds in a damaged store, what repair mends, and what it leaves
//! reported (images it cannot mend are never deleted).

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::fs;
use std::path::PathBuf;

use fixture::{Env, Layer, image};
use hutch_store::{Digest, FindingKind, FsckReport, Image, StoreError};

fn kinds(report: &FsckReport) -> Vec<(FindingKind, String)> {
    report
        .findings
        .iter()
        .map(|f| (f.kind, f.subject.clone()))
        .collect()
}

struct Imported {
    env: Env,
    img: fixture::Image,
    image: Image,
}

fn imported() -> Imported {
    let env = Env::new();
    let img = image(vec![
        Layer::new().dir("bin").file("bin/sh", b"#!sh").bytes(),
        Layer::new().file("app", b"app").bytes(),
    ])
    .build();
    let image = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "app")
        .expect("import");
    Imported { env, img, image }
}

impl Imported {
    fn blob(&self, bytes: &[u8]) -> PathBuf {
        self.env
            .store
            .root()
            .join("blobs/sha256")
            .join(Digest::of_bytes(bytes).hex())
    }

    fn layer(&self, i: usize) -> PathBuf {
        self.env
            .store
            .root()
            .join("layers")
            .join(self.img.diff_ids[i].hex())
    }
}

fn flip_a_byte(path: &std::path::Path) {
    let mut bytes = fs::read(path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(path, bytes).expect("write");
}

#[test]
fn a_healthy_store_is_clean() {
    let t = imported();
    let report = t.env.store.fsck(false).expect("fsck");
    assert_eq!(report, FsckReport::default());
    assert!(report.is_clean());
    assert_eq!(
        t.env.store.fsck(true).expect("repair"),
        FsckReport::default()
    );
}

#[test]
fn a_corrupt_blob_is_found_and_repair_removes_it() {
    let t = imported();
    let config = t.blob(&t.img.config);
    flip_a_byte(&config);
    let report = t.env.store.fsck(false).expect("fsck");
    assert!(!report.is_clean());
    let id = t.image.id.to_string();
    assert_eq!(
        kinds(&report),
        [
            (FindingKind::CorruptBlob, id.clone()),
            (FindingKind::MissingBlob, "app:latest".to_string()),
        ]
    );
    assert!(report.findings[1].detail.contains("corrupt"), "{report:?}");
    assert!(config.exists(), "a check alone changes nothing");

    let repaired = t.env.store.fsck(true).expect("repair");
    assert!(repaired.findings[0].repaired, "{repaired:?}");
    assert!(!repaired.findings[1].repaired);
    assert!(!config.exists(), "the corrupt blob is gone");
    assert_eq!(repaired.broken_images(), ["app:latest"]);

    // The image is reported, not deleted; re-importing it mends the store.
    let again = t.env.store.fsck(false).expect("fsck");
    assert_eq!(
        kinds(&again),
        [(FindingKind::MissingBlob, "app:latest".to_string())]
    );
    assert!(t.env.store.image("app").is_ok());
    t.env
        .store
        .import(&t.env.layout(&t.img.oci_files("latest")), "app")
        .expect("re-import");
    assert!(t.env.store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn a_deleted_layer_is_found_and_unpacked_again_from_its_blob() {
    let t = imported();
    let layer = t.layer(1);
    fs::remove_dir_all(&layer).expect("rm layer");
    let report = t.env.store.fsck(false).expect("fsck");
    assert_eq!(
        kinds(&report),
        [(FindingKind::MissingLayer, "app:latest".to_string())]
    );
    assert!(
        report.findings[0]
            .detail
            .contains(&t.img.diff_ids[1].to_string())
    );
    assert_eq!(report.broken_images(), ["app:latest"]);

    let repaired = t.env.store.fsck(true).expect("repair");
    assert!(repaired.is_clean(), "{repaired:?}");
    assert_eq!(repaired.findings.len(), 1);
    assert_eq!(
        fs::read(layer.join("fs/app")).expect("restored file"),
        b"app"
    );
    assert_eq!(
        t.env.store.fsck(false).expect("fsck"),
        FsckReport::default()
    );
    assert!(t.env.store.has_layer(&t.img.diff_ids[1]));
}

#[test]
fn a_layer_without_its_blob_leaves_the_image_reported_broken() {
    let t = imported();
    fs::remove_dir_all(t.layer(0)).expect("rm layer");
    flip_a_byte(&t.blob(&t.img.layer_blobs[0]));
    let repaired = t.env.store.fsck(true).expect("repair");
    let summary: Vec<(FindingKind, bool)> = repaired
        .findings
        .iter()
        .map(|f| (f.kind, f.repaired))
        .collect();
    assert_eq!(
        summary,
        [
            (FindingKind::CorruptBlob, true),
            (FindingKind::MissingBlob, false),
            (FindingKind::MissingLayer, false),
        ],
        "{repaired:?}"
    );
    let after = t.env.store.fsck(true).expect("second repair");
    assert!(!after.is_clean());
    assert!(after.findings.iter().all(|f| !f.repaired));
    assert_eq!(after.broken_images(), ["app:latest"]);
    assert!(
        t.env.store.image("app").is_ok(),
        "repair never deletes records"
    );
    let err = t
        .env
        .store
        .save("app", &t.env.top.path().join("x.tar"))
        .expect_err("cannot save");
    assert!(matches!(err, StoreError::BlobMissing { .. }), "{err}");
}

#[test]
fn incomplete_layers_stray_entries_and_stale_tmp_are_repaired() {
    let t = imported();
    let root = t.env.store.root().to_path_buf();
    // An unpack that never finished: no layer.json.
    fs::remove_file(t.layer(1).join("layer.json")).expect("rm layer.json");
    // A record for some other layer.
    let other = root.join("layers").join(Digest::of_bytes(b"other").hex());
    fs::create_dir_all(other.join("fs")).expect("other");
    fs::copy(t.layer(0).join("layer.json"), other.join("layer.json")).expect("copy");
    fs::write(root.join("blobs/sha256/not-a-digest"), b"junk").expect("junk blob");
    fs::create_dir(root.join("layers/junk")).expect("junk layer");
    let dead = root.join("tmp/import-1-2-3");
    fs::create_dir_all(dead.join("layers")).expect("dead");
    fs::write(dead.join(".lock"), b"").expect("lock");

    let report = t.env.store.fsck(false).expect("fsck");
    // Layers are checked in the order of their directory names.
    let mut incomplete = [
        Digest::of_bytes(b"other").to_string(),
        t.img.diff_ids[1].to_string(),
    ];
    incomplete.sort();
    assert_eq!(
        kinds(&report),
        [
            (FindingKind::StaleTmp, "tmp/import-1-2-3".to_string()),
            (
                FindingKind::StrayEntry,
                "blobs/sha256/not-a-digest".to_string()
            ),
            (FindingKind::IncompleteLayer, incomplete[0].clone()),
            (FindingKind::IncompleteLayer, incomplete[1].clone()),
            (FindingKind::StrayEntry, "layers/junk".to_string()),
            (FindingKind::MissingLayer, "app:latest".to_string()),
        ],
        "{report:#?}"
    );

    let repaired = t.env.store.fsck(true).expect("repair");
    assert!(repaired.is_clean(), "{repaired:#?}");
    assert!(!dead.exists() && !other.exists() && !root.join("layers/junk").exists());
    assert!(!root.join("blobs/sha256/not-a-digest").exists());
    assert!(t.layer(1).join("layer.json").is_file(), "unpacked again");
    assert_eq!(
        t.env.store.fsck(false).expect("fsck"),
        FsckReport::default()
    );
    assert_eq!(
        fs::read_dir(root.join("tmp")).expect("tmp").count(),
        0,
        "repair leaves no staging behind"
    );
}

#[test]
fn bad_records_and_pins_are_reported_and_kept() {
    let t = imported();
    let root = t.env.store.root().to_path_buf();
    fs::write(root.join("images/broken:latest.json"), b"{nope").expect("record");
    let mut misnamed = t.image.clone();
    misnamed.name = "elsewhere:latest".into();
    fs::write(
        root.join("images/app:v2.json"),
        serde_json::to_vec(&misnamed).expect("json"),
    )
    .expect("misnamed");
    t.env.store.pin("sbx-1", &t.image.layers).expect("pin");
    fs::write(root.join("pins/sbx-2.json"), b"[").expect("bad pin");
    fs::remove_dir_all(t.layer(0)).expect("rm layer");
    fs::remove_file(t.blob(&t.img.layer_blobs[0])).expect("rm blob");

    let report = t.env.store.fsck(true).expect("repair");
    let subjects: Vec<(FindingKind, &str, bool)> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.subject.as_str(), f.repaired))
        .collect();
    assert_eq!(
        subjects,
        [
            (FindingKind::MissingBlob, "app:latest", false),
            (FindingKind::MissingLayer, "app:latest", false),
            (FindingKind::CorruptRecord, "images/app:v2.json", false),
            (
                FindingKind::CorruptRecord,
                "images/broken:latest.json",
                false
            ),
            (FindingKind::DanglingPin, "sbx-1", false),
            (FindingKind::DanglingPin, "pins/sbx-2.json", false),
        ],
        "{report:#?}"
    );
    assert!(root.join("images/broken:latest.json").exists());
    assert!(root.join("pins/sbx-2.json").exists());
    assert!(root.join("pins/sbx-1.json").exists());
}
