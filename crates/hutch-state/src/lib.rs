//! Hutch's state and the services over it, without HTTP.
//!
//! - [`db`]: the embedded SQLite database (versioned migrations), the record of truth for
//!   sandboxes, templates, template builds and API keys.
//! - [`sandboxes`]: the sandbox lifecycle over the runtime (create, settle, delete, update),
//!   admission (capacity, queue, host size), reconcile after a restart, and the timeout and
//!   liveness monitor. It tells [`SandboxObserver`]s of sandboxes starting and ending.
//! - [`templates`]: the template registry; [`builds`]: template builds (prepare, the build
//!   channel of builder sandboxes, the build itself, complete).
//! - [`keys`]: API keys and their namespace scopes.
//! - [`debian_image`]: the Debian image creates get by default (built with mmdebstrap,
//!   cached machine-wide); [`default_image`]: the busybox images (`hutch/minimal`, the
//!   builder) and the names of the built-ins; [`discovery`]: the
//!   `serve.json` a running server publishes for `hutch run`.
//!
//! Errors are one [`StateError`] with typed variants and stable codes; this crate knows
//! nothing of HTTP (the server maps errors to statuses). It is the only crate that touches
//! SQLite, and `Sandboxes` the only code that writes a sandbox's row.

mod admission;
pub mod builds;
pub mod db;
pub mod debian_image;
pub mod default_image;
pub mod discovery;
mod error;
pub mod keys;
pub mod pools;
pub mod sandboxes;
pub mod templates;

use std::path::Path;
use std::sync::Arc;

use hutch_runtime::Backend;
use hutch_store::Store;

pub use error::{Conflict, Invalid, Kind, StateError, runtime_code};
pub use sandboxes::{CreateParams, HostCapacity, Limits, SandboxObserver, Sandboxes};

/// The services of one state directory, as `hutch serve` runs them.
pub struct State {
    pub sandboxes: Arc<Sandboxes>,
    /// Warm pools; their replenisher starts when the server gives them a
    /// [`pools::PoolSandboxes`].
    pub pools: Arc<pools::Pools>,
    /// Template builds, and through them the template registry.
    pub builds: Arc<builds::Builds>,
    pub keys: keys::Keys,
}

impl State {
    /// Opens the state of `home`, makes the built-in images if the store lacks them,
    /// reconciles the sandbox rows with the runtime and starts the timeout and liveness
    /// monitor (a task of its own, for as long as the process runs).
    pub async fn start(
        home: &Path,
        busybox: &Path,
        default_image: &str,
        limits: Limits,
        backend: Arc<dyn Backend>,
        store: Store,
        registry: hutch_registry::Client,
    ) -> Result<Self, StateError> {
        let backend_for_sweep = Arc::clone(&backend);
        let db = Arc::new(db::Db::open(&home.join(DB_FILE))?);
        default_image::ensure(&store, busybox)?;
        default_image::ensure_builder(&store, busybox)?;
        let default = default_image::builtin(default_image, debian_image::DEBIAN_IMAGE)
            .unwrap_or_else(|| default_image.to_string());
        let images = debian_image::DefaultImages::new(store.clone(), default);
        // Built in the background from the start: the first create that needs it waits.
        images.start();
        let sandboxes = Sandboxes::new(
            Arc::clone(&db),
            Arc::clone(&backend),
            store.clone(),
            images,
            limits,
        );
        let builds = builds::Builds::new(
            Arc::clone(&db),
            templates::Templates::new(Arc::clone(&db), store.clone()),
            backend,
            store,
            registry,
            Arc::clone(&sandboxes),
        );
        let started = std::time::Instant::now();
        let (adopted, ended, orphans) = sandboxes.reconcile().await?;
        tracing::info!(
            adopted,
            ended,
            orphans,
            ms = started.elapsed().as_millis() as u64,
            "reconciled state with the runtime"
        );
        tokio::spawn(Arc::clone(&sandboxes).monitor());
        let swept = sweep_crashed(&*backend_for_sweep).await;
        if swept > 0 {
            tracing::info!(
                swept,
                "removed sandboxes of builds or deletes interrupted by a crash"
            );
        }
        // A CLI build killed while its RUN sandbox was still booting leaves it to come up
        // after the sweep above: sweep again now and then.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let swept = sweep_crashed(&*backend_for_sweep).await;
                if swept > 0 {
                    tracing::info!(swept, "removed sandboxes of interrupted builds or deletes");
                }
            }
        });
        Ok(Self {
            pools: pools::Pools::new(Arc::clone(&db), Arc::clone(&sandboxes)),
            sandboxes,
            builds,
            keys: keys::Keys::new(db),
        })
    }
}

/// How old a sandbox's remains without a record must be to count as left behind by a process
/// killed mid-create or mid-delete (a live create writes its record within milliseconds).
const INCOMPLETE_AGE: std::time::Duration = std::time::Duration::from_secs(20);
/// How often the crash sweep runs after the one at start.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Removes build sandboxes whose owner process is gone and sandboxes a killed process left
/// half-made or half-removed.
async fn sweep_crashed(backend: &dyn Backend) -> usize {
    hutch_build::engine::sweep_orphans(backend).await + backend.sweep_incomplete(INCOMPLETE_AGE)
}

/// The state database's file name inside the state directory.
pub const DB_FILE: &str = "hutch.db";

/// A fingerprint of the state directory `home`: the CLI compares its own with the one a
/// running server reports to know that both see the same store. The path itself is not
/// disclosed.
pub fn state_id(home: &std::path::Path) -> String {
    use sha2::Digest as _;
    let canonical = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

// Ids, key secrets, build tokens and timestamps: the same everywhere (`hutch_wire`).
pub use hutch_wire::clock::now_ms;
pub(crate) use hutch_wire::ids::random_hex;
