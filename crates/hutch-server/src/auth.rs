//! API keys and their scopes. Only a key's SHA-256 is stored; the secret is shown once, at
//! creation.
//!
//! Keys are required whenever the server listens on a non-loopback address (or when asked
//! to require them with `--require-keys`). On loopback without that, requests without a
//! key pass, so `SandboxClient.for_localhost()` works as is; a key that is presented is
//! still checked, scope included.
//!
//! A key is scoped to one namespace, or is an admin key (every namespace). Namespaces are
//! the tenancy boundary: a namespace key reaches only its own sandboxes, through the
//! lifecycle API and the proxy alike. What every namespace shares (templates, the image
//! store) a namespace key may read and add to, but only an admin key may delete or replace.

use std::sync::Arc;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::db::{ApiKey, Db};
use crate::error::ApiError;
use crate::sandboxes::{now_ms, random_hex};

/// What every secret starts with, so a leaked one is recognizable.
pub const SECRET_PREFIX: &str = "hutch_";

#[derive(Clone)]
pub struct Auth {
    db: Arc<Db>,
    required: bool,
}

impl Auth {
    pub fn new(db: Arc<Db>, required: bool) -> Self {
        Self { db, required }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// The key a request presents, if valid; an error when it is invalid or missing but
    /// required.
    pub fn check(&self, headers: &HeaderMap) -> Result<Option<ApiKey>, ApiError> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let Some(secret) = presented else {
            return if self.required {
                Err(ApiError::unauthorized(
                    "an API key is required: send Authorization: Bearer <key> (create one with `hutch key create`)",
                ))
            } else {
                Ok(None)
            };
        };
        match self.db.key_by_secret(&hash(secret), now_ms())? {
            Some(key) => Ok(Some(key)),
            None if !self.required && !secret.starts_with(SECRET_PREFIX) => {
                // A loopback client configured with some other service's key (the SDKs
                // send whatever TENSORLAKE_API_KEY holds): keys are not required here.
                Ok(None)
            }
            None => Err(ApiError::unauthorized("invalid API key")),
        }
    }

    /// [`Auth::check`], and the key, if any, must reach namespace `ns`.
    pub fn check_namespace(&self, headers: &HeaderMap, ns: &str) -> Result<(), ApiError> {
        match self.check(headers)? {
            Some(key) if !key.covers(ns) => Err(out_of_scope(&key, ns)),
            _ => Ok(()),
        }
    }

    /// [`Auth::check`], and the key, if any, must be an admin key: for `what`, an operation
    /// on something every namespace shares.
    pub fn check_admin(&self, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
        match self.check(headers)? {
            Some(key) if !key.is_admin() => Err(ApiError::forbidden(format!(
                "{what} needs an admin key; key {} is scoped to namespace {:?} \
                 (create one with `hutch key create --admin`)",
                key.id,
                key.namespace.as_deref().unwrap_or_default()
            ))),
            _ => Ok(()),
        }
    }
}

/// The refusal for a key reaching outside its namespace.
pub fn out_of_scope(key: &ApiKey, ns: &str) -> ApiError {
    ApiError::forbidden(format!(
        "key {} is scoped to namespace {:?} and cannot reach namespace {ns:?}",
        key.id,
        key.namespace.as_deref().unwrap_or_default()
    ))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates a key scoped to `namespace` (`None`: an admin key); returns it with its secret,
/// which is not stored.
pub fn create_key(
    db: &Db,
    name: &str,
    namespace: Option<&str>,
) -> Result<(ApiKey, String), ApiError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "a key name must be 1-64 printable characters",
        ));
    }
    if let Some(ns) = namespace {
        crate::lifecycle::check_namespace(ns)?;
    }
    let secret = format!("{SECRET_PREFIX}{}", random_hex(24)?);
    let id = format!(
        "key_{}",
        &hex::encode(Sha256::digest(secret.as_bytes()))[..12]
    );
    let at = now_ms();
    db.insert_key(&id, name, &hash(&secret), at, namespace)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {secret}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn required_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("s.db")).unwrap());
        let (key, secret) = create_key(&db, "ci", None).unwrap();
        let auth = Auth::new(Arc::clone(&db), true);
        assert_eq!(auth.check(&bearer(&secret)).unwrap().unwrap().id, key.id);
        assert_eq!(auth.check(&HeaderMap::new()).unwrap_err().status, 401);
        assert_eq!(auth.check(&bearer("hutch_nope")).unwrap_err().status, 401);
        assert_eq!(auth.check(&bearer("other")).unwrap_err().status, 401);
        db.remove_key(&key.id).unwrap();
        assert!(auth.check(&bearer(&secret)).is_err());
    }

    #[test]
    fn loopback_without_keys_lets_requests_pass_but_checks_hutch_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("s.db")).unwrap());
        let auth = Auth::new(db, false);
        assert!(auth.check(&HeaderMap::new()).unwrap().is_none());
        assert!(auth.check(&bearer("tl_some_cloud_key")).unwrap().is_none());
        assert!(auth.check(&bearer("hutch_forged")).is_err());
    }

    #[test]
    fn namespace_keys_reach_their_namespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("s.db")).unwrap());
        let (_, team) = create_key(&db, "team-a", Some("a")).unwrap();
        let (_, admin) = create_key(&db, "root", None).unwrap();
        for required in [true, false] {
            let auth = Auth::new(Arc::clone(&db), required);
            assert!(auth.check_namespace(&bearer(&team), "a").is_ok());
            let refused = auth.check_namespace(&bearer(&team), "b").unwrap_err();
            assert_eq!((refused.status.as_u16(), refused.code), (403, "forbidden"));
            assert_eq!(
                auth.check_admin(&bearer(&team), "deleting a template")
                    .unwrap_err()
                    .status,
                403
            );
            assert!(auth.check_namespace(&bearer(&admin), "b").is_ok());
            assert!(auth.check_admin(&bearer(&admin), "x").is_ok());
        }
        // Without required keys, a client that presents none is not limited.
        let open = Auth::new(Arc::clone(&db), false);
        assert!(open.check_namespace(&HeaderMap::new(), "b").is_ok());
        assert!(open.check_admin(&HeaderMap::new(), "x").is_ok());
        assert!(create_key(&db, "bad", Some("Not A Namespace")).is_err());
    }
}
