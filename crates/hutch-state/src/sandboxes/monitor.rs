//! Settling rows against the runtime: [`Sandboxes::reconcile`] after a start adopts what
//! runs, ends what died and removes this server's orphans; [`Sandboxes::monitor`] enforces
//! timeouts, notices sandboxes that died on their own and purges old rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hutch_runtime::SandboxState;

use super::{Held, OWNER, OWNER_LABEL, Sandboxes};
use crate::db::{Reason, Status};
use crate::error::StateError;
use crate::now_ms;

/// How often the monitor checks deadlines.
const TICK: Duration = Duration::from_millis(500);
/// How often the monitor asks the runtime which sandboxes still run.
const LIVENESS_EVERY: u32 = 6;
/// How often the monitor purges old terminated rows, and at most how many per pass.
const PURGE_EVERY: u32 = 20;
const PURGE_BATCH: usize = 500;
/// The most ended sandboxes kept (for `archived-sandboxes` and `get`), whatever their age.
pub const MAX_ARCHIVED: usize = 10_000;

impl Sandboxes {
    /// Settles the database against the runtime after a start: adopts what runs, ends what
    /// died, removes this server's orphans. Returns (adopted, ended, orphans removed).
    pub async fn reconcile(self: &Arc<Self>) -> Result<(usize, usize, usize), StateError> {
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
                        this.announce_running(&row.id, &row.image);
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
                if self.idle_too_long(row) {
                    tracing::info!(id = %row.id, "sandbox idle past its idle_timeout_secs");
                    if self.terminate_row(&row.id, Reason::IdleTimeout, None) {
                        let this = Arc::clone(&self);
                        let id = row.id.clone();
                        tokio::spawn(async move { this.remove_runtime(&id).await });
                    }
                    continue;
                }
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
                let ids: std::collections::HashSet<&str> =
                    live.iter().map(|r| r.id.as_str()).collect();
                self.forget_activity_except(&ids);
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
                let dead = still_running
                    && !running.contains(row.id.as_str())
                    && !self.is_stopping(&row.id)
                    && {
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

    /// Whether a running sandbox with an `idle_timeout_secs` had no API or proxy traffic
    /// (and no exchange open) for that long. Its start counts as traffic, and so does this
    /// process's start for a sandbox it adopted.
    fn idle_too_long(&self, row: &crate::db::SandboxRow) -> bool {
        let idle = row.spec["idle_timeout_secs"].as_u64().unwrap_or(0);
        if idle == 0 || row.status != Status::Running {
            return false;
        }
        match self.activity(&row.id) {
            Some(a) => a.open == 0 && a.last.elapsed() >= Duration::from_secs(idle),
            None => {
                // First look since this process adopted it.
                self.start_activity(&row.id);
                false
            }
        }
    }

    /// Forgets sandboxes that ended more than the retention ago, and the oldest ended
    /// ones past [`MAX_ARCHIVED`], a batch at a time.
    fn purge(&self, now: i64) {
        match self.db.prune_terminated(MAX_ARCHIVED, PURGE_BATCH) {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned the oldest ended sandboxes"),
            Err(e) => tracing::warn!(error = %e, "pruning ended sandboxes"),
        }
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
