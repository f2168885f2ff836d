//! Importing an image: staging and verifying every blob, unpacking missing layers into the
//! private staging area, then publishing layers, blobs and the image record under the store
//! lock. Until that final step nothing outside `tmp/` changes, and the staging area is removed
//! whatever the outcome.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File};
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageManifestBuilder;

use crate::blob::{StagedBlob, blob_path, not_an_image, stage_bytes, stage_file};
use crate::budget::{ImageBudget, UnpackLimits};
use crate::compression::{Compression, detect_compression};
use crate::digest::Digest;
use crate::docker;
use crate::error::{IoContext, StoreError};
use crate::image::{Image, ImageConfig, LayerRecord, parse_config};
use crate::name::normalize_name;
use crate::oci::{
    self, Descriptor, MediaType, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
};
use crate::source::{self, Layout, SourceDir};
use crate::staging::{Staging, write_atomic};
use crate::store::{Store, now_secs};
use crate::syscalls;
use crate::unpack::unpack_layer_from;

/// Everything verified and staged, ready to be published.
pub(crate) struct Plan {
    pub(crate) name: String,
    pub(crate) config: ImageConfig,
    pub(crate) config_digest: Digest,
    pub(crate) manifest_digest: Digest,
    pub(crate) layers: Vec<PlannedLayer>,
    pub(crate) blobs: PathBuf,
    pub(crate) unpacked: PathBuf,
    /// What the layers this import unpacks may add up to (see [`UnpackLimits`]).
    pub(crate) limits: UnpackLimits,
    pub(crate) budget: ImageBudget,
}

pub(crate) struct PlannedLayer {
    pub(crate) diff_id: Digest,
    pub(crate) blob: Digest,
    /// How errors name this layer, e.g. `sha256:... (2 of 3)`.
    pub(crate) what: String,
}

impl Store {
    /// Imports the image at `source` (an OCI layout directory, an OCI archive, or a `docker
    /// save` archive, plain or gzip, recognised by content) under `name`, replacing any image
    /// of that name. Layers already in the store are not unpacked again.
    pub fn import(&self, source: &Path, name: &str) -> Result<Image, StoreError> {
        let name = normalize_name(name)?;
        let staging = Staging::new(&self.tmp_dir())?;
        let plan = self.stage(source, name, &staging)?;
        self.publish(&plan, source)
    }

    fn stage(&self, source: &Path, name: String, staging: &Staging) -> Result<Plan, StoreError> {
        let scratch = staging.subdir("source")?;
        let blobs = staging.subdir("blobs")?;
        let unpacked = staging.subdir("layers")?;
        let src = source::prepare(source, &scratch)?;
        let (manifest_digest, config_bytes, layer_blobs) = match src.layout {
            Layout::Oci => stage_oci(&src, &name, &blobs, source)?,
            Layout::Docker => stage_docker(&src, &name, &blobs, source)?,
        };
        let config_digest = Digest::of_bytes(&config_bytes);
        let (config, diff_ids) = parse_config(&config_bytes, source)?;
        if diff_ids.len() != layer_blobs.len() {
            return Err(not_an_image(
                source,
                format!(
                    "the manifest lists {} layers but the config lists {} diff_ids",
                    layer_blobs.len(),
                    diff_ids.len()
                ),
            ));
        }
        let count = diff_ids.len();
        let layers: Vec<PlannedLayer> = diff_ids
            .into_iter()
            .zip(layer_blobs)
            .enumerate()
            .map(|(i, (diff_id, blob))| PlannedLayer {
                what: format!("{diff_id} ({} of {count})", i + 1),
                diff_id,
                blob: blob.digest,
            })
            .collect();
        let plan = Plan {
            name,
            config,
            config_digest,
            manifest_digest,
            layers,
            blobs,
            unpacked,
            limits: self.unpack_limits(),
            budget: ImageBudget::new(self.unpack_limits().image_bytes),
        };
        for layer in &plan.layers {
            if !self.has_layer(&layer.diff_id) {
                unpack_staged(&plan, layer)?;
            }
        }
        Ok(plan)
    }

    pub(crate) fn publish(&self, plan: &Plan, source: &Path) -> Result<Image, StoreError> {
        let _lock = self.lock()?;
        let result = self.publish_locked(plan);
        if result.is_err() {
            // Whatever was published before the failure is complete but unreferenced.
            if let Err(err) = self.gc_locked() {
                tracing::warn!(%err, source = %source.display(), "cleanup after failed import failed");
            }
        }
        result
    }

    fn publish_locked(&self, plan: &Plan) -> Result<Image, StoreError> {
        // A concurrent gc may have removed a layer that was present when staging skipped it.
        for layer in &plan.layers {
            if !self.has_layer(&layer.diff_id) {
                unpack_staged(plan, layer)?;
            }
        }
        let tmp = File::open(self.tmp_dir()).ctx(|| "opening the staging area".to_string())?;
        // Data first, names second: a published layer or blob is never missing its contents.
        syscalls::syncfs(&tmp).ctx(|| "flushing staged data to disk".to_string())?;

        let mut size_bytes = 0u64;
        let mut seen = HashSet::new();
        for layer in &plan.layers {
            if seen.insert(&layer.diff_id) && !self.has_layer(&layer.diff_id) {
                let staged = plan.unpacked.join(layer.diff_id.hex());
                let dest = self.layers_dir().join(layer.diff_id.hex());
                fs::rename(&staged, &dest).ctx(|| format!("publishing layer {}", layer.what))?;
            }
            size_bytes += self.read_layer_record(&layer.diff_id)?.size_bytes;
        }
        let staged_blobs = fs::read_dir(&plan.blobs).ctx(|| "listing staged blobs".to_string())?;
        for entry in staged_blobs {
            let entry = entry.ctx(|| "listing staged blobs".to_string())?;
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            let dest = blob_path(&self.blobs_dir(), &digest);
            if !dest.exists() {
                fs::rename(entry.path(), &dest).ctx(|| format!("publishing blob {digest}"))?;
            }
        }

        let image = Image {
            name: plan.name.clone(),
            id: plan.config_digest.clone(),
            manifest_digest: plan.manifest_digest.clone(),
            layers: plan.layers.iter().map(|l| l.diff_id.clone()).collect(),
            config: plan.config.clone(),
            size_bytes,
            created_at: now_secs(),
        };
        let record = self.record_path(&plan.name);
        let replaced = record.exists();
        let bytes = serde_json::to_vec_pretty(&image)
            .map_err(|e| StoreError::io("encoding image record", e.into()))?;
        write_atomic(&self.tmp_dir(), &record, &bytes)?;
        if replaced {
            // The previous image of this name may have left layers nothing uses any more.
            if let Err(err) = self.gc_locked() {
                tracing::warn!(%err, image = %plan.name, "gc after replacing an image failed");
            }
        }
        tracing::info!(image = %plan.name, id = %image.id, layers = image.layers.len(), "imported image");
        Ok(image)
    }
}

/// Unpacks one layer from its staged blob into `<staging>/layers/<hex>/fs` plus `layer.json`,
/// unless this import already did (images may list a layer twice).
fn unpack_staged(plan: &Plan, layer: &PlannedLayer) -> Result<(), StoreError> {
    let dir = plan.unpacked.join(layer.diff_id.hex());
    if dir.join("layer.json").is_file() {
        return Ok(());
    }
    let blob = blob_path(&plan.blobs, &layer.blob);
    let file = File::open(&blob).ctx(|| format!("opening blob of {}", layer.what))?;
    unpack_into(
        &plan.unpacked,
        file,
        layer,
        plan.limits,
        Some(plan.budget.clone()),
    )
}

/// Unpacks one layer from a stream of its blob into `<unpacked>/<hex>/fs` plus `layer.json`,
/// held to `limits` and the `image` budget; on failure nothing of the layer is left.
pub(crate) fn unpack_into<R: Read>(
    unpacked: &Path,
    blob: R,
    layer: &PlannedLayer,
    limits: UnpackLimits,
    image: Option<ImageBudget>,
) -> Result<(), StoreError> {
    let dir = unpacked.join(layer.diff_id.hex());
    if dir.exists() {
        fs::remove_dir_all(&dir).ctx(|| format!("discarding partial layer {}", layer.what))?;
    }
    let fs_dir = dir.join("fs");
    // `layers/` is already private, but each layer holds image-chosen setuid files: its own
    // directory is root's only too, wherever it is moved (staging, publishing, gc).
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .ctx(|| format!("creating layer directory for {}", layer.what))?;
    DirBuilder::new()
        .mode(0o755)
        .create(&fs_dir)
        .ctx(|| format!("creating layer directory for {}", layer.what))?;
    let unpacked = unpack_layer_from(blob, &fs_dir, &layer.diff_id, &layer.what, limits, image);
    let size_bytes = match unpacked {
        Ok(size) => size,
        Err(err) => {
            let _ = fs::remove_dir_all(&dir);
            return Err(err);
        }
    };
    let record = LayerRecord {
        diff_id: layer.diff_id.clone(),
        size_bytes,
        blob: layer.blob.clone(),
        unpacked_at: now_secs(),
    };
    let bytes = serde_json::to_vec_pretty(&record)
        .map_err(|e| StoreError::io("encoding layer record", e.into()))?;
    fs::write(dir.join("layer.json"), bytes)
        .ctx(|| format!("writing record of layer {}", layer.what))
}

type Staged = (Digest, Vec<u8>, Vec<StagedBlob>);

fn stage_oci(
    src: &SourceDir,
    name: &str,
    blobs: &Path,
    source: &Path,
) -> Result<Staged, StoreError> {
    let resolved = oci::resolve(&src.dir, name, source)?;
    let manifest = stage_bytes(blobs, &resolved.manifest_bytes)?;
    stage_bytes(blobs, &resolved.config_bytes)?;
    let count = resolved.manifest.layers().len();
    let mut layers = Vec::with_capacity(count);
    for (i, desc) in resolved.manifest.layers().iter().enumerate() {
        let what = format!("layer blob {} ({} of {count})", desc.digest(), i + 1);
        let digest = oci::digest_of(desc).map_err(|e| match e {
            StoreError::Unsupported { .. } => e,
            other => not_an_image(source, format!("{what}: {other}")),
        })?;
        let path = oci::blob_in(&src.dir, &digest);
        let staged = stage_file(
            &path,
            blobs,
            Some((&digest, Some(desc.size()))),
            src.staged,
            &what,
            source,
        )?;
        layers.push(staged);
    }
    Ok((manifest.digest, resolved.config_bytes, layers))
}

/// `docker save` has no manifest blob; the store records an equivalent OCI manifest so every
/// image has one (gc reads it to find the layer blobs).
fn stage_docker(
    src: &SourceDir,
    name: &str,
    blobs: &Path,
    source: &Path,
) -> Result<Staged, StoreError> {
    let resolved = docker::resolve(&src.dir, name, source)?;
    let config = stage_bytes(blobs, &resolved.config_bytes)?;
    let count = resolved.layers.len();
    let mut layers = Vec::with_capacity(count);
    let mut descriptors = Vec::with_capacity(count);
    for (i, member) in resolved.layers.iter().enumerate() {
        let what = format!("layer {} ({} of {count})", member.path.display(), i + 1);
        let expected = member.named_digest.as_ref().map(|d| (d, None));
        let staged = stage_file(&member.path, blobs, expected, src.staged, &what, source)?;
        let media_type = match staged_compression(blobs, &staged.digest, &what)? {
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
            Compression::None => OCI_LAYER_TAR,
        };
        descriptors.push(descriptor(media_type, &staged));
        layers.push(staged);
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(OCI_CONFIG, &config))
        .layers(descriptors)
        .build()
        .map_err(|e| StoreError::io("encoding the manifest", std::io::Error::other(e)))?;
    // No maps in it: field order alone makes the bytes, the same as ever.
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| StoreError::io("encoding the manifest", e.into()))?;
    debug_assert_eq!(config.digest, resolved.config_digest);
    let manifest = stage_bytes(blobs, &bytes)?;
    Ok((manifest.digest, resolved.config_bytes, layers))
}

fn descriptor(media_type: &str, blob: &StagedBlob) -> Descriptor {
    oci::descriptor(media_type, &blob.digest, blob.size)
}

fn staged_compression(
    blobs: &Path,
    digest: &Digest,
    what: &str,
) -> Result<Compression, StoreError> {
    let mut head = Vec::with_capacity(8);
    File::open(blob_path(blobs, digest))
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .ctx(|| format!("reading {what}"))?;
    detect_compression(&head, what)
}
