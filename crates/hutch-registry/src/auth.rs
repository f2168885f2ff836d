//! Credentials and the registry token dance.
//!
//! Credentials come from the caller, else from Docker's client config
//! (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`): a credential helper for
//! the host (`credHelpers`, then `credsStore`, run as `docker-credential-<name> get`), else
//! an `auths` entry (`auth` = base64 `user:password`, or `username`/`password`).
//!
//! A registry that answers 401 says how to authenticate in `WWW-Authenticate`: `Basic`
//! (send the credentials) or `Bearer realm=..,service=..,scope=..` (fetch a token from the
//! realm, with the credentials if there are any, and send it).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A user name and a password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

/// Docker's names for Docker Hub in `auths`.
const DOCKER_HUB_KEYS: &[&str] = &[
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".docker").join("config.json"))
}

/// The credentials Docker's client config holds for `registry` (`host[:port]`), if any.
/// A malformed config or a failing helper is an error, not silently anonymous.
pub fn from_docker_config(registry: &str) -> Result<Option<Credentials>, String> {
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys: Vec<&str> = if registry == crate::reference::DOCKER_HUB {
        DOCKER_HUB_KEYS.to_vec()
    } else {
        vec![registry]
    };
    for key in &keys {
        if let Some(helper) = config["credHelpers"][*key].as_str() {
            return run_helper(helper, key);
        }
    }
    let auths = config["auths"].as_object().cloned().unwrap_or_default();
    for (key, entry) in &auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let host = host.strip_suffix("/v1").unwrap_or(host);
        if !keys.contains(&key.as_str()) && !keys.contains(&host) {
            continue;
        }
        if let Some(encoded) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
            let decoded = STANDARD
                .decode(encoded)
                .map_err(|e| format!("{}: auths.{key}.auth: {e}", path.display()))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| format!("{}: auths.{key}.auth is not UTF-8", path.display()))?;
            let (username, password) = decoded.split_once(':').ok_or_else(|| {
                format!("{}: auths.{key}.auth is not user:password", path.display())
            })?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
    }
    if let Some(store) = config["credsStore"].as_str().filter(|s| !s.is_empty()) {
        return run_helper(store, keys[0]);
    }
    Ok(None)
}

/// `docker-credential-<helper> get` with the server on stdin; "not found" is no credentials.
fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>, String> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(format!("{program} get failed: {}", text.trim()));
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{program} printed malformed JSON: {e}"))?;
    match (value["Username"].as_str(), value["Secret"].as_str()) {
        (Some(u), Some(s)) => Ok(Some(Credentials {
            username: u.to_string(),
            password: s.to_string(),
        })),
        _ => Err(format!("{program} answered without Username/Secret")),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        params: HashMap<String, String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="..",service="..",scope=".."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    let realm = params.remove("realm")?;
    Some(Challenge::Bearer { realm, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry\""),
            Some(Challenge::Basic)
        );
        match parse_challenge(
            "Bearer realm=\"https://auth.example/token\",service=\"registry.example\",scope=\"repository:a/b:pull,push\"",
        ) {
            Some(Challenge::Bearer { realm, params }) => {
                assert_eq!(realm, "https://auth.example/token");
                assert_eq!(params["service"], "registry.example");
                assert_eq!(params["scope"], "repository:a/b:pull,push");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn docker_config_auths_and_helpers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = serde_json::json!({
            "auths": {
                "127.0.0.1:5000": {"auth": STANDARD.encode("alice:s3cret")},
                "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}
            }
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
        // SAFETY: tests in this module run on their own; nothing else reads DOCKER_CONFIG.
        unsafe { std::env::set_var("DOCKER_CONFIG", dir.path()) };
        let alice = from_docker_config("127.0.0.1:5000")
            .expect("ok")
            .expect("some");
        assert_eq!(
            (alice.username.as_str(), alice.password.as_str()),
            ("alice", "s3cret")
        );
        let bob = from_docker_config("docker.io").expect("ok").expect("some");
        assert_eq!(bob.username, "bob");
        assert_eq!(from_docker_config("other:1").expect("ok"), None);
        let config = serde_json::json!({"credHelpers": {"h:1": "hutch-test-missing-helper"}});
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("write");
        let err = from_docker_config("h:1").expect_err("a missing helper is an error");
        assert!(
            err.contains("docker-credential-hutch-test-missing-helper"),
            "{err}"
        );
        // SAFETY: as above, this test alone touches DOCKER_CONFIG.
        unsafe { std::env::remove_var("DOCKER_CONFIG") };
    }
}
