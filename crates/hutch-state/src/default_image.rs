//! The built-in busybox images: `hutch/minimal` (the smallest image that boots: busybox as
//! `/bin/sh` and its applets) and the builder image template builds run in.
//!
//! They are made offline at first start from the host's static busybox (Debian's
//! `busybox-static`), as one-layer `docker save` archives imported into the store like any
//! other image, so they are content-addressed, pinned and garbage-collected the same way.
//! The Debian image creates get by default is [`crate::debian_image`]'s.

use std::io::Write;
use std::path::Path;

use hutch_store::{Image, Store};
use sha2::{Digest, Sha256};

/// The store name of the busybox image.
pub const MINIMAL_IMAGE: &str = "hutch/minimal:latest";
/// What names "the server's default image", whatever `hutch serve --default-image` made it.
pub const DEFAULT_ALIAS: &str = "hutch/default";

/// The store name `reference` stands for when it names a built-in image or an alias of the
/// default (`hutch/default`, and the SDK's managed image `tensorlake/ubuntu-minimal`), given
/// the server's `default` image; `None` for any other reference.
pub fn builtin(reference: &str, default: &str) -> Option<String> {
    let bare = reference.strip_suffix(":latest").unwrap_or(reference);
    let bare = bare.strip_prefix("docker.io/").unwrap_or(bare);
    match bare {
        DEFAULT_ALIAS | "tensorlake/ubuntu-minimal" | "ubuntu-minimal" => Some(default.into()),
        "hutch/minimal" => Some(MINIMAL_IMAGE.into()),
        "hutch/rootfs-builder" => Some(BUILDER_IMAGE.into()),
        _ if reference == crate::debian_image::DEBIAN_IMAGE => Some(reference.into()),
        _ => None,
    }
}
/// The store name of the builder image template builds run in: the default image plus
/// `/usr/local/bin/tl-rootfs-build`, a link to the agent binary (which, run under that name,
/// hands the build to the host; see `builds`).
pub const BUILDER_IMAGE: &str = "hutch/rootfs-builder:latest";

#[derive(Debug, thiserror::Error)]
pub enum DefaultImageError {
    #[error(
        "cannot build the default image: {path} is missing or not statically linked \
         (install it with: apt-get install -y busybox-static)"
    )]
    NoBusybox { path: String },
    #[error("cannot build the default image: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot import the default image: {0}")]
    Store(#[from] hutch_store::StoreError),
}

/// Returns the busybox image, building it first if the store lacks it.
pub fn ensure(store: &Store, busybox: &Path) -> Result<Image, DefaultImageError> {
    ensure_named(store, busybox, MINIMAL_IMAGE)
}

/// Returns the builder image, building it first if the store lacks it.
pub fn ensure_builder(store: &Store, busybox: &Path) -> Result<Image, DefaultImageError> {
    ensure_named(store, busybox, BUILDER_IMAGE)
}

fn ensure_named(store: &Store, busybox: &Path, name: &str) -> Result<Image, DefaultImageError> {
    if let Ok(image) = store.image(name) {
        return Ok(image);
    }
    let binary = std::fs::read(busybox).map_err(|_| no_busybox(busybox))?;
    if !is_static_elf(&binary) {
        return Err(no_busybox(busybox));
    }
    let applets = applets(busybox)?;
    let mut layers = vec![layer_tar(&binary, &applets)?];
    if name == BUILDER_IMAGE {
        layers.push(builder_layer()?);
    }
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", hex::encode(Sha256::digest(l))))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "Cmd": ["sh"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "hutch: busybox image from the host's busybox-static"}],
    })
    .to_string();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(config.as_bytes())));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name],
        "Layers": (0..layers.len()).map(|i| format!("layer{i}.tar")).collect::<Vec<_>>(),
    }])
    .to_string();

    // Locked against other processes' cleanup of the store's tmp/, removed on drop.
    let dir = store.scratch_dir("default-image")?;
    let archive_path = dir.path().join("image.tar");
    let mut archive = tar::Builder::new(std::fs::File::create(&archive_path)?);
    append(&mut archive, "manifest.json", manifest.as_bytes(), 0o644)?;
    append(&mut archive, &config_name, config.as_bytes(), 0o644)?;
    for (i, layer) in layers.iter().enumerate() {
        append(&mut archive, &format!("layer{i}.tar"), layer, 0o644)?;
    }
    archive.into_inner()?.flush()?;
    let image = store.import(&archive_path, name)?;
    tracing::info!(
        image = name,
        applets = applets.len(),
        "built a busybox image"
    );
    Ok(image)
}

fn no_busybox(path: &Path) -> DefaultImageError {
    DefaultImageError::NoBusybox {
        path: path.display().to_string(),
    }
}

/// An ELF with no `PT_INTERP` program header runs without a dynamic loader.
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        bytes
            .get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    })
}

fn applets(busybox: &Path) -> Result<Vec<String>, DefaultImageError> {
    let out = std::process::Command::new(busybox).arg("--list").output()?;
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    if !out.status.success() || !list.iter().any(|a| a == "sh") {
        return Err(no_busybox(busybox));
    }
    Ok(list)
}

fn layer_tar(busybox: &[u8], applets: &[String]) -> std::io::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    for (dir, mode, owner) in [
        ("bin", 0o755, 0),
        ("etc", 0o755, 0),
        ("dev", 0o755, 0),
        ("proc", 0o755, 0),
        ("sys", 0o755, 0),
        ("run", 0o755, 0),
        ("var", 0o755, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("home", 0o755, 0),
        ("home/user", 0o755, 1000),
        ("root", 0o700, 0),
        ("tmp", 0o1777, 0),
    ] {
        let mut header = header(tar::EntryType::Directory, mode, owner);
        layer.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    append(&mut layer, "bin/busybox", busybox, 0o755)?;
    for applet in applets {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0);
        layer.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
    }
    append(
        &mut layer,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    append(
        &mut layer,
        "etc/group",
        b"root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
        0o644,
    )?;
    layer.into_inner()
}

/// The builder's own layer: where the SDK puts build inputs, and `tl-rootfs-build`.
fn builder_layer() -> std::io::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    for dir in [
        "usr/",
        "usr/local/",
        "usr/local/bin/",
        "var/",
        "var/lib/",
        "var/lib/tensorlake/",
        "var/lib/tensorlake/rootfs-builder/",
    ] {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        layer.append_data(&mut header, dir, std::io::empty())?;
    }
    let mut header = header(tar::EntryType::Symlink, 0o777, 0);
    layer.append_link(
        &mut header,
        format!(
            "usr/local/bin/{}",
            hutch_wire::build_channel::ROOTFS_BUILD_COMMAND
        ),
        hutch_runtime::gvisor::AGENT_PATH_IN_SANDBOX,
    )?;
    layer.into_inner()
}

/// A header for an entry without data, owned by `owner` (uid and gid), dated the epoch.
fn header(kind: tar::EntryType, mode: u32, owner: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner);
    header.set_gid(owner);
    header.set_size(0);
    header.set_mtime(0);
    header
}

fn append<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, 0);
    header.set_size(data.len() as u64);
    archive.append_data(&mut header, path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_detection_reads_program_headers() {
        let static_busybox = std::fs::read("/bin/busybox").unwrap();
        assert!(is_static_elf(&static_busybox));
        let dynamic = std::fs::read("/bin/ls").unwrap();
        assert!(!is_static_elf(&dynamic));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn builds_once_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = ensure(&store, Path::new("/bin/busybox")).unwrap();
        assert_eq!(first.layers.len(), 1);
        let again = ensure(&store, Path::new("/bin/busybox")).unwrap();
        assert_eq!(first.id, again.id);
        let layer = store.layer_dir(&first.layers[0]);
        assert!(layer.join("bin/sh").is_symlink());
        assert!(
            std::fs::read_to_string(layer.join("etc/passwd"))
                .unwrap()
                .starts_with("root:")
        );
    }

    #[test]
    fn aliases_name_the_default_and_the_builtins() {
        let default = crate::debian_image::DEBIAN_IMAGE;
        for alias in [
            "hutch/default",
            "hutch/default:latest",
            "tensorlake/ubuntu-minimal",
            "tensorlake/ubuntu-minimal:latest",
            "docker.io/tensorlake/ubuntu-minimal",
        ] {
            assert_eq!(builtin(alias, default).as_deref(), Some(default), "{alias}");
        }
        assert_eq!(
            builtin("hutch/minimal", default).as_deref(),
            Some(MINIMAL_IMAGE)
        );
        assert_eq!(builtin("hutch/default", "x/y:1").as_deref(), Some("x/y:1"));
        assert_eq!(builtin("debian", default), None);
        assert_eq!(builtin("tensorlake/ubuntu-minimal:22.04", default), None);
    }

    #[test]
    fn the_builder_image_is_the_default_image_plus_the_builder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let default = ensure(&store, Path::new("/bin/busybox")).unwrap();
        let builder = ensure_builder(&store, Path::new("/bin/busybox")).unwrap();
        assert_eq!(builder.layers.len(), 2);
        assert_eq!(
            builder.layers[0], default.layers[0],
            "the busybox layer is shared"
        );
        let own = store.layer_dir(&builder.layers[1]);
        let link = own.join("usr/local/bin/tl-rootfs-build");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            Path::new(hutch_runtime::gvisor::AGENT_PATH_IN_SANDBOX)
        );
        assert!(own.join("var/lib/tensorlake/rootfs-builder").is_dir());
    }

    #[test]
    fn a_dynamic_binary_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = ensure(&store, Path::new("/bin/ls")).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
