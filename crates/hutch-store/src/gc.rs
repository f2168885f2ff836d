//! Removing images and garbage-collecting what no image record and no pin references.
//!
//! Reference counting is done by scanning: the live set is recomputed from `images/` and
//! `pins/` under the store lock, which is also held by every import while it publishes, so
//! anything outside the live set at that moment is garbage.

use std::collections::HashSet;
use std::fs;
use std::io;

use crate::blob::blob_path;
use crate::digest::Digest;
use crate::error::{IoContext, StoreError};
use crate::name::normalize_name;
use crate::oci::Manifest;
use crate::staging::{clean_leftovers, unique_name};
use crate::store::Store;

/// What a removal or gc freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    pub layers_freed: usize,
    /// Unpacked size of the freed layers plus the size of the freed blobs.
    pub bytes_freed: u64,
    pub blobs_freed: usize,
}

impl Store {
    /// Deletes the image record `name`, then collects layers and blobs no longer used by any
    /// image or pin. Pinned layers are kept until unpinned (a later remove or gc frees them).
    pub fn remove_image(&self, name: &str) -> Result<Removal, StoreError> {
        let name = normalize_name(name)?;
        let _lock = self.lock()?;
        let path = self.record_path(&name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { name });
            }
            Err(err) => return Err(StoreError::io(format!("removing {}", path.display()), err)),
        }
        self.gc_locked()
    }

    /// Collects every layer and blob referenced by no image record and no pin.
    pub fn gc(&self) -> Result<Removal, StoreError> {
        let _lock = self.lock()?;
        self.gc_locked()
    }

    /// The caller holds the store lock.
    pub(crate) fn gc_locked(&self) -> Result<Removal, StoreError> {
        // A corrupt record or pin aborts here: collecting without knowing what it references
        // could delete a layer a sandbox is about to mount.
        let images = self.images()?;
        let pins = self.read_pins()?;
        let mut live_layers: HashSet<Digest> = HashSet::new();
        let mut live_blobs: HashSet<Digest> = HashSet::new();
        let mut blobs_known = true;
        for image in &images {
            live_layers.extend(image.layers.iter().cloned());
            live_blobs.insert(image.id.clone());
            live_blobs.insert(image.manifest_digest.clone());
            match self.manifest_blobs(&image.manifest_digest) {
                Ok(digests) => live_blobs.extend(digests),
                Err(err) => {
                    tracing::warn!(image = %image.name, %err, "cannot read manifest; keeping all blobs");
                    blobs_known = false;
                }
            }
        }
        for pin in pins {
            live_layers.extend(pin.layers);
        }

        let mut removal = Removal::default();
        let layers_dir = self.layers_dir();
        for entry in
            fs::read_dir(&layers_dir).ctx(|| format!("listing {}", layers_dir.display()))?
        {
            let entry = entry.ctx(|| format!("listing {}", layers_dir.display()))?;
            let Some(diff_id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                continue;
            };
            if live_layers.contains(&diff_id) {
                continue;
            }
            let size = self.read_layer_record(&diff_id).map_or(0, |r| r.size_bytes);
            // Moved out of layers/ first: a layer dir must never be seen half-deleted.
            let doomed = self.tmp_dir().join(unique_name("gc"));
            fs::rename(entry.path(), &doomed).ctx(|| format!("removing layer {diff_id}"))?;
            fs::remove_dir_all(&doomed).ctx(|| format!("deleting layer {diff_id}"))?;
            tracing::debug!(%diff_id, size, "freed layer");
            removal.layers_freed += 1;
            removal.bytes_freed += size;
        }

        if blobs_known {
            let blobs_dir = self.blobs_dir();
            for entry in
                fs::read_dir(&blobs_dir).ctx(|| format!("listing {}", blobs_dir.display()))?
            {
                let entry = entry.ctx(|| format!("listing {}", blobs_dir.display()))?;
                let Some(digest) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Digest::from_hex(n).ok())
                else {
                    continue;
                };
                if live_blobs.contains(&digest) {
                    continue;
                }
                let size = entry.metadata().map_or(0, |m| m.len());
                fs::remove_file(entry.path()).ctx(|| format!("removing blob {digest}"))?;
                removal.blobs_freed += 1;
                removal.bytes_freed += size;
            }
        }
        clean_leftovers(&self.tmp_dir(), true)?;
        Ok(removal)
    }

    /// The config and layer blobs a stored manifest references.
    fn manifest_blobs(&self, manifest: &Digest) -> Result<Vec<Digest>, StoreError> {
        let path = blob_path(&self.blobs_dir(), manifest);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path,
                reason: format!("invalid manifest: {e}"),
            })?;
        std::iter::once(manifest.config())
            .chain(manifest.layers())
            .map(crate::oci::digest_of)
            .collect()
    }
}
