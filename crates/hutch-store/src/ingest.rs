//! Images that arrive blob by blob (a registry pull): small blobs and layer streams are
//! verified and staged privately, each layer unpacked in the same pass that stores its
//! compressed blob, and everything is published in one step by [`Ingest::commit`], under the
//! same rules as an import (see the crate docs). Layers may be added concurrently from
//! several threads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::blob::{blob_path, verify};
use crate::budget::ImageBudget;
use crate::digest::Digest;
use crate::error::{IoContext, StoreError};
use crate::image::{Image, parse_config};
use crate::import::{Plan, PlannedLayer, unpack_into};
use crate::name::normalize_name;
use crate::staging::{Staging, unique_name};
use crate::store::Store;

/// Largest manifest or config accepted.
const SMALL_BLOB_LIMIT: usize = 4 << 20;

/// A staged, not yet published image (see the module docs). Dropping it discards everything.
pub struct Ingest {
    store: Store,
    _staging: Staging,
    blobs: PathBuf,
    unpacked: PathBuf,
    /// Shared by the layers of this image, however many threads add them.
    budget: ImageBudget,
}

/// One layer of the image being committed: its diff_id and the digest of its blob.
#[derive(Clone, Debug)]
pub struct IngestLayer {
    pub diff_id: Digest,
    pub blob: Digest,
}

impl Store {
    /// Starts staging an image that arrives blob by blob.
    pub fn ingest(&self) -> Result<Ingest, StoreError> {
        let staging = Staging::new(&self.tmp_dir())?;
        let blobs = staging.subdir("blobs")?;
        let unpacked = staging.subdir("layers")?;
        Ok(Ingest {
            store: self.clone(),
            _staging: staging,
            blobs,
            unpacked,
            budget: ImageBudget::new(self.unpack_limits().image_bytes),
        })
    }

    /// Whether the blob `digest` is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        blob_path(&self.blobs_dir(), digest).is_file()
    }

    /// The file of the blob `digest` (which may not exist).
    pub fn blob_file(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.blobs_dir(), digest)
    }
}

impl Ingest {
    /// Stages a manifest or config, checking it against the digest that named it.
    pub fn add_bytes(&self, bytes: &[u8], expected: &Digest, what: &str) -> Result<(), StoreError> {
        if bytes.len() > SMALL_BLOB_LIMIT {
            return Err(StoreError::Unsupported {
                what: format!("{what} larger than {} MiB", SMALL_BLOB_LIMIT >> 20),
            });
        }
        verify(
            what,
            expected,
            None,
            &Digest::of_bytes(bytes),
            bytes.len() as u64,
        )?;
        fs::write(blob_path(&self.blobs, expected), bytes).ctx(|| format!("staging {what}"))
    }

    /// Streams one layer blob from `reader`: stores it, verified against `blob` (and `size`
    /// when known), and unpacks it, verified against `diff_id`, in one pass. `what` names the
    /// layer in errors. Nothing of a failed layer stays staged.
    pub fn add_layer<R: Read>(
        &self,
        reader: R,
        blob: &Digest,
        size: Option<u64>,
        diff_id: &Digest,
        what: &str,
    ) -> Result<(), StoreError> {
        let partial = self.blobs.join(unique_name("partial"));
        let layer = PlannedLayer {
            diff_id: diff_id.clone(),
            blob: blob.clone(),
            what: what.to_string(),
        };
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&partial)
                .ctx(|| format!("staging blob of layer {what}"))?;
            let mut tee = Tee {
                inner: reader,
                out: BufWriter::with_capacity(256 << 10, file),
                hasher: Sha256::new(),
                count: 0,
                limit: size,
            };
            let unpacked = unpack_into(
                &self.unpacked,
                &mut tee,
                &layer,
                self.store.unpack_limits(),
                Some(self.budget.clone()),
            );
            // The compressed stream may go on after the tar's end; all of it is the blob.
            // After a failed unpack it is read to the end too: when the bytes are not the
            // blob the manifest named, that is the cause to report, not what it broke.
            let drained = io::copy(&mut tee, &mut io::sink());
            let (actual, count) = tee
                .finish()
                .ctx(|| format!("writing blob of layer {what}"))?;
            let blob_what = format!("blob of layer {what}");
            if let Err(e) = unpacked {
                if drained.is_ok() && &actual != blob {
                    return Err(StoreError::DigestMismatch {
                        what: blob_what,
                        expected: blob.clone(),
                        actual,
                    });
                }
                return Err(e);
            }
            drained.ctx(|| format!("reading layer {what}"))?;
            verify(&blob_what, blob, size, &actual, count)?;
            fs::rename(&partial, blob_path(&self.blobs, blob))
                .ctx(|| format!("staging blob of layer {what}"))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&partial);
            let _ = fs::remove_dir_all(self.unpacked.join(diff_id.hex()));
        }
        result
    }

    /// Publishes the image as `name`: its manifest and config must have been added with
    /// [`Ingest::add_bytes`], and every layer either added or already in the store.
    pub fn commit(
        self,
        name: &str,
        manifest_digest: &Digest,
        config_digest: &Digest,
        layers: &[IngestLayer],
    ) -> Result<Image, StoreError> {
        let name = normalize_name(name)?;
        let source = PathBuf::from(&name);
        let config_bytes = fs::read(blob_path(&self.blobs, config_digest))
            .ctx(|| format!("reading the staged config of {name}"))?;
        let (config, diff_ids) = parse_config(&config_bytes, &source)?;
        let listed: Vec<&Digest> = layers.iter().map(|l| &l.diff_id).collect();
        if diff_ids.iter().collect::<Vec<_>>() != listed {
            return Err(StoreError::Corrupt {
                path: source,
                reason: "the layers given do not match the config's diff_ids".into(),
            });
        }
        let count = layers.len();
        let plan = Plan {
            name,
            config,
            config_digest: config_digest.clone(),
            manifest_digest: manifest_digest.clone(),
            layers: layers
                .iter()
                .enumerate()
                .map(|(i, l)| PlannedLayer {
                    diff_id: l.diff_id.clone(),
                    blob: l.blob.clone(),
                    what: format!("{} ({} of {count})", l.diff_id, i + 1),
                })
                .collect(),
            blobs: self.blobs.clone(),
            unpacked: self.unpacked.clone(),
            limits: self.store.unpack_limits(),
            budget: self.budget.clone(),
        };
        for layer in &plan.layers {
            let staged = self.unpacked.join(layer.diff_id.hex()).join("layer.json");
            if !staged.is_file() && !self.store.has_layer(&layer.diff_id) {
                return Err(StoreError::LayerMissing {
                    diff_id: layer.diff_id.clone(),
                });
            }
        }
        self.store.publish(&plan, Path::new(&plan.name))
    }
}

/// Copies what it reads to `out` and hashes it; refuses to read past `limit`.
struct Tee<R> {
    inner: R,
    out: BufWriter<File>,
    hasher: Sha256,
    count: u64,
    limit: Option<u64>,
}

impl<R: Read> Tee<R> {
    fn finish(mut self) -> io::Result<(Digest, u64)> {
        self.out.flush()?;
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(limit) = self.limit
            && self.count > limit
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {limit} bytes the manifest announced"),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}
