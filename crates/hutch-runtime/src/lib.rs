//! The Hutch sandbox runtime, usable as a library without any server.
//!
//! - [`Backend`] is the one API over every runtime: create, attach, inspect, list, stop,
//!   kill, delete, and the operations not every backend offers (one-shot attached runs, a
//!   stopped sandbox's writable layer, a socket inside a sandbox, network attach,
//!   checkpoint and restore). Each backend reports [`Capabilities`], every one supported or
//!   unsupported with a [`CapabilityReason`], and unsupported calls fail with
//!   [`RuntimeError::UnsupportedCapability`], never a silent no-op. Callers hold a
//!   `dyn Backend`; the concrete backend is named only where it is built.
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
pub mod net;

pub use backend::{
    AttachedRun, Backend, CheckpointOptions, DEFAULT_PIDS_LIMIT, ExtraMount, ExtraMountKind,
    MAX_EXTRA_MOUNTS, MAX_PIDS_LIMIT, NetworkLease, NetworkMode, RestoreSpec, Sandbox, SandboxInfo,
    SandboxSpec, SandboxState, SnapshotDescriptor, Workload, WritableLayer,
};
pub use capability::{Capabilities, Capability, CapabilityName, CapabilityReason, RuntimeDetails};
pub use error::{AgentUnreachable, Result, RetryClass, RuntimeError};
