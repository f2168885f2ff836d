//! The records the store keeps (images, layers, pins) and the parsing of an image's config
//! blob into the runtime-relevant [`ImageConfig`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::blob::not_an_image;
use crate::digest::Digest;
use crate::error::StoreError;

/// The parts of an image config a sandbox needs to start the image's process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// A named image, as recorded in `images/<name>.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Image {
    /// Normalized name, e.g. `busybox:latest`.
    pub name: String,
    /// Digest of the config blob (docker's "image id").
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: Digest,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub manifest_digest: Digest,
    /// Layer diff_ids, bottom (first applied) first.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub layers: Vec<Digest>,
    pub config: ImageConfig,
    /// Sum of the unpacked sizes of the layers.
    pub size_bytes: u64,
    /// Unix seconds of the import.
    pub created_at: u64,
}

/// `layers/<hex>/layer.json`: written inside the layer directory before it is published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub(crate) diff_id: Digest,
    pub(crate) size_bytes: u64,
    /// The (possibly compressed) blob the layer was unpacked from.
    pub(crate) blob: Digest,
    pub(crate) unpacked_at: u64,
}

/// `pins/<holder>.json`: the layers a running sandbox uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PinRecord {
    pub(crate) holder: String,
    pub(crate) layers: Vec<Digest>,
    pub(crate) pinned_at: u64,
}

/// The subset of the OCI / docker image config JSON the store reads. Unknown fields are
/// ignored; docker writes `null` for absent lists, hence `Option` everywhere.
#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawRuntimeConfig>,
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRuntimeConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(rename = "type")]
    kind: Option<String>,
    diff_ids: Option<Vec<Digest>>,
}

/// Parses a config blob into the runtime config and the layer diff_ids (bottom first).
pub(crate) fn parse_config(
    bytes: &[u8],
    source: &Path,
) -> Result<(ImageConfig, Vec<Digest>), StoreError> {
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| not_an_image(source, format!("the image config is not valid: {e}")))?;
    let rootfs = raw
        .rootfs
        .ok_or_else(|| not_an_image(source, "the image config has no rootfs section"))?;
    if let Some(kind) = rootfs.kind.as_deref()
        && kind != "layers"
    {
        return Err(not_an_image(
            source,
            format!("the image config has rootfs type {kind:?}, expected \"layers\""),
        ));
    }
    let diff_ids = rootfs.diff_ids.unwrap_or_default();
    let config = raw
        .config
        .map(|c| ImageConfig {
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
        })
        .unwrap_or_default();
    Ok((config, diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_docker_style_config() {
        let json = format!(
            r#"{{"architecture":"amd64","config":{{"Env":["PATH=/bin"],"Entrypoint":null,
            "Cmd":["sh"],"WorkingDir":"","User":"1000:1000","Labels":null}},
            "rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        let (config, diff_ids) = parse_config(json.as_bytes(), Path::new("x")).expect("parses");
        assert_eq!(config.env, ["PATH=/bin"]);
        assert_eq!(config.entrypoint, None);
        assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(config.working_dir, None);
        assert_eq!(config.user.as_deref(), Some("1000:1000"));
        assert_eq!(diff_ids.len(), 1);
    }

    #[test]
    fn rejects_configs_without_layers() {
        for bad in [
            "not json",
            "{}",
            r#"{"rootfs":{"type":"other","diff_ids":[]}}"#,
            r#"{"rootfs":{"type":"layers","diff_ids":["sha256:../../x"]}}"#,
        ] {
            assert!(
                parse_config(bad.as_bytes(), Path::new("x")).is_err(),
                "{bad}"
            );
        }
    }
}
