//! Image reference names (docker-like grammar), sandbox holder ids, and how both map to file
//! names inside the store.

use crate::error::StoreError;

/// Longest normalized name accepted; keeps `<encoded name>.json` under the 255-byte file name
/// limit of common Linux filesystems.
const MAX_NAME_LEN: usize = 250;
const MAX_TAG_LEN: usize = 128;
const MAX_HOLDER_LEN: usize = 128;

/// Validates an image reference and returns its normalized form (`repo[:tag]`, with `:latest`
/// added when no tag is given).
///
/// Grammar (a subset of docker's): `[host[:port]/]component(/component)*[:tag]`, where a component
/// is lowercase `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`, and a tag is
/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Digest references (`@sha256:...`) are rejected.
pub fn normalize_name(name: &str) -> Result<String, StoreError> {
    let invalid = |reason: String| StoreError::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    if name.contains('@') {
        return Err(invalid(
            "digest references (name@sha256:...) are not supported; use a tag".into(),
        ));
    }
    let (repository, tag) = match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "latest"),
    };
    check_tag(tag).map_err(&invalid)?;
    check_repository(repository).map_err(&invalid)?;
    let normalized = format!("{repository}:{tag}");
    if normalized.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "the name is longer than {MAX_NAME_LEN} characters"
        )));
    }
    Ok(normalized)
}

/// The store name of a reference found in an archive (a `RepoTags` entry, an
/// `io.containerd.image.name` annotation): Docker Hub's implicit `docker.io/library/` and
/// `docker.io/` prefixes are dropped, so `docker.io/library/busybox:1.36` is `busybox:1.36`.
pub(crate) fn name_from_reference(reference: &str) -> Result<String, StoreError> {
    let short = reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference);
    normalize_name(short)
}

fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(format!(
            "tag {tag:?} must start with a letter, digit or '_' and contain only letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository part is empty".into());
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository names must be lowercase".into());
    }
    let parts: Vec<&str> = repository.split('/').collect();
    for (index, part) in parts.iter().enumerate() {
        if index == 0 && parts.len() > 1 && part.contains(':') {
            check_host_port(part)?;
        } else if !is_path_component(part) {
            return Err(format!(
                "path component {part:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn check_host_port(part: &str) -> Result<(), String> {
    let bad = || format!("registry host {part:?} must look like host.name:port");
    let (host, port) = part.split_once(':').ok_or_else(bad)?;
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`
fn is_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > sep_start);
    }
}

/// The file name of an image record. `/` is the only character of a normalized name that cannot
/// appear in a file name, and `+` is outside the grammar, so the mapping is unambiguous.
pub(crate) fn record_file_name(normalized: &str) -> String {
    format!("{}.json", normalized.replace('/', "+"))
}

/// Validates a pin holder (a sandbox id) so it can be used as a file name.
pub(crate) fn check_holder(holder: &str) -> Result<(), StoreError> {
    let bytes = holder.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_HOLDER_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: holder.to_string(),
            reason: format!(
                "a pin holder must be 1-{MAX_HOLDER_LEN} letters, digits, '_', '.' or '-', starting with a letter or digit"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_valid_names() {
        let cases = [
            ("busybox", "busybox:latest"),
            ("busybox:1.36", "busybox:1.36"),
            ("library/busybox", "library/busybox:latest"),
            (
                "ghcr.io/org/my-app:v1_2.3-rc",
                "ghcr.io/org/my-app:v1_2.3-rc",
            ),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost:5000/app:Tag", "localhost:5000/app:Tag"),
            ("a__b--c.d_e", "a__b--c.d_e:latest"),
            ("x:_tag", "x:_tag"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_name(input).expect(input), expected);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = "a".repeat(251);
        for bad in [
            "",
            ":tag",
            "busybox:",
            "BusyBox",
            "busy box",
            "../etc",
            "a/../b",
            "/abs",
            "a//b",
            "a/",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a:.tag",
            "a:-tag",
            "a:t/x",
            "a@sha256:abcd",
            "a:b:c",
            "host:port/x",
            "a+b",
            long_tag.as_str(),
            long_name.as_str(),
        ] {
            match normalize_name(bad) {
                Err(StoreError::InvalidName { .. }) => {}
                other => panic!("{bad:?} should be InvalidName, got {other:?}"),
            }
        }
    }

    #[test]
    fn references_lose_the_docker_hub_prefix() {
        for (reference, name) in [
            ("docker.io/library/busybox:1.36", "busybox:1.36"),
            ("docker.io/org/app", "org/app:latest"),
            ("ghcr.io/org/app:v1", "ghcr.io/org/app:v1"),
            ("busybox", "busybox:latest"),
        ] {
            assert_eq!(name_from_reference(reference).expect(reference), name);
        }
        assert!(name_from_reference("docker.io/library/").is_err());
    }

    #[test]
    fn record_names_are_flat_file_names() {
        assert_eq!(
            record_file_name("ghcr.io/org/app:v1"),
            "ghcr.io+org+app:v1.json"
        );
    }

    #[test]
    fn holders_are_safe_file_names() {
        assert!(check_holder("sbx-0123_abc.1").is_ok());
        for bad in ["", ".hidden", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_holder(bad).is_err(), "{bad:?}");
        }
    }
}
