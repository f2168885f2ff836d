//! How `hutch run` finds the server over its own state directory without trusting whoever
//! listens on a port. `hutch serve` writes `serve.json` (owner-only) into `$HUTCH_HOME`: its
//! API address and a random secret. The CLI sends a random challenge to `/healthz`; only a
//! server that knows the secret can answer with HMAC-SHA256(secret, challenge). Another
//! local user can take the port after the server stops, but cannot read the file.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file in the state directory.
pub const SERVE_FILE: &str = "serve.json";
/// The request header carrying the client's challenge.
pub const CHALLENGE_HEADER: &str = "x-hutch-challenge";
/// Longest challenge the server answers.
const MAX_CHALLENGE: usize = 128;

/// What a running server published: where it listens and its secret.
#[derive(Clone)]
pub struct Published {
    pub api: String,
    nonce: Vec<u8>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published").field("api", &self.api).finish()
    }
}

impl Published {
    /// The answer to `challenge` only the holder of the secret can give; `None` for a
    /// challenge that is too long to be one of ours.
    pub fn proof(&self, challenge: &str) -> Option<String> {
        (!challenge.is_empty() && challenge.len() <= MAX_CHALLENGE)
            .then(|| hex::encode(hmac_sha256(&self.nonce, challenge.as_bytes())))
    }

    /// Whether `proof` answers `challenge`, compared in constant time.
    pub fn verify(&self, challenge: &str, proof: &str) -> bool {
        let Some(expected) = self.proof(challenge) else {
            return false;
        };
        expected.len() == proof.len()
            && expected
                .bytes()
                .zip(proof.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Writes `home/serve.json` for the API listening on `api` (owner-only, replaced whole).
pub fn publish(home: &Path, api: SocketAddr) -> std::io::Result<Published> {
    let ip = match api.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let published = Published {
        api: format!("http://{}", SocketAddr::new(ip, api.port())),
        nonce: hutch_wire::ids::random_bytes(32)?,
    };
    let body = serde_json::json!({"api": published.api, "nonce": hex::encode(&published.nonce)});
    // A server killed between write and rename left its temporary file: swept here.
    hutch_store::remove_dead_pid_entries(home, &[&format!(".{SERVE_FILE}.")]);
    let tmp = home.join(format!(".{SERVE_FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(body.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, home.join(SERVE_FILE))?;
    Ok(published)
}

/// Removes `home/serve.json` if it is still this server's (a newer server may own it now).
pub fn withdraw(home: &Path, published: &Published) {
    if read(home).is_some_and(|p| p.nonce == published.nonce) {
        let _ = std::fs::remove_file(home.join(SERVE_FILE));
    }
}

/// The server published in `home`, if a file there is one this user wrote and no one else
/// can read.
pub fn read(home: &Path) -> Option<Published> {
    let path: PathBuf = home.join(SERVE_FILE);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let nonce = hex::decode(value["nonce"].as_str()?).ok()?;
    (nonce.len() >= 16).then(|| Published {
        api: value["api"].as_str().unwrap_or_default().to_string(),
        nonce,
    })
}

/// A fresh random challenge, hex.
pub fn challenge() -> std::io::Result<String> {
    hutch_wire::ids::random_hex(32)
}

/// HMAC (RFC 2104) over SHA-256.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_publish_killed_before_its_rename_leaves_nothing_for_good() {
        let home = tempfile::tempdir().unwrap();
        let left = home.path().join(format!(".{SERVE_FILE}.2147483646"));
        std::fs::write(&left, b"{\"api\"").unwrap();
        publish(home.path(), "127.0.0.1:8900".parse().unwrap()).unwrap();
        assert!(!left.exists(), "a dead server's temporary serve.json left");
        assert!(home.path().join(SERVE_FILE).is_file());
    }

    #[test]
    fn only_the_secret_answers_a_challenge() {
        let home = tempfile::tempdir().unwrap();
        let published = publish(home.path(), "0.0.0.0:8900".parse().unwrap()).unwrap();
        assert_eq!(published.api, "http://127.0.0.1:8900");
        let mode = std::fs::metadata(home.path().join(SERVE_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let read = read(home.path()).unwrap();
        let c = challenge().unwrap();
        let proof = published.proof(&c).unwrap();
        assert!(read.verify(&c, &proof));
        assert!(!read.verify(&challenge().unwrap(), &proof));
        let other = Published {
            api: String::new(),
            nonce: vec![7; 32],
        };
        assert!(!read.verify(&c, &other.proof(&c).unwrap()));
        withdraw(home.path(), &published);
        assert!(!home.path().join(SERVE_FILE).exists());
    }

    #[test]
    fn a_file_others_can_read_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        publish(home.path(), "127.0.0.1:1".parse().unwrap()).unwrap();
        let path = home.path().join(SERVE_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(home.path()).is_none());
    }
}
