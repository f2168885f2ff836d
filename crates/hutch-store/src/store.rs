//! The [`Store`] handle: opening the on-disk layout, looking images and layers up, and pins.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::budget::UnpackLimits;
use crate::digest::Digest;
use crate::error::{IoContext, StoreError};
use crate::image::{Image, LayerRecord, PinRecord};
use crate::name::{check_holder, normalize_name, record_file_name};
use crate::staging::{ScratchDir, StoreLock, clean_leftovers, write_atomic};

/// A content-addressed image store rooted at one directory. Cheap to clone; every operation
/// re-reads the disk, so several `Store`s (in one or many processes) can share a root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    limits: UnpackLimits,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Opens the store at `root`, creating its layout if missing, and removes staging data
    /// abandoned by earlier processes. Unpacking is limited by [`UnpackLimits::from_env`].
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .ctx(|| format!("creating store directory {}", root.display()))?;
        // Layer paths are handed to mount(2) later, so they must be absolute.
        let root = fs::canonicalize(root).ctx(|| format!("resolving {}", root.display()))?;
        let store = Store {
            root,
            limits: UnpackLimits::from_env(),
        };
        for (dir, mode) in [
            // Layers hold image-controlled setuid binaries and device nodes, and blobs the
            // same content packed: unprivileged host users must not be able to reach them.
            (store.blobs_dir(), 0o700),
            (store.layers_dir(), 0o700),
            (store.images_dir(), 0o755),
            (store.pins_dir(), 0o755),
            (store.tmp_dir(), 0o700),
        ] {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .ctx(|| format!("creating {}", dir.display()))?;
        }
        let lock = StoreLock::try_acquire(&store.lock_path())?;
        clean_leftovers(&store.tmp_dir(), lock.is_some())?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A private working directory inside the store (same filesystem, so what is assembled
    /// there can be renamed in), removed on drop. Unlike anything else put in `tmp/`, it
    /// survives `Store::open` and `fsck --repair` of other processes while it lives; see
    /// [`ScratchDir`]. `label` (`[a-z0-9-]`) only names it.
    pub fn scratch_dir(&self, label: &str) -> Result<ScratchDir, StoreError> {
        ScratchDir::new(&self.tmp_dir(), label)
    }

    /// The same store, unpacking under `limits` instead.
    pub fn with_unpack_limits(mut self, limits: UnpackLimits) -> Store {
        self.limits = limits;
        self
    }

    /// The limits every layer this store unpacks (and every image it imports or ingests) is
    /// held to.
    pub fn unpack_limits(&self) -> UnpackLimits {
        self.limits
    }

    /// The directory to use as an overlayfs lower dir for the layer with this diff_id. It
    /// exists only once the layer is completely unpacked.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex()).join("fs")
    }

    /// The image's layer dirs in overlayfs `lowerdir=` order: topmost layer first.
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|layer| self.layer_dir(layer))
            .collect()
    }

    /// True when the layer is present (and therefore complete).
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_record_path(diff_id).is_file()
    }

    /// The image recorded under `name` (normalized first); `NotFound` if there is none.
    pub fn image(&self, name: &str) -> Result<Image, StoreError> {
        let name = normalize_name(name)?;
        let path = self.record_path(&name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { name });
            }
            Err(err) => return Err(StoreError::io(format!("reading {}", path.display()), err)),
        };
        let image = parse_record(&path, &bytes)?;
        if image.name != name {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("the record is for {:?}, not {name:?}", image.name),
            });
        }
        Ok(image)
    }

    /// Every image, sorted by name.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let dir = self.images_dir();
        let mut images = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
            images.push(parse_record(&path, &bytes)?);
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Records that `holder` (a sandbox id) uses `layers`, so gc keeps them until
    /// [`Store::unpin`]. Replaces any earlier pin of the same holder. Fails with
    /// `LayerMissing` if a layer is not (or no longer) in the store, so a sandbox never mounts
    /// a vanished lower dir.
    pub fn pin(&self, holder: &str, layers: &[Digest]) -> Result<(), StoreError> {
        check_holder(holder)?;
        let layers: Vec<Digest> = layers
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let _lock = self.lock()?;
        if let Some(missing) = layers.iter().find(|d| !self.has_layer(d)) {
            return Err(StoreError::LayerMissing {
                diff_id: missing.clone(),
            });
        }
        let record = PinRecord {
            holder: holder.to_string(),
            layers,
            pinned_at: now_secs(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| StoreError::io("encoding pin record", e.into()))?;
        write_atomic(&self.tmp_dir(), &self.pin_path(holder), &bytes)
    }

    /// Drops `holder`'s pin; its layers become collectable by the next remove or gc.
    /// Unpinning a holder that has no pin is not an error.
    pub fn unpin(&self, holder: &str) -> Result<(), StoreError> {
        check_holder(holder)?;
        let _lock = self.lock()?;
        let path = self.pin_path(holder);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io(format!("removing {}", path.display()), err))
            }
            _ => Ok(()),
        }
    }

    /// The holders (sandbox ids) pinning at least one layer of the image `name`, sorted.
    /// The unpacked size of a layer, and the size of the blob it came from (0 when the blob
    /// is no longer kept).
    pub fn layer_sizes(&self, diff_id: &Digest) -> Result<(u64, u64), StoreError> {
        let record = self.read_layer_record(diff_id)?;
        let blob = fs::metadata(crate::blob::blob_path(&self.blobs_dir(), &record.blob))
            .map(|m| m.len())
            .unwrap_or(0);
        Ok((record.size_bytes, blob))
    }

    /// Records the image `source` under a second name `name` too (same layers, same id);
    /// an image already named `name` is replaced.
    pub fn tag(&self, source: &str, name: &str) -> Result<Image, StoreError> {
        let name = normalize_name(name)?;
        let _lock = self.lock()?;
        let mut image = self.image(source)?;
        image.name = name.clone();
        let bytes = serde_json::to_vec_pretty(&image)
            .map_err(|e| StoreError::io("encoding image record", e.into()))?;
        crate::staging::write_atomic(&self.tmp_dir(), &self.record_path(&name), &bytes)?;
        Ok(image)
    }

    pub fn holders(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let image = self.image(name)?;
        let layers: BTreeSet<&Digest> = image.layers.iter().collect();
        let mut holders: Vec<String> = self
            .read_pins()?
            .into_iter()
            .filter(|pin| pin.layers.iter().any(|l| layers.contains(l)))
            .map(|pin| pin.holder)
            .collect();
        holders.sort();
        Ok(holders)
    }

    pub(crate) fn read_pins(&self) -> Result<Vec<PinRecord>, StoreError> {
        let dir = self.pins_dir();
        let mut pins = Vec::new();
        for entry in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let path = entry.ctx(|| format!("listing {}", dir.display()))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
            let pin = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("invalid pin record: {e}"),
            })?;
            pins.push(pin);
        }
        Ok(pins)
    }

    pub(crate) fn read_layer_record(&self, diff_id: &Digest) -> Result<LayerRecord, StoreError> {
        let path = self.layer_record_path(diff_id);
        let bytes = fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path,
            reason: format!("invalid layer record: {e}"),
        })
    }

    pub(crate) fn lock(&self) -> Result<StoreLock, StoreError> {
        StoreLock::acquire(&self.lock_path())
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub(crate) fn pins_dir(&self) -> PathBuf {
        self.root.join("pins")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("store.lock")
    }

    pub(crate) fn record_path(&self, normalized: &str) -> PathBuf {
        self.images_dir().join(record_file_name(normalized))
    }

    fn pin_path(&self, holder: &str) -> PathBuf {
        self.pins_dir().join(format!("{holder}.json"))
    }

    pub(crate) fn layer_record_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex()).join("layer.json")
    }
}

fn parse_record(path: &Path, bytes: &[u8]) -> Result<Image, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("invalid image record: {e}"),
    })
}
