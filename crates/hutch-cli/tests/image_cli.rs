//! `hutch image save / load / inspect / fsck / prune` end to end. Each test has a store of
//! its own: they remove and corrupt images, which the store shared by the other tests must
//! never see.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Home, stderr, stdout};
use serde_json::Value;

/// A home whose store is private, with the busybox fixture imported.
fn private_home() -> Home {
    let home = Home::private();
    let out = home
        .hutch()
        .args(["image", "import"])
        .arg(common::fixtures().join("busybox"))
        .args(["--name", "busybox"])
        .output()
        .unwrap();
    assert!(out.status.success(), "import: {}", stderr(&out));
    home
}

fn inspect_json(home: &Home) -> Value {
    let out = home.run(&["image", "inspect", "busybox", "--json"]);
    assert!(out.status.success(), "inspect: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn save_rm_load_then_run() {
    let home = private_home();
    let before = inspect_json(&home);
    let archive = home.path().join("busybox.tar");
    let archive_arg = archive.to_str().unwrap();

    let out = home.run(&["image", "save", "busybox", "-o", archive_arg]);
    assert!(out.status.success(), "save: {}", stderr(&out));
    assert!(stdout(&out).contains("saved busybox"), "{}", stdout(&out));
    let streamed = home.run(&["image", "save", "busybox", "-o", "-"]);
    assert!(streamed.status.success(), "save -: {}", stderr(&streamed));
    assert_eq!(streamed.stdout, std::fs::read(&archive).unwrap());

    if Command::new("skopeo").arg("--version").output().is_ok() {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{archive_arg}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {}", stderr(&out));
        let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(inspected["Digest"], before["manifest_digest"]);
    }

    let out = home.run(&["image", "rm", "busybox"]);
    assert!(out.status.success(), "rm: {}", stderr(&out));
    assert!(!stdout(&home.run(&["image", "ls"])).contains("busybox"));

    let out = home.run(&["image", "load", archive_arg]);
    assert!(out.status.success(), "load: {}", stderr(&out));
    let id = before["id"].as_str().unwrap();
    assert_eq!(stdout(&out), format!("busybox:latest\t{id}\n"));

    let after = inspect_json(&home);
    for field in [
        "name",
        "id",
        "manifest_digest",
        "layers",
        "config",
        "layer_details",
    ] {
        assert_eq!(after[field], before[field], "{field}");
    }
    let layers = after["layer_details"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "the busybox fixture has two layers");
    for layer in layers {
        assert!(layer["blob"].as_str().unwrap().starts_with("sha256:"));
        assert!(layer["size_bytes"].as_u64().is_some(), "{layer}");
    }
    let human = home.run(&["image", "inspect", "busybox"]);
    assert!(human.status.success(), "{}", stderr(&human));
    let text = stdout(&human);
    for expected in ["Name:       busybox:latest", id, "Layers:     2", "Cmd:"] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    let run = home.run(&["run", "busybox", "--", "echo", "loaded"]);
    assert!(run.status.success(), "run: {}", stderr(&run));
    assert_eq!(stdout(&run), "loaded\n");
    home.assert_clean();

    let missing = home.run(&[
        "image",
        "load",
        home.path().join("nothing").to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(125));
    assert!(
        stderr(&missing).starts_with("hutch: "),
        "{}",
        stderr(&missing)
    );
}

fn blob_path(home: &Home, digest: &Value) -> PathBuf {
    let hex = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
    home.path().join("store/blobs/sha256").join(hex)
}

#[test]
fn fsck_finds_a_corrupted_blob() {
    let home = private_home();
    let clean = home.run(&["image", "fsck"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    assert!(stdout(&clean).contains("the store is clean"));

    let layer_blob = inspect_json(&home)["layer_details"][1]["blob"].clone();
    let path = blob_path(&home, &layer_blob);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let found = home.run(&["image", "fsck"]);
    assert_eq!(found.status.code(), Some(1), "{}", stdout(&found));
    let text = stdout(&found);
    assert!(text.contains("corrupt_blob"), "{text}");
    assert!(text.contains(layer_blob.as_str().unwrap()), "{text}");
    assert!(text.contains("--repair"), "{text}");

    let json = home.run(&["image", "fsck", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["clean"], Value::Bool(false));
    assert_eq!(report["findings"][0]["kind"], "corrupt_blob");
    assert_eq!(report["findings"][0]["subject"], layer_blob);
    assert_eq!(report["broken_images"][0], "busybox:latest");

    let save = home.run(&[
        "image",
        "save",
        "busybox",
        "-o",
        home.path().join("x.tar").to_str().unwrap(),
    ]);
    assert_eq!(save.status.code(), Some(125));
    assert!(
        stderr(&save).starts_with("hutch: digest mismatch"),
        "{}",
        stderr(&save)
    );
    assert!(!home.path().join("x.tar").exists());

    // Repair deletes the corrupt blob; the image keeps its layers but cannot be saved until
    // it is re-imported, so a problem remains.
    let repair = home.run(&["image", "fsck", "--repair"]);
    assert_eq!(repair.status.code(), Some(1), "{}", stdout(&repair));
    let text = stdout(&repair);
    assert!(text.contains("(repaired)"), "{text}");
    assert!(text.contains("broken images: busybox:latest"), "{text}");
    assert!(!path.exists());

    let out = home
        .hutch()
        .args(["image", "import"])
        .arg(common::fixtures().join("busybox"))
        .args(["--name", "busybox"])
        .output()
        .unwrap();
    assert!(out.status.success(), "re-import: {}", stderr(&out));
    let mended = home.run(&["image", "fsck"]);
    assert_eq!(mended.status.code(), Some(0), "{}", stdout(&mended));

    let prune = home.run(&["image", "prune"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert!(
        stdout(&prune).starts_with("freed 0 layer(s) and 0 blob(s)"),
        "{}",
        stdout(&prune)
    );
}
