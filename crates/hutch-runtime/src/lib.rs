//! The Hutch sandbox runtime, usable as a library without any server.
//!
//! - [`Backend`] is the one API over every runtime: create, attach, inspect, list, stop,
//!   kill, delete. Each backend reports [`Capabilities`], every one supported or unsupported
//!   with a [`CapabilityReason`], and unsupported calls fail with
//!   [`RuntimeError::UnsupportedCapability`], never a silent no-op.
//! - Errors are one typed enum, [`RuntimeError`], each with a [`RetryClass`].
//! - [`agent::AgentClient`] talks to a sandbox's agent (processes, files) over the
//!   connection the agent dialed home on.
//! - [`gvisor::GvisorBackend`] runs sandboxes with `runsc`.
//!
//! This crate knows nothing of HTTP routes served to users, nor of SQLite: it is the layer
//! below the server.

pub mod agent;
mod backend;
mod capability;
mod error;
pub mod gvisor;

pub use backend::{
    Backend, DEFAULT_PIDS_LIMIT, MAX_PIDS_LIMIT, NetworkMode, Sandbox, SandboxInfo, SandboxSpec,
    SandboxState,
};
pub use capability::{Capabilities, Capability, CapabilityName, CapabilityReason};
pub use error::{Result, RetryClass, RuntimeError};
