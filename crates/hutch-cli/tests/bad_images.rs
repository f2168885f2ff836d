//! Importing things that are not images, or hostile ones, fails clearly and stores nothing.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use common::{Home, stderr};

#[test]
fn a_path_that_is_not_an_image_is_refused() {
    let home = Home::new();
    let file = home.path().join("notes.txt");
    std::fs::write(&file, "hello").unwrap();
    let empty = home.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for path in [&file, &empty] {
        let out = home
            .hutch()
            .args(["image", "import"])
            .arg(path)
            .args(["--name", "junk"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("not an importable image"),
            "{}",
            stderr(&out)
        );
    }
    let ls = home.run(&["image", "ls"]);
    assert!(!common::stdout(&ls).contains("junk"));
}

/// An OCI layout whose only layer holds `entry`.
fn hostile_layout(dir: &std::path::Path, entry: &str) {
    use sha2::{Digest, Sha256};
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    // Bypass the tar crate's own path checks: hostile archives do not use them.
    let name = entry.as_bytes();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_cksum();
    layer.append(&header, &b"evil"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let blob = gz.finish().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    })
    .to_string();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = format!("{:x}", Sha256::digest(bytes));
        std::fs::write(blobs.join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(&blob);
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}]
    })
    .to_string();
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size}]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

#[test]
fn hostile_layer_entries_are_refused_and_nothing_lands_outside() {
    let home = Home::new();
    for (i, entry) in ["../../../../tmp/hutch-escape", "/tmp/hutch-escape-abs"]
        .iter()
        .enumerate()
    {
        let layout = home.path().join(format!("hostile{i}"));
        hostile_layout(&layout, entry);
        let out = home
            .hutch()
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", &format!("hostile{i}")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{entry} was accepted");
        assert!(
            stderr(&out).contains(entry.trim_start_matches('/')),
            "{}",
            stderr(&out)
        );
        assert!(!std::path::Path::new("/tmp/hutch-escape").exists());
        assert!(!std::path::Path::new("/tmp/hutch-escape-abs").exists());
        let ls = home.run(&["image", "ls"]);
        assert!(!common::stdout(&ls).contains(&format!("hostile{i}")));
    }
}
