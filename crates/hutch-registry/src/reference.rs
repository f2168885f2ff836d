//! Image references as users write them (`busybox`, `ghcr.io/org/app:v1`,
//! `127.0.0.1:5000/x@sha256:...`), resolved to a registry host, a repository and a tag or
//! digest, with Docker's defaults (Docker Hub, `library/`, `latest`).

use std::fmt;

use crate::error::RegistryError;

/// The registry that unqualified names mean.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for unqualified names).
    pub registry: String,
    /// The repository path on that registry, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
    /// What the user wrote, for messages and the store name.
    original: String,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, RegistryError> {
        let invalid = |reason: &str| RegistryError::InvalidReference {
            reference: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() || input.len() > 512 || input.chars().any(char::is_whitespace) {
            return Err(invalid("must be non-empty, without spaces"));
        }
        let (name, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| invalid("only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("the digest must be sha256: and 64 hex digits"));
                }
                (name, Some(digest.to_ascii_lowercase()))
            }
            None => (input, None),
        };
        let (path, tag) = match name.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag.to_string())),
            _ => (name, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), path.to_string()),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(str::is_empty)
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            return Err(invalid(
                "the repository must be lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
            original: input.to_string(),
        })
    }

    /// The host the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What the manifest is fetched by: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The name the image gets in the local store: what the user wrote, without a digest; a
    /// digest-only reference gets the tag `sha256-<hex>`, so it names exactly that image.
    pub fn store_name(&self) -> String {
        let name = self.original.split('@').next().unwrap_or_default();
        match (&self.tag, &self.digest) {
            (None, Some(digest)) => format!("{name}:{}", digest.replace(':', "-")),
            _ => name.to_string(),
        }
    }
}

/// The name `reference` has in the local store (see [`Reference::store_name`]); a name that
/// is no reference (a template's, say) is taken as it is.
pub fn store_name(reference: &str) -> String {
    Reference::parse(reference).map_or_else(|_| reference.to_string(), |r| r.store_name())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_defaults() {
        let r = Reference::parse("busybox").expect("parses");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.store_name(), "busybox");
        let r = Reference::parse("org/app:v1").expect("parses");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "org/app")
        );
    }

    #[test]
    fn hosts_ports_and_digests() {
        let hex = "a".repeat(64);
        let r = Reference::parse(&format!("127.0.0.1:5000/x/y:v2@sha256:{hex}")).expect("ok");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "x/y");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.manifest_reference(), format!("sha256:{hex}"));
        assert_eq!(r.store_name(), "127.0.0.1:5000/x/y:v2");
        let r = Reference::parse(&format!("localhost/x@sha256:{hex}")).expect("ok");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.store_name(), format!("localhost/x:sha256-{hex}"));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "a b",
            "UPPER/case",
            "x@md5:00",
            "x@sha256:12",
            "reg.io//x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
