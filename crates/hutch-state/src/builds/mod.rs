//! Template builds as the Tensorlake SDK drives them: prepare, a builder sandbox running
//! `tl-rootfs-build --spec ... --metadata-out ...`, complete.
//!
//! There is one build engine: the host's (`hutch_build`). The builder sandbox runs the
//! `hutch/rootfs-builder` image, whose `tl-rootfs-build` is the agent binary under another
//! name. It hands the spec and the build context over the *build channel*, a unix socket the
//! host listens on only in builder sandboxes (`/run/hutch/build.sock`, next to the agent's),
//! and prints what the host reports. The host builds (every RUN in a sandbox of its own, steps
//! cached), records the result on the build row (`built`), and answers with the metadata the
//! SDK reads back. `complete` then registers the template in one transaction.
//!
//! Trust: the build id alone claims nothing. Prepare hands out a random build token (only its
//! hash is stored) inside the spec the SDK passes through to the builder; the channel needs
//! both, a build is claimed once, and the Dockerfile built is the one given to prepare.
//!
//! - `api.rs`: prepare, status and complete, as the platform API calls them;
//! - `channel.rs`: the build channel of builder sandboxes (token check, safe context unpack);
//! - `run.rs`: the build (or import) itself, and its result on the build row;
//! - `events.rs`: the bounded queue of a build's events back to the builder.
//!
//! Builder sandboxes are [`Sandboxes`]' own: `Builds` hears of them starting and ending as a
//! [`SandboxObserver`] and sets their timeouts through `Sandboxes`.

mod api;
mod channel;
mod events;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hutch_runtime::Backend;
use hutch_store::Store;
use sha2::Digest as _;
use tokio::task::JoinHandle;

use crate::db::Db;
use crate::now_ms;
use crate::sandboxes::{SandboxObserver, Sandboxes};
use crate::templates::Templates;

/// What a builder sandbox gets: it only relays, the host does the work.
const BUILDER_CPUS: f64 = 1.0;
const BUILDER_MEMORY_MB: i64 = 512;
const BUILDER_DISK_MB: u64 = 10 * 1024;
/// How long a builder sandbox lives after its build ended, if nobody deletes it.
const BUILDER_GRACE_SECS: i64 = 300;
/// A build that is built but not completed after this long is dropped at the next start.
const ABANDONED_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How often a running server sweeps builds nobody will complete.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long the build channel waits for the builder to send or read anything.
const CHANNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

pub struct Builds {
    /// Itself, for the build-channel tasks its observer callbacks start.
    me: std::sync::Weak<Self>,
    db: Arc<Db>,
    templates: Templates,
    backend: Arc<dyn Backend>,
    store: Store,
    registry: hutch_registry::Client,
    sandboxes: Arc<Sandboxes>,
    /// Build-channel listeners, by builder sandbox.
    listeners: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// The limits every RUN of a build gets.
#[derive(Clone, Debug, Default)]
struct Limits {
    cpus: Option<f64>,
    memory_mb: Option<u64>,
    /// The builder sandbox's namespace: the scope of the build's cache mounts.
    namespace: String,
    /// The builder sandbox's network policy, which RUN steps follow; `None`: it had none.
    network: Option<hutch_runtime::net::NetworkPolicy>,
}

fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Builds {
    pub fn new(
        db: Arc<Db>,
        templates: Templates,
        backend: Arc<dyn Backend>,
        store: Store,
        registry: hutch_registry::Client,
        sandboxes: Arc<Sandboxes>,
    ) -> Arc<Self> {
        // Builds a previous server was running died with it; their images will never be
        // registered.
        match db.fail_interrupted_builds(now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(builds = n, "marked builds interrupted by a restart failed"),
            Err(e) => tracing::error!(error = %e, "settling interrupted builds"),
        }
        let this = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            db,
            templates,
            backend,
            store,
            registry,
            sandboxes,
            listeners: Mutex::new(HashMap::new()),
        });
        this.sweep();
        let observer: std::sync::Weak<dyn SandboxObserver> = Arc::downgrade(&this) as _;
        this.sandboxes.observe(observer);
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match weak.upgrade() {
                    Some(builds) => builds.sweep(),
                    None => return,
                }
            }
        });
        this
    }

    /// Drops builds nobody completed for a day (their client is gone) and removes the images
    /// of failed builds: now, and every [`SWEEP_EVERY`] while the server runs.
    fn sweep(&self) {
        let now = now_ms();
        if let Ok(n @ 1..) = self.db.fail_abandoned_builds(now - ABANDONED_AFTER_MS, now) {
            tracing::info!(builds = n, "dropped builds nobody completed");
        }
        if let Ok(images) = self.db.unregistered_build_images() {
            for image in images {
                match self.store.remove_image(&image) {
                    Ok(_) => tracing::info!(%image, "removed the image of a failed build"),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(%image, error = %e, "removing a failed build's image");
                        continue;
                    }
                }
                let _ = self.db.forget_build_image(&image);
            }
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A builder sandbox that runs gets its build channel (before it is reported running), one
/// that ends loses it; other sandboxes cost a string comparison.
impl SandboxObserver for Builds {
    fn running(&self, id: &str, image: &str) {
        if image == crate::default_image::BUILDER_IMAGE {
            self.listen(id);
        }
    }

    fn ended(&self, id: &str) {
        self.forget(id);
    }
}
