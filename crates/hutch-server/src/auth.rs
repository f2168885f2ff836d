//! The one auth layer: reading a request's API key and checking its scope. Keys themselves
//! (storage, hashing, scopes) are `hutch_state::keys`.
//!
//! Keys are required whenever the server listens on a non-loopback address (or when asked
//! to require them with `--require-keys`). On loopback without that, requests without a
//! key pass, so `SandboxClient.for_localhost()` works as is; a key that is presented is
//! still checked, scope included.
//!
//! Handlers take [`Caller`] (the request's key, checked) or [`Scoped`] (that, plus the
//! namespace the route names, valid and within the key's scope): they never read the
//! `Authorization` header themselves.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use hutch_state::keys::{ApiKey, Keys, SECRET_PREFIX};

use crate::App;
use crate::error::ApiError;

/// The namespace of the flat routes (`/sandboxes/...`).
pub const DEFAULT_NS: &str = "default";

#[derive(Clone)]
pub struct Auth {
    keys: Keys,
    required: bool,
}

impl Auth {
    pub fn new(keys: Keys, required: bool) -> Self {
        Self { keys, required }
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
        match self.keys.find(secret)? {
            Some(key) => Ok(Some(key)),
            None if !self.required && !secret.starts_with(SECRET_PREFIX) => {
                // A loopback client configured with some other service's key (the SDKs
                // send whatever TENSORLAKE_API_KEY holds): keys are not required here.
                Ok(None)
            }
            None => Err(ApiError::unauthorized("invalid API key")),
        }
    }
}

/// Who sends a request: the key it presented (checked), or none where keys are not
/// required.
pub struct Caller(pub Option<ApiKey>);

impl Caller {
    /// The key, if any, must reach namespace `ns`.
    pub fn reach(&self, ns: &str) -> Result<(), ApiError> {
        match &self.0 {
            Some(key) if !key.covers(ns) => Err(out_of_scope(key, ns)),
            _ => Ok(()),
        }
    }

    /// The key, if any, must be an admin key: for `what`, an operation on something every
    /// namespace shares.
    pub fn admin(&self, what: &str) -> Result<(), ApiError> {
        match &self.0 {
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

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        app.auth.check(&parts.headers).map(Caller)
    }
}

/// A request within one namespace: the route's `{ns}` (or [`DEFAULT_NS`] on the flat
/// routes), a valid name, and within the caller's scope; checked in that order.
pub struct Scoped {
    pub ns: String,
}

impl FromRequestParts<Arc<App>> for Scoped {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        let ns = match Path::<HashMap<String, String>>::from_request_parts(parts, app).await {
            Ok(Path(mut params)) => params.remove("ns"),
            // A route without parameters: the flat `/sandboxes`.
            Err(PathRejection::MissingPathParams(_)) => None,
            // Parameters that do not decode are refused as axum refuses them, never read as
            // the default namespace.
            Err(rejection) => return Err(rejection.into_response()),
        }
        .unwrap_or_else(|| DEFAULT_NS.to_string());
        let check = || -> Result<(), ApiError> {
            hutch_state::sandboxes::validate_namespace(&ns)?;
            app.auth.check(&parts.headers).map(Caller)?.reach(&ns)
        };
        check().map_err(IntoResponse::into_response)?;
        Ok(Self { ns })
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

#[cfg(test)]
mod tests {
    use hutch_state::db::Db;

    use super::*;

    fn bearer(secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {secret}").parse().unwrap(),
        );
        h
    }

    fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("s.db")).unwrap());
        (dir, Keys::new(db))
    }

    #[test]
    fn required_keys_are_checked() {
        let (_dir, keys) = keys();
        let (key, secret) = keys.create("ci", None).unwrap();
        let auth = Auth::new(keys.clone(), true);
        assert_eq!(auth.check(&bearer(&secret)).unwrap().unwrap().id, key.id);
        assert_eq!(auth.check(&HeaderMap::new()).unwrap_err().status, 401);
        assert_eq!(auth.check(&bearer("hutch_nope")).unwrap_err().status, 401);
        assert_eq!(auth.check(&bearer("other")).unwrap_err().status, 401);
        keys.remove(&key.id).unwrap();
        assert!(auth.check(&bearer(&secret)).is_err());
    }

    #[test]
    fn loopback_without_keys_lets_requests_pass_but_checks_hutch_keys() {
        let (_dir, keys) = keys();
        let auth = Auth::new(keys, false);
        assert!(auth.check(&HeaderMap::new()).unwrap().is_none());
        assert!(auth.check(&bearer("tl_some_cloud_key")).unwrap().is_none());
        assert!(auth.check(&bearer("hutch_forged")).is_err());
    }

    #[test]
    fn namespace_keys_reach_their_namespace_only() {
        let (_dir, keys) = keys();
        let (_, team) = keys.create("team-a", Some("a")).unwrap();
        let (_, admin) = keys.create("root", None).unwrap();
        for required in [true, false] {
            let auth = Auth::new(keys.clone(), required);
            let caller = |secret: &str| Caller(auth.check(&bearer(secret)).unwrap());
            assert!(caller(&team).reach("a").is_ok());
            let refused = caller(&team).reach("b").unwrap_err();
            assert_eq!((refused.status.as_u16(), refused.code), (403, "forbidden"));
            assert_eq!(
                caller(&team)
                    .admin("deleting a template")
                    .unwrap_err()
                    .status,
                403
            );
            assert!(caller(&admin).reach("b").is_ok());
            assert!(caller(&admin).admin("x").is_ok());
        }
        // Without required keys, a client that presents none is not limited.
        let open = Caller(Auth::new(keys, false).check(&HeaderMap::new()).unwrap());
        assert!(open.reach("b").is_ok());
        assert!(open.admin("x").is_ok());
    }
}
