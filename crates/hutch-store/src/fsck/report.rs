//! What [`Store::fsck`](crate::Store::fsck) reports: findings by kind, and whether each was
//! repaired.

use std::fmt;

use serde::Serialize;

/// What is wrong, by kind; see each variant for what repair does about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A blob whose content does not hash to its name. Repair deletes it.
    CorruptBlob,
    /// Something in `blobs/sha256/` or `layers/` the store never writes there (not named by a
    /// digest, or of the wrong file type). Repair deletes it.
    StrayEntry,
    /// A layer directory without `fs/`, or without a valid `layer.json` for its own diff_id
    /// (an interrupted unpack or tampering). Repair deletes it.
    IncompleteLayer,
    /// An image record that cannot be read, or is stored under another name. Never repaired.
    CorruptRecord,
    /// A blob an image references (manifest, config or layer blob) is not in the store (or
    /// was corrupt). Never repaired: re-import the image.
    MissingBlob,
    /// A layer an image uses is not in the store. Repair unpacks it again from the image's
    /// layer blob when that is intact.
    MissingLayer,
    /// An image whose manifest or config does not parse or disagrees with its record. Never
    /// repaired: re-import the image.
    BrokenImage,
    /// A pin record that cannot be read, or pins a layer that is not in the store. Never
    /// repaired: pins belong to sandboxes.
    DanglingPin,
    /// An abandoned entry of `tmp/`. Repair deletes it.
    StaleTmp,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::CorruptBlob => "corrupt_blob",
            FindingKind::StrayEntry => "stray_entry",
            FindingKind::IncompleteLayer => "incomplete_layer",
            FindingKind::CorruptRecord => "corrupt_record",
            FindingKind::MissingBlob => "missing_blob",
            FindingKind::MissingLayer => "missing_layer",
            FindingKind::BrokenImage => "broken_image",
            FindingKind::DanglingPin => "dangling_pin",
            FindingKind::StaleTmp => "stale_tmp",
        }
    }

    /// Findings of these kinds are about one image, named by the finding's subject.
    fn is_about_an_image(self) -> bool {
        matches!(
            self,
            FindingKind::MissingBlob | FindingKind::MissingLayer | FindingKind::BrokenImage
        )
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// What it is about: a digest, an image name, a pin holder, or a path relative to the
    /// store root.
    pub subject: String,
    pub detail: String,
    /// True when this run's repair fixed it.
    pub repaired: bool,
}

/// The result of [`Store::fsck`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    pub findings: Vec<Finding>,
}

impl FsckReport {
    /// True when nothing needs attention: no findings, or all of them repaired.
    pub fn is_clean(&self) -> bool {
        self.findings.iter().all(|f| f.repaired)
    }

    /// The findings not repaired.
    pub fn remaining(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.repaired)
    }

    /// Names of the images left broken or incomplete (to re-import or remove), sorted.
    pub fn broken_images(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .remaining()
            .filter(|f| f.kind.is_about_an_image())
            .map(|f| f.subject.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}
