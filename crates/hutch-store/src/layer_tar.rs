//! Directories into OCI layers: an overlayfs upper directory (what a build step's sandbox
//! wrote) or a staged tree (what a COPY adds) becomes a layer tar. Overlay whiteouts (a 0/0
//! character device) become `.wh.<name>` entries and an opaque directory
//! (`trusted.overlay.opaque=y`) gets a `.wh..wh..opq` entry, the inverse of what `unpack`
//! does. Hardlinks within the tree stay hardlinks; `user.*` and `security.capability`
//! xattrs travel as PAX records. Entries are written in name order, so the same tree gives
//! the same bytes.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{IoContext, StoreError};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Writes the layer tar of `root` to `out`, leaving out the relative paths in `exclude`
/// (and everything below them). Returns the tar's digest and size (an uncompressed layer's
/// blob digest and diff_id are the same).
pub fn write_layer(
    root: &Path,
    exclude: &[PathBuf],
    out: impl Write,
) -> Result<(Digest, u64), StoreError> {
    let (digest, count, mut inner) = tar_into(root, exclude, out)?;
    inner.flush().ctx(|| "flushing a layer".to_string())?;
    Ok((digest, count))
}

/// A layer written zstd-compressed by [`write_layer_zstd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressedLayer {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest and size of the compressed blob written.
    pub blob: Digest,
    pub blob_size: u64,
}

/// [`write_layer`], compressed with zstd at `level` on the way out, in one pass: the tar is
/// hashed for its diff_id before the encoder, the blob after it.
pub fn write_layer_zstd(
    root: &Path,
    exclude: &[PathBuf],
    out: impl Write,
    level: i32,
) -> Result<CompressedLayer, StoreError> {
    let blob = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    };
    let encoder = zstd::stream::write::Encoder::new(blob, level)
        .ctx(|| format!("compressing the layer of {}", root.display()))?;
    let (diff_id, _, encoder) = tar_into(root, exclude, encoder)?;
    let HashingWriter {
        hasher,
        count,
        mut inner,
    } = encoder
        .finish()
        .ctx(|| format!("compressing the layer of {}", root.display()))?;
    inner.flush().ctx(|| "flushing a layer".to_string())?;
    Ok(CompressedLayer {
        diff_id,
        blob: Digest::from_hasher(hasher),
        blob_size: count,
    })
}

/// The tar of `root` into `out`: its digest and size, and `out` back.
fn tar_into<W: Write>(
    root: &Path,
    exclude: &[PathBuf],
    out: W,
) -> Result<(Digest, u64, W), StoreError> {
    let mut builder = tar::Builder::new(HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    });
    let mut walker = Walker {
        root,
        exclude,
        links: HashMap::new(),
    };
    walker.dir(&mut builder, Path::new(""))?;
    let HashingWriter {
        hasher,
        count,
        inner,
    } = builder
        .into_inner()
        .ctx(|| format!("finishing the layer of {}", root.display()))?;
    Ok((Digest::from_hasher(hasher), count, inner))
}

struct Walker<'a> {
    root: &'a Path,
    exclude: &'a [PathBuf],
    /// (dev, ino) of files seen, by their path in the tar: later names become hardlinks.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Walker<'_> {
    fn dir<W: Write>(
        &mut self,
        builder: &mut tar::Builder<W>,
        rel: &Path,
    ) -> Result<(), StoreError> {
        let abs = self.root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&abs)
            .ctx(|| format!("listing {}", abs.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .ctx(|| format!("listing {}", abs.display()))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            if self.exclude.iter().any(|x| x == &rel) {
                continue;
            }
            self.entry(builder, &rel)?;
        }
        Ok(())
    }

    fn entry<W: Write>(
        &mut self,
        builder: &mut tar::Builder<W>,
        rel: &Path,
    ) -> Result<(), StoreError> {
        let abs = self.root.join(rel);
        let meta = fs::symlink_metadata(&abs).ctx(|| format!("reading {}", abs.display()))?;
        let kind = meta.file_type();
        let ctx = || format!("adding {} to a layer", abs.display());
        if kind.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout.
            let name = rel.file_name().unwrap_or_default();
            let mut wh = rel.to_path_buf();
            wh.set_file_name(format!(".wh.{}", name.to_string_lossy()));
            let mut header = header_for(&meta, tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(0);
            return builder.append_data(&mut header, &wh, io::empty()).ctx(ctx);
        }
        self.pax(builder, &abs, rel)?;
        if kind.is_dir() {
            let mut header = header_for(&meta, tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, rel, io::empty())
                .ctx(ctx)?;
            if xattr(&abs, OPAQUE_XATTR).is_some_and(|v| v == b"y") {
                let mut opq = header_for(&meta, tar::EntryType::Regular);
                opq.set_mode(0o644);
                opq.set_size(0);
                builder
                    .append_data(&mut opq, rel.join(".wh..wh..opq"), io::empty())
                    .ctx(ctx)?;
            }
            return self.dir(builder, rel);
        }
        if kind.is_symlink() {
            let target = fs::read_link(&abs).ctx(ctx)?;
            let mut header = header_for(&meta, tar::EntryType::Symlink);
            header.set_size(0);
            return builder.append_link(&mut header, rel, target).ctx(ctx);
        }
        if kind.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    let mut header = header_for(&meta, tar::EntryType::Link);
                    header.set_size(0);
                    return builder.append_link(&mut header, rel, first).ctx(ctx);
                }
                self.links.insert(key, rel.to_path_buf());
            }
            let mut header = header_for(&meta, tar::EntryType::Regular);
            header.set_size(meta.len());
            let file = File::open(&abs).ctx(ctx)?;
            return builder.append_data(&mut header, rel, file).ctx(ctx);
        }
        let entry_type = if kind.is_char_device() {
            tar::EntryType::Char
        } else if kind.is_block_device() {
            tar::EntryType::Block
        } else if kind.is_fifo() {
            tar::EntryType::Fifo
        } else {
            // Sockets have no tar form; a build step's leftover socket is not content.
            return Ok(());
        };
        let mut header = header_for(&meta, entry_type);
        header.set_size(0);
        let dev = meta.rdev();
        header
            .set_device_major(libc::major(dev))
            .and_then(|()| header.set_device_minor(libc::minor(dev)))
            .ctx(ctx)?;
        builder.append_data(&mut header, rel, io::empty()).ctx(ctx)
    }

    /// PAX records for the xattrs a layer carries (`user.*`, `security.capability`).
    fn pax<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        abs: &Path,
        rel: &Path,
    ) -> Result<(), StoreError> {
        let mut records = Vec::new();
        for name in xattr_names(abs) {
            if !(name.starts_with("user.") || name == "security.capability") {
                continue;
            }
            if let Some(value) = xattr(abs, &name) {
                let key = format!("SCHILY.xattr.{name}");
                let mut record = pax_record(key.as_bytes(), &value);
                records.append(&mut record);
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(records.len() as u64);
        let name = format!(
            "PaxHeaders/{}",
            rel.file_name().unwrap_or_default().to_string_lossy()
        );
        let name: String = name.chars().take(99).collect();
        header
            .set_path(&name)
            .and_then(|()| {
                header.set_cksum();
                builder.append(&header, &records[..])
            })
            .ctx(|| format!("adding the xattrs of {}", abs.display()))
    }
}

fn header_for(meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(u64::from(meta.uid()));
    header.set_gid(u64::from(meta.gid()));
    header.set_mtime(meta.mtime().max(0) as u64);
    header
}

/// `"<len> key=value\n"`, where the length counts the whole record.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if (len).to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

fn xattr_names(path: &Path) -> Vec<String> {
    let Some(p) = c_path(path) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 4096];
    // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf.truncate(n as usize);
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_string_lossy().into_owned())
        .collect()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = c_path(path)?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: as above.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let r = pax_record(b"SCHILY.xattr.user.a", b"yes");
        let text = String::from_utf8(r.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), r.len());
        // Around a power of ten the length field grows by a digit.
        for n in 80..120 {
            let r = pax_record(b"k", &vec![b'v'; n]);
            let text = String::from_utf8(r.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "value of {n}");
        }
    }

    #[test]
    fn the_zstd_layer_is_the_plain_layer_compressed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/f"), b"hello layer").unwrap();
        let mut plain = Vec::new();
        let (diff_id, size) = write_layer(dir.path(), &[], &mut plain).unwrap();
        let mut blob = Vec::new();
        let written = write_layer_zstd(dir.path(), &[], &mut blob, 3).unwrap();
        assert_eq!(written.diff_id, diff_id);
        assert_eq!(written.blob_size, blob.len() as u64);
        assert_eq!(written.blob, Digest::of_bytes(&blob));
        let unpacked = zstd::stream::decode_all(blob.as_slice()).unwrap();
        assert_eq!(unpacked.len() as u64, size);
        assert_eq!(unpacked, plain);
    }
}
