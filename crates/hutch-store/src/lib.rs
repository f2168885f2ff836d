//! Hutch's content-addressed image store on local disk.
//!
//! The store turns image archives into directories that can be stacked as overlayfs lower dirs
//! for a sandbox's root filesystem, keeps each layer once however many images share it, and
//! frees layers once no image and no running sandbox uses them. Everything lives under one
//! root directory:
//!
//! ```text
//! <root>/
//!   blobs/sha256/<hex>        manifests, configs and (compressed) layer blobs, by digest
//!   layers/<hex>/fs/          a layer unpacked for overlayfs (<hex> = its diff_id)
//!   layers/<hex>/layer.json   {diff_id, size_bytes, blob, unpacked_at}
//!   images/<name>.json        an [`Image`] record ('/' in the name stored as '+')
//!   pins/<holder>.json        layers a running sandbox uses
//!   tmp/                      staging area: imports' and callers' ScratchDirs, each locked
//!   store.lock                flock(2)ed around every mutation of the shared state
//! ```
//!
//! Invariants:
//! - A blob is verified (size and sha256) while it is streamed into `tmp/`, and only then
//!   renamed into `blobs/`; a partial or unverified blob is never visible.
//! - A layer directory exists only if complete: it is unpacked into `tmp/`, its uncompressed
//!   stream is verified against the image config's diff_id while unpacking, and it is renamed
//!   into `layers/` in one step. Gc moves a layer back into `tmp/` before deleting it.
//! - Layer extraction never writes outside the layer directory, whatever the archive holds
//!   (see the `unpack` module), and turns OCI whiteouts into overlayfs ones. It refuses
//!   device nodes, applies only `user.*` and `security.capability` xattrs, writes zero
//!   blocks as holes, and stops at the [`UnpackLimits`] (bytes and entries per layer, bytes
//!   per image); [`unpack_archive`] applies the same rules to a build's ADD of an archive.
//! - Publishing an import (layers, blobs, record), removing an image, gc and pin changes all
//!   happen under `store.lock`, so several processes can use one store concurrently, and a
//!   layer is never collected between being published and being referenced.
//! - A failed import leaves no record, no layer and nothing in `tmp/`.
//!
//! Beyond imports: `save` writes an image back out as an OCI archive (every blob re-verified on
//! the way), `load` imports every image an archive names, and `fsck` checks the invariants
//! above on disk; its repair (under `store.lock`) deletes what breaks them and unpacks missing
//! layers again from intact blobs, but never deletes an image record or a pin.

mod blob;
mod budget;
mod compression;
mod digest;
mod docker;
mod error;
mod fsck;
mod gc;
mod image;
mod import;
mod ingest;
mod inspect;
mod layer_tar;
mod leftovers;
mod load;
mod name;
mod oci;
pub mod rooted;
mod save;
mod source;
mod sparse;
mod staging;
mod store;
mod syscalls;
mod unpack;

pub use budget::{MAX_IMAGE_BYTES_ENV, MAX_LAYER_BYTES_ENV, MAX_LAYER_ENTRIES_ENV, UnpackLimits};
pub use digest::Digest;
pub use error::StoreError;
pub use fsck::{Finding, FindingKind, FsckReport};
pub use gc::Removal;
pub use image::{Image, ImageConfig};
pub use ingest::{Ingest, IngestLayer};
pub use inspect::{Inspection, LayerDetails};
pub use layer_tar::{CompressedLayer, write_layer, write_layer_zstd};
pub use leftovers::remove_dead_pid_entries;
pub use name::normalize_name;
pub use oci::{canonical_json, descriptor};
pub use staging::ScratchDir;
pub use store::Store;
pub use unpack::unpack_archive;
