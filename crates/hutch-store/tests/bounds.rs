//! Layers that abuse what unpacking may cost or create: sparse entries with huge apparent
//! sizes, decompression bombs over the byte, entry or image budget, host-only xattrs and
//! device nodes. Each is either written safely (sparse files stay sparse, disallowed xattrs
//! are dropped) or refused with a typed error that leaves the store exactly empty.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use fixture::{Entry, Env, Layer, image};
use hutch_store::{
    Digest, MAX_IMAGE_BYTES_ENV, MAX_LAYER_BYTES_ENV, MAX_LAYER_ENTRIES_ENV, StoreError,
    UnpackLimits,
};
use tar::EntryType;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn env_with(limits: UnpackLimits) -> Env {
    let mut env = Env::new();
    env.store = env.store.clone().with_unpack_limits(limits);
    env
}

/// Imports a one-layer image expecting failure, and checks nothing is left of it.
fn import_fails(env: &Env, layer: Vec<u8>) -> StoreError {
    let img = image(vec![layer]).build();
    let layout = env.layout(&img.oci_files("latest"));
    let before = env.outside_store();
    let err = env
        .store
        .import(&layout, "victim")
        .expect_err("import must fail");
    assert_eq!(
        env.outside_store(),
        before,
        "files appeared outside the store"
    );
    env.assert_store_empty();
    err
}

fn assert_limit(err: &StoreError, env_name: &str, what_part: &str) {
    match err {
        StoreError::UnpackLimit { setting, what, .. } => {
            assert_eq!(*setting, env_name, "{err}");
            assert!(what.contains(what_part), "{err}");
        }
        other => panic!("expected UnpackLimit ({env_name}), got {other:?}"),
    }
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

fn small_limits() -> UnpackLimits {
    UnpackLimits {
        layer_bytes: MIB,
        layer_entries: 100,
        image_bytes: 4 * MIB,
    }
}

/// A GNU sparse entry of 3 GiB apparent size carrying 1 KiB of data at its end.
fn sparse_layer() -> Vec<u8> {
    let data = [0xabu8; 1024];
    Layer::new()
        .sparse("big", 3 * GIB, 3 * GIB - 1024, &data)
        .bytes()
}

#[test]
fn sparse_entry_stays_sparse_on_disk() {
    let env = Env::new();
    let layer = sparse_layer();
    assert!(layer.len() < 8 * 1024, "the archive itself is tiny");
    let img = image(vec![layer]).build();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "sparse")
        .expect("a sparse entry within the budget is legal");
    let path = env.store.layer_dir(&imported.layers[0]).join("big");
    let meta = fs::metadata(&path).expect("big");
    assert_eq!(meta.len(), 3 * GIB, "apparent size kept");
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < MIB,
        "{allocated} bytes allocated for 1 KiB of data"
    );
    assert_eq!(imported.size_bytes, 3 * GIB, "counted at its apparent size");
    let mut tail = vec![0u8; 1024];
    std::os::unix::fs::FileExt::read_exact_at(
        &fs::File::open(&path).expect("open"),
        &mut tail,
        3 * GIB - 1024,
    )
    .expect("read the data");
    assert!(tail.iter().all(|b| *b == 0xab));
}

#[test]
fn sparse_entry_counts_its_apparent_size_against_the_budget() {
    let env = env_with(UnpackLimits {
        layer_bytes: GIB,
        ..UnpackLimits::default()
    });
    let err = import_fails(&env, sparse_layer());
    assert_limit(&err, MAX_LAYER_BYTES_ENV, "file content in one layer");
}

#[test]
fn pax_sparse_entries_are_refused() {
    let env = Env::new();
    let layer = Layer::new()
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"big"),
            ("GNU.sparse.realsize", b"3221225472"),
        ])
        .file("GNUSparseFile.0/big", b"1\n0\n1024\n")
        .bytes();
    let err = import_fails(&env, layer);
    assert_unsafe(&err, "GNUSparseFile.0/big", "PAX sparse");
}

#[test]
fn a_gzip_bomb_over_the_layer_budget_is_refused() {
    let env = env_with(small_limits());
    let zeros = vec![0u8; 2 * MIB as usize];
    let layer = Layer::new().file("bomb", &zeros).bytes();
    assert!(
        fixture::gzip(&layer).len() < 64 * 1024,
        "compresses to little"
    );
    let err = import_fails(&env, layer);
    assert_limit(&err, MAX_LAYER_BYTES_ENV, "file content in one layer");
}

#[test]
fn a_tar_stream_longer_than_the_budget_is_refused_even_if_it_writes_nothing() {
    let env = env_with(small_limits());
    // Zeros after the end-of-archive marker: read (and hashed) but never written anywhere.
    let mut layer = Layer::new().file("small", b"x").bytes();
    layer.resize(layer.len() + 2 * MIB as usize, 0);
    let err = import_fails(&env, layer);
    assert_limit(&err, MAX_LAYER_BYTES_ENV, "decompressed tar stream");
}

#[test]
fn a_file_within_the_budget_whose_stream_is_not_stops_at_the_stream_cap() {
    let env = env_with(small_limits());
    // The content fits the byte budget, its header and padding push the stream over it.
    let data = vec![1u8; MIB as usize - 100];
    let err = import_fails(&env, Layer::new().file("edge", &data).bytes());
    assert_limit(&err, MAX_LAYER_BYTES_ENV, "decompressed tar stream");
}

#[test]
fn too_many_entries_are_refused() {
    let env = env_with(small_limits());
    let mut layer = Layer::new();
    for i in 0..101 {
        layer = layer.file(&format!("f{i}"), b"");
    }
    let err = import_fails(&env, layer.bytes());
    assert_limit(&err, MAX_LAYER_ENTRIES_ENV, "entries");
}

#[test]
fn implicit_parent_directories_count_as_entries() {
    let env = env_with(small_limits());
    let deep = (0..100)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/");
    // One header, a hundred directories: the path needs a GNU long name, which `Layer::entry`
    // does not write, so it goes through the tar crate's own builder.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(fixture::MTIME);
    header.set_size(0);
    builder
        .append_data(&mut header, format!("{deep}/f"), &[][..])
        .expect("append");
    let err = import_fails(&env, builder.into_inner().expect("tar"));
    assert_limit(&err, MAX_LAYER_ENTRIES_ENV, "entries");
}

#[test]
fn the_image_budget_spans_all_its_layers() {
    let env = env_with(UnpackLimits {
        layer_bytes: 3 * MIB,
        layer_entries: 100,
        image_bytes: 4 * MIB,
    });
    let data = vec![7u8; 2 * MIB as usize + 1];
    let layers = vec![
        Layer::new().file("a", &data).bytes(),
        Layer::new().file("b", &data).bytes(),
    ];
    let img = image(layers).build();
    let layout = env.layout(&img.oci_files("latest"));
    let err = env
        .store
        .import(&layout, "two")
        .expect_err("over the image budget");
    assert_limit(&err, MAX_IMAGE_BYTES_ENV, "one image");
    env.assert_store_empty();
}

#[test]
fn the_image_budget_spans_the_layers_of_an_ingest() {
    let env = env_with(UnpackLimits {
        layer_bytes: 3 * MIB,
        layer_entries: 100,
        image_bytes: 4 * MIB,
    });
    let data = vec![7u8; 2 * MIB as usize + 1];
    let ingest = env.store.ingest().expect("ingest");
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let layer = Layer::new().file(name, &data).bytes();
        let digest = Digest::of_bytes(&layer);
        let added = ingest.add_layer(
            Cursor::new(&layer),
            &digest,
            Some(layer.len() as u64),
            &digest,
            name,
        );
        match i {
            0 => added.expect("the first layer fits"),
            _ => assert_limit(
                &added.expect_err("the second does not"),
                MAX_IMAGE_BYTES_ENV,
                "one image",
            ),
        }
    }
    drop(ingest);
    env.assert_store_empty();
}

#[test]
fn only_user_and_capability_xattrs_are_applied() {
    let env = Env::new();
    // VFS_CAP_REVISION_2 with CAP_NET_RAW permitted and effective, as `setcap` writes it.
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let layer = Layer::new()
        .pax(&[
            ("SCHILY.xattr.user.kept", b"yes"),
            ("SCHILY.xattr.security.capability", cap),
            (
                "SCHILY.xattr.security.selinux",
                b"system_u:object_r:shadow_t:s0",
            ),
            ("SCHILY.xattr.security.ima", b"\x03\x02"),
            ("SCHILY.xattr.trusted.hutch", b"1"),
        ])
        .file("ping", b"#!")
        .bytes();
    let img = image(vec![layer]).build();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "xattrs")
        .expect("dropped xattrs are not an error");
    let ping = env.store.layer_dir(&imported.layers[0]).join("ping");
    assert_eq!(
        fixture::lgetxattr(&ping, "user.kept").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        fixture::lgetxattr(&ping, "security.capability").as_deref(),
        Some(cap)
    );
    for dropped in ["security.selinux", "security.ima", "trusted.hutch"] {
        assert_eq!(fixture::lgetxattr(&ping, dropped), None, "{dropped}");
    }
}

#[test]
fn device_nodes_are_refused() {
    for (name, kind, device, what) in [
        ("dev/sda", EntryType::Block, (8, 0), "block device (8:0)"),
        ("dev/mem", EntryType::Char, (1, 1), "character device (1:1)"),
        ("null", EntryType::Char, (1, 3), "character device (1:3)"),
    ] {
        let env = Env::new();
        let layer = Layer::new()
            .dir("dev")
            .entry(Entry {
                mode: 0o666,
                device,
                ..Entry::new(name, kind)
            })
            .bytes();
        let err = import_fails(&env, layer);
        assert_unsafe(&err, name, what);
    }
}

#[test]
fn whiteout_form_devices_and_fifos_are_still_unpacked() {
    let env = Env::new();
    let layer = Layer::new()
        .entry(Entry::new("gone", EntryType::Char))
        .entry(Entry {
            mode: 0o640,
            ..Entry::new("pipe", EntryType::Fifo)
        })
        .bytes();
    let img = image(vec![layer]).build();
    let imported = env
        .store
        .import(&env.layout(&img.oci_files("latest")), "nodes")
        .expect("import");
    let root = env.store.layer_dir(&imported.layers[0]);
    let gone = fs::symlink_metadata(root.join("gone")).expect("whiteout");
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    let pipe = fs::symlink_metadata(root.join("pipe")).expect("fifo");
    assert!(pipe.file_type().is_fifo());
}
