//! The pull tests' own footing: a real registry takes and serves the fixture images, counts the
//! blob bytes it sends, and the oracle fixture unpacks (with umoci) to the tree it was built as.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::registry::Registry;
use common::tree::{self, Kind, Node};
use common::{fixtures, stderr, stdout};
use serde_json::Value;

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// fixtures/oracle.sh pins the content of /oracle/random-1MiB to this.
const RANDOM_1MIB_SHA256: &str = "ac6ce89a224e46f272e56e5098a48c63e909bdb82bd876b593e8a4f7b1939853";

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    out
}

fn skopeo_inspect(registry: &Registry, repo_tag: &str, raw: bool) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    if let Some((user, pass)) = &registry.auth {
        cmd.arg("--creds").arg(format!("{user}:{pass}"));
    }
    let out = run(cmd.arg(format!("docker://{}", registry.reference(repo_tag))));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The manifest a layout's `tag` points at.
fn layout_manifest(layout: &Path, tag: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let descriptor = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()));
    let digest = descriptor["digest"].as_str().unwrap().replace(':', "/");
    serde_json::from_slice(&std::fs::read(layout.join("blobs").join(digest)).unwrap()).unwrap()
}

fn sizes(descriptors: &Value) -> Vec<u64> {
    descriptors
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["size"].as_u64().unwrap())
        .collect()
}

fn curl_status(args: &[&str]) -> String {
    stdout(&run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)))
}

#[test]
fn a_plain_registry_takes_the_busybox_fixture_and_serves_it_to_skopeo() {
    let registry = Registry::start();
    let busybox = fixtures().join("busybox");
    let layers = layout_manifest(&busybox, "latest")["layers"].clone();
    registry.push_oci_layout(&busybox, "latest", "busybox:latest");

    let inspect = skopeo_inspect(&registry, "busybox:latest", false);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2, "{inspect}");
    // As pushed: the registry holds the layout's own blobs.
    let digests: Vec<_> = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    let served: Vec<_> = inspect["Layers"].as_array().unwrap().iter().collect();
    assert_eq!(digests, served);

    registry.push_with_format(&busybox, "latest", "busybox:v2s2", "v2s2");
    let raw = skopeo_inspect(&registry, "busybox:v2s2", true);
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    registry.push_with_format(&busybox, "latest", "busybox:oci", "oci");
    let raw = skopeo_inspect(&registry, "busybox:oci", true);
    // umoci leaves out the optional top-level mediaType; the config's says OCI.
    let oci = "application/vnd.oci.image.manifest.v1+json";
    assert!(
        raw["mediaType"].is_null() || raw["mediaType"] == oci,
        "{raw}"
    );
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
}

#[test]
fn push_zstd_recompresses_every_layer_into_a_fresh_registry() {
    let registry = Registry::start();
    registry.push_zstd(&fixtures().join("oracle"), "latest", "oracle:zstd");
    let raw = skopeo_inspect(&registry, "oracle:zstd", true);
    let types: Vec<_> = raw["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(types.len(), 5, "{raw}");
    assert!(
        types
            .iter()
            .all(|t| *t == "application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
}

#[test]
fn the_auth_registry_wants_its_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret");
    let v2 = format!("http://{}/v2/", registry.host());
    assert_eq!(curl_status(&[&v2]), "401");
    assert_eq!(curl_status(&["-u", "alice:wrong", &v2]), "401");
    assert_eq!(curl_status(&["-u", "alice:s3cret", &v2]), "200");

    let busybox = fixtures().join("busybox");
    let anonymous = registry.try_push(&busybox, "latest", "busybox:latest", &[], None);
    assert!(!anonymous.status.success());
    assert!(
        stderr(&anonymous).contains("authentication required")
            || stderr(&anonymous).contains("unauthorized"),
        "{}",
        stderr(&anonymous)
    );
    registry.push_oci_layout(&busybox, "latest", "busybox:latest");
    // The counter's own sync request carries the credentials; a push downloads nothing.
    assert_eq!(registry.blob_bytes_served(), 0);
    let inspect = skopeo_inspect(&registry, "busybox:latest", false);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 2);
    // Inspecting reads the config blob, and only that.
    let config = &layout_manifest(&busybox, "latest")["config"];
    assert_eq!(
        registry.blob_bytes_served(),
        config["size"].as_u64().unwrap()
    );
}

#[test]
fn blob_bytes_served_counts_exactly_the_blob_bodies_sent() {
    let registry = Registry::start();
    let busybox = fixtures().join("busybox");
    let oracle = fixtures().join("oracle");
    registry.push_oci_layout(&busybox, "latest", "busybox:latest");
    registry.push_oci_layout(&oracle, "latest", "oracle:latest");
    assert_eq!(registry.blob_bytes_served(), 0);

    // One layer, by hand.
    let manifest = layout_manifest(&busybox, "latest");
    let layer = &manifest["layers"][1];
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    let url = format!(
        "http://{}/v2/busybox/blobs/{}",
        registry.host(),
        layer["digest"].as_str().unwrap()
    );
    run(Command::new("curl")
        .args(["-sf", "-o"])
        .arg(&blob)
        .arg(&url));
    let size = layer["size"].as_u64().unwrap();
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), size);
    assert_eq!(registry.blob_bytes_served(), size);
    // A HEAD sends no body.
    assert_eq!(curl_status(&["-I", &url]), "200");
    assert_eq!(registry.blob_bytes_served(), size);

    // A whole pull of busybox: the config and every layer, once.
    let pulled = dir.path().join("pulled");
    let pull = |repo_tag: &str| {
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}", registry.reference(repo_tag)))
            .arg(format!("oci:{}:{repo_tag}", pulled.display())));
    };
    pull("busybox:latest");
    let busybox_bytes = manifest["config"]["size"].as_u64().unwrap()
        + sizes(&manifest["layers"]).iter().sum::<u64>();
    assert_eq!(registry.blob_bytes_served(), size + busybox_bytes);

    // The oracle shares busybox's layers, so pulling it next to busybox fetches only its config
    // and its own three layers.
    let oracle_manifest = layout_manifest(&oracle, "latest");
    let shared = &oracle_manifest["layers"].as_array().unwrap()[..2];
    assert_eq!(shared, manifest["layers"].as_array().unwrap().as_slice());
    pull("oracle:latest");
    let oracle_bytes = oracle_manifest["config"]["size"].as_u64().unwrap()
        + sizes(&oracle_manifest["layers"])[2..].iter().sum::<u64>();
    assert_eq!(
        registry.blob_bytes_served(),
        size + busybox_bytes + oracle_bytes
    );
}

/// The oracle fixture's rootfs, unpacked by umoci (a tool nobody here wrote).
struct Unpacked {
    _dir: tempfile::TempDir,
    rootfs: PathBuf,
}

fn unpack_oracle() -> Unpacked {
    let dir = tempfile::Builder::new()
        .prefix("hutch-oracle")
        .tempdir_in("/tmp")
        .unwrap();
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", fixtures().join("oracle").display()))
        .arg(&bundle));
    Unpacked {
        rootfs: bundle.join("rootfs"),
        _dir: dir,
    }
}

fn at<'a>(snapshot: &'a std::collections::BTreeMap<PathBuf, Node>, path: &str) -> &'a Node {
    snapshot
        .get(Path::new(path))
        .unwrap_or_else(|| panic!("{path} is missing"))
}

#[test]
fn the_oracle_unpacks_to_the_tree_it_was_designed_as() {
    let unpacked = unpack_oracle();
    let snap = tree::snapshot(&unpacked.rootfs);

    // Whiteouts: layer 5's, and busybox's layer 2 still applies.
    for gone in ["/oracle/doomed", "/etc/hutch-removed-by-layer2"] {
        assert!(!snap.contains_key(Path::new(gone)), "{gone} survived");
    }
    // Opaque directories: only what the upper layer put there.
    let under = |dir: &str| -> Vec<String> {
        snap.keys()
            .filter(|p| p.parent() == Some(Path::new(dir)))
            .map(|p| p.display().to_string())
            .collect()
    };
    assert_eq!(under("/oracle/opaque"), ["/oracle/opaque/new-1"]);
    assert_eq!(
        under("/oracle/file-then-dir"),
        ["/oracle/file-then-dir/inside"]
    );
    assert_eq!(at(&snap, "/oracle/file-then-dir").kind, Kind::Dir);
    assert_eq!(at(&snap, "/oracle/dir-then-file").kind, Kind::File);

    // Hardlinks: within layer 3, and layer 5's link to a layer-3 file.
    for (a, b) in [
        ("/oracle/hard-a", "/oracle/hard-b"),
        ("/oracle/hard-later", "/oracle/lower-target"),
    ] {
        let (x, y) = (at(&snap, a), at(&snap, b));
        assert_eq!((x.nlink, y.nlink), (2, 2), "{a} {b}");
        assert_eq!(x.same_inode_as.as_deref(), Some(Path::new(a)));
        assert_eq!(y.same_inode_as, x.same_inode_as);
        assert_eq!(x.sha256, y.sha256);
    }
    assert_eq!(at(&snap, "/oracle/empty").nlink, 1);
    assert_eq!(at(&snap, "/oracle/empty").same_inode_as, None);

    // Modes and owners.
    for (path, mode) in [
        ("/oracle/setuid", 0o4755),
        ("/oracle/setgid-dir", 0o2775),
        ("/oracle/sticky", 0o1777),
        ("/oracle/mode-0600", 0o600),
        ("/oracle/mode-0755", 0o755),
        ("/oracle/owned", 0o750),
        ("/oracle/chmod-later", 0o600),
        ("/tmp", 0o1777),
    ] {
        assert_eq!(
            at(&snap, path).mode,
            mode,
            "{path}: {:o}",
            at(&snap, path).mode
        );
    }
    for path in ["/oracle/owned", "/oracle/owned/file"] {
        let node = at(&snap, path);
        assert_eq!((node.uid, node.gid), (1234, 5678), "{path}");
    }
    assert_eq!(at(&snap, "/oracle/setgid-dir").gid, 5678);

    // Symlinks, stored as written and never followed.
    for (path, target) in [
        ("/oracle/symlink-relative", "hard-a"),
        ("/oracle/symlink-absolute", "/oracle/hard-a"),
        ("/oracle/symlink-dangling", "../nowhere/at-all"),
        ("/oracle/symlink-dir", "opaque"),
    ] {
        let node = at(&snap, path);
        assert_eq!(node.kind, Kind::Symlink, "{path}");
        assert_eq!(node.target.as_deref(), Some(Path::new(target)));
        assert_eq!(node.size, target.len() as u64);
    }

    // Contents and xattrs.
    let empty = at(&snap, "/oracle/empty");
    assert_eq!(
        (empty.size, empty.sha256.as_deref()),
        (0, Some(EMPTY_SHA256))
    );
    let random = at(&snap, "/oracle/random-1MiB");
    assert_eq!(
        (random.size, random.sha256.as_deref()),
        (1 << 20, Some(RANDOM_1MIB_SHA256))
    );
    assert_eq!(
        at(&snap, "/oracle/xattr")
            .xattrs
            .get("user.hutch")
            .map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    let capability = &at(&snap, "/oracle/capability").xattrs;
    assert!(
        capability.contains_key("security.capability"),
        "{capability:?}"
    );
    assert!(at(&snap, "/oracle/empty").xattrs.is_empty());
}

#[test]
fn tree_diff_sees_modes_hardlinks_and_missing_entries() {
    let unpacked = unpack_oracle();
    let copy = unpacked.rootfs.with_file_name("copy");
    run(Command::new("cp")
        .arg("-a")
        .arg(&unpacked.rootfs)
        .arg(&copy));
    let original = tree::snapshot(&unpacked.rootfs);
    assert_eq!(
        tree::diff(&original, &tree::snapshot(&copy)),
        Vec::<String>::new()
    );

    // Break one hardlink pair, drop setuid, delete one file.
    let oracle = copy.join("oracle");
    std::fs::copy(oracle.join("hard-b"), oracle.join("hard-b.new")).unwrap();
    std::fs::rename(oracle.join("hard-b.new"), oracle.join("hard-b")).unwrap();
    run(Command::new("chmod").arg("0755").arg(oracle.join("setuid")));
    std::fs::remove_file(oracle.join("empty")).unwrap();
    let changes = tree::diff(&original, &tree::snapshot(&copy));
    let expected = [
        "/oracle/empty: only in a (File)",
        "/oracle/hard-a: nlink 2 (a) vs 1 (b)",
        "/oracle/hard-a: same inode as Some(\"/oracle/hard-a\") (a) vs None (b)",
        "/oracle/hard-b: nlink 2 (a) vs 1 (b)",
        "/oracle/hard-b: same inode as Some(\"/oracle/hard-a\") (a) vs None (b)",
        "/oracle/setuid: mode 4755 (a) vs 0755 (b)",
    ];
    assert_eq!(changes, expected);
}
