//! The sandbox service: lifecycle over the runtime, with SQLite as the record of truth.
//!
//! Invariants:
//! - a row is written (`pending`) before the runtime is asked for anything, and a row is
//!   marked `terminated` before the runtime is told to delete, so a crash between the two
//!   leaves an orphan that reconciliation removes, never a sandbox nobody records;
//! - runtime work runs in tasks of its own, so a client that disconnects mid-request cancels
//!   nothing halfway;
//! - the server only ever removes runtime sandboxes labelled as its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use hutch_runtime::agent::AgentClient;
use hutch_runtime::{Backend, NetworkMode, RuntimeError, SandboxSpec, SandboxState};
use hutch_store::Store;
use hutch_wire::StartProcess;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use crate::admission::{HostCapacity, Limits};
use crate::db::{Db, Reason, SandboxRow, Status};
use crate::error::ApiError;

/// The label that marks a runtime sandbox as this server's.
pub const OWNER_LABEL: &str = "hutch.owner";
const OWNER: &str = "hutch-serve";
/// How often the monitor checks deadlines.
const TICK: Duration = Duration::from_millis(500);
/// How often the monitor asks the runtime which sandboxes still run.
const LIVENESS_EVERY: u32 = 6;
/// How often the monitor purges old terminated rows, and at most how many per pass.
const PURGE_EVERY: u32 = 20;
const PURGE_BATCH: usize = 500;

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
    pub max_pending_secs: Option<u64>,
    /// `KEY=VALUE` entries over the image's environment.
    pub env: Vec<String>,
    /// What the API reports back about the request (resources, policy, flags), as JSON.
    pub spec: serde_json::Value,
}

pub struct Sandboxes {
    db: Arc<Db>,
    backend: Arc<dyn Backend>,
    store: Store,
    default_image: String,
    agents: Mutex<HashMap<String, AgentClient>>,
    permits: Mutex<HashMap<String, Held>>,
    /// Sandboxes running plus creates waiting: `max_sandboxes + max_queued` permits.
    admission: Arc<Semaphore>,
    capacity: Arc<Semaphore>,
    limits: Limits,
    boots: Arc<Semaphore>,
    /// Bumped on every status change; waiters re-read the database.
    changes: watch::Sender<u64>,
    /// Template builds: builder sandboxes get a build channel while they run.
    builds: std::sync::OnceLock<std::sync::Weak<crate::template_builds::Builds>>,
}

impl Sandboxes {
    pub fn new(
        db: Arc<Db>,
        backend: Arc<dyn Backend>,
        store: Store,
        default_image: String,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            backend,
            store,
            default_image,
            agents: Mutex::new(HashMap::new()),
            permits: Mutex::new(HashMap::new()),
            admission: Arc::new(Semaphore::new(
                limits.max_sandboxes.saturating_add(limits.max_queued),
            )),
            capacity: Arc::new(Semaphore::new(limits.max_sandboxes)),
            boots: Arc::new(Semaphore::new(limits.concurrent_boots.max(1))),
            limits,
            changes: watch::channel(0).0,
            builds: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn set_builds(&self, builds: &Arc<crate::template_builds::Builds>) {
        let _ = self.builds.set(Arc::downgrade(builds));
    }

    fn builds(&self) -> Option<Arc<crate::template_builds::Builds>> {
        self.builds.get().and_then(std::sync::Weak::upgrade)
    }

    /// Opens the build channel of a builder sandbox that runs.
    fn running_hook(&self, id: &str, image: &str) {
        if image == crate::default_image::BUILDER_IMAGE
            && let Some(builds) = self.builds()
        {
            builds.listen(id);
        }
    }

    fn gone_hook(&self, id: &str) {
        if let Some(builds) = self.builds() {
            builds.forget(id);
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn default_image(&self) -> &str {
        &self.default_image
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records the sandbox as `pending` and starts it in the background.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The image `name` names in the store, or the default image.
    pub fn image(&self, name: Option<&str>) -> Result<hutch_store::Image, ApiError> {
        let name = name.unwrap_or(&self.default_image);
        self.store.image(name).map_err(|e| {
            if e.is_not_found() {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "image_not_found",
                    format!("image {name:?} not found; import or pull it first"),
                )
            } else {
                ApiError::bad_request(e.to_string())
            }
        })
    }

    pub fn create(self: &Arc<Self>, p: CreateParams) -> Result<SandboxRow, ApiError> {
        if let Some(name) = &p.name {
            validate_name(name)?;
        }
        self.limits.host.admit(p.cpus, p.memory_mb)?;
        let image = self.image(p.image.as_deref())?;
        // Taken before the row is written: a create that cannot even wait is refused whole.
        let admitted = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_pending",
                    format!(
                        "{} sandboxes run and {} creates already wait for room; retry later",
                        self.limits.max_sandboxes, self.limits.max_queued
                    ),
                )
            })?;
        let id = new_id()?;
        let row = SandboxRow {
            id: id.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            image: image.name.clone(),
            spec: p.spec.clone(),
            status: Status::Pending,
            reason: None,
            error: None,
            created_at: now_ms(),
            started_at: None,
            terminated_at: None,
            timeout_secs: p.timeout_secs.unwrap_or(0),
        };
        if !self.db.insert_sandbox(&row)? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "name_taken",
                format!(
                    "a sandbox named {:?} already exists",
                    p.name.as_deref().unwrap_or_default()
                ),
            ));
        }
        let spec = SandboxSpec {
            id: Some(id),
            image: image.name,
            cpus: p.cpus,
            memory_mb: p.memory_mb,
            env: p.env.clone(),
            network: p.network,
            labels: [(OWNER_LABEL.to_string(), OWNER.to_string())].into(),
            pids_limit: Some(self.limits.pids_limit),
            ..SandboxSpec::default()
        };
        let this = Arc::clone(self);
        tokio::spawn(async move { this.provision(spec, p, admitted).await });
        Ok(row)
    }

    /// Waits until the sandbox leaves `pending` or `timeout` passes; returns its row then.
    pub async fn settle(&self, id: &str, timeout: Duration) -> Result<SandboxRow, ApiError> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = self.get_row(id)?;
            if row.status != Status::Pending {
                return Ok(row);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.get_row(id),
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
            .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
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
                self.terminate_row(&id, Reason::StartupFailed, Some(&message));
                self.remove_runtime(&id).await;
                return;
            }
        }
        self.lock_agents().insert(id.clone(), sandbox.agent);
        self.lock_permits().insert(id.clone(), held);
        self.running_hook(&id, &image);
        match self.db.mark_running(&id, now_ms()) {
            Ok(true) => {
                tracing::info!(%id, "sandbox running");
                self.changed();
            }
            // Deleted while it booted.
            _ => self.remove_runtime(&id).await,
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
        self.gone_hook(id);
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

    fn get_row(&self, id: &str) -> Result<SandboxRow, ApiError> {
        self.db
            .sandbox(id)?
            .ok_or_else(|| ApiError::sandbox_not_found(id))
    }

    /// A sandbox by id, or by name (the live one with that name, else the newest).
    pub fn get(&self, namespace: &str, id_or_name: &str) -> Result<SandboxRow, ApiError> {
        if let Some(row) = self.db.sandbox(id_or_name)?
            && row.namespace == namespace
        {
            return Ok(row);
        }
        self.db
            .sandbox_by_name(namespace, id_or_name)?
            .ok_or_else(|| ApiError::sandbox_not_found(id_or_name))
    }

    pub async fn delete(&self, namespace: &str, id_or_name: &str) -> Result<SandboxRow, ApiError> {
        let row = self.get(namespace, id_or_name)?;
        let reason = match row.status {
            Status::Pending => Reason::Cancelled,
            _ => Reason::UserRequested,
        };
        self.terminate_row(&row.id, reason, None);
        self.remove_runtime(&row.id).await;
        self.get_row(&row.id)
    }

    pub fn update(
        &self,
        namespace: &str,
        id_or_name: &str,
        name: Option<&str>,
        timeout_secs: Option<i64>,
    ) -> Result<SandboxRow, ApiError> {
        let row = self.get(namespace, id_or_name)?;
        if row.status == Status::Terminated {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "sandbox_terminated",
                format!("sandbox {} is terminated", row.id),
            ));
        }
        if let Some(name) = name {
            validate_name(name)?;
            if !self.db.set_name(&row.id, Some(name))? {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "name_taken",
                    format!("a sandbox named {name:?} already exists"),
                ));
            }
        }
        if let Some(t) = timeout_secs {
            if t < 0 {
                return Err(ApiError::bad_request("timeout_secs must not be negative"));
            }
            self.db.set_timeout(&row.id, t)?;
        }
        self.get_row(&row.id)
    }

    /// The agent of a running sandbox, connecting to it if this process has not yet.
    pub async fn agent(&self, row: &SandboxRow) -> Result<AgentClient, ApiError> {
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

    /// Settles the database against the runtime after a start: adopts what runs, ends what
    /// died, removes this server's orphans. Returns (adopted, ended, orphans removed).
    pub async fn reconcile(self: &Arc<Self>) -> Result<(usize, usize, usize), ApiError> {
        let runtime: HashMap<String, hutch_runtime::SandboxInfo> = self
            .backend
            .list()
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let live = self.db.live_sandboxes()?;
        let mut adopt = Vec::new();
        let mut ended = 0;
        for row in &live {
            match runtime.get(&row.id).map(|s| s.state) {
                Some(SandboxState::Running) => adopt.push(row.clone()),
                _ => {
                    let reason = if row.status == Status::Pending {
                        Reason::StartupFailed
                    } else {
                        Reason::Lost
                    };
                    self.terminate_row(&row.id, reason, Some("not running after a server restart"));
                    if runtime.contains_key(&row.id) {
                        self.remove_runtime(&row.id).await;
                    }
                    ended += 1;
                }
            }
        }
        let attaches = adopt.into_iter().map(|row| {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                match this.backend.attach(&row.id).await {
                    Ok(sandbox) => {
                        this.lock_agents().insert(row.id.clone(), sandbox.agent);
                        this.running_hook(&row.id, &row.image);
                        if let (Ok(admitted), Ok(capacity)) = (
                            Arc::clone(&this.admission).try_acquire_owned(),
                            Arc::clone(&this.capacity).try_acquire_owned(),
                        ) {
                            let held = Held {
                                _admitted: admitted,
                                _capacity: capacity,
                            };
                            this.lock_permits().insert(row.id.clone(), held);
                        }
                        if row.status == Status::Pending {
                            let _ = this.db.mark_running(&row.id, now_ms());
                        }
                        true
                    }
                    Err(e) => {
                        tracing::warn!(id = %row.id, error = %e, "could not adopt sandbox");
                        this.terminate_row(&row.id, Reason::Lost, Some(&e.to_string()));
                        this.remove_runtime(&row.id).await;
                        false
                    }
                }
            })
        });
        let mut adopted = 0;
        for task in attaches.collect::<Vec<_>>() {
            match task.await {
                Ok(true) => adopted += 1,
                _ => ended += 1,
            }
        }
        let live_ids: std::collections::HashSet<String> = self
            .db
            .live_sandboxes()?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut orphans = 0;
        for (id, info) in &runtime {
            let ours = info.spec.labels.get(OWNER_LABEL).map(String::as_str) == Some(OWNER);
            if ours && !live_ids.contains(id) {
                tracing::info!(%id, "removing orphaned sandbox");
                self.remove_runtime(id).await;
                orphans += 1;
            }
        }
        self.changed();
        Ok((adopted, ended, orphans))
    }

    /// Enforces timeouts and notices sandboxes that died on their own. Runs forever.
    pub async fn monitor(self: Arc<Self>) {
        let mut ticks = 0u32;
        loop {
            tokio::time::sleep(TICK).await;
            ticks = ticks.wrapping_add(1);
            let Ok(live) = self.db.live_sandboxes() else {
                continue;
            };
            let now = now_ms();
            for row in &live {
                if row.deadline_ms().is_some_and(|d| d <= now) {
                    tracing::info!(id = %row.id, "sandbox timed out");
                    if self.terminate_row(&row.id, Reason::Timeout, None) {
                        let this = Arc::clone(&self);
                        let id = row.id.clone();
                        tokio::spawn(async move { this.remove_runtime(&id).await });
                    }
                }
            }
            if ticks.is_multiple_of(PURGE_EVERY) {
                self.purge(now);
            }
            if !ticks.is_multiple_of(LIVENESS_EVERY) {
                continue;
            }
            let Ok(runtime) = self.backend.list().await else {
                continue;
            };
            let running: std::collections::HashSet<&str> = runtime
                .iter()
                .filter(|s| s.state == SandboxState::Running)
                .map(|s| s.id.as_str())
                .collect();
            for row in live.iter().filter(|r| r.status == Status::Running) {
                // Re-read: it may have ended since the list above.
                let still_running = self
                    .db
                    .sandbox(&row.id)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.status == Status::Running);
                // Confirmed by a second look a moment later: one scan can catch runsc in the
                // middle of rewriting a state file, and a live sandbox must not be ended for it.
                let dead = still_running && !running.contains(row.id.as_str()) && {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    !matches!(
                        self.backend.inspect(&row.id).await,
                        Ok(info) if info.state == SandboxState::Running
                    )
                };
                if dead {
                    tracing::warn!(id = %row.id, "sandbox died");
                    self.terminate_row(
                        &row.id,
                        Reason::Lost,
                        Some("the sandbox exited on its own"),
                    );
                    let this = Arc::clone(&self);
                    let id = row.id.clone();
                    tokio::spawn(async move { this.remove_runtime(&id).await });
                }
            }
        }
    }
}

impl Sandboxes {
    /// Forgets sandboxes that ended more than the retention ago, a batch at a time.
    fn purge(&self, now: i64) {
        let retention = i64::try_from(self.limits.retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .db
            .purge_terminated(now.saturating_sub(retention), PURGE_BATCH)
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged terminated sandboxes"),
            Err(e) => tracing::warn!(error = %e, "purging terminated sandboxes"),
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

fn not_running(row: &SandboxRow) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "sandbox_not_running",
        format!("sandbox {} is {}", row.id, row.status.as_str()),
    )
}

/// Names: 1-63 characters of `a-z`, `0-9` and `-`, starting with a letter or digit (they
/// are used as DNS labels in `<name>.local`).
pub fn validate_name(name: &str) -> Result<(), ApiError> {
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
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!(
                "invalid sandbox name {name:?}: use 1-63 characters of a-z, 0-9 and '-', \
                 not starting or ending with '-'"
            ),
        ))
    }
}

fn new_id() -> Result<String, ApiError> {
    random_hex(10)
}

/// `len` random bytes, hex-encoded (ids, key secrets).
pub(crate) fn random_hex(len: usize) -> Result<String, ApiError> {
    let mut bytes = vec![0u8; len];
    let file = std::fs::File::open("/dev/urandom").map_err(ApiError::internal)?;
    std::io::Read::read_exact(&mut &file, &mut bytes).map_err(ApiError::internal)?;
    Ok(hex::encode(bytes))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
