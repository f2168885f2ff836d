//! Checking the store against its invariants ([`Store::fsck`], `hutch image fsck`) and
//! repairing what can be repaired from what the store still holds.
//!
//! Checked: every blob hashes to its file name; every layer directory is complete (`fs/` and a
//! `layer.json` for its own diff_id); every image record reads, and its manifest and config
//! blobs exist, parse and agree with the record (config digest, diff_ids, descriptor sizes);
//! its layer blobs exist; its layers are present; every pin reads and names present layers;
//! nothing abandoned lies in `tmp/`. Not checked: the files inside a layer directory (a
//! directory cannot be turned back into the exact tar its diff_id hashes).
//!
//! Repair runs under the store lock (so imports, removals and pins wait for it). It deletes
//! corrupt blobs, stray entries of `blobs/` and `layers/`, incomplete layer directories and
//! abandoned `tmp/` entries, and unpacks a missing layer again from the image's layer blob
//! when that blob is intact. It never deletes image records or pins: an image it cannot mend
//! (its manifest or config is gone, or a layer and its blob both are) stays listed, and is
//! reported as broken until it is re-imported (which replaces the record) or removed. Deleting
//! the record would silently drop the only trace of what the user had; pins belong to running
//! sandboxes, which release them.
//!
//! Without repair no lock is taken, so a concurrent import or removal can show up as a
//! transient finding; anything found missing is looked at again before it is reported.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::blob::blob_path;
use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, StoreError};
use crate::image::{Image, LayerRecord, PinRecord, parse_config};
use crate::import::{PlannedLayer, unpack_into};
use crate::name::record_file_name;
use crate::oci::{self, Manifest};
use crate::staging::{Staging, StoreLock, leftovers, unique_name};
use crate::store::Store;
use crate::syscalls;

mod report;

pub use report::{Finding, FindingKind, FsckReport};

impl Store {
    /// Checks the whole store and, with `repair`, fixes what it can (see the module docs:
    /// corrupt blobs, stray entries, incomplete layers and stale staging data are deleted,
    /// missing layers are unpacked again from intact blobs; image records and pins are never
    /// deleted). Every blob is read in full, so this takes as long as reading the store.
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        let _lock = if repair { Some(self.lock()?) } else { None };
        let mut fsck = Fsck {
            store: self,
            repair,
            report: FsckReport::default(),
            blobs: HashMap::new(),
            layers: HashMap::new(),
        };
        fsck.check_tmp()?;
        fsck.check_blobs()?;
        fsck.check_layers()?;
        fsck.check_images()?;
        fsck.check_pins()?;
        Ok(fsck.report)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlobState {
    /// Hashes to its name; the size in bytes.
    Good(u64),
    Corrupt,
    Missing,
}

struct Fsck<'a> {
    store: &'a Store,
    repair: bool,
    report: FsckReport,
    blobs: HashMap<Digest, BlobState>,
    /// Diff_id → whether the layer is complete.
    layers: HashMap<Digest, bool>,
}

impl Fsck<'_> {
    fn find(&mut self, kind: FindingKind, subject: impl Into<String>, detail: impl Into<String>) {
        self.report.findings.push(Finding {
            kind,
            subject: subject.into(),
            detail: detail.into(),
            repaired: false,
        });
    }

    /// Records a finding, and when repairing runs `fix` and marks it repaired if that worked.
    fn find_and_fix(
        &mut self,
        kind: FindingKind,
        subject: impl Into<String>,
        detail: impl Into<String>,
        fix: impl FnOnce() -> Result<(), StoreError>,
    ) {
        let mut finding = Finding {
            kind,
            subject: subject.into(),
            detail: detail.into(),
            repaired: false,
        };
        if self.repair {
            match fix() {
                Ok(()) => finding.repaired = true,
                Err(err) => finding.detail = format!("{}; repair failed: {err}", finding.detail),
            }
        }
        self.report.findings.push(finding);
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(self.store.root())
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn check_tmp(&mut self) -> Result<(), StoreError> {
        // Without the store lock, only a moment when nobody holds it proves that files of
        // atomic writes and gc are abandoned; staging dirs carry their own lock.
        let probe = if self.repair {
            None
        } else {
            StoreLock::try_acquire(&self.store.lock_path())?
        };
        let found = leftovers(&self.store.tmp_dir(), self.repair || probe.is_some())?;
        drop(probe);
        for leftover in found {
            let subject = self.relative(&leftover.path);
            let detail = if leftover.is_dir {
                "abandoned staging directory"
            } else {
                "abandoned temporary file"
            };
            self.find_and_fix(FindingKind::StaleTmp, subject, detail, || {
                remove_any(&leftover.path, leftover.is_dir)
            });
        }
        Ok(())
    }

    fn check_blobs(&mut self) -> Result<(), StoreError> {
        for entry in sorted_entries(&self.store.blobs_dir())? {
            let meta =
                fs::symlink_metadata(&entry).ctx(|| format!("inspecting {}", entry.display()))?;
            let digest = entry
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Digest::from_hex(n).ok());
            match digest {
                Some(digest) if meta.is_file() => {
                    self.verify_blob(&digest)?;
                }
                _ => {
                    let subject = self.relative(&entry);
                    let detail = if meta.is_file() {
                        "not named by a sha256 digest"
                    } else {
                        "not a regular file"
                    };
                    self.find_and_fix(FindingKind::StrayEntry, subject, detail, || {
                        remove_any(&entry, meta.is_dir())
                    });
                }
            }
        }
        Ok(())
    }

    /// Hashes the blob `digest` (once per run), reporting it if corrupt.
    fn verify_blob(&mut self, digest: &Digest) -> Result<BlobState, StoreError> {
        if let Some(state) = self.blobs.get(digest) {
            return Ok(*state);
        }
        let path = blob_path(&self.store.blobs_dir(), digest);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        let state = match file {
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) => {
                BlobState::Missing
            }
            Err(err) => return Err(StoreError::io(format!("opening {}", path.display()), err)),
            Ok(file) => {
                let (actual, size) = HashingReader::new(file)
                    .finish()
                    .ctx(|| format!("reading {}", path.display()))?;
                if &actual == digest {
                    BlobState::Good(size)
                } else {
                    let detail = format!("its content hashes to {actual}");
                    self.find_and_fix(FindingKind::CorruptBlob, digest.to_string(), detail, || {
                        fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))
                    });
                    BlobState::Corrupt
                }
            }
        };
        self.blobs.insert(digest.clone(), state);
        Ok(state)
    }

    fn check_layers(&mut self) -> Result<(), StoreError> {
        for entry in sorted_entries(&self.store.layers_dir())? {
            let diff_id = entry
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| Digest::from_hex(n).ok());
            match diff_id {
                Some(diff_id) => {
                    self.verify_layer(&diff_id)?;
                }
                None => {
                    let subject = self.relative(&entry);
                    let store = self.store;
                    self.find_and_fix(
                        FindingKind::StrayEntry,
                        subject,
                        "not named by a diff_id",
                        || discard(store, &entry),
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the layer `diff_id` is complete (looked at once per run), reporting an
    /// incomplete one.
    fn verify_layer(&mut self, diff_id: &Digest) -> Result<bool, StoreError> {
        if let Some(complete) = self.layers.get(diff_id) {
            return Ok(*complete);
        }
        let dir = self.store.layers_dir().join(diff_id.hex());
        let complete = match layer_problem(self.store, diff_id, &dir)? {
            None => true,
            Some(LayerProblem::Absent) => false,
            Some(LayerProblem::Incomplete(detail)) => {
                let store = self.store;
                self.find_and_fix(
                    FindingKind::IncompleteLayer,
                    diff_id.to_string(),
                    detail,
                    || discard(store, &dir),
                );
                false
            }
        };
        self.layers.insert(diff_id.clone(), complete);
        Ok(complete)
    }

    fn check_images(&mut self) -> Result<(), StoreError> {
        for path in sorted_entries(&self.store.images_dir())? {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let subject = self.relative(&path);
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Removed since the listing (a concurrent `rm`).
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(StoreError::io(format!("reading {}", path.display()), err));
                }
            };
            let image: Image = match serde_json::from_slice(&bytes) {
                Ok(image) => image,
                Err(err) => {
                    let detail = format!(
                        "invalid image record ({err}); it blocks gc: remove it with `hutch image rm` or by hand"
                    );
                    self.find(FindingKind::CorruptRecord, subject, detail);
                    continue;
                }
            };
            let expected = record_file_name(&image.name);
            if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
                let detail = format!(
                    "the record is for {:?}, which would be stored as images/{expected}",
                    image.name
                );
                self.find(FindingKind::CorruptRecord, subject, detail);
                continue;
            }
            self.check_image(&image)?;
        }
        Ok(())
    }

    fn check_image(&mut self, image: &Image) -> Result<(), StoreError> {
        let name = image.name.as_str();
        let manifest = self.image_manifest(image)?;
        if let Some(manifest) = &manifest {
            if manifest.config != image.id {
                let detail = format!(
                    "its manifest names config {}, its record {}",
                    manifest.config, image.id
                );
                self.find(FindingKind::BrokenImage, name, detail);
            }
            if manifest.layers.len() != image.layers.len() {
                let detail = format!(
                    "its manifest lists {} layers, its record {}",
                    manifest.layers.len(),
                    image.layers.len()
                );
                self.find(FindingKind::BrokenImage, name, detail);
            }
        }
        self.check_config(image)?;

        let count = image.layers.len();
        let layer_blobs: Vec<&(Digest, u64)> = manifest.iter().flat_map(|m| &m.layers).collect();
        let mut seen = HashSet::new();
        for (i, (digest, size)) in layer_blobs.iter().enumerate() {
            if !seen.insert(digest) {
                continue;
            }
            let what = format!("layer blob {digest} ({} of {count})", i + 1);
            self.check_referenced_blob(name, digest, *size, &what)?;
        }

        let mut seen = HashSet::new();
        for (i, diff_id) in image.layers.iter().enumerate() {
            if !seen.insert(diff_id) || self.verify_layer(diff_id)? {
                continue;
            }
            let what = format!("{diff_id} ({} of {count})", i + 1);
            let detail = format!("layer {what} is not in the store");
            // The blob at the same position is this layer's only if the manifest and the
            // record agree on the number of layers.
            let blob = layer_blobs
                .get(i)
                .filter(|_| layer_blobs.len() == count)
                .map(|(digest, _)| digest.clone());
            let usable = match &blob {
                Some(blob) => matches!(self.verify_blob(blob)?, BlobState::Good(_)),
                None => false,
            };
            match blob.filter(|_| usable) {
                Some(blob) => {
                    let store = self.store;
                    let layer = PlannedLayer {
                        diff_id: diff_id.clone(),
                        blob,
                        what,
                    };
                    let detail = format!("{detail}; its blob {} can restore it", layer.blob);
                    self.find_and_fix(FindingKind::MissingLayer, name, detail, || {
                        unpack_again(store, &layer)
                    });
                    if self.repair {
                        self.layers.remove(diff_id);
                        self.verify_layer(diff_id)?;
                    }
                }
                None => {
                    let detail =
                        format!("{detail}, nor is its layer blob: re-import the image to run it");
                    self.find(FindingKind::MissingLayer, name, detail);
                }
            }
        }
        Ok(())
    }

    /// The blobs the image's stored manifest names, or `None` after reporting why it is
    /// unusable.
    fn image_manifest(&mut self, image: &Image) -> Result<Option<ManifestBlobs>, StoreError> {
        let digest = &image.manifest_digest;
        match self.verify_blob(digest)? {
            BlobState::Good(_) => {}
            state => {
                let detail = format!("its manifest {digest} is {}", missing_or_corrupt(state));
                self.find(FindingKind::MissingBlob, &image.name, detail);
                return Ok(None);
            }
        }
        let path = blob_path(&self.store.blobs_dir(), digest);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let blobs = serde_json::from_slice::<Manifest>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|m| ManifestBlobs::of(&m).map_err(|e| e.to_string()));
        match blobs {
            Ok(blobs) => Ok(Some(blobs)),
            Err(err) => {
                let detail = format!("its manifest {digest} is not a valid image manifest: {err}");
                self.find(FindingKind::BrokenImage, &image.name, detail);
                Ok(None)
            }
        }
    }

    fn check_config(&mut self, image: &Image) -> Result<(), StoreError> {
        let digest = &image.id;
        match self.verify_blob(digest)? {
            BlobState::Good(_) => {}
            state => {
                let detail = format!("its config {digest} is {}", missing_or_corrupt(state));
                self.find(FindingKind::MissingBlob, &image.name, detail);
                return Ok(());
            }
        }
        let path = blob_path(&self.store.blobs_dir(), digest);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        match parse_config(&bytes, &path) {
            Ok((_, diff_ids)) if diff_ids == image.layers => {}
            Ok(_) => {
                let detail = format!("its config {digest} lists other layers than its record");
                self.find(FindingKind::BrokenImage, &image.name, detail);
            }
            Err(err) => {
                let reason = match err {
                    StoreError::NotAnImage { reason, .. } => reason,
                    other => other.to_string(),
                };
                let detail = format!("its config {digest} is unusable: {reason}");
                self.find(FindingKind::BrokenImage, &image.name, detail);
            }
        }
        Ok(())
    }

    /// A layer blob of an image: present, intact and of the size its descriptor says.
    fn check_referenced_blob(
        &mut self,
        name: &str,
        digest: &Digest,
        expected: u64,
        what: &str,
    ) -> Result<(), StoreError> {
        match self.verify_blob(digest)? {
            BlobState::Good(size) => {
                if expected != size {
                    let detail =
                        format!("its manifest gives {what} {expected} bytes, the blob has {size}");
                    self.find(FindingKind::BrokenImage, name, detail);
                }
            }
            state => {
                let detail = format!(
                    "{what} is {}; the image cannot be saved, and its layer cannot be restored \
                     from it: re-import the image",
                    missing_or_corrupt(state)
                );
                self.find(FindingKind::MissingBlob, name, detail);
            }
        }
        Ok(())
    }

    fn check_pins(&mut self) -> Result<(), StoreError> {
        for path in sorted_entries(&self.store.pins_dir())? {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(StoreError::io(format!("reading {}", path.display()), err));
                }
            };
            let pin: PinRecord = match serde_json::from_slice(&bytes) {
                Ok(pin) => pin,
                Err(err) => {
                    let detail = format!(
                        "invalid pin record ({err}); it blocks gc: remove it by hand once no sandbox runs from this store"
                    );
                    let subject = self.relative(&path);
                    self.find(FindingKind::DanglingPin, subject, detail);
                    continue;
                }
            };
            for layer in &pin.layers {
                if !self.verify_layer(layer)? {
                    let detail = format!("pins layer {layer}, which is not in the store");
                    self.find(FindingKind::DanglingPin, &pin.holder, detail);
                }
            }
        }
        Ok(())
    }
}

enum LayerProblem {
    Absent,
    Incomplete(String),
}

fn layer_problem(
    store: &Store,
    diff_id: &Digest,
    dir: &Path,
) -> Result<Option<LayerProblem>, StoreError> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Ok(Some(LayerProblem::Absent));
        }
        Err(err) => return Err(StoreError::io(format!("inspecting {}", dir.display()), err)),
    };
    let incomplete = |reason: &str| Ok(Some(LayerProblem::Incomplete(reason.to_string())));
    if !meta.is_dir() {
        return incomplete("the layer is not a directory");
    }
    if !fs::symlink_metadata(dir.join("fs")).is_ok_and(|m| m.is_dir()) {
        return incomplete("the layer has no fs/ directory");
    }
    let record_path = store.layer_record_path(diff_id);
    let bytes = match fs::read(&record_path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return incomplete("the layer has no layer.json: its unpacking never finished");
        }
        Err(err) => {
            return Err(StoreError::io(
                format!("reading {}", record_path.display()),
                err,
            ));
        }
    };
    match serde_json::from_slice::<LayerRecord>(&bytes) {
        Ok(record) if &record.diff_id == diff_id => Ok(None),
        Ok(record) => incomplete(&format!("its layer.json is for layer {}", record.diff_id)),
        Err(err) => incomplete(&format!("its layer.json is invalid: {err}")),
    }
}

/// What fsck needs of a stored manifest: its blobs, as the store's digests.
struct ManifestBlobs {
    config: Digest,
    /// Digest and size of each layer blob, in order.
    layers: Vec<(Digest, u64)>,
}

impl ManifestBlobs {
    fn of(manifest: &Manifest) -> Result<Self, StoreError> {
        Ok(Self {
            config: oci::digest_of(manifest.config())?,
            layers: manifest
                .layers()
                .iter()
                .map(|d| Ok((oci::digest_of(d)?, d.size())))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

fn missing_or_corrupt(state: BlobState) -> &'static str {
    match state {
        BlobState::Corrupt => "corrupt",
        _ => "missing",
    }
}

/// The entries of `dir`, as full paths, sorted so reports are stable.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        paths.push(entry.ctx(|| format!("listing {}", dir.display()))?.path());
    }
    paths.sort();
    Ok(paths)
}

fn remove_any(path: &Path, is_dir: bool) -> Result<(), StoreError> {
    let removed = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io(format!("removing {}", path.display()), err))
        }
        _ => Ok(()),
    }
}

/// Removes an entry of `layers/` the way gc does: moved into `tmp/` first, so `layers/` never
/// shows it half-deleted.
fn discard(store: &Store, path: &Path) -> Result<(), StoreError> {
    let doomed = store.tmp_dir().join(unique_name("fsck"));
    fs::rename(path, &doomed).ctx(|| format!("moving {} out of the store", path.display()))?;
    let is_dir = fs::symlink_metadata(&doomed).is_ok_and(|m| m.is_dir());
    remove_any(&doomed, is_dir)
}

/// Unpacks a layer from its intact blob in the store and publishes it, as an import would.
/// The caller holds the store lock.
fn unpack_again(store: &Store, layer: &PlannedLayer) -> Result<(), StoreError> {
    let staging = Staging::new(&store.tmp_dir())?;
    let unpacked = staging.subdir("layers")?;
    let blob = blob_path(&store.blobs_dir(), &layer.blob);
    let file = File::open(&blob).ctx(|| format!("opening {}", blob.display()))?;
    unpack_into(&unpacked, file, layer, store.unpack_limits(), None)?;
    let tmp = File::open(store.tmp_dir()).ctx(|| "opening the staging area".to_string())?;
    syscalls::syncfs(&tmp).ctx(|| "flushing the unpacked layer to disk".to_string())?;
    let dest = store.layers_dir().join(layer.diff_id.hex());
    fs::rename(unpacked.join(layer.diff_id.hex()), &dest)
        .ctx(|| format!("publishing layer {}", layer.what))
}
