//! Successful imports from every source kind, and the fidelity of unpacked layers
//! (whiteouts, opaque dirs, owners, modes, times, xattrs, links, devices).

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use fixture::{Entry, Env, Layer, Packing, image, tar_files};
use hutch_store::Store;
use serde_json::json;
use tar::EntryType;

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("bin")
        .file("bin/sh", b"#!shell")
        .dir("etc")
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/obsolete", b"old")
        .dir("var")
        .dir("var/cache")
        .file("var/cache/a", b"cached")
        .bytes()
}

fn top_layer() -> Vec<u8> {
    Layer::new()
        .dir("etc")
        .file("etc/.wh.obsolete", b"")
        .dir("var/cache")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/b", b"fresh")
        .bytes()
}

#[test]
fn oci_layout_with_whiteouts_and_opaque_dirs() {
    let env = Env::new();
    let img = image(vec![base_layer(), top_layer()]).build();
    let dir = env.layout(&img.oci_files("latest"));

    let imported = env.store.import(&dir, "busybox").expect("import");
    assert_eq!(imported.name, "busybox:latest");
    assert_eq!(imported.id, img.config_digest());
    assert_eq!(imported.manifest_digest, img.manifest_digest());
    assert_eq!(imported.layers, img.diff_ids);
    assert_eq!(imported.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(imported.config.env, ["PATH=/usr/bin:/bin", "HOME=/root"]);
    assert_eq!(imported.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(imported.config.user.as_deref(), Some("1000:1000"));
    let expected_size = (b"#!shell".len()
        + b"root:x:0:0::/root:/bin/sh\n".len()
        + b"old".len()
        + b"cached".len()
        + b"fresh".len()) as u64;
    assert_eq!(imported.size_bytes, expected_size);
    assert_eq!(env.store.image("busybox:latest").expect("lookup"), imported);

    let base = env.store.layer_dir(&img.diff_ids[0]);
    let top = env.store.layer_dir(&img.diff_ids[1]);
    assert_eq!(
        fs::read(base.join("etc/obsolete")).expect("base file"),
        b"old"
    );
    let whiteout = fs::symlink_metadata(top.join("etc/obsolete")).expect("whiteout");
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!top.join("etc/.wh.obsolete").exists());
    assert_eq!(
        fixture::lgetxattr(&top.join("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(fs::read(top.join("var/cache/b")).expect("b"), b"fresh");
    assert_eq!(
        env.store.lower_dirs(&imported),
        vec![top.clone(), base.clone()]
    );

    let layer_json: serde_json::Value = serde_json::from_slice(
        &fs::read(top.parent().expect("layer dir").join("layer.json")).expect("layer.json"),
    )
    .expect("json");
    assert_eq!(layer_json["diff_id"], json!(img.diff_ids[1]));
    for blob in img.blob_files() {
        assert!(
            env.store.root().join(&blob.0).is_file(),
            "{} stored",
            blob.0
        );
    }
    assert_eq!(
        fs::read_dir(env.store.root().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert!(
        env.store
            .root()
            .join("images/busybox:latest.json")
            .is_file()
    );
}

#[test]
fn docker_save_archive() {
    let env = Env::new();
    let img = image(vec![base_layer(), top_layer()])
        .packing(Packing::Plain)
        .build();
    let archive = env.archive(&tar_files(
        &img.docker_files("docker.io/library/app:1.0"),
        Packing::Plain,
    ));
    let imported = env.store.import(&archive, "app:1.0").expect("import");
    assert_eq!(imported.layers, img.diff_ids);
    assert_eq!(imported.id, img.config_digest());
    let top = env.store.layer_dir(&img.diff_ids[1]);
    assert!(
        fs::symlink_metadata(top.join("etc/obsolete"))
            .expect("whiteout")
            .file_type()
            .is_char_device()
    );
    // The synthesized manifest is stored like any other blob.
    let manifest = env
        .store
        .root()
        .join("blobs/sha256")
        .join(imported.manifest_digest.hex());
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(manifest).expect("manifest")).expect("json");
    assert_eq!(manifest["config"]["digest"], json!(img.config_digest()));
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        json!("application/vnd.oci.image.layer.v1.tar")
    );
}

#[test]
fn gzip_docker_save_archive_with_gzip_layers_and_duplicate_symlinked_layer() {
    let env = Env::new();
    let img = image(vec![base_layer(), base_layer()]).build();
    let mut files = img.docker_files("app:dup");
    // Old docker versions store a repeated layer once and symlink the second copy to it.
    let first = files[2].0.clone();
    let second = files.remove(3).0;
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, &bytes[..])
            .expect("file");
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(EntryType::Symlink);
    header.set_size(0);
    let target = format!("../{first}");
    builder
        .append_link(&mut header, &second, &target)
        .expect("symlink");
    let archive = env.archive(&fixture::gzip(&builder.into_inner().expect("tar")));

    let imported = env.store.import(&archive, "app:dup").expect("import");
    assert_eq!(imported.layers.len(), 2);
    assert_eq!(env.layer_count(), 1);
}

#[test]
fn oci_archive_plain_and_gzip() {
    let env = Env::new();
    let img = image(vec![base_layer(), top_layer()]).build();
    for (packing, name) in [(Packing::Plain, "plain:v1"), (Packing::Gzip, "gz:v1")] {
        let archive = env.archive(&tar_files(&img.oci_files("v1"), packing));
        let imported = env.store.import(&archive, name).expect("import");
        assert_eq!(imported.manifest_digest, img.manifest_digest());
        assert_eq!(imported.layers, img.diff_ids);
    }
    assert_eq!(env.layer_count(), 2);
    assert_eq!(env.store.images().expect("list").len(), 2);
}

#[test]
fn index_with_several_manifests_and_nested_index() {
    let env = Env::new();
    let a = image(vec![Layer::new().file("a", b"a").bytes()])
        .cmd(&["a"])
        .build();
    let b = image(vec![Layer::new().file("b", b"b").bytes()])
        .cmd(&["b"])
        .build();
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let platform_desc = |img: &fixture::Image, arch: &str| {
        let mut d =
            fixture::descriptor("application/vnd.oci.image.manifest.v1+json", &img.manifest);
        d["platform"] = json!({"os": "linux", "architecture": arch});
        d
    };
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [platform_desc(&b, "s390x"), platform_desc(&a, arch)],
    }))
    .expect("nested");
    let mut tagged_b =
        fixture::descriptor("application/vnd.oci.image.manifest.v1+json", &b.manifest);
    tagged_b["annotations"] = json!({"org.opencontainers.image.ref.name": "bee"});
    let mut nested_desc = fixture::descriptor("application/vnd.oci.image.index.v1+json", &nested);
    nested_desc["annotations"] = json!({"org.opencontainers.image.ref.name": "multi"});
    let index = json!({"schemaVersion": 2, "manifests": [tagged_b, nested_desc]});

    let mut files = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_string(),
            serde_json::to_vec(&index).expect("index"),
        ),
        (fixture::blob_name(&nested), nested.clone()),
    ];
    files.extend(a.blob_files());
    files.extend(b.blob_files());
    let dir = env.layout(&files);

    let by_tag = env.store.import(&dir, "x:bee").expect("tagged");
    assert_eq!(by_tag.config.cmd, Some(vec!["b".to_string()]));
    let by_platform = env.store.import(&dir, "x:multi").expect("platform");
    assert_eq!(by_platform.config.cmd, Some(vec!["a".to_string()]));
    assert!(env.store.import(&dir, "x:other").is_err());
}

#[test]
fn metadata_is_preserved() {
    let env = Env::new();
    let layer = Layer::new()
        .entry(Entry {
            mode: 0o1777,
            mtime: 1_500_000_000,
            ..Entry::new("tmp", EntryType::Directory)
        })
        .entry(Entry {
            mode: 0o2750,
            uid: 1234,
            gid: 4321,
            mtime: 1_400_000_000,
            ..Entry::new("srv", EntryType::Directory)
        })
        .pax(&[
            ("SCHILY.xattr.user.origin", b"layer"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ("mtime", b"1600000000.25"),
        ])
        .entry(Entry {
            mode: 0o4755,
            uid: 1234,
            gid: 1234,
            data: b"suid",
            ..Entry::new("srv/suid", EntryType::Regular)
        })
        .entry(Entry {
            uid: 1234,
            gid: 1234,
            link: b"/bin/busybox",
            mtime: 1_300_000_000,
            ..Entry::new("srv/sh", EntryType::Symlink)
        })
        .entry(Entry {
            link: b"srv/suid",
            ..Entry::new("srv/suid-link", EntryType::Link)
        })
        .entry(Entry {
            mode: 0o640,
            ..Entry::new("pipe", EntryType::Fifo)
        })
        .entry(Entry {
            data: b"second",
            ..Entry::new("./replaced", EntryType::Regular)
        })
        .entry(Entry::new("replaced", EntryType::Directory))
        .bytes();
    let img = image(vec![layer]).build();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "meta")
        .expect("import");
    let root = env.store.layer_dir(&imported.layers[0]);

    let tmp = fs::symlink_metadata(root.join("tmp")).expect("tmp");
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), 1_500_000_000);
    let srv = fs::symlink_metadata(root.join("srv")).expect("srv");
    assert_eq!(
        (srv.uid(), srv.gid(), srv.mode() & 0o7777),
        (1234, 4321, 0o2750)
    );
    assert_eq!(
        srv.mtime(),
        1_400_000_000,
        "dir mtime survives its children"
    );

    let suid = fs::symlink_metadata(root.join("srv/suid")).expect("suid");
    assert_eq!((suid.uid(), suid.gid()), (1234, 1234));
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!(
        (suid.mtime(), suid.mtime_nsec()),
        (1_600_000_000, 250_000_000)
    );
    assert_eq!(suid.nlink(), 2);
    let link = fs::symlink_metadata(root.join("srv/suid-link")).expect("hardlink");
    assert_eq!(link.ino(), suid.ino());
    let suid_path = root.join("srv/suid");
    assert_eq!(
        fixture::lgetxattr(&suid_path, "user.origin").as_deref(),
        Some(&b"layer"[..])
    );
    assert!(
        fixture::lgetxattr(&suid_path, "security.capability").is_some(),
        "file capabilities are image content"
    );
    assert_eq!(
        fixture::lgetxattr(&suid_path, "trusted.overlay.redirect"),
        None
    );

    let sh = fs::symlink_metadata(root.join("srv/sh")).expect("symlink");
    assert!(sh.file_type().is_symlink());
    assert_eq!(
        fs::read_link(root.join("srv/sh")).expect("target").to_str(),
        Some("/bin/busybox")
    );
    assert_eq!(
        (sh.uid(), sh.gid(), sh.mtime()),
        (1234, 1234, 1_300_000_000)
    );

    let pipe = fs::symlink_metadata(root.join("pipe")).expect("pipe");
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o7777, 0o640);
    assert!(
        fs::symlink_metadata(root.join("replaced"))
            .expect("replaced")
            .is_dir()
    );
    assert_eq!(imported.size_bytes, 4 + 6);
}

#[test]
fn reimport_under_the_same_name_replaces_and_collects() {
    let env = Env::new();
    let v1 = image(vec![Layer::new().file("v", b"1").bytes()]).build();
    let v2 = image(vec![Layer::new().file("v", b"2").bytes()]).build();
    env.store
        .import(&env.layout(&v1.oci_files("latest")), "app")
        .expect("v1");
    let second = env
        .store
        .import(&env.layout(&v2.oci_files("latest")), "app")
        .expect("v2");
    assert_eq!(env.store.image("app").expect("app"), second);
    assert_eq!(
        env.layer_count(),
        1,
        "the replaced image's layer was collected"
    );
    assert!(env.store.layer_dir(&v2.diff_ids[0]).is_dir());
}

#[test]
fn concurrent_imports_share_layers() {
    let env = Env::new();
    let shared = base_layer();
    let images: Vec<_> = (0..4u8)
        .map(|i| image(vec![shared.clone(), Layer::new().file("id", &[i]).bytes()]).build())
        .collect();
    let dirs: Vec<_> = images
        .iter()
        .map(|img| env.layout(&img.oci_files("latest")))
        .collect();
    let root = env.store.root().to_path_buf();
    std::thread::scope(|scope| {
        for (i, dir) in dirs.iter().enumerate() {
            let root = root.clone();
            scope.spawn(move || {
                // A separate handle, as a separate CLI process would have.
                let store = Store::open(&root).expect("open");
                store.import(dir, &format!("img{i}")).expect("import");
            });
        }
    });
    assert_eq!(env.store.images().expect("list").len(), 4);
    assert_eq!(env.layer_count(), 5);
    assert_eq!(
        fs::read_dir(env.store.root().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[test]
fn zstd_layers_unpack() {
    let env = Env::new();
    let img = image(vec![base_layer(), top_layer()])
        .packing(Packing::Zstd)
        .build();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "zstd")
        .expect("import");
    assert_eq!(imported.layers, img.diff_ids);
    assert_eq!(env.layer_count(), 2);
}
