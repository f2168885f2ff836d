//! Reading what the store holds about one image beyond its record: its stored manifest, and
//! per layer the blob it comes from and its unpacked size ([`Store::inspect`]).

use std::fs;
use std::io;

use serde::{Deserialize, Serialize};

use crate::blob::blob_path;
use crate::digest::Digest;
use crate::error::StoreError;
use crate::image::Image;
use crate::oci::{self, Manifest};
use crate::store::Store;

/// An image record with the details of its layers and config (`hutch image inspect`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Inspection {
    #[serde(flatten)]
    pub image: Image,
    /// One per entry of `image.layers`, in the same order (bottom layer first).
    pub layer_details: Vec<LayerDetails>,
    /// The config's `created` timestamp (RFC 3339, as the image's builder wrote it), if any.
    pub created: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
}

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerDetails {
    pub diff_id: Digest,
    /// The (compressed) blob of this layer, as the image's manifest lists it.
    pub blob: Digest,
    pub media_type: Option<String>,
    /// Size of the blob in bytes, as the manifest lists it.
    pub blob_size: Option<u64>,
    /// Size of the layer's unpacked files; `None` when the layer is not in the store (the image
    /// cannot run; `hutch image fsck --repair` unpacks it again if its blob is intact).
    pub size_bytes: Option<u64>,
}

/// The few config fields shown by inspect that the runtime does not need.
#[derive(Default, Deserialize)]
struct ConfigDates {
    created: Option<String>,
    architecture: Option<String>,
    os: Option<String>,
}

impl Store {
    /// The image `name` with its layers' blobs and sizes. Fails with `BlobMissing` when its
    /// manifest is gone, and `Corrupt` when the manifest does not describe the record's layers.
    pub fn inspect(&self, name: &str) -> Result<Inspection, StoreError> {
        let image = self.image(name)?;
        let (_, manifest) = self.stored_manifest(&image)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: blob_path(&self.blobs_dir(), &image.manifest_digest),
            reason,
        };
        if manifest.layers().len() != image.layers.len() {
            return Err(corrupt(format!(
                "the manifest of {} lists {} layers, its record {}",
                image.name,
                manifest.layers().len(),
                image.layers.len()
            )));
        }
        let layer_details = image
            .layers
            .iter()
            .zip(manifest.layers())
            .map(|(diff_id, descriptor)| {
                let blob = oci::digest_of(descriptor)
                    .map_err(|e| corrupt(format!("the manifest of {}: {e}", image.name)))?;
                Ok(LayerDetails {
                    diff_id: diff_id.clone(),
                    blob,
                    media_type: Some(descriptor.media_type().to_string()),
                    blob_size: Some(descriptor.size()),
                    size_bytes: self
                        .has_layer(diff_id)
                        .then(|| self.read_layer_record(diff_id).ok())
                        .flatten()
                        .map(|record| record.size_bytes),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        // Only informational: an unreadable config leaves these fields empty.
        let dates: ConfigDates = fs::read(blob_path(&self.blobs_dir(), &image.id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Ok(Inspection {
            image,
            layer_details,
            created: dates.created,
            architecture: dates.architecture,
            os: dates.os,
        })
    }

    /// The bytes and parsed form of the manifest the store keeps for `image`. A missing blob
    /// is `BlobMissing`; one that does not hash to its name or does not parse is `Corrupt`.
    pub(crate) fn stored_manifest(&self, image: &Image) -> Result<(Vec<u8>, Manifest), StoreError> {
        let digest = &image.manifest_digest;
        let path = blob_path(&self.blobs_dir(), digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobMissing {
                    image: image.name.clone(),
                    digest: digest.clone(),
                });
            }
            Err(err) => return Err(StoreError::io(format!("reading {}", path.display()), err)),
        };
        let actual = Digest::of_bytes(&bytes);
        if &actual != digest {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("the manifest of {} hashes to {actual}", image.name),
            });
        }
        let manifest = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            reason: format!("invalid manifest: {e}"),
        })?;
        Ok((bytes, manifest))
    }
}
