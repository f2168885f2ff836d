//! Committing: a directory into a zstd layer, and a stage's state into an image in the
//! store (also the cache image of each step).

use std::path::{Path, PathBuf};

use hutch_store::{Digest, Image, IngestLayer, write_layer_zstd};
use oci_spec::image::{ImageManifest, ImageManifestBuilder, MediaType};
use serde_json::{Value, json};

use super::Engine;
use super::state::{Layer, State};
use crate::error::BuildError;

/// Built layers are stored and pushed zstd-compressed (OCI 1.1; Docker 23+, containerd
/// 1.5+, podman and buildah read it).
const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const LAYER_ZSTD_LEVEL: i32 = 3;

impl Engine<'_> {
    /// The image of `state` under its cache name, made if missing.
    pub(super) async fn commit(&self, state: &State) -> Result<Image, BuildError> {
        match self.store.image(&state.cache_name()) {
            Ok(image) => Ok(image),
            Err(e) if e.is_not_found() => self.commit_as(state, &state.cache_name()).await,
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn commit_as(&self, state: &State, name: &str) -> Result<Image, BuildError> {
        self.commit_with(state, name, None).await
    }

    /// Records `state` (plus `new_layer`, a tar file already hashed) as the image `name`.
    async fn commit_with(
        &self,
        state: &State,
        name: &str,
        new_layer: Option<(&Path, &Layer)>,
    ) -> Result<Image, BuildError> {
        let mut config = state.config.clone();
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": state.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        });
        if let Some(obj) = config.as_object_mut() {
            obj.remove("history");
        }
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| BuildError::Internal(e.to_string()))?;
        let config_digest = Digest::of_bytes(&config_bytes);
        let descriptor = hutch_store::descriptor;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                "application/vnd.oci.image.config.v1+json",
                &config_digest,
                config_bytes.len() as u64,
            ))
            .layers(
                state
                    .layers
                    .iter()
                    .map(|l| descriptor(&l.media_type, &l.blob, l.size))
                    .collect::<Vec<_>>(),
            )
            .build()
            .map_err(|e| BuildError::Internal(e.to_string()))?;
        // Keys sorted: the same bytes as manifests built before, and as the store writes.
        let manifest_bytes = hutch_store::canonical_json(&manifest)
            .map_err(|e| BuildError::Internal(e.to_string()))?;
        let manifest_digest = Digest::of_bytes(&manifest_bytes);
        let store = self.store.clone();
        let name = name.to_string();
        let layers: Vec<IngestLayer> = state
            .layers
            .iter()
            .map(|l| IngestLayer {
                diff_id: l.diff_id.clone(),
                blob: l.blob.clone(),
            })
            .collect();
        let new_layer = new_layer.map(|(p, l)| (p.to_path_buf(), l.clone()));
        tokio::task::spawn_blocking(move || -> Result<Image, BuildError> {
            let ingest = store.ingest()?;
            if let Some((path, layer)) = &new_layer {
                let file = std::fs::File::open(path)
                    .map_err(|e| BuildError::io("reading a built layer", e))?;
                ingest.add_layer(
                    file,
                    &layer.blob,
                    Some(layer.size),
                    &layer.diff_id,
                    "built layer",
                )?;
            }
            ingest.add_bytes(&config_bytes, &config_digest, "the config")?;
            ingest.add_bytes(&manifest_bytes, &manifest_digest, "the manifest")?;
            Ok(ingest.commit(&name, &manifest_digest, &config_digest, &layers)?)
        })
        .await
        .map_err(|e| BuildError::Internal(e.to_string()))?
    }

    /// Adds the layer made of `tree` to `state` (whose key is already the step's), and
    /// records the result as the step's cache image.
    pub(super) async fn add_layer_from(
        &self,
        state: &mut State,
        tree: &Path,
        exclude: &[PathBuf],
    ) -> Result<(), BuildError> {
        // In the store's tmp/, where a build killed mid-step leaves it for the next open.
        let scratch = self.store.scratch_dir("build-layer")?;
        let blob = scratch.path().join("layer.tar.zst");
        let layer = {
            let (tree, exclude, blob) = (tree.to_path_buf(), exclude.to_vec(), blob.clone());
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::create(&blob)
                    .map_err(|e| BuildError::io("writing a layer", e))?;
                let written = write_layer_zstd(
                    &tree,
                    &exclude,
                    std::io::BufWriter::with_capacity(256 << 10, file),
                    LAYER_ZSTD_LEVEL,
                )?;
                Ok::<_, BuildError>(Layer {
                    diff_id: written.diff_id,
                    blob: written.blob,
                    media_type: OCI_LAYER_TAR_ZSTD.into(),
                    size: written.blob_size,
                })
            })
            .await
            .map_err(|e| BuildError::Internal(e.to_string()))??
        };
        state.layers.push(layer.clone());
        let name = state.cache_name();
        self.commit_with(state, &name, Some((&blob, &layer)))
            .await?;
        Ok(())
    }

    /// A stored image's layers (with their blobs, from its manifest) and its whole config.
    /// The config stays JSON: it carries every field of the base image's (Docker's too, which
    /// the OCI types drop) into the images built on it.
    pub(super) fn stored(&self, image: &Image) -> Result<(Vec<Layer>, Value), BuildError> {
        let manifest: ImageManifest = read_json(&self.store.blob_file(&image.manifest_digest))?;
        let config: Value = read_json(&self.store.blob_file(&image.id))?;
        let descs = manifest.layers();
        if descs.len() != image.layers.len() {
            return Err(BuildError::Internal(format!(
                "{}: its manifest and its record disagree on the layers",
                image.name
            )));
        }
        let layers = image
            .layers
            .iter()
            .zip(descs)
            .map(|(diff_id, d)| {
                Ok(Layer {
                    diff_id: diff_id.clone(),
                    blob: Digest::parse(d.digest().as_ref())?,
                    media_type: d.media_type().to_string(),
                    size: d.size(),
                })
            })
            .collect::<Result<Vec<_>, hutch_store::StoreError>>()?;
        Ok((layers, config))
    }

    /// A cached result for `state`'s current key, adopted into `state` when found.
    pub(super) fn cached(&self, state: &mut State) -> Result<bool, BuildError> {
        match self.store.image(&state.cache_name()) {
            Ok(image) => {
                let (layers, config) = self.stored(&image)?;
                state.layers = layers;
                state.config = config;
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A store digest as an OCI one (every sha256 digest is one).
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BuildError> {
    let bytes = std::fs::read(path)
        .map_err(|e| BuildError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::Internal(format!("{}: {e}", path.display())))
}
