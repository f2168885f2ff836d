//! Exporting an image as an OCI image archive: one tar holding an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) that [`Store::import`], [`Store::load`],
//! skopeo (`oci-archive:`), umoci and containerd read. The index names the image twice:
//! `org.opencontainers.image.ref.name` holds its tag (what the OCI spec and skopeo expect) and
//! `io.containerd.image.name` its full store name, which a load restores.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndexBuilder;

use crate::blob::blob_path;
use crate::digest::{Digest, HashingReader};
use crate::error::{IoContext, StoreError};
use crate::image::Image;
use crate::oci::{self, CONTAINERD_NAME, Descriptor, MediaType, REF_NAME};
use crate::staging::unique_name;
use crate::store::Store;

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An image ready to be written: its blobs are opened while the store lock is held, so a
/// concurrent removal or gc cannot take them away halfway through the archive.
struct Export {
    image: Image,
    manifest: Vec<u8>,
    manifest_media_type: MediaType,
    /// The config and layer blobs, each once.
    blobs: Vec<OpenBlob>,
}

struct OpenBlob {
    digest: Digest,
    file: File,
    what: String,
}

impl Store {
    /// Writes the image `name` as an OCI archive to the file `out`, atomically: the archive is
    /// written to a temporary file in `out`'s directory and renamed over `out` once complete,
    /// so `out` is either untouched or the whole archive. Every blob is verified against its
    /// digest while it is copied: a blob missing from the store fails with `BlobMissing`, a
    /// corrupt one with `DigestMismatch` or `SizeMismatch` (see `Store::fsck`).
    pub fn save(&self, name: &str, out: &Path) -> Result<(), StoreError> {
        let export = self.open_export(name)?;
        let pending = PendingFile::create(out)?;
        let mut writer = BufWriter::with_capacity(256 * 1024, &pending.file);
        write_archive(export, &mut writer)?;
        writer
            .flush()
            .ctx(|| format!("writing {}", out.display()))?;
        drop(writer);
        pending.commit()
    }

    /// Streams the OCI archive of `name` into `out` (a pipe, stdout). Verification is as for
    /// [`Store::save`]; on an error `out` has received part of an archive.
    pub fn save_to<W: Write>(&self, name: &str, out: W) -> Result<(), StoreError> {
        let export = self.open_export(name)?;
        write_archive(export, out)
    }

    fn open_export(&self, name: &str) -> Result<Export, StoreError> {
        let _lock = self.lock()?;
        let image = self.image(name)?;
        let (manifest, parsed) = self.stored_manifest(&image)?;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: blob_path(&self.blobs_dir(), &image.manifest_digest),
            reason,
        };
        let digest_of = |d: &Descriptor| {
            oci::digest_of(d).map_err(|e| {
                corrupt(format!(
                    "the manifest of {} names {}: {e}",
                    image.name,
                    d.digest()
                ))
            })
        };
        let config = digest_of(parsed.config())?;
        if config != image.id {
            return Err(corrupt(format!(
                "the manifest of {} names config {config}, its record {}",
                image.name, image.id
            )));
        }
        let count = parsed.layers().len();
        let mut described = vec![("config".to_string(), config)];
        for (i, d) in parsed.layers().iter().enumerate() {
            described.push((format!("layer blob ({} of {count})", i + 1), digest_of(d)?));
        }
        let mut seen = HashSet::new();
        let mut blobs = Vec::with_capacity(count + 1);
        for (what, digest) in described {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let path = blob_path(&self.blobs_dir(), &digest);
            let file = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::BlobMissing {
                        image: image.name.clone(),
                        digest,
                    });
                }
                Err(err) => {
                    return Err(StoreError::io(format!("opening {}", path.display()), err));
                }
            };
            blobs.push(OpenBlob {
                what: format!("{what} {digest} of image {}", image.name),
                digest,
                file,
            });
        }
        Ok(Export {
            manifest_media_type: parsed
                .media_type()
                .clone()
                .unwrap_or(MediaType::ImageManifest),
            image,
            manifest,
            blobs,
        })
    }
}

fn write_archive<W: Write>(export: Export, out: W) -> Result<(), StoreError> {
    let image = &export.image;
    let tag = image.name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let mut manifest = oci::descriptor(
        export.manifest_media_type.as_ref(),
        &image.manifest_digest,
        export.manifest.len() as u64,
    );
    manifest.set_annotations(Some(HashMap::from([
        (REF_NAME.to_string(), tag.to_string()),
        (CONTAINERD_NAME.to_string(), image.name.clone()),
    ])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest])
        .build()
        .map_err(|e| StoreError::io("encoding index.json", std::io::Error::other(e)))?;
    let index =
        oci::canonical_json(&index).map_err(|e| StoreError::io("encoding index.json", e.into()))?;

    let mut archive = Archive {
        tar: tar::Builder::new(out),
        mtime: image.created_at,
    };
    archive.bytes("oci-layout", OCI_LAYOUT)?;
    archive.bytes("index.json", &index)?;
    archive.dir("blobs/")?;
    archive.dir("blobs/sha256/")?;
    archive.bytes(&member(&image.manifest_digest), &export.manifest)?;
    for blob in export.blobs {
        archive.blob(blob)?;
    }
    archive
        .tar
        .into_inner()
        .and_then(|mut out| out.flush())
        .ctx(|| "finishing the archive".to_string())
}

fn member(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The tar being written; every member gets the same owner (root), mode and mtime (the
/// image's import time), so saving one record twice gives identical archives.
struct Archive<W: Write> {
    tar: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> Archive<W> {
    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_size(size);
        header
    }

    fn dir(&mut self, path: &str) -> Result<(), StoreError> {
        let mut header = self.header(tar::EntryType::Directory, 0o755, 0);
        self.tar
            .append_data(&mut header, path, io::empty())
            .ctx(|| format!("writing {path} to the archive"))
    }

    fn bytes(&mut self, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut header = self.header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        self.tar
            .append_data(&mut header, path, bytes)
            .ctx(|| format!("writing {path} to the archive"))
    }

    /// Copies a blob, hashing it on the way: an archive never carries a corrupt blob.
    fn blob(&mut self, blob: OpenBlob) -> Result<(), StoreError> {
        let path = member(&blob.digest);
        let size = blob
            .file
            .metadata()
            .ctx(|| format!("inspecting {}", blob.what))?
            .len();
        let mut header = self.header(tar::EntryType::Regular, 0o644, size);
        let mut reader = HashingReader::new(blob.file);
        self.tar
            .append_data(&mut header, &path, (&mut reader).take(size))
            .ctx(|| format!("writing {} to the archive", blob.what))?;
        let (actual, actual_size) = reader.finish().ctx(|| format!("reading {}", blob.what))?;
        if actual_size != size {
            return Err(StoreError::SizeMismatch {
                what: blob.what,
                expected: size,
                actual: actual_size,
            });
        }
        if actual != blob.digest {
            return Err(StoreError::DigestMismatch {
                what: blob.what,
                expected: blob.digest,
                actual,
            });
        }
        Ok(())
    }
}

/// A file written under a temporary name in its destination's directory and renamed into
/// place by [`PendingFile::commit`]; dropped uncommitted, the temporary file is removed.
struct PendingFile {
    file: File,
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PendingFile {
    fn create(dest: &Path) -> Result<PendingFile, StoreError> {
        let ctx = || format!("saving to {}", dest.display());
        let invalid = |reason: &str| {
            StoreError::io(ctx(), io::Error::new(io::ErrorKind::InvalidInput, reason))
        };
        if dest.file_name().is_none() {
            return Err(invalid("the path does not name a file"));
        }
        if fs::metadata(dest).is_ok_and(|m| m.is_dir()) {
            return Err(invalid("it is a directory"));
        }
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let temp = dir.join(format!(".{}.partial", unique_name("hutch-save")));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .ctx(ctx)?;
        Ok(PendingFile {
            file,
            temp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    fn commit(mut self) -> Result<(), StoreError> {
        let ctx = || format!("saving to {}", self.dest.display());
        self.file.sync_all().ctx(ctx)?;
        fs::rename(&self.temp, &self.dest).ctx(ctx)?;
        self.committed = true;
        // The rename itself is durable only once the directory is flushed too.
        if let Some(dir) = self.temp.parent()
            && let Err(err) = File::open(dir).and_then(|d| d.sync_all())
        {
            tracing::warn!(dir = %dir.display(), %err, "could not flush the directory of a saved archive");
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}
