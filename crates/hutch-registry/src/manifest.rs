//! The manifest shapes a pull reads: OCI and Docker v2 manifests and indexes.

use serde::Deserialize;

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

#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

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

pub fn layer_type_ok(media_type: &str) -> bool {
    media_type.is_empty() || LAYER_TYPES.contains(&media_type)
}

pub fn config_type_ok(media_type: &str) -> bool {
    media_type.is_empty() || CONFIG_TYPES.contains(&media_type)
}

/// The linux/amd64 entry of an index, and the platforms it has for messages.
pub fn select_platform(index: &Index) -> Result<&Descriptor, Vec<String>> {
    let wanted = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    index.manifests.iter().find(wanted).ok_or_else(|| {
        index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect()
    })
}
