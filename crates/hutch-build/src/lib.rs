//! Hutch's Dockerfile front end: everything about a `docker build` that can be decided without
//! running anything.
//!
//! - [`dockerfile`] parses a Dockerfile into stages and instructions, keeping every value exactly
//!   as written (nothing is expanded here).
//! - [`expand`] is Docker's word expansion (`$VAR`, `${VAR:-x}`, quotes), applied later with the
//!   build's variables to the instructions Docker expands.
//! - [`ignore`] is `.dockerignore` matching with moby/patternmatcher's semantics.
//! - [`context`] resolves `COPY`/`ADD` sources inside a build context without ever leaving it, and
//!   digests what they would copy for the build cache.
//!
//! - [`engine`] runs a build: every RUN in a gVisor sandbox over the layers so far (its
//!   writable layer becomes the next layer), COPY and ADD staged into layers, every step's
//!   result cached in the store under a key over its parent, the instruction and its inputs.
//!
//! Invariant: the front end (`dockerfile`, `expand`, `ignore`, `context`) runs nothing and
//! touches no store; only `engine` does, through the store and the runtime's API.

pub mod context;
pub mod dockerfile;
pub mod engine;
mod error;
pub mod expand;
mod glob;
pub mod ignore;
mod merged;

pub use error::BuildError;
