//! Hutch's OCI distribution client: image references, registry auth, pulls into the
//! content-addressed store and pushes out of it.
//!
//! A pull verifies everything it receives (manifest digests when pinned, the config's and
//! every layer's digest and size, every layer's diff_id) and publishes nothing until all of
//! it is in; layers the store already has are not downloaded.

mod auth;
mod client;
mod error;
mod events;
mod manifest;
mod pull;
mod push;
mod reference;

pub use auth::Credentials;
pub use client::{Client, ClientConfig, INSECURE_ENV};
pub use error::RegistryError;
pub use events::{Event, Renderer, Sink};
pub use pull::pull;
pub use push::push;
pub use reference::Reference;
