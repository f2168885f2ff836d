//! The sandbox service: lifecycle over the runtime, with SQLite as the record of truth.
//!
//! Invariants:
//! - a row is written (`pending`) before the runtime is asked for anything, and a row is
//!   marked `terminated` before the runtime is told to delete, so a crash between the two
//!   leaves an orphan that reconciliation removes, never a sandbox nobody records;
//! - runtime work runs in tasks of its own, so a client that disconnects mid-request cancels
//!   nothing halfway;
//! - the server only ever removes runtime sandboxes labelled as its own;
//! - a sandbox is reported running only after every [`SandboxObserver`] (template builds: a
//!   builder sandbox's build channel) has handled its start.
//!
//! `monitor.rs` holds what settles rows against the runtime: reconcile after a start, and
//! the timeout and liveness monitor.

mod monitor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hutch_runtime::agent::AgentClient;
use hutch_runtime::net::NetworkPolicy;
use hutch_runtime::{Backend, NetworkMode, RuntimeError, SandboxSpec};
use hutch_store::Store;
use hutch_wire::StartProcess;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use crate::admission::{HostCapacity, Limits};
use crate::db::{Db, Reason, SandboxRow, Status};
use crate::error::{Conflict, Invalid, Kind, StateError};
use crate::now_ms;

/// The label that marks a runtime sandbox as this server's.
pub const OWNER_LABEL: &str = "hutch.owner";
const OWNER: &str = "hutch-serve";

/// What a running (or booting) sandbox holds: its place in the admission count and its
/// share of capacity. Dropped when it ends.
struct Held {
    _admitted: OwnedSemaphorePermit,
    _capacity: OwnedSemaphorePermit,
}

/// What a create asks for, validated.
#[derive(Clone, Debug, Default)]
pub struct CreateParams {
    pub namespace: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub cpus: Option<f64>,
    pub memory_mb: Option<u64>,
    pub disk_mb: Option<u64>,
    pub timeout_secs: Option<i64>,
    pub entrypoint: Option<Vec<String>>,
    pub network: NetworkMode,
    /// What a [`NetworkMode::Egress`] sandbox may reach.
    pub network_policy: NetworkPolicy,
    pub max_pending_secs: Option<u64>,
    /// `KEY=VALUE` entries over the image's environment.
    pub env: Vec<String>,
    /// What the API reports back about the request (resources, policy, flags), as JSON.
    pub spec: serde_json::Value,
    /// The pool `(id, generation, claimed)` this sandbox is made for.
    pub pool: Option<(String, i64, bool)>,
}

/// A service that must act on sandboxes starting and ending (see [`Sandboxes::observe`]).
///
/// Called inline, on the path that starts or ends the sandbox: no queue to bound, no round
/// trip, and a sandbox is reported running only once every observer has returned. So an
/// observer must be quick, must not block, and must not call back into [`Sandboxes`].
pub trait SandboxObserver: Send + Sync {
    /// The sandbox runs (booted, or adopted after a restart) but is not reported running yet.
    fn running(&self, id: &str, image: &str);
    /// The sandbox ended (its row is terminated); its runtime side is being removed.
    fn ended(&self, id: &str);
}

pub struct Sandboxes {
    db: Arc<Db>,
    backend: Arc<dyn Backend>,
    store: Store,
    images: Arc<crate::debian_image::DefaultImages>,
    agents: Mutex<HashMap<String, AgentClient>>,
    permits: Mutex<HashMap<String, Held>>,
    /// Sandboxes running plus creates waiting: `max_sandboxes + max_queued` permits.
    admission: Arc<Semaphore>,
    capacity: Arc<Semaphore>,
    limits: Limits,
    boots: Arc<Semaphore>,
    /// Bumped on every status change; waiters re-read the database.
    changes: watch::Sender<u64>,
    /// Who hears of sandboxes starting and ending.
    observers: Mutex<Vec<Weak<dyn SandboxObserver>>>,
    /// Sandboxes being stopped gracefully: the monitor does not call their end a death.
    stopping: Mutex<std::collections::HashSet<String>>,
    /// Per sandbox: when API or proxy traffic last touched it, and how many proxied
    /// exchanges are open now (for `idle_timeout_secs`).
    activity: Arc<Mutex<HashMap<String, Activity>>>,
    /// Held by a resize while it runs.
    resizing: tokio::sync::Mutex<()>,
}

/// The smallest memory a resize may give a sandbox.
pub const MIN_MEMORY_MB: u64 = 64;

/// The traffic a sandbox had, for its idle timeout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Activity {
    pub last: std::time::Instant,
    pub open: u32,
}

/// An open exchange with a sandbox (a proxied request whose answer is still streaming):
/// the sandbox is not idle until it drops.
pub struct Busy {
    activity: Arc<Mutex<HashMap<String, Activity>>>,
    id: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut all = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = all.get_mut(&self.id) {
            a.open = a.open.saturating_sub(1);
            a.last = std::time::Instant::now();
        }
    }
}

impl Sandboxes {
    pub fn new(
        db: Arc<Db>,
        backend: Arc<dyn Backend>,
        store: Store,
        images: Arc<crate::debian_image::DefaultImages>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            backend,
            store,
            images,
            agents: Mutex::new(HashMap::new()),
            permits: Mutex::new(HashMap::new()),
            admission: Arc::new(Semaphore::new(
                limits.max_sandboxes.saturating_add(limits.max_queued),
            )),
            capacity: Arc::new(Semaphore::new(limits.max_sandboxes)),
            boots: Arc::new(Semaphore::new(limits.concurrent_boots.max(1))),
            limits,
            changes: watch::channel(0).0,
            observers: Mutex::new(Vec::new()),
            stopping: Mutex::new(std::collections::HashSet::new()),
            activity: Arc::new(Mutex::new(HashMap::new())),
            resizing: tokio::sync::Mutex::new(()),
        })
    }

    /// Tells `observer` of every sandbox that starts or ends from now on, for as long as it
    /// lives.
    pub fn observe(&self, observer: Weak<dyn SandboxObserver>) {
        self.lock_observers().push(observer);
    }

    fn lock_observers(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn SandboxObserver>>> {
        self.observers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The observers still alive, taken out of the lock so that none is called under it.
    fn observers(&self) -> Vec<Arc<dyn SandboxObserver>> {
        let mut observers = self.lock_observers();
        observers.retain(|o| o.strong_count() > 0);
        observers.iter().filter_map(Weak::upgrade).collect()
    }

    fn announce_running(&self, id: &str, image: &str) {
        for observer in self.observers() {
            observer.running(id, image);
        }
    }

    fn announce_ended(&self, id: &str) {
        for observer in self.observers() {
            observer.ended(id);
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The store name of the image creates that name none get.
    pub fn default_image(&self) -> &str {
        self.images.name()
    }

    /// The default image and its build.
    pub fn default_images(&self) -> &Arc<crate::debian_image::DefaultImages> {
        &self.images
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Changes whenever a sandbox changes status.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image `name` names in the store (built-in names resolved), or the default image.
    pub fn image(&self, name: Option<&str>) -> Result<hutch_store::Image, StateError> {
        let name = self.image_name(name);
        let name = name.as_str();
        self.store.image(name).map_err(|e| {
            if e.is_not_found() {
                StateError::not_found(Kind::Image, name)
            } else {
                StateError::invalid(Invalid::Request, e.to_string())
            }
        })
    }

    /// The store name `name` stands for: built-ins and aliases of the default resolved,
    /// `None` the default.
    pub fn image_name(&self, name: Option<&str>) -> String {
        let default = self.images.name();
        match name {
            None => default.to_string(),
            Some(n) => crate::default_image::builtin(n, default).unwrap_or_else(|| n.to_string()),
        }
    }

    /// Records the sandbox as `pending` and starts it in the background. A create of the
    /// default image while it is still being built waits for the build, pending.
    pub fn create(self: &Arc<Self>, p: CreateParams) -> Result<SandboxRow, StateError> {
        if let Some(name) = &p.name {
            validate_name(name)?;
        }
        self.limits.host.admit(p.cpus, p.memory_mb)?;
        let image_name = self.image_name(p.image.as_deref());
        let awaits_build = self.images.builds(&image_name) && !self.images.current();
        let image_name = if awaits_build {
            image_name
        } else {
            self.image(Some(&image_name))?.name
        };
        // Taken before the row is written: a create that cannot even wait is refused whole.
        let admitted = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| StateError::CapacityExceeded {
                max_sandboxes: self.limits.max_sandboxes,
                max_queued: self.limits.max_queued,
            })?;
        let id = new_id()?;
        let row = SandboxRow {
            id: id.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            image: image_name.clone(),
            spec: p.spec.clone(),
            status: Status::Pending,
            reason: None,
            error: None,
            created_at: now_ms(),
            started_at: None,
            terminated_at: None,
            timeout_secs: p.timeout_secs.unwrap_or(0),
        };
        let pool = p
            .pool
            .as_ref()
            .map(|(id, g, claimed)| (id.as_str(), *g, *claimed));
        if !self.db.insert_sandbox_in(&row, pool)? {
            return Err(StateError::conflict(
                Conflict::NameTaken,
                format!(
                    "a sandbox named {:?} already exists",
                    p.name.as_deref().unwrap_or_default()
                ),
            ));
        }
        let spec = SandboxSpec {
            id: Some(id),
            image: image_name,
            cpus: p.cpus,
            memory_mb: p.memory_mb,
            env: p.env.clone(),
            network: p.network,
            network_policy: p.network_policy.clone(),
            labels: [(OWNER_LABEL.to_string(), OWNER.to_string())].into(),
            pids_limit: Some(self.limits.pids_limit),
            disk_mb: p.disk_mb,
            ..SandboxSpec::default()
        };
        let this = Arc::clone(self);
        tokio::spawn(async move { this.provision(spec, p, admitted).await });
        Ok(row)
    }

    /// Waits until the sandbox leaves `pending` or `timeout` passes; returns its row then.
    pub async fn settle(&self, id: &str, timeout: Duration) -> Result<SandboxRow, StateError> {
        let mut changes = self.changes.subscribe();
        // A bound past what the clock can represent is no bound.
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let row = self.get_row(id)?;
            if row.status != Status::Pending {
                return Ok(row);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return self.get_row(id);
                },
                _ = sleep_until(deadline) => return self.get_row(id),
            }
        }
    }

    async fn provision(
        self: Arc<Self>,
        spec: SandboxSpec,
        p: CreateParams,
        admitted: OwnedSemaphorePermit,
    ) {
        let id = spec.id.clone().unwrap_or_default();
        let image = spec.image.clone();
        let deadline = p
            .max_pending_secs
            // A bound past what the clock can represent is no bound.
            .and_then(|secs| tokio::time::Instant::now().checked_add(Duration::from_secs(secs)));
        // Waits for room, but gives its queue place back as soon as the create is deleted.
        let mut changes = self.changes.subscribe();
        let acquire = Arc::clone(&self.capacity).acquire_owned();
        tokio::pin!(acquire);
        let permit = loop {
            tokio::select! {
                permit = &mut acquire => break permit.ok(),
                _ = changes.changed() => {
                    if self.is_terminated(&id) {
                        return;
                    }
                }
                _ = sleep_until(deadline) => break None,
            }
        };
        let Some(permit) = permit else {
            self.terminate_row(
                &id,
                Reason::NoCapacity,
                Some("no capacity within max_pending_secs"),
            );
            return;
        };
        if self.is_terminated(&id) {
            return;
        }
        let held = Held {
            _admitted: admitted,
            _capacity: permit,
        };
        if self.images.builds(&image) {
            let ready = tokio::select! {
                ready = self.images.ready() => ready,
                _ = until_terminated(&self, &id) => return,
            };
            if let Err(e) = ready {
                let message = format!("the default image could not be built: {e}");
                self.terminate_row(&id, Reason::StartupFailed, Some(&message));
                return;
            }
        }
        let boot = Arc::clone(&self.boots).acquire_owned().await;
        let created = self.backend.create(spec).await;
        drop(boot);
        let sandbox = match created {
            Ok(sandbox) => sandbox,
            Err(e) => {
                tracing::warn!(%id, error = %e, "sandbox failed to start");
                self.terminate_row(&id, Reason::StartupFailed, Some(&e.to_string()));
                return;
            }
        };
        if let Some(argv) = p.entrypoint.as_ref().filter(|a| !a.is_empty()) {
            let start = StartProcess {
                command: argv[0].clone(),
                args: argv[1..].to_vec(),
                ..StartProcess::default()
            };
            if let Err(e) = sandbox.agent.start(&start).await {
                let message = format!("entrypoint {:?}: {e}", argv[0]);
                tracing::warn!(%id, error = %message, "sandbox failed to start");
                self.terminate_row(&id, Reason::StartupFailed, Some(&message));
                self.remove_runtime(&id).await;
                return;
            }
        }
        self.lock_agents().insert(id.clone(), sandbox.agent);
        self.lock_permits().insert(id.clone(), held);
        self.announce_running(&id, &image);
        match self.db.mark_running(&id, now_ms()) {
            Ok(true) => {
                self.start_activity(&id);
                tracing::info!(%id, "sandbox running");
                self.changed();
            }
            // Deleted while it booted: its observers heard it end before they heard it run.
            _ => {
                self.announce_ended(&id);
                self.remove_runtime(&id).await;
            }
        }
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentClient>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_permits(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.permits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_terminated(&self, id: &str) -> bool {
        self.db
            .sandbox(id)
            .ok()
            .flatten()
            .is_none_or(|r| r.status == Status::Terminated)
    }

    fn terminate_row(&self, id: &str, reason: Reason, error: Option<&str>) -> bool {
        let ended = match self.db.mark_terminated(id, reason, error, now_ms()) {
            Ok(ended) => ended,
            Err(e) => {
                tracing::error!(%id, error = %e, "recording termination");
                false
            }
        };
        self.lock_agents().remove(id);
        self.lock_permits().remove(id);
        self.lock_activity().remove(id);
        self.announce_ended(id);
        self.changed();
        ended
    }

    /// Removes the runtime side of a sandbox whose row is already terminated.
    async fn remove_runtime(&self, id: &str) {
        self.lock_agents().remove(id);
        self.lock_permits().remove(id);
        let backend = Arc::clone(&self.backend);
        let owned = id.to_string();
        // Its own task: a client going away must not leave the teardown half done.
        let result = tokio::spawn(async move { backend.delete(&owned).await }).await;
        match result {
            Ok(Ok(())) | Ok(Err(RuntimeError::NotFound { .. })) => {}
            Ok(Err(e)) => tracing::warn!(%id, error = %e, "removing the sandbox"),
            Err(e) => tracing::warn!(%id, error = %e, "removing the sandbox"),
        }
    }

    fn get_row(&self, id: &str) -> Result<SandboxRow, StateError> {
        self.db
            .sandbox(id)?
            .ok_or_else(|| StateError::not_found(Kind::Sandbox, id))
    }

    /// The sandbox with this id, in whatever namespace it lives.
    pub fn by_id(&self, id: &str) -> Result<Option<SandboxRow>, StateError> {
        Ok(self.db.sandbox(id)?)
    }

    /// A namespace's sandboxes, oldest first, after `after` (`(created_at, id)` of the last
    /// one seen), at most `limit`; live ones only unless `include_terminated`.
    pub fn list(
        &self,
        namespace: &str,
        after: Option<(i64, &str)>,
        limit: usize,
        include_terminated: bool,
    ) -> Result<Vec<SandboxRow>, StateError> {
        Ok(self
            .db
            .list_sandboxes(Some(namespace), after, limit, include_terminated)?)
    }

    /// A page of the namespace's ended sandboxes, newest first (see
    /// [`Db::archived_sandboxes`]).
    pub fn archived(
        &self,
        namespace: &str,
        cursor: Option<(i64, &str)>,
        older: bool,
        limit: usize,
    ) -> Result<(Vec<SandboxRow>, bool), StateError> {
        Ok(self
            .db
            .archived_sandboxes(namespace, cursor, older, limit)?)
    }

    /// A sandbox by id, or by name (the live one with that name, else the newest).
    pub fn get(&self, namespace: &str, id_or_name: &str) -> Result<SandboxRow, StateError> {
        if let Some(row) = self.db.sandbox(id_or_name)?
            && row.namespace == namespace
        {
            return Ok(row);
        }
        self.db
            .sandbox_by_name(namespace, id_or_name)?
            .ok_or_else(|| StateError::not_found(Kind::Sandbox, id_or_name))
    }

    pub async fn delete(
        &self,
        namespace: &str,
        id_or_name: &str,
    ) -> Result<SandboxRow, StateError> {
        let row = self.get(namespace, id_or_name)?;
        let reason = match row.status {
            Status::Pending => Reason::Cancelled,
            _ => Reason::UserRequested,
        };
        self.terminate_row(&row.id, reason, None);
        self.remove_runtime(&row.id).await;
        self.get_row(&row.id)
    }

    /// Changes a running sandbox's cpus and memory with no restart. Recorded in its spec as
    /// `resource_resize` (`generation`, `requested`, `status`: `succeeded` or `failed` with
    /// `error_message`), the SDK's shape; on success `cpus` and `memory_mb` are the new
    /// allocation. Resizes of one sandbox run one at a time.
    pub async fn resize(
        &self,
        namespace: &str,
        id_or_name: &str,
        cpus: Option<f64>,
        memory_mb: Option<u64>,
    ) -> Result<SandboxRow, StateError> {
        let row = self.live(namespace, id_or_name)?;
        if row.status != Status::Running {
            return Err(not_running(&row));
        }
        if let Some(c) = cpus
            && !(c > 0.0 && c.is_finite())
        {
            return Err(StateError::invalid(
                Invalid::Request,
                format!("resources.cpus must be positive, got {c}"),
            ));
        }
        if let Some(m) = memory_mb
            && m < MIN_MEMORY_MB
        {
            return Err(StateError::invalid(
                Invalid::Request,
                format!("resources.memory_mb must be at least {MIN_MEMORY_MB}, got {m}"),
            ));
        }
        self.limits.host.admit(cpus, memory_mb)?;
        let _one_at_a_time = self.resizing.lock().await;
        let row = self.get_row(&row.id)?;
        let generation = row.spec["resource_resize"]["generation"]
            .as_u64()
            .unwrap_or(0)
            + 1;
        let requested = serde_json::json!({
            "cpus": cpus.or(row.spec["cpus"].as_f64()),
            "memory_mb": memory_mb.or(row.spec["memory_mb"].as_u64()),
            "disk_mb": row.spec["disk_mb"].as_u64().unwrap_or(0),
        });
        let backend = Arc::clone(&self.backend);
        let id = row.id.clone();
        // Its own task: a client going away must not leave the resize half done.
        let done = tokio::spawn(async move { backend.resize(&id, cpus, memory_mb).await }).await;
        let outcome = match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut fields = serde_json::json!({
            "resource_resize": {
                "generation": generation,
                "requested": requested,
                "status": if outcome.is_ok() { "succeeded" } else { "failed" },
                "error_message": outcome.as_ref().err(),
            }
        });
        if outcome.is_ok() {
            if let Some(c) = cpus {
                fields["cpus"] = c.into();
            }
            if let Some(m) = memory_mb {
                fields["memory_mb"] = m.into();
            }
        }
        self.db.merge_spec(&row.id, &fields)?;
        self.get_row(&row.id)
    }

    /// Stops a sandbox gracefully: SIGTERM to every process, SIGKILL to what is left after
    /// `grace`, then its end is recorded (`stopped`, with what happened) and its runtime
    /// side removed. A pending sandbox is cancelled, as a delete does.
    pub async fn stop(
        &self,
        namespace: &str,
        id_or_name: &str,
        grace: Duration,
    ) -> Result<SandboxRow, StateError> {
        let row = self.live(namespace, id_or_name)?;
        if row.status == Status::Pending {
            return self.delete(namespace, id_or_name).await;
        }
        self.lock_stopping().insert(row.id.clone());
        let started = std::time::Instant::now();
        let backend = Arc::clone(&self.backend);
        let id = row.id.clone();
        // Its own task: a client going away must not leave the stop half done.
        let stopped = tokio::spawn(async move { backend.stop(&id, grace).await }).await;
        let took = started.elapsed();
        let message = match stopped {
            Ok(Ok(())) => format!(
                "stopped on request: SIGTERM to every process, SIGKILL after {} s if still \
                 running; ended after {:.1} s",
                grace.as_secs(),
                took.as_secs_f64()
            ),
            Ok(Err(e)) => format!("stopped on request; the runtime reported: {e}"),
            Err(e) => format!("stopped on request; the stop task failed: {e}"),
        };
        self.terminate_row(&row.id, Reason::Stopped, Some(&message));
        self.remove_runtime(&row.id).await;
        self.lock_stopping().remove(&row.id);
        self.get_row(&row.id)
    }

    fn lock_stopping(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.stopping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether sandbox `id` is being stopped (its end is expected, not a death).
    pub(crate) fn is_stopping(&self, id: &str) -> bool {
        self.lock_stopping().contains(id)
    }

    fn lock_activity(&self) -> std::sync::MutexGuard<'_, HashMap<String, Activity>> {
        self.activity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting traffic for sandbox `id` (it runs: booted, or adopted).
    pub(crate) fn start_activity(&self, id: &str) {
        let now = std::time::Instant::now();
        self.lock_activity()
            .insert(id.to_string(), Activity { last: now, open: 0 });
    }

    /// Counts as traffic for sandbox `id`'s idle timeout. Only a running sandbox's traffic
    /// is counted: touching one that ended records nothing (the map holds live ones only).
    pub fn touch(&self, id: &str) {
        if let Some(a) = self.lock_activity().get_mut(id) {
            a.last = std::time::Instant::now();
        }
    }

    /// Marks an exchange with sandbox `id` open until the returned guard drops.
    pub fn busy(&self, id: &str) -> Busy {
        if let Some(a) = self.lock_activity().get_mut(id) {
            a.last = std::time::Instant::now();
            a.open += 1;
        }
        Busy {
            activity: Arc::clone(&self.activity),
            id: id.to_string(),
        }
    }

    /// Forgets the traffic of sandboxes that are not in `live` (one that ended while a
    /// request touched it).
    pub(crate) fn forget_activity_except(&self, live: &std::collections::HashSet<&str>) {
        self.lock_activity()
            .retain(|id, _| live.contains(id.as_str()));
    }

    /// The traffic sandbox `id` had, if any since this process started.
    pub(crate) fn activity(&self, id: &str) -> Option<Activity> {
        self.lock_activity().get(id).copied()
    }

    /// Ends sandbox `id`, whatever its namespace, with `reason` (for the services that own
    /// sandboxes of their own: pools), and removes its runtime side.
    pub async fn end(&self, id: &str, reason: Reason) {
        if self.terminate_row(id, reason, None) {
            self.remove_runtime(id).await;
        }
    }

    /// A sandbox that is not terminated, by id or name.
    fn live(&self, namespace: &str, id_or_name: &str) -> Result<SandboxRow, StateError> {
        let row = self.get(namespace, id_or_name)?;
        if row.status == Status::Terminated {
            return Err(StateError::conflict(
                Conflict::SandboxTerminated,
                format!("sandbox {} is terminated", row.id),
            ));
        }
        Ok(row)
    }

    pub fn update(
        &self,
        namespace: &str,
        id_or_name: &str,
        name: Option<&str>,
        timeout_secs: Option<i64>,
    ) -> Result<SandboxRow, StateError> {
        let row = self.live(namespace, id_or_name)?;
        if let Some(name) = name {
            validate_name(name)?;
            if !self.db.set_name(&row.id, Some(name))? {
                return Err(StateError::conflict(
                    Conflict::NameTaken,
                    format!("a sandbox named {name:?} already exists"),
                ));
            }
        }
        if let Some(t) = timeout_secs {
            if t < 0 {
                return Err(StateError::invalid(
                    Invalid::Request,
                    "timeout_secs must not be negative",
                ));
            }
            self.db.set_timeout(&row.id, t)?;
        }
        self.get_row(&row.id)
    }

    /// Replaces the egress policy of a running sandbox with a network: in force for new
    /// connections when this returns, and kept in its row (`spec`: `allow_internet_access`,
    /// `allow_out`, `deny_out`).
    pub async fn set_network(
        &self,
        namespace: &str,
        id_or_name: &str,
        policy: &NetworkPolicy,
    ) -> Result<SandboxRow, StateError> {
        let row = self.live(namespace, id_or_name)?;
        self.backend.attach_network(&row.id, policy).await?;
        let mut spec = row.spec.clone();
        spec["allow_internet_access"] = policy.allow_internet_access.into();
        spec["allow_out"] = policy.allow_out.clone().into();
        spec["deny_out"] = policy.deny_out.clone().into();
        self.db.set_spec(&row.id, &spec)?;
        self.get_row(&row.id)
    }

    /// The connection attempts of a sandbox (live or ended, while its runtime state lasts)
    /// after sequence number `after`.
    pub async fn egress(
        &self,
        namespace: &str,
        id_or_name: &str,
        after: u64,
    ) -> Result<Vec<hutch_runtime::net::audit::EgressEntry>, StateError> {
        let row = self.get(namespace, id_or_name)?;
        Ok(self.backend.egress(&row.id, after).await?)
    }

    /// Sets which ports the proxy routes to and whether they need a key: checked by the
    /// proxy on every request, so a change applies to the next one.
    pub fn set_port_access(
        &self,
        namespace: &str,
        id_or_name: &str,
        exposed_ports: Option<&[u16]>,
        allow_unauthenticated_access: Option<bool>,
    ) -> Result<SandboxRow, StateError> {
        let row = self.live(namespace, id_or_name)?;
        let mut fields = serde_json::Map::new();
        if let Some(ports) = exposed_ports {
            fields.insert("exposed_ports".into(), ports.into());
        }
        if let Some(open) = allow_unauthenticated_access {
            fields.insert("allow_unauthenticated_access".into(), open.into());
        }
        if !fields.is_empty() {
            self.db.merge_spec(&row.id, &fields.into())?;
        }
        self.get_row(&row.id)
    }

    /// Sets how long the sandbox may go without API or proxy traffic (0: forever).
    pub fn set_idle_timeout(
        &self,
        namespace: &str,
        id_or_name: &str,
        secs: u64,
    ) -> Result<(), StateError> {
        let row = self.live(namespace, id_or_name)?;
        self.db
            .merge_spec(&row.id, &serde_json::json!({"idle_timeout_secs": secs}))?;
        self.touch(&row.id);
        Ok(())
    }

    /// Sets the lifetime of sandbox `id`, counted from its start (0: no limit), whatever
    /// its namespace: for the services that run sandboxes of their own (template builds).
    pub fn set_timeout(&self, id: &str, timeout_secs: i64) -> Result<(), StateError> {
        self.db.set_timeout(id, timeout_secs)?;
        Ok(())
    }

    /// Ends sandbox `id` `secs` seconds from now, unless something sets its timeout again.
    pub fn expire_in(&self, id: &str, secs: i64) -> Result<(), StateError> {
        if let Some(row) = self.db.sandbox(id)? {
            let ran = (now_ms() - row.started_at.unwrap_or(row.created_at)) / 1000;
            self.db.set_timeout(id, ran + secs)?;
        }
        Ok(())
    }

    /// The agent of a running sandbox, connecting to it if this process has not yet.
    pub async fn agent(&self, row: &SandboxRow) -> Result<AgentClient, StateError> {
        if let Some(agent) = self.lock_agents().get(&row.id).cloned() {
            return Ok(agent);
        }
        if row.status != Status::Running {
            return Err(not_running(row));
        }
        let sandbox = self.backend.attach(&row.id).await?;
        self.lock_agents()
            .insert(row.id.clone(), sandbox.agent.clone());
        Ok(sandbox.agent)
    }
}

/// Resolves when sandbox `id`'s row is terminated (deleted while it waited).
async fn until_terminated(sandboxes: &Sandboxes, id: &str) {
    let mut changes = sandboxes.changes.subscribe();
    while !sandboxes.is_terminated(id) {
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves at `deadline`, or never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn not_running(row: &SandboxRow) -> StateError {
    StateError::conflict(
        Conflict::SandboxNotRunning,
        format!("sandbox {} is {}", row.id, row.status.as_str()),
    )
}

/// Names: 1-63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit (they
/// are used as DNS labels in `<name>.local`).
pub fn validate_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(StateError::invalid(
            Invalid::SandboxName,
            format!(
                "invalid sandbox name {name:?}: use 1-63 characters of a-z, 0-9 and '-', \
                 not starting or ending with '-'"
            ),
        ))
    }
}

fn new_id() -> Result<String, StateError> {
    Ok(hutch_wire::ids::sandbox_id()?)
}

/// Namespaces: 1-63 characters of `a-z`, `0-9`, `-` and `_`.
pub fn validate_namespace(ns: &str) -> Result<(), StateError> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StateError::invalid(
            Invalid::Namespace,
            format!("invalid namespace {ns:?}: use 1-63 characters of a-z, 0-9, '-' and '_'"),
        ))
    }
}
