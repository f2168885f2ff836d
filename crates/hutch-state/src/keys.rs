//! API keys and their scopes. Only a key's SHA-256 is stored; the secret is shown once, at
//! creation.
//!
//! A key is scoped to one namespace, or is an admin key (every namespace). Namespaces are
//! the tenancy boundary: a namespace key reaches only its own sandboxes. What every namespace
//! shares (templates, the image store) a namespace key may read and add to, but only an admin
//! key may delete or replace. Whether keys are required, and reading one from a request, is
//! the server's business.

use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use crate::db::ApiKey;
use crate::db::Db;
use crate::error::{Invalid, StateError};
use crate::{now_ms, random_hex};

/// What every secret starts with, so a leaked one is recognizable.
pub const SECRET_PREFIX: &str = "hutch_";

/// The key store of a state database.
#[derive(Clone)]
pub struct Keys {
    db: Arc<Db>,
}

impl Keys {
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The live key whose secret is `secret`, recording its use.
    pub fn find(&self, secret: &str) -> Result<Option<ApiKey>, StateError> {
        Ok(self.db.key_by_secret(&hash(secret), now_ms())?)
    }

    /// Creates a key scoped to `namespace` (`None`: an admin key); returns it with its
    /// secret, which is not stored.
    pub fn create(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<(ApiKey, String), StateError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(StateError::invalid(
                Invalid::Request,
                "a key name must be 1-64 printable characters",
            ));
        }
        if let Some(ns) = namespace {
            crate::sandboxes::validate_namespace(ns)?;
        }
        let secret = format!("{SECRET_PREFIX}{}", random_hex(24)?);
        let id = format!("key_{}", &hash(&secret)[..12]);
        let at = now_ms();
        self.db
            .insert_key(&id, name, &hash(&secret), at, namespace)?;
        Ok((
            ApiKey {
                id,
                name: name.to_string(),
                created_at: at,
                last_used_at: None,
                namespace: namespace.map(str::to_string),
            },
            secret,
        ))
    }

    pub fn list(&self) -> Result<Vec<ApiKey>, StateError> {
        Ok(self.db.keys()?)
    }

    /// Removes the key with this id or name; false if there is none.
    pub fn remove(&self, id_or_name: &str) -> Result<bool, StateError> {
        Ok(self.db.remove_key(id_or_name)?)
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("s.db")).unwrap());
        (dir, Keys::new(db))
    }

    #[test]
    fn a_key_is_found_by_its_secret_only_while_it_exists() {
        let (_dir, keys) = keys();
        let (key, secret) = keys.create("ci", None).unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert!(key.is_admin());
        assert_eq!(keys.find(&secret).unwrap().unwrap().id, key.id);
        assert!(keys.find("hutch_forged").unwrap().is_none());
        assert!(keys.remove(&key.id).unwrap());
        assert!(keys.find(&secret).unwrap().is_none());
        assert!(!keys.remove(&key.id).unwrap());
    }

    #[test]
    fn namespace_keys_cover_their_namespace_only() {
        let (_dir, keys) = keys();
        let (team, _) = keys.create("team-a", Some("a")).unwrap();
        assert!(team.covers("a") && !team.covers("b") && !team.is_admin());
        let e = keys.create("bad", Some("Not A Namespace")).unwrap_err();
        assert_eq!(e.code(), "invalid_namespace");
        assert_eq!(keys.create("", None).unwrap_err().code(), "invalid_request");
        assert_eq!(keys.list().unwrap().len(), 1);
    }
}
