//! Warm pools: sandboxes booted ahead of demand, claimed at once.
//!
//! A pool is a row (its configuration: the create body of its sandboxes, `warm_containers`
//! and `max_containers`) and its members are ordinary sandboxes with a membership row
//! (`db/pools.rs`). Unclaimed members are invisible to clients. A claim marks the oldest warm
//! member claimed in one statement (no two claims get the same sandbox) and hands it over;
//! with none warm it creates one, within `max_containers`.
//!
//! The replenisher (one task) keeps every pool at its `warm_containers`: it wakes on a
//! claim, a pool change, any sandbox status change, and every second, and then
//! - removes unclaimed members of an older generation (an update evicts and refills),
//! - creates what is missing, never past `max_containers` in all (warm, booting, claimed and
//!   still-evicting members count).
//!
//! Pools and memberships live in SQLite, so after a restart the warm sandboxes the
//! reconcile adopted are the pool's again, and nothing is created twice.
//!
//! How a pool's configuration becomes a sandbox is the server's to say (the same validation
//! and image resolution as a create): [`PoolSandboxes`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::db::pools::count;
use crate::db::{Db, PoolCounts, PoolMember, PoolRow, Reason, SandboxRow};
use crate::error::{Conflict, Invalid, Kind, StateError};
use crate::now_ms;
use crate::sandboxes::{CreateParams, Sandboxes};

/// The most pools, and the most sandboxes one pool keeps.
pub const MAX_POOLS: usize = 256;
pub const MAX_POOL_CONTAINERS: i64 = 1024;
/// How often the replenisher looks even when nothing woke it.
const TICK: Duration = Duration::from_secs(1);
/// How long the replenisher waits before retrying a pool whose sandboxes fail to be made.
const FAILURE_BACKOFF_MS: i64 = 5_000;

/// Makes a pool's configuration into a sandbox's create parameters.
pub trait PoolSandboxes: Send + Sync {
    /// The parameters of one sandbox of a pool of `namespace` with `config` (the create body
    /// as the pool stores it), validated as a create is; the error says why not.
    fn params<'a>(
        &'a self,
        namespace: &'a str,
        config: &'a serde_json::Value,
    ) -> Pin<Box<dyn Future<Output = Result<CreateParams, String>> + Send + 'a>>;

    /// The store name a pool with `config` makes its sandboxes from now, resolved without
    /// pulling anything (the replenisher asks every second); `None` when it cannot tell.
    fn image(&self, config: &serde_json::Value) -> Option<String>;
}

/// What a claim returns: the sandbox, and whether it was already booted.
pub struct Claimed {
    pub row: SandboxRow,
    pub warm: bool,
}

pub struct Pools {
    db: Arc<Db>,
    sandboxes: Arc<Sandboxes>,
    factory: OnceLock<Weak<dyn PoolSandboxes>>,
    wake: Notify,
    /// Per pool: the last failure to make one of its sandboxes, and when.
    failures: Mutex<HashMap<String, (i64, String)>>,
}

/// `warm_containers` and `max_containers` of a pool configuration (the SDK's fields).
pub fn targets(config: &serde_json::Value) -> (usize, usize) {
    let field = |k: &str| config.get(k).and_then(|v| v.as_i64());
    let max = field("max_containers").unwrap_or(MAX_POOL_CONTAINERS);
    let warm = field("warm_containers").unwrap_or(0).min(max);
    (warm.max(0) as usize, max.max(0) as usize)
}

/// Checks the pool-only fields of a configuration.
pub fn validate(config: &serde_json::Value) -> Result<(), StateError> {
    let bad = |m: String| StateError::invalid(Invalid::Request, m);
    for key in ["max_containers", "warm_containers"] {
        match config.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) if (0..=MAX_POOL_CONTAINERS).contains(&n) => {}
                _ => {
                    return Err(bad(format!(
                        "{key} must be 0 to {MAX_POOL_CONTAINERS}, got {v}"
                    )));
                }
            },
        }
    }
    let (warm, max) = (
        config.get("warm_containers").and_then(|v| v.as_i64()),
        config.get("max_containers").and_then(|v| v.as_i64()),
    );
    if let (Some(warm), Some(max)) = (warm, max)
        && warm > max
    {
        return Err(bad(format!(
            "warm_containers ({warm}) must not exceed max_containers ({max})"
        )));
    }
    Ok(())
}

impl Pools {
    pub fn new(db: Arc<Db>, sandboxes: Arc<Sandboxes>) -> Arc<Self> {
        Arc::new(Self {
            db,
            sandboxes,
            factory: OnceLock::new(),
            wake: Notify::new(),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the replenisher, making sandboxes with `factory` for as long as it lives.
    pub fn start(self: &Arc<Self>, factory: Weak<dyn PoolSandboxes>) {
        if self.factory.set(factory).is_ok() {
            tokio::spawn(Arc::clone(self).replenish_forever());
        }
    }

    fn factory(&self) -> Option<Arc<dyn PoolSandboxes>> {
        self.factory.get().and_then(Weak::upgrade)
    }

    pub fn create(
        &self,
        namespace: &str,
        config: serde_json::Value,
    ) -> Result<PoolRow, StateError> {
        validate(&config)?;
        if self.db.pools(None)?.len() >= MAX_POOLS {
            return Err(StateError::invalid(
                Invalid::Request,
                format!("this server keeps at most {MAX_POOLS} pools"),
            ));
        }
        let now = now_ms();
        let row = PoolRow {
            id: format!("pool_{}", &hutch_wire::ids::sandbox_id()?),
            namespace: namespace.to_string(),
            config,
            generation: 1,
            created_at: now,
            updated_at: now,
        };
        self.db.insert_pool(&row)?;
        self.wake.notify_one();
        Ok(row)
    }

    pub fn get(&self, namespace: &str, id: &str) -> Result<PoolRow, StateError> {
        match self.db.pool(id)? {
            Some(row) if row.namespace == namespace => Ok(row),
            _ => Err(StateError::not_found(Kind::Pool, id)),
        }
    }

    pub fn list(&self, namespace: &str) -> Result<Vec<PoolRow>, StateError> {
        Ok(self.db.pools(Some(namespace))?)
    }

    /// The pool's live members, and their counts.
    pub fn members(&self, pool: &PoolRow) -> Result<(Vec<PoolMember>, PoolCounts), StateError> {
        let members = self.db.pool_members(&pool.id)?;
        let counts = count(&members, pool.generation);
        Ok((members, counts))
    }

    /// The last failure to make a sandbox for the pool, if the last attempt failed.
    pub fn failure(&self, pool_id: &str) -> Option<String> {
        self.lock_failures().get(pool_id).map(|(_, e)| e.clone())
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, String)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the configuration. Unclaimed sandboxes of the old one are evicted and
    /// replaced; claimed ones keep what they booted with.
    pub fn update(
        &self,
        namespace: &str,
        id: &str,
        config: serde_json::Value,
    ) -> Result<PoolRow, StateError> {
        validate(&config)?;
        let current = self.get(namespace, id)?;
        if current.config != config {
            self.db.update_pool(id, &config, now_ms())?;
            self.lock_failures().remove(id);
            self.wake.notify_one();
        }
        self.get(namespace, id)
    }

    /// Deletes the pool and its warm sandboxes; refused while claimed ones run.
    pub async fn delete(&self, namespace: &str, id: &str) -> Result<PoolRow, StateError> {
        let pool = self.get(namespace, id)?;
        let (members, counts) = self.members(&pool)?;
        if counts.claimed > 0 {
            return Err(StateError::conflict(
                Conflict::PoolInUse,
                format!(
                    "pool {id} has {} claimed sandbox(es) still running; delete them first",
                    counts.claimed
                ),
            ));
        }
        self.db.delete_pool(id)?;
        self.lock_failures().remove(id);
        let drains = members.into_iter().filter(|m| !m.claimed).map(|m| {
            let sandboxes = Arc::clone(&self.sandboxes);
            async move { sandboxes.end(&m.sandbox_id, Reason::UserRequested).await }
        });
        futures_join_all(drains).await;
        Ok(pool)
    }

    /// Takes a warm sandbox of the pool, or, with none warm, creates one (within
    /// `max_containers`) and waits up to `wait` for it to run.
    pub async fn claim(
        &self,
        namespace: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Claimed, StateError> {
        let pool = self.get(namespace, id)?;
        let timeout = pool
            .config
            .get("timeout_secs")
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
            .max(0);
        if let Some(sandbox) = self
            .db
            .claim_warm(&pool.id, pool.generation, now_ms(), timeout)?
        {
            self.wake.notify_one();
            let row = self
                .db
                .sandbox(&sandbox)?
                .ok_or_else(|| StateError::not_found(Kind::Sandbox, &sandbox))?;
            return Ok(Claimed { row, warm: true });
        }
        let (_, counts) = self.members(&pool)?;
        let (_, max) = targets(&pool.config);
        if counts.total() >= max {
            return Err(StateError::PoolExhausted { pool: pool.id, max });
        }
        let mut params = self.params(&pool).await?;
        params.spec["pool_id"] = pool.id.clone().into();
        params.timeout_secs = Some(timeout);
        params.pool = Some((pool.id.clone(), pool.generation, true));
        let row = self.sandboxes.create(params)?;
        self.wake.notify_one();
        let row = self.sandboxes.settle(&row.id, wait).await?;
        Ok(Claimed { row, warm: false })
    }

    async fn params(&self, pool: &PoolRow) -> Result<CreateParams, StateError> {
        let factory = self.factory().ok_or_else(|| {
            StateError::invalid(Invalid::Request, "this server does not run pools")
        })?;
        let mut params = factory
            .params(&pool.namespace, &pool.config)
            .await
            .map_err(|e| StateError::invalid(Invalid::Request, e))?;
        params.pool = Some((pool.id.clone(), pool.generation, false));
        params.name = None;
        Ok(params)
    }

    async fn replenish_forever(self: Arc<Self>) {
        let mut changes = self.sandboxes.watch_changes();
        loop {
            if let Err(e) = self.replenish().await {
                tracing::warn!(error = %e, "replenishing pools");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            if self.factory().is_none() {
                return;
            }
        }
    }

    /// One pass over every pool: evict stale members, create missing ones; and end the warm
    /// sandboxes of pools that are gone.
    async fn replenish(&self) -> Result<(), StateError> {
        for orphan in self.db.orphan_members()? {
            tracing::info!(sandbox = %orphan, "ending a warm sandbox of a deleted pool");
            let sandboxes = Arc::clone(&self.sandboxes);
            tokio::spawn(async move { sandboxes.end(&orphan, Reason::UserRequested).await });
        }
        for pool in self.db.pools(None)? {
            let (members, counts) = self.members(&pool)?;
            if counts.warm > 0 {
                // Its sandboxes boot again: an old failure no longer describes it.
                self.lock_failures().remove(&pool.id);
            }
            // What the pool's image names now: a template registered again under its name
            // is a new image, and warm sandboxes of the old one go (and are made again). A
            // sandbox's row holds the store's own name of its image, so one lookup (of the
            // pool's image, once a pass) tells; when it does not resolve, nothing is evicted.
            let image = self
                .factory()
                .and_then(|f| f.image(&pool.config))
                .and_then(|name| self.sandboxes.image(Some(&name)).ok())
                .map(|i| i.name);
            let outdated = |m: &PoolMember| {
                m.generation != pool.generation || image.as_ref().is_some_and(|now| *now != m.image)
            };
            for stale in members.iter().filter(|m| !m.claimed && outdated(m)) {
                let sandboxes = Arc::clone(&self.sandboxes);
                let id = stale.sandbox_id.clone();
                tokio::spawn(async move { sandboxes.end(&id, Reason::UserRequested).await });
            }
            let (warm, max) = targets(&pool.config);
            let missing = warm
                .saturating_sub(counts.warm + counts.booting)
                .min(max.saturating_sub(counts.total()));
            if missing == 0 {
                continue;
            }
            if let Some((at, _)) = self.lock_failures().get(&pool.id)
                && now_ms() - at < FAILURE_BACKOFF_MS
            {
                continue;
            }
            // A sandbox of the pool that failed to boot (an entrypoint that does not exist,
            // an image that cannot run) would fail again: back off instead of booting
            // sandboxes in a loop.
            if let Some(error) = self
                .db
                .pool_startup_failure(&pool.id, now_ms() - FAILURE_BACKOFF_MS)?
            {
                tracing::warn!(pool = %pool.id, %error, "a warm sandbox failed to start");
                self.lock_failures()
                    .insert(pool.id.clone(), (now_ms(), error));
                continue;
            }
            // Made once a pass: every sandbox of the pool has the same parameters.
            let params = self.params(&pool).await;
            for _ in 0..missing {
                let made = match &params {
                    Ok(params) => self.sandboxes.create(params.clone()).map(|_| ()),
                    Err(e) => Err(StateError::invalid(Invalid::Request, e.to_string())),
                };
                match made {
                    Ok(()) => {}
                    // Room for no more now: the next pass tries again.
                    Err(StateError::CapacityExceeded { .. }) => break,
                    Err(e) => {
                        tracing::warn!(pool = %pool.id, error = %e, "making a warm sandbox");
                        self.lock_failures()
                            .insert(pool.id.clone(), (now_ms(), e.to_string()));
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Awaits every future (they run concurrently).
async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        let _ = task.await;
    }
}
