//! Reading an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`): choosing the
//! manifest for the requested tag and platform (through nested indexes) and verifying the
//! manifest and config blobs against their descriptors. The shapes are `oci_spec`'s, the
//! same the registry client reads and the store keeps in its own `blobs/`; Docker's media
//! types arrive as [`MediaType::Other`]. Every digest is turned into the store's own
//! [`Digest`] (sha256, checked) before it names a path or a blob.

use std::path::{Path, PathBuf};

pub(crate) use oci_spec::image::{Descriptor, ImageIndex, ImageManifest as Manifest, MediaType};

use crate::blob::{not_an_image, read_small, read_verified};
use crate::digest::Digest;
use crate::error::StoreError;
use crate::name::name_from_reference;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Bounds index recursion so a cyclic or absurdly deep index cannot loop forever.
const MAX_INDEX_DEPTH: usize = 4;

/// A descriptor's digest as the store's: only sha256, with exactly 64 lowercase hex digits.
pub(crate) fn digest_of(descriptor: &Descriptor) -> Result<Digest, StoreError> {
    Digest::parse(descriptor.digest().as_ref())
}

/// A descriptor for `digest` (`size` bytes of `media_type`).
pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    let digest: oci_spec::image::Digest = digest
        .as_str()
        .parse()
        .expect("a store digest is a valid OCI digest");
    Descriptor::new(MediaType::from(media_type), size, digest)
}

/// `value` as JSON with every map's keys sorted: `oci_spec` keeps annotations in a
/// `HashMap`, and the same image must always give the same bytes (digests, saved archives).
pub fn canonical_json(value: &impl serde::Serialize) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&serde_json::to_value(value)?)
}

/// A blob of an image layout: an index or a manifest, told apart by its shape when its
/// `mediaType` (optional at the top level) is absent.
enum IndexOrManifest {
    Index(Box<ImageIndex>),
    Manifest(Box<Manifest>),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayoutFile {
    image_layout_version: String,
}

/// The manifest chosen in a layout, with its verified bytes and those of its config.
pub(crate) struct ResolvedOci {
    pub(crate) manifest_bytes: Vec<u8>,
    pub(crate) manifest: Manifest,
    pub(crate) config_bytes: Vec<u8>,
}

pub(crate) fn blob_in(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

/// Picks and verifies the manifest for `name` (normalized) in the layout at `dir`.
pub(crate) fn resolve(dir: &Path, name: &str, source: &Path) -> Result<ResolvedOci, StoreError> {
    let layout_bytes = read_small(&dir.join("oci-layout"), "oci-layout", source)?;
    let layout: OciLayoutFile = serde_json::from_slice(&layout_bytes)
        .map_err(|e| not_an_image(source, format!("oci-layout is not valid JSON: {e}")))?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(StoreError::Unsupported {
            what: format!("OCI image layout version {:?}", layout.image_layout_version),
        });
    }
    let index_bytes = read_small(&dir.join("index.json"), "index.json", source)?;
    let mut current = parse_index(&index_bytes, "index.json", source)?;
    let mut what = "index.json".to_string();
    for _ in 0..=MAX_INDEX_DEPTH {
        let chosen = select(current.manifests(), name)
            .map_err(|r| not_an_image(source, format!("{what} {r}")))?;
        let digest = digest_in(chosen, &what, source)?;
        let chosen_what = format!("manifest {digest}");
        let bytes = read_verified(
            &blob_in(dir, &digest),
            &digest,
            Some(chosen.size()),
            &chosen_what,
            source,
        )?;
        let manifest = match parse_index_or_manifest(&bytes, &chosen_what, source)? {
            IndexOrManifest::Index(index) => {
                current = *index;
                what = format!("nested index {digest}");
                continue;
            }
            IndexOrManifest::Manifest(manifest) => *manifest,
        };
        let config = manifest.config();
        check_config_media_type(config, source)?;
        let config_digest = digest_in(config, &chosen_what, source)?;
        let config_bytes = read_verified(
            &blob_in(dir, &config_digest),
            &config_digest,
            Some(config.size()),
            &format!("config {config_digest}"),
            source,
        )?;
        return Ok(ResolvedOci {
            manifest_bytes: bytes,
            manifest,
            config_bytes,
        });
    }
    Err(not_an_image(
        source,
        format!("image indexes are nested more than {MAX_INDEX_DEPTH} deep"),
    ))
}

/// A digest a layout's `what` names, as the store's; an unsupported algorithm stays
/// `Unsupported`, anything else that is not a sha256 digest makes the layout not an image.
fn digest_in(descriptor: &Descriptor, what: &str, source: &Path) -> Result<Digest, StoreError> {
    digest_of(descriptor).map_err(|e| match e {
        StoreError::Unsupported { .. } => e,
        other => not_an_image(source, format!("{what} names an invalid digest: {other}")),
    })
}

fn parse_index(bytes: &[u8], what: &str, source: &Path) -> Result<ImageIndex, StoreError> {
    match parse_index_or_manifest(bytes, what, source)? {
        IndexOrManifest::Index(index) => Ok(*index),
        IndexOrManifest::Manifest(_) => Err(not_an_image(
            source,
            format!("{what} is not an image index"),
        )),
    }
}

fn parse_index_or_manifest(
    bytes: &[u8],
    what: &str,
    source: &Path,
) -> Result<IndexOrManifest, StoreError> {
    let invalid = |e: serde_json::Error| {
        not_an_image(
            source,
            format!("{what} is not a valid image index or manifest: {e}"),
        )
    };
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
    if let Some(media_type) = value.get("mediaType") {
        let known = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
        if !media_type.as_str().is_some_and(|m| known.contains(&m)) {
            return Err(StoreError::Unsupported {
                what: format!("{what} of media type {media_type}"),
            });
        }
    }
    if value.get("schemaVersion").is_some_and(|v| *v != 2) {
        return Err(StoreError::Unsupported {
            what: format!("{what} with schemaVersion other than 2"),
        });
    }
    if value.get("manifests").is_some() {
        return serde_json::from_value(value)
            .map(|i| IndexOrManifest::Index(Box::new(i)))
            .map_err(invalid);
    }
    if value.get("config").is_none() || value.get("layers").is_none() {
        return Err(not_an_image(
            source,
            format!("{what} is neither an image index nor an image manifest"),
        ));
    }
    serde_json::from_value(value)
        .map(|m| IndexOrManifest::Manifest(Box::new(m)))
        .map_err(invalid)
}

fn check_config_media_type(config: &Descriptor, source: &Path) -> Result<(), StoreError> {
    match config.media_type().to_string().as_str() {
        OCI_CONFIG | DOCKER_CONFIG => Ok(()),
        other => Err(not_an_image(
            source,
            format!(
                "its config has media type {other:?}, which is not a container image config (an OCI artifact?)"
            ),
        )),
    }
}

/// The platform imports prefer when an index lists several: this host's architecture.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The store names each entry of an index.json (its top level only) carries, in order; an
/// unnamed entry has none.
pub(crate) fn index_names(
    index_bytes: &[u8],
    source: &Path,
) -> Result<Vec<Vec<String>>, StoreError> {
    let index = parse_index(index_bytes, "index.json", source)?;
    Ok(index.manifests().iter().map(annotated_names).collect())
}

/// The store names an index entry's annotations give its image: the containerd name, and the
/// OCI ref name when it is a full reference rather than a bare tag (a tag holds neither ':'
/// nor '/'). Invalid names are skipped.
fn annotated_names(descriptor: &Descriptor) -> Vec<String> {
    let containerd = annotation(descriptor, CONTAINERD_NAME);
    let full_ref = annotation(descriptor, REF_NAME).filter(|r| r.contains([':', '/']));
    let mut names: Vec<String> = Vec::new();
    for reference in containerd.into_iter().chain(full_ref) {
        match name_from_reference(reference) {
            Ok(name) if !names.contains(&name) => names.push(name),
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "ignoring an unusable image name in index.json"),
        }
    }
    names
}

/// Chooses one entry of an index: the one annotated with the requested full name, else the
/// one whose ref name matches the requested name or tag, else the one for this host's linux
/// platform, else the only one. Full names come first so that an archive of several images
/// that share a tag (`docker save a:latest b:latest`) still yields each by its name.
fn select<'a>(manifests: &'a [Descriptor], name: &str) -> Result<&'a Descriptor, String> {
    if manifests.is_empty() {
        return Err("lists no manifests".into());
    }
    let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let by_name: Vec<&Descriptor> = manifests
        .iter()
        .filter(|d| annotated_names(d).iter().any(|n| n == name))
        .collect();
    let by_ref: Vec<&Descriptor> = if by_name.is_empty() {
        manifests
            .iter()
            .filter(|d| ref_matches(d, name, tag))
            .collect()
    } else {
        by_name
    };
    let candidates: Vec<&Descriptor> = if by_ref.is_empty() {
        manifests.iter().collect()
    } else {
        by_ref
    };
    if let [only] = candidates.as_slice() {
        return Ok(only);
    }
    let arch = host_architecture();
    let for_host = candidates.iter().find(|d| {
        d.platform()
            .as_ref()
            .is_some_and(|p| p.os().to_string() == "linux" && p.architecture().to_string() == arch)
    });
    if let Some(found) = for_host {
        return Ok(found);
    }
    // Attestation manifests (buildx) carry platform unknown/unknown and are never the image.
    let real: Vec<&&Descriptor> = candidates
        .iter()
        .filter(|d| {
            d.platform()
                .as_ref()
                .is_none_or(|p| p.os().to_string() != "unknown")
        })
        .collect();
    if let [only] = real.as_slice() {
        return Ok(only);
    }
    Err(format!(
        "lists {} manifests and none is tagged {tag:?} or for linux/{arch}",
        candidates.len()
    ))
}

fn annotation<'a>(descriptor: &'a Descriptor, key: &str) -> Option<&'a String> {
    descriptor.annotations().as_ref()?.get(key)
}

fn ref_matches(descriptor: &Descriptor, name: &str, tag: &str) -> bool {
    let names_image = |value: &str| name_from_reference(value).is_ok_and(|n| n == name);
    let ref_name = annotation(descriptor, REF_NAME);
    let containerd = annotation(descriptor, CONTAINERD_NAME);
    ref_name.is_some_and(|r| r == tag || names_image(r))
        || containerd.is_some_and(|c| names_image(c))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::image::PlatformBuilder;

    use super::*;

    fn desc(n: u8, ref_name: Option<&str>, platform: Option<(&str, &str)>) -> Descriptor {
        let mut d = descriptor(OCI_MANIFEST, &Digest::of_bytes(&[n]), 1);
        d.set_annotations(ref_name.map(|r| HashMap::from([(REF_NAME.to_string(), r.to_string())])));
        d.set_platform(platform.map(|(os, architecture)| {
            PlatformBuilder::default()
                .os(os)
                .architecture(architecture)
                .build()
                .expect("platform")
        }));
        d
    }

    #[test]
    fn selects_by_tag_then_platform_then_only() {
        let arch = host_architecture();
        let tagged = [desc(1, Some("old"), None), desc(2, Some("latest"), None)];
        assert_eq!(
            select(&tagged, "x:latest").expect("tag").digest(),
            tagged[1].digest()
        );
        assert_eq!(
            select(&tagged, "x:old").expect("tag").digest(),
            tagged[0].digest()
        );

        let multi = [
            desc(3, None, Some(("linux", "s390x"))),
            desc(4, None, Some(("linux", arch))),
            desc(5, None, Some(("unknown", "unknown"))),
        ];
        assert_eq!(
            select(&multi, "x:latest").expect("platform").digest(),
            multi[1].digest()
        );

        let single = [desc(6, Some("other"), None)];
        assert_eq!(
            select(&single, "x:latest").expect("only").digest(),
            single[0].digest()
        );

        let attested = [
            desc(7, None, None),
            desc(8, None, Some(("unknown", "unknown"))),
        ];
        assert_eq!(
            select(&attested, "x:latest").expect("real").digest(),
            attested[0].digest()
        );

        let ambiguous = [
            desc(9, None, Some(("linux", "s390x"))),
            desc(10, None, Some(("linux", "riscv64"))),
        ];
        assert!(select(&ambiguous, "x:latest").is_err());
        assert!(select(&[], "x:latest").is_err());
    }

    #[test]
    fn full_names_win_over_shared_tags() {
        let named = |n: u8, full: &str| {
            let mut d = desc(n, Some("latest"), None);
            let mut annotations = d.annotations().clone().unwrap_or_default();
            annotations.insert(CONTAINERD_NAME.to_string(), full.to_string());
            d.set_annotations(Some(annotations));
            d
        };
        let both = [
            named(1, "docker.io/library/a:latest"),
            named(2, "ghcr.io/org/b:latest"),
        ];
        assert_eq!(
            select(&both, "a:latest").expect("a").digest(),
            both[0].digest()
        );
        assert_eq!(
            select(&both, "ghcr.io/org/b:latest").expect("b").digest(),
            both[1].digest()
        );
        assert!(
            select(&both, "c:latest").is_err(),
            "a shared tag is ambiguous"
        );
        assert_eq!(annotated_names(&both[0]), ["a:latest"]);
        let full_ref = desc(3, Some("docker.io/library/busybox:1.36"), None);
        assert_eq!(annotated_names(&full_ref), ["busybox:1.36"]);
        assert!(annotated_names(&desc(4, Some("1.36"), None)).is_empty());
    }

    #[test]
    fn matches_full_references() {
        let d = desc(1, Some("docker.io/library/busybox:1.36"), None);
        assert!(ref_matches(&d, "busybox:1.36", "1.36"));
        assert!(!ref_matches(&d, "busybox:latest", "latest"));
    }
}
