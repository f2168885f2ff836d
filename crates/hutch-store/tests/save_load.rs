//! `Store::save` (OCI archives out of the store), `Store::load` (every named image of an
//! archive in) and `Store::inspect`.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use fixture::{Env, Layer, Packing, image, tar_files};
use hutch_store::{Digest, StoreError};
use serde_json::{Value, json};

fn two_layer_image() -> fixture::Image {
    image(vec![
        Layer::new()
            .dir("etc")
            .file("etc/os-release", b"hutch")
            .bytes(),
        Layer::new()
            .dir("etc")
            .file("etc/.wh.os-release", b"")
            .file("app", b"#!app")
            .bytes(),
    ])
    .cmd(&["/app", "--serve"])
    .build()
}

/// The members of a (plain) tar, by path.
fn members(archive: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut tar = tar::Archive::new(fs::File::open(archive).expect("archive"));
    let mut out = BTreeMap::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        out.insert(path, bytes);
    }
    out
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn saved_archive_is_an_oci_layout_that_imports_back() {
    let env = Env::new();
    let img = two_layer_image();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "ghcr.io/org/app:v1")
        .expect("import");
    let out_dir = env.top.path().join("out");
    fs::create_dir(&out_dir).expect("out dir");
    let archive = out_dir.join("app.tar");
    env.store
        .save("ghcr.io/org/app:v1", &archive)
        .expect("save");
    assert_eq!(dir_names(&out_dir), ["app.tar"], "no temporary file left");

    let files = members(&archive);
    assert_eq!(
        serde_json::from_slice::<Value>(&files["oci-layout"]).expect("oci-layout"),
        json!({"imageLayoutVersion": "1.0.0"})
    );
    let index: Value = serde_json::from_slice(&files["index.json"]).expect("index");
    assert_eq!(index["schemaVersion"], json!(2));
    let entry = &index["manifests"][0];
    assert_eq!(index["manifests"].as_array().expect("list").len(), 1);
    assert_eq!(entry["digest"], json!(img.manifest_digest()));
    assert_eq!(entry["size"], json!(img.manifest.len()));
    assert_eq!(
        entry["annotations"],
        json!({
            "org.opencontainers.image.ref.name": "v1",
            "io.containerd.image.name": "ghcr.io/org/app:v1",
        })
    );
    for (name, bytes) in img.blob_files() {
        assert_eq!(files.get(&name), Some(&bytes), "{name} is in the archive");
    }
    assert_eq!(
        files.len(),
        2 + 2 + img.blob_files().len(),
        "{:?}",
        files.keys()
    );

    // Saving the same record again gives the same bytes.
    let again = out_dir.join("again.tar");
    env.store.save("ghcr.io/org/app:v1", &again).expect("save");
    assert_eq!(fs::read(&archive).expect("a"), fs::read(&again).expect("b"));

    let other = Env::new();
    let copy = other.store.import(&archive, "copy").expect("import back");
    assert_eq!(copy.manifest_digest, imported.manifest_digest);
    assert_eq!(copy.layers, imported.layers);
    assert_eq!(copy.config, imported.config);
    let loaded = other.store.load(&archive).expect("load");
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].name, "ghcr.io/org/app:v1");
    assert_eq!(loaded[0].id, imported.id);
    assert_eq!(other.layer_count(), 2);
}

#[test]
fn save_to_a_stream_writes_the_same_archive() {
    let env = Env::new();
    let img = two_layer_image();
    env.store
        .import(&env.layout(&img.oci_files("latest")), "app")
        .expect("import");
    let file = env.top.path().join("app.tar");
    env.store.save("app", &file).expect("save");
    let mut streamed = Vec::new();
    env.store
        .save_to("app:latest", &mut streamed)
        .expect("save_to");
    assert_eq!(streamed, fs::read(&file).expect("file"));
}

#[test]
fn save_fails_on_a_missing_blob_and_leaves_the_destination_alone() {
    let env = Env::new();
    let img = two_layer_image();
    env.store
        .import(&env.layout(&img.oci_files("latest")), "app")
        .expect("import");
    let out_dir = env.top.path().join("out");
    fs::create_dir(&out_dir).expect("out dir");
    let archive = out_dir.join("app.tar");
    fs::write(&archive, b"previous").expect("previous");
    let err = env.store.save("app", &out_dir).expect_err("a directory");
    assert!(matches!(err, StoreError::Io { .. }), "{err}");

    let layer_blob = Digest::of_bytes(&img.layer_blobs[1]);
    fs::remove_file(env.store.root().join("blobs/sha256").join(layer_blob.hex())).expect("rm");
    match env.store.save("app", &archive) {
        Err(StoreError::BlobMissing { image, digest }) => {
            assert_eq!(image, "app:latest");
            assert_eq!(digest, layer_blob);
        }
        other => panic!("expected BlobMissing, got {other:?}"),
    }
    assert_eq!(fs::read(&archive).expect("kept"), b"previous");
    assert_eq!(dir_names(&out_dir), ["app.tar"]);

    let err = env.store.save("nothere", &archive).expect_err("unknown");
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn save_refuses_to_export_a_corrupt_blob() {
    let env = Env::new();
    let img = two_layer_image();
    env.store
        .import(&env.layout(&img.oci_files("latest")), "app")
        .expect("import");
    let blob = env
        .store
        .root()
        .join("blobs/sha256")
        .join(Digest::of_bytes(&img.layer_blobs[0]).hex());
    let mut bytes = fs::read(&blob).expect("blob");
    bytes[10] ^= 0x55;
    fs::write(&blob, bytes).expect("corrupt");
    let archive = env.top.path().join("app.tar");
    match env.store.save("app", &archive) {
        Err(StoreError::DigestMismatch { expected, .. }) => {
            assert_eq!(expected, Digest::of_bytes(&img.layer_blobs[0]))
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(!archive.exists());
    assert_eq!(
        dir_names(env.top.path()),
        ["src", "store"],
        "no temporary file left"
    );
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn skopeo_and_umoci_read_saved_archives() {
    let env = Env::new();
    let img = two_layer_image();
    env.store
        .import(&env.layout(&img.oci_files("latest")), "tools:v2")
        .expect("import");
    let archive = env.top.path().join("tools.tar");
    env.store.save("tools:v2", &archive).expect("save");

    if have("skopeo") {
        let out = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display()))
            .output()
            .expect("skopeo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let inspected: Value = serde_json::from_slice(&out.stdout).expect("skopeo json");
        assert_eq!(inspected["Digest"], json!(img.manifest_digest()));
        let layers: Vec<Value> = img
            .layer_blobs
            .iter()
            .map(|b| json!(Digest::of_bytes(b)))
            .collect();
        assert_eq!(inspected["Layers"], json!(layers));
        assert_eq!(inspected["Os"], json!("linux"));
    } else {
        eprintln!("skopeo is not installed; skipping its check");
    }

    if have("umoci") {
        let layout = env.top.path().join("layout");
        fs::create_dir(&layout).expect("layout");
        tar::Archive::new(fs::File::open(&archive).expect("archive"))
            .unpack(&layout)
            .expect("unpack");
        let out = Command::new("umoci")
            .args(["ls", "--layout"])
            .arg(&layout)
            .output()
            .expect("umoci");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v2");
        let out = Command::new("umoci")
            .args(["stat", "--json", "--image"])
            .arg(format!("{}:v2", layout.display()))
            .output()
            .expect("umoci stat");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("umoci is not installed; skipping its check");
    }
}

/// An OCI layout holding `images`, each listed with the given annotations.
fn oci_layout_files(images: &[(&fixture::Image, Value)]) -> Vec<(String, Vec<u8>)> {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(img, annotations)| {
            let mut d =
                fixture::descriptor("application/vnd.oci.image.manifest.v1+json", &img.manifest);
            d["annotations"] = annotations.clone();
            d
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_string(),
            serde_json::to_vec(&index).expect("index"),
        ),
    ];
    for (img, _) in images {
        files.extend(img.blob_files());
    }
    files
}

#[test]
fn load_names_each_image_of_an_oci_archive() {
    let env = Env::new();
    let a = image(vec![Layer::new().file("a", b"a").bytes()])
        .cmd(&["a"])
        .build();
    let b = image(vec![Layer::new().file("b", b"b").bytes()])
        .cmd(&["b"])
        .build();
    let c = image(vec![Layer::new().file("c", b"c").bytes()])
        .cmd(&["c"])
        .build();
    // Both share the tag `latest`; only their full names tell them apart.
    let files = oci_layout_files(&[
        (
            &a,
            json!({"org.opencontainers.image.ref.name": "latest",
                   "io.containerd.image.name": "docker.io/library/a:latest"}),
        ),
        (
            &b,
            json!({"org.opencontainers.image.ref.name": "latest",
                   "io.containerd.image.name": "ghcr.io/x/b:latest"}),
        ),
        (
            &c,
            json!({"org.opencontainers.image.ref.name": "docker.io/library/cee:1.36"}),
        ),
    ]);
    for (source, label) in [
        (env.archive(&tar_files(&files, Packing::Gzip)), "archive"),
        (env.layout(&files), "layout"),
    ] {
        let loaded = env.store.load(&source).expect(label);
        let names: Vec<&str> = loaded.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["a:latest", "ghcr.io/x/b:latest", "cee:1.36"],
            "{label}"
        );
        assert_eq!(loaded[0].config.cmd, Some(vec!["a".to_string()]));
        assert_eq!(loaded[1].config.cmd, Some(vec!["b".to_string()]));
        assert_eq!(loaded[2].config.cmd, Some(vec!["c".to_string()]));
    }
    assert_eq!(env.store.images().expect("ls").len(), 3);
    assert_eq!(env.layer_count(), 3);
}

#[test]
fn load_names_a_docker_save_archive_by_its_repo_tags() {
    let env = Env::new();
    let img = two_layer_image();
    let mut files = img.docker_files("app:1");
    let mut manifest: Value = serde_json::from_slice(&files[0].1).expect("manifest");
    manifest[0]["RepoTags"] = json!(["app:1", "docker.io/library/app:latest", "app:1"]);
    files[0].1 = serde_json::to_vec(&manifest).expect("json");
    let archive = env.archive(&tar_files(&files, Packing::Plain));

    let loaded = env.store.load(&archive).expect("load");
    let names: Vec<&str> = loaded.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["app:1", "app:latest"]);
    assert_eq!(loaded[0].id, loaded[1].id);
    assert_eq!(loaded[0].layers, loaded[1].layers);
    assert_eq!(
        env.store.image("app:latest").expect("second name"),
        loaded[1]
    );
    assert_eq!(env.layer_count(), 2, "layers are stored once");

    // Loading again replaces the records and keeps everything consistent.
    env.store.load(&archive).expect("load again");
    assert_eq!(env.store.images().expect("ls").len(), 2);
    env.store.remove_image("app:1").expect("rm");
    assert_eq!(env.layer_count(), 2, "still used by app:latest");
    env.store.remove_image("app:latest").expect("rm");
    env.assert_store_empty();
}

#[test]
fn load_without_names_asks_for_an_explicit_name() {
    let env = Env::new();
    let img = two_layer_image();
    // A bare tag is not a name.
    let oci = env.archive(&tar_files(&img.oci_files("latest"), Packing::Plain));
    let mut docker = img.docker_files("x:1");
    let mut manifest: Value = serde_json::from_slice(&docker[0].1).expect("manifest");
    manifest[0]["RepoTags"] = Value::Null;
    docker[0].1 = serde_json::to_vec(&manifest).expect("json");
    let docker = env.archive(&tar_files(&docker, Packing::Gzip));
    for source in [&oci, &docker] {
        match env.store.load(source) {
            Err(err @ StoreError::Unnamed { .. }) => {
                assert!(
                    err.to_string().contains("hutch image import --name"),
                    "{err}"
                )
            }
            other => panic!("expected Unnamed, got {other:?}"),
        }
    }
    env.assert_store_empty();

    let junk = env.src.join("junk");
    fs::write(&junk, "not an archive at all").expect("junk");
    assert!(matches!(
        env.store.load(&junk),
        Err(StoreError::NotAnImage { .. })
    ));
    assert!(matches!(
        env.store.load(&env.src.join("missing")),
        Err(StoreError::NotAnImage { .. })
    ));
    env.assert_store_empty();
}

#[test]
fn inspect_adds_layer_blobs_and_sizes() {
    let env = Env::new();
    let img = two_layer_image();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "app")
        .expect("import");
    let inspection = env.store.inspect("app").expect("inspect");
    assert_eq!(inspection.image, imported);
    assert_eq!(inspection.layer_details.len(), 2);
    for (i, layer) in inspection.layer_details.iter().enumerate() {
        assert_eq!(layer.diff_id, img.diff_ids[i]);
        assert_eq!(layer.blob, Digest::of_bytes(&img.layer_blobs[i]));
        assert_eq!(layer.blob_size, Some(img.layer_blobs[i].len() as u64));
        assert_eq!(
            layer.media_type.as_deref(),
            Some("application/vnd.oci.image.layer.v1.tar+gzip")
        );
    }
    assert_eq!(inspection.layer_details[0].size_bytes, Some(5));
    assert_eq!(inspection.layer_details[1].size_bytes, Some(5));
    assert_eq!(inspection.os.as_deref(), Some("linux"));
    let json = serde_json::to_value(&inspection).expect("json");
    assert_eq!(json["name"], json!("app:latest"));
    assert_eq!(
        json["layer_details"][1]["blob"],
        json!(Digest::of_bytes(&img.layer_blobs[1]))
    );

    fs::remove_dir_all(env.store.root().join("layers").join(img.diff_ids[1].hex()))
        .expect("rm layer");
    let inspection = env.store.inspect("app").expect("inspect a broken image");
    assert_eq!(inspection.layer_details[1].size_bytes, None);
    assert!(
        env.store
            .inspect("nothere")
            .expect_err("unknown")
            .is_not_found()
    );
}
