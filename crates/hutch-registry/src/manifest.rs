//! The manifest shapes a pull reads: OCI and Docker v2 manifests and indexes, as
//! `oci_spec`'s types (Docker's v2 manifests and manifest lists share the OCI fields; their
//! media types arrive as [`MediaType::Other`]), and the media types a pull accepts.

use oci_spec::image::{Arch, Os};
pub use oci_spec::image::{Descriptor, ImageIndex as Index, ImageManifest as Manifest, MediaType};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types a pull unpacks; the store detects the compression from the bytes.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// What a manifest body is, from the Content-Type, else its own `mediaType`, else its shape.
pub fn kind(content_type: &str, body: &[u8]) -> String {
    if [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&content_type) {
        return content_type.to_string();
    }
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(mt) = value["mediaType"].as_str() {
        return mt.to_string();
    }
    if value["manifests"].is_array() {
        OCI_INDEX.to_string()
    } else if value["layers"].is_array() {
        OCI_MANIFEST.to_string()
    } else if value["schemaVersion"] == 1 {
        "application/vnd.docker.distribution.manifest.v1+json".to_string()
    } else {
        content_type.to_string()
    }
}

pub fn is_index(kind: &str) -> bool {
    kind == OCI_INDEX || kind == DOCKER_LIST
}

pub fn is_manifest(kind: &str) -> bool {
    kind == OCI_MANIFEST || kind == DOCKER_MANIFEST
}

pub fn layer_type_ok(media_type: &MediaType) -> bool {
    LAYER_TYPES.contains(&media_type.to_string().as_str())
}

pub fn config_type_ok(media_type: &MediaType) -> bool {
    CONFIG_TYPES.contains(&media_type.to_string().as_str())
}

/// The linux/amd64 entry of an index, and the platforms it has for messages.
pub fn select_platform(index: &Index) -> Result<&Descriptor, Vec<String>> {
    let wanted = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    };
    index.manifests().iter().find(wanted).ok_or_else(|| {
        index
            .manifests()
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| match p.variant() {
                Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                None => format!("{}/{}", p.os(), p.architecture()),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn docker_manifest_lists_and_manifests_parse_with_their_media_types() {
        let list = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_LIST}", "manifests": [
                {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{D}", "size": 7,
                  "platform": {{"architecture": "arm", "os": "linux", "variant": "v7"}}}},
                {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{D}", "size": 9,
                  "platform": {{"architecture": "amd64", "os": "linux"}}}}]}}"#
        );
        let index: Index = serde_json::from_str(&list).unwrap();
        assert_eq!(select_platform(&index).unwrap().size(), 9);
        let manifest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_MANIFEST}",
                "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "{D}", "size": 1}},
                "layers": [{{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "{D}", "size": 2}}]}}"#
        );
        let manifest: Manifest = serde_json::from_str(&manifest).unwrap();
        assert!(config_type_ok(manifest.config().media_type()));
        assert!(layer_type_ok(manifest.layers()[0].media_type()));
        assert!(!layer_type_ok(&MediaType::Other(
            "application/x-unknown".into()
        )));
    }

    #[test]
    fn an_index_without_linux_amd64_names_what_it_has() {
        let list = format!(
            r#"{{"schemaVersion": 2, "manifests": [{{"mediaType": "{OCI_MANIFEST}", "digest": "{D}",
                "size": 7, "platform": {{"architecture": "arm64", "os": "linux"}}}}]}}"#
        );
        let index: Index = serde_json::from_str(&list).unwrap();
        assert_eq!(select_platform(&index).unwrap_err(), ["linux/arm64"]);
    }
}
