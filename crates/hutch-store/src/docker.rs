//! Reading a `docker save` archive's `manifest.json` (legacy `<id>/layer.tar` members and the
//! newer `blobs/sha256/<hex>` ones): picking the image entry and locating its config and
//! layers.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::blob::{not_an_image, read_small};
use crate::digest::Digest;
use crate::error::StoreError;
use crate::name::name_from_reference;
use crate::unpack::normalize;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A member of the archive, with the digest its name promises when it has one.
pub(crate) struct Member {
    pub(crate) path: PathBuf,
    pub(crate) named_digest: Option<Digest>,
}

pub(crate) struct ResolvedDocker {
    pub(crate) config_bytes: Vec<u8>,
    pub(crate) config_digest: Digest,
    pub(crate) layers: Vec<Member>,
}

fn parse_manifest(bytes: &[u8], source: &Path) -> Result<Vec<ManifestEntry>, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        not_an_image(
            source,
            format!("manifest.json is not a valid docker save manifest: {e}"),
        )
    })
}

/// The store names of each image of a `manifest.json` (from its `RepoTags`), in order; an
/// untagged image has none. Invalid tags are skipped.
pub(crate) fn manifest_names(bytes: &[u8], source: &Path) -> Result<Vec<Vec<String>>, StoreError> {
    let entries = parse_manifest(bytes, source)?;
    Ok(entries
        .iter()
        .map(|entry| {
            let mut names: Vec<String> = Vec::new();
            for tag in entry.repo_tags.iter().flatten() {
                match name_from_reference(tag) {
                    Ok(name) if !names.contains(&name) => names.push(name),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "ignoring an unusable RepoTags entry"),
                }
            }
            names
        })
        .collect())
}

pub(crate) fn resolve(dir: &Path, name: &str, source: &Path) -> Result<ResolvedDocker, StoreError> {
    let bytes = read_small(&dir.join("manifest.json"), "manifest.json", source)?;
    let entries = parse_manifest(&bytes, source)?;
    let entry = select(&entries, name).map_err(|reason| not_an_image(source, reason))?;

    let config = member(dir, &entry.config, true, source)?;
    let config_bytes = read_small(&config.path, "the image config", source)?;
    let config_digest = Digest::of_bytes(&config_bytes);
    if let Some(named) = config.named_digest
        && named != config_digest
    {
        return Err(StoreError::DigestMismatch {
            what: format!("config {}", entry.config),
            expected: named,
            actual: config_digest,
        });
    }
    let layers = entry
        .layers
        .iter()
        .map(|layer| member(dir, layer, false, source))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ResolvedDocker {
        config_bytes,
        config_digest,
        layers,
    })
}

/// The entry tagged with the requested name, or the only entry.
fn select<'a>(entries: &'a [ManifestEntry], name: &str) -> Result<&'a ManifestEntry, String> {
    let tagged = entries.iter().find(|entry| {
        entry
            .repo_tags
            .iter()
            .flatten()
            .any(|tag| name_from_reference(tag).is_ok_and(|n| n == name))
    });
    match (tagged, entries) {
        (Some(entry), _) => Ok(entry),
        (None, [only]) => Ok(only),
        (None, []) => Err("manifest.json lists no images".into()),
        (None, many) => {
            let tags: Vec<&str> = many
                .iter()
                .flat_map(|e| e.repo_tags.iter().flatten())
                .map(String::as_str)
                .collect();
            Err(format!(
                "the archive holds {} images and none is tagged {name}; import it as one of: {}",
                many.len(),
                tags.join(", ")
            ))
        }
    }
}

/// Resolves a path named in manifest.json inside the archive, refusing ones that leave it.
/// `<hex>.json` configs and `blobs/sha256/<hex>` members name their own digest.
fn member(dir: &Path, raw: &str, is_config: bool, source: &Path) -> Result<Member, StoreError> {
    let components = normalize(raw.as_bytes()).map_err(|reason| {
        not_an_image(
            source,
            format!("manifest.json names member {raw:?}, which {reason}"),
        )
    })?;
    if components.is_empty() {
        return Err(not_an_image(
            source,
            format!("manifest.json names an empty member {raw:?}"),
        ));
    }
    let mut path = dir.to_path_buf();
    path.extend(&components);
    let parts: Vec<&str> = components.iter().filter_map(|c| c.to_str()).collect();
    let hex = match parts.as_slice() {
        ["blobs", "sha256", hex] => Some(*hex),
        [file] if is_config => file.strip_suffix(".json"),
        _ => None,
    };
    let named_digest = hex.and_then(|h| Digest::from_hex(h).ok());
    Ok(Member { path, named_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tags: &[&str]) -> ManifestEntry {
        ManifestEntry {
            config: "c.json".into(),
            repo_tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            layers: Vec::new(),
        }
    }

    #[test]
    fn selects_tagged_or_only_entry() {
        let entries = [
            entry(&["a:1"]),
            entry(&["docker.io/library/busybox:latest"]),
        ];
        assert!(std::ptr::eq(
            select(&entries, "busybox:latest").expect("tagged"),
            &entries[1]
        ));
        assert!(select(&entries, "other:latest").is_err());
        let single = [entry(&["a:1"])];
        assert!(select(&single, "renamed:latest").is_ok());
    }

    #[test]
    fn members_stay_inside_the_archive() {
        let src = Path::new("/src");
        assert!(member(Path::new("/d"), "../etc/passwd", false, src).is_err());
        assert!(member(Path::new("/d"), "/etc/passwd", false, src).is_err());
        let hex = "a".repeat(64);
        let m = member(Path::new("/d"), &format!("blobs/sha256/{hex}"), false, src).expect("ok");
        assert_eq!(
            m.named_digest.map(|d| d.hex().to_string()),
            Some(hex.clone())
        );
        let c = member(Path::new("/d"), &format!("{hex}.json"), true, src).expect("ok");
        assert!(c.named_digest.is_some());
        let l = member(Path::new("/d"), &format!("{hex}/layer.tar"), false, src).expect("ok");
        assert!(l.named_digest.is_none());
    }
}
