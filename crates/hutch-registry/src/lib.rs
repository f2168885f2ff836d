//! Hutch's OCI distribution client: image references, registry auth, pulls into the
//! content-addressed store and pushes out of it.
//!
//! A pull verifies everything it receives (manifest digests when pinned, the config's and
//! every layer's digest and size, every layer's diff_id) and publishes nothing until all of
//! it is in; layers the store already has are not downloaded. Nothing a registry sends is
//! read whole before its size is checked, and a server pulling for API clients sets an
//! [`EgressPolicy`] on where its pulls may connect.

mod auth;
mod body;
mod client;
mod egress;
mod error;
mod events;
mod manifest;
mod pull;
mod push;
mod reference;

pub use auth::Credentials;
pub use body::{CONFIG_LIMIT, MANIFEST_LIMIT};
pub use client::{Client, ClientConfig, INSECURE_ENV};
pub use egress::EgressPolicy;
pub use error::RegistryError;
pub use events::{Event, Renderer, Sink};
pub use pull::pull;
pub use push::push;
pub use reference::{Reference, store_name};

/// When an image named by a run or a create is pulled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only when the store does not have it.
    #[default]
    Missing,
    /// Every time (layers the store has are still not downloaded again).
    Always,
    /// Never; a missing image is an error.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "missing" | "if-missing" => Ok(Self::Missing),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "{other:?} is not a pull policy (missing, always or never)"
            )),
        }
    }
}

impl std::fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}
