//! Loading every named image of an archive (`hutch image load`): the names come from the
//! archive itself (`io.containerd.image.name` and full `org.opencontainers.image.ref.name`
//! annotations of an OCI index, `RepoTags` of a `docker save` manifest), and each image is
//! imported by [`Store::import`] under its first name; further names of the same image only
//! add records.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::blob::{blob_path, not_an_image, read_small, read_small_from};
use crate::compression::decompressed;
use crate::docker;
use crate::error::{IoContext, StoreError};
use crate::image::Image;
use crate::name::normalize_name;
use crate::oci;
use crate::staging::write_atomic;
use crate::store::{Store, now_secs};
use crate::unpack::normalize;

/// The top-level documents of an image source that name its images.
#[derive(Default)]
struct NamingFiles {
    oci_layout: bool,
    index: Option<Vec<u8>>,
    docker_manifest: Option<Vec<u8>>,
}

impl Store {
    /// Imports every image `source` (an OCI archive or layout, or a `docker save` archive)
    /// names, under those names, and returns them in archive order. Fails with `Unnamed` when
    /// the archive names no image (`Store::import` takes an explicit name); images of the
    /// archive without a name are skipped with a warning. Images loaded before a failure stay.
    pub fn load(&self, source: &Path) -> Result<Vec<Image>, StoreError> {
        let groups = archive_names(source)?;
        if groups.iter().all(|names| names.is_empty()) {
            return Err(StoreError::Unnamed {
                path: source.to_path_buf(),
            });
        }
        let mut seen: Vec<String> = Vec::new();
        let mut loaded = Vec::new();
        for names in groups {
            // A name listed for two images belongs to the first.
            let names: Vec<String> = names.into_iter().filter(|n| !seen.contains(n)).collect();
            let Some((first, others)) = names.split_first() else {
                tracing::warn!(source = %source.display(), "skipping an image the archive does not name");
                continue;
            };
            let image = self.import(source, first)?;
            seen.extend(names.iter().cloned());
            loaded.push(image.clone());
            for name in others {
                let also = match self.add_name(&image, name)? {
                    Some(also) => also,
                    // Removed in between by someone else: import it again.
                    None => self.import(source, name)?,
                };
                loaded.push(also);
            }
        }
        Ok(loaded)
    }

    /// Records `image` under `name` too, if its layers and manifest are still in the store;
    /// `None` if not.
    fn add_name(&self, image: &Image, name: &str) -> Result<Option<Image>, StoreError> {
        let name = normalize_name(name)?;
        let _lock = self.lock()?;
        let present = image.layers.iter().all(|l| self.has_layer(l))
            && blob_path(&self.blobs_dir(), &image.manifest_digest).is_file();
        if !present {
            return Ok(None);
        }
        let named = Image {
            name: name.clone(),
            created_at: now_secs(),
            ..image.clone()
        };
        let record = self.record_path(&name);
        let replaced = record.exists();
        let bytes = serde_json::to_vec_pretty(&named)
            .map_err(|e| StoreError::io("encoding image record", e.into()))?;
        write_atomic(&self.tmp_dir(), &record, &bytes)?;
        if replaced {
            // The image that had this name before may have left layers nothing uses any more.
            if let Err(err) = self.gc_locked() {
                tracing::warn!(%err, image = %name, "gc after replacing an image failed");
            }
        }
        Ok(Some(named))
    }
}

/// The names of each image of `source`, in order (one list per image, maybe empty). Which
/// documents count follows the import's own detection: an OCI layout wins over a docker one.
fn archive_names(source: &Path) -> Result<Vec<Vec<String>>, StoreError> {
    let meta = crate::source::metadata(source)?;
    let files = if meta.is_dir() {
        naming_files_in_dir(source)?
    } else if meta.is_file() {
        naming_files_in_archive(source)?
    } else {
        return Err(not_an_image(
            source,
            "it is neither a directory nor a regular file",
        ));
    };
    match files {
        NamingFiles {
            oci_layout: true,
            index: Some(index),
            ..
        } => oci::index_names(&index, source),
        NamingFiles {
            docker_manifest: Some(manifest),
            ..
        } => docker::manifest_names(&manifest, source),
        _ => Err(not_an_image(
            source,
            "it has neither oci-layout + index.json (OCI layout) nor manifest.json (docker save)",
        )),
    }
}

fn naming_files_in_dir(dir: &Path) -> Result<NamingFiles, StoreError> {
    let is_file = |name: &str| fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file());
    let read = |name: &str| -> Result<Option<Vec<u8>>, StoreError> {
        if is_file(name) {
            read_small(&dir.join(name), name, dir).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(NamingFiles {
        oci_layout: is_file("oci-layout"),
        index: read("index.json")?,
        docker_manifest: read("manifest.json")?,
    })
}

/// Reads the naming documents out of an archive in one pass, without staging anything (the
/// import that follows stages the archive itself). Only regular files at the archive root
/// count, as in the import.
fn naming_files_in_archive(source: &Path) -> Result<NamingFiles, StoreError> {
    let file = File::open(source).ctx(|| format!("opening {}", source.display()))?;
    let stream = decompressed(file, "import archive")?;
    let mut archive = tar::Archive::new(stream);
    let unreadable = |err: io::Error| {
        not_an_image(
            source,
            format!("it is not a readable tar archive ({})", one_line(&err)),
        )
    };
    let mut files = NamingFiles::default();
    for entry in archive.entries().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_contiguous()) {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let Ok(components) = normalize(&raw) else {
            continue;
        };
        let [name] = components.as_slice() else {
            continue;
        };
        match name.to_str() {
            Some("oci-layout") => files.oci_layout = true,
            Some("index.json") => files.index = Some(read_small_from(entry, "index.json", source)?),
            Some("manifest.json") => {
                files.docker_manifest = Some(read_small_from(entry, "manifest.json", source)?)
            }
            _ => {}
        }
    }
    Ok(files)
}

fn one_line(err: &io::Error) -> String {
    err.to_string()
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(160)
        .collect()
}
