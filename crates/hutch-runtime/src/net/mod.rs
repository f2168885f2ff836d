//! Sandbox networks: the egress policy (`policy`) and how the host enforces it (`host`).
//! See `docs/ARCHITECTURE.md`, "Sandbox networks".

pub mod audit;
pub mod dns;
pub mod host;
pub mod policy;

pub use host::{Attachment, NetSettings};
pub use policy::{Cidr, NameVerdict, NetworkPolicy, ParsedPolicy};
