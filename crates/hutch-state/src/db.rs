//! The server's embedded state: one SQLite database (WAL) in the state directory.
//!
//! Every fact the server must not lose lives here before it is acted on: a sandbox row is
//! written `pending` before the runtime is asked to create it, so a crash at any point leaves
//! a row that reconciliation can settle against what the runtime reports.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

pub mod pools;
pub use pools::{PoolCounts, PoolMember, PoolRow};
pub mod templates;
pub use templates::{BuildRow, BuildState, NodeKind, TemplateRow};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database {path}: schema version {found} is newer than this hutch ({known})")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("state database: corrupt row for sandbox {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("state database: {0}: {1}")]
    Io(String, #[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, DbError>;

/// Schema migrations, applied in order; `PRAGMA user_version` is the count applied.
const MIGRATIONS: &[&str] = &[
    // 1: sandboxes and API keys.
    "CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        name TEXT,
        image TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        error TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        terminated_at INTEGER,
        timeout_secs INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes(namespace, name)
        WHERE name IS NOT NULL AND status != 'terminated';
    CREATE INDEX sandboxes_by_created ON sandboxes(namespace, created_at, id);
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER
    );",
    // 2: templates and their builds.
    "CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        public INTEGER NOT NULL DEFAULT 0,
        node_kind TEXT NOT NULL CHECK (node_kind IN ('base', 'diff')),
        parent_id TEXT REFERENCES templates(id),
        image TEXT NOT NULL,
        image_id TEXT NOT NULL,
        snapshot_id TEXT NOT NULL,
        snapshot_uri TEXT NOT NULL,
        snapshot_format TEXT NOT NULL,
        snapshot_size_bytes INTEGER NOT NULL,
        rootfs_disk_bytes INTEGER NOT NULL,
        own_bytes INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL,
        dockerfile TEXT NOT NULL DEFAULT '',
        build_id TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        CHECK ((node_kind = 'diff') = (parent_id IS NOT NULL))
    );
    CREATE INDEX templates_by_parent ON templates(parent_id);
    CREATE TABLE template_builds (
        id TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL,
        name TEXT NOT NULL,
        dockerfile TEXT NOT NULL,
        base_image TEXT NOT NULL,
        public INTEGER NOT NULL,
        node_kind TEXT NOT NULL,
        parent_id TEXT,
        template_id TEXT NOT NULL,
        snapshot_id TEXT NOT NULL,
        rootfs_disk_bytes INTEGER NOT NULL,
        state TEXT NOT NULL,
        builder_sandbox TEXT,
        image TEXT,
        image_id TEXT,
        snapshot_size_bytes INTEGER,
        own_bytes INTEGER,
        total_bytes INTEGER,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 3: key scopes. A key with a namespace reaches only that namespace; NULL is the admin
    // scope, which keys made before scopes existed keep, so nothing they did stops working.
    "ALTER TABLE api_keys ADD COLUMN namespace TEXT;",
    // 4: warm pools. A pool's sandboxes are ordinary sandbox rows plus a membership row;
    // unclaimed members are the pool's warm (or booting) sandboxes and no client sees them.
    "CREATE TABLE pools (
        id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        config TEXT NOT NULL,
        generation INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE pool_members (
        sandbox_id TEXT PRIMARY KEY,
        pool_id TEXT NOT NULL,
        generation INTEGER NOT NULL,
        claimed_at INTEGER
    );
    CREATE INDEX pool_members_by_pool ON pool_members(pool_id, claimed_at);",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Terminated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Terminated => "terminated",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "terminated" => Self::Terminated,
            _ => return None,
        })
    }
}

/// Why a sandbox ended; the strings are the SDK's `outcome` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Deleted by a user.
    UserRequested,
    /// Deleted by a user while still pending.
    Cancelled,
    /// `timeout_secs` ran out.
    Timeout,
    /// The runtime failed to start it.
    StartupFailed,
    /// No capacity within `max_pending_secs`.
    NoCapacity,
    /// It died while nobody asked (runtime crash, host reboot, found dead after a restart).
    Lost,
    /// Stopped by a user: SIGTERM to every process, SIGKILL after the grace period.
    Stopped,
    /// No API or proxy traffic for its `idle_timeout_secs`.
    IdleTimeout,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRequested => "user_requested",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::StartupFailed => "startup_failed",
            Self::NoCapacity => "no_capacity",
            Self::Lost => "lost",
            Self::Stopped => "stopped",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

/// One sandbox as the server records it.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxRow {
    pub id: String,
    pub namespace: String,
    pub name: Option<String>,
    pub image: String,
    /// The create request as accepted, normalized (JSON).
    pub spec: serde_json::Value,
    pub status: Status,
    pub reason: Option<String>,
    pub error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub terminated_at: Option<i64>,
    /// 0 = no timeout.
    pub timeout_secs: i64,
}

impl SandboxRow {
    /// When `timeout_secs` runs out, in ms since the epoch, counted from the start.
    pub fn deadline_ms(&self) -> Option<i64> {
        (self.timeout_secs > 0 && self.status != Status::Terminated).then(|| {
            let start = self.started_at.unwrap_or(self.created_at);
            start.saturating_add(self.timeout_secs.saturating_mul(1000))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    /// The one namespace the key reaches; `None` is the admin scope (every namespace, and
    /// the operations on what all namespaces share, such as deleting templates).
    pub namespace: Option<String>,
}

impl ApiKey {
    pub fn is_admin(&self) -> bool {
        self.namespace.is_none()
    }

    /// Whether the key may act in namespace `ns`.
    pub fn covers(&self, ns: &str) -> bool {
        self.namespace.as_deref().is_none_or(|own| own == ns)
    }
}

pub struct Db {
    conn: Mutex<Connection>,
}

const SANDBOX_COLUMNS: &str = "id, namespace, name, image, spec, status, reason, error, \
                               created_at, started_at, terminated_at, timeout_secs";

impl Db {
    pub fn open(path: &Path) -> Result<Self> {
        // Keys' hashes and every sandbox's spec (env included) live here: owner only. SQLite
        // gives its -wal and -shm files the database's mode.
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| DbError::Io(format!("creating {}", path.display()), e))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| DbError::Io(format!("making {} private", path.display()), e))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let db = Self {
            conn: Mutex::new(conn),
        };
        db.migrate(path)?;
        Ok(db)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic).
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn migrate(&self, path: &Path) -> Result<()> {
        let mut conn = self.conn();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(DbError::TooNew {
                path: path.display().to_string(),
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Inserts a new sandbox; `Ok(false)` when its name is taken by a live sandbox.
    pub fn insert_sandbox(&self, row: &SandboxRow) -> Result<bool> {
        self.insert_sandbox_in(row, None)
    }

    /// [`Db::insert_sandbox`], as a member of pool `(id, generation, claimed)` when given, in
    /// one transaction: no sandbox of a pool is ever seen without its membership, and one a
    /// claim makes is claimed from its first row (a crash cannot leave it warm).
    pub fn insert_sandbox_in(
        &self,
        row: &SandboxRow,
        pool: Option<(&str, i64, bool)>,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let result = tx.execute(
            &format!("INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
            params![
                row.id,
                row.namespace,
                row.name,
                row.image,
                row.spec.to_string(),
                row.status.as_str(),
                row.reason,
                row.error,
                row.created_at,
                row.started_at,
                row.terminated_at,
                row.timeout_secs,
            ],
        );
        if result.is_ok()
            && let Some((pool, generation, claimed)) = pool
        {
            tx.execute(
                "INSERT INTO pool_members (sandbox_id, pool_id, generation, claimed_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![row.id, pool, generation, claimed.then_some(row.created_at)],
            )?;
        }
        match result {
            Ok(_) => {
                tx.commit()?;
                Ok(true)
            }
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"
        ))?;
        let row = stmt.query_row([id], raw_row).optional()?;
        row.map(RawRow::parse).transpose()
    }

    /// The live sandbox called `name`, or else the newest one that had the name.
    pub fn sandbox_by_name(&self, namespace: &str, name: &str) -> Result<Option<SandboxRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE namespace = ?1 AND name = ?2
             ORDER BY (status = 'terminated'), created_at DESC LIMIT 1"
        ))?;
        let row = stmt.query_row([namespace, name], raw_row).optional()?;
        row.map(RawRow::parse).transpose()
    }

    /// A page of sandboxes, oldest first, after the cursor `(created_at, id)`.
    pub fn list_sandboxes(
        &self,
        namespace: Option<&str>,
        after: Option<(i64, &str)>,
        limit: usize,
        include_terminated: bool,
    ) -> Result<Vec<SandboxRow>> {
        let conn = self.conn();
        let (after_ts, after_id) = after.unwrap_or((i64::MIN, ""));
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes
             WHERE (?1 IS NULL OR namespace = ?1)
               AND (created_at > ?2 OR (created_at = ?2 AND id > ?3))
               AND (?4 OR status != 'terminated')
               AND id NOT IN (SELECT sandbox_id FROM pool_members WHERE claimed_at IS NULL)
             ORDER BY created_at, id LIMIT ?5"
        ))?;
        let rows = stmt.query_map(
            params![
                namespace,
                after_ts,
                after_id,
                include_terminated,
                limit as i64
            ],
            raw_row,
        )?;
        rows.map(|r| r.map_err(DbError::from).and_then(RawRow::parse))
            .collect()
    }

    /// A page of a namespace's ended sandboxes (never-claimed pool sandboxes aside),
    /// newest first. `older` pages toward older ones, from strictly before `cursor`; else
    /// toward newer ones, from strictly after it. Returns the page and whether more lie
    /// beyond it in that direction.
    pub fn archived_sandboxes(
        &self,
        namespace: &str,
        cursor: Option<(i64, &str)>,
        older: bool,
        limit: usize,
    ) -> Result<(Vec<SandboxRow>, bool)> {
        let conn = self.conn();
        let sql = if older {
            format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes
                 WHERE namespace = ?1 AND status = 'terminated'
                   AND (?2 IS NULL OR terminated_at < ?2 OR (terminated_at = ?2 AND id < ?3))
                   AND id NOT IN (SELECT sandbox_id FROM pool_members WHERE claimed_at IS NULL)
                 ORDER BY terminated_at DESC, id DESC LIMIT ?4"
            )
        } else {
            format!(
                "SELECT {SANDBOX_COLUMNS} FROM sandboxes
                 WHERE namespace = ?1 AND status = 'terminated'
                   AND (?2 IS NULL OR terminated_at > ?2 OR (terminated_at = ?2 AND id > ?3))
                   AND id NOT IN (SELECT sandbox_id FROM pool_members WHERE claimed_at IS NULL)
                 ORDER BY terminated_at ASC, id ASC LIMIT ?4"
            )
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let (at, id) = cursor.map_or((None, ""), |(at, id)| (Some(at), id));
        let rows = stmt.query_map(params![namespace, at, id, limit as i64 + 1], raw_row)?;
        let mut rows: Vec<SandboxRow> = rows
            .map(|r| r.map_err(DbError::from).and_then(RawRow::parse))
            .collect::<Result<_>>()?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        if !older {
            rows.reverse();
        }
        Ok((rows, more))
    }

    /// Deletes the oldest ended sandboxes beyond the newest `keep` (at most `limit` per
    /// call); returns how many went.
    pub fn prune_terminated(&self, keep: usize, limit: usize) -> Result<usize> {
        let n = self.conn().execute(
            "DELETE FROM sandboxes WHERE id IN (
                 SELECT id FROM sandboxes WHERE status = 'terminated'
                 ORDER BY terminated_at DESC LIMIT ?2 OFFSET ?1)",
            params![keep as i64, limit as i64],
        )?;
        Ok(n)
    }

    /// Sandboxes that are not terminated, in every namespace.
    pub fn live_sandboxes(&self) -> Result<Vec<SandboxRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE status != 'terminated' ORDER BY created_at"
        ))?;
        let rows = stmt.query_map([], raw_row)?;
        rows.map(|r| r.map_err(DbError::from).and_then(RawRow::parse))
            .collect()
    }

    pub fn mark_running(&self, id: &str, started_at: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET status = 'running', started_at = ?2
             WHERE id = ?1 AND status = 'pending'",
            params![id, started_at],
        )?;
        Ok(n == 1)
    }

    /// Ends a sandbox; the first reason recorded wins. Returns whether this call ended it.
    pub fn mark_terminated(
        &self,
        id: &str,
        reason: Reason,
        error: Option<&str>,
        at: i64,
    ) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE sandboxes SET status = 'terminated', reason = ?2, error = ?3, terminated_at = ?4
             WHERE id = ?1 AND status != 'terminated'",
            params![id, reason.as_str(), error, at],
        )?;
        Ok(n == 1)
    }

    /// Deletes up to `limit` rows of sandboxes that ended before `before_ms` (oldest
    /// first); returns how many went. Bounded so one pass never holds the database long.
    pub fn purge_terminated(&self, before_ms: i64, limit: usize) -> Result<usize> {
        let n = self.conn().execute(
            "DELETE FROM sandboxes WHERE id IN (
                 SELECT id FROM sandboxes
                 WHERE status = 'terminated' AND terminated_at < ?1
                 ORDER BY terminated_at LIMIT ?2)",
            params![before_ms, limit as i64],
        )?;
        self.conn().execute(
            "DELETE FROM pool_members WHERE sandbox_id NOT IN (SELECT id FROM sandboxes)",
            [],
        )?;
        Ok(n)
    }

    /// Renames a live sandbox; `Ok(false)` when another live sandbox has the name.
    pub fn set_name(&self, id: &str, name: Option<&str>) -> Result<bool> {
        match self.conn().execute(
            "UPDATE sandboxes SET name = ?2 WHERE id = ?1",
            params![id, name],
        ) {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn set_spec(&self, id: &str, spec: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET spec = ?2 WHERE id = ?1",
            params![id, spec.to_string()],
        )?;
        Ok(())
    }

    /// Merges `fields` into the spec in one statement (RFC 7396 merge), so concurrent
    /// updates of different fields do not undo each other.
    pub fn merge_spec(&self, id: &str, fields: &serde_json::Value) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET spec = json_patch(spec, ?2) WHERE id = ?1",
            params![id, fields.to_string()],
        )?;
        Ok(())
    }

    pub fn set_timeout(&self, id: &str, timeout_secs: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE sandboxes SET timeout_secs = ?2 WHERE id = ?1",
            params![id, timeout_secs],
        )?;
        Ok(())
    }

    /// Stores a key; `namespace` `None` is the admin scope.
    pub fn insert_key(
        &self,
        id: &str,
        name: &str,
        secret_sha256: &str,
        at: i64,
        namespace: Option<&str>,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO api_keys (id, name, secret_sha256, created_at, namespace)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, secret_sha256, at, namespace],
        )?;
        Ok(())
    }

    pub fn keys(&self) -> Result<Vec<ApiKey>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, created_at, last_used_at, namespace FROM api_keys ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], key_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The key whose secret hashes to `secret_sha256`, touching its last use. Every proxied
    /// request comes through here, so the write happens at most once a minute per key.
    pub fn key_by_secret(&self, secret_sha256: &str, at: i64) -> Result<Option<ApiKey>> {
        let conn = self.conn();
        conn.execute(
            "UPDATE api_keys SET last_used_at = ?2 WHERE secret_sha256 = ?1
             AND (last_used_at IS NULL OR last_used_at < ?2 - 60000)",
            params![secret_sha256, at],
        )?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, created_at, last_used_at, namespace FROM api_keys WHERE secret_sha256 = ?1",
        )?;
        Ok(stmt.query_row([secret_sha256], key_row).optional()?)
    }

    /// Removes a key by id or name; whether one was removed.
    pub fn remove_key(&self, id_or_name: &str) -> Result<bool> {
        let n = self.conn().execute(
            "DELETE FROM api_keys WHERE id = ?1 OR name = ?1",
            [id_or_name],
        )?;
        Ok(n > 0)
    }
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        created_at: r.get(2)?,
        last_used_at: r.get(3)?,
        namespace: r.get(4)?,
    })
}

type RawRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
);

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

trait ParseRow {
    fn parse(self) -> Result<SandboxRow>;
}

impl ParseRow for RawRow {
    fn parse(self) -> Result<SandboxRow> {
        let (
            id,
            namespace,
            name,
            image,
            spec,
            status,
            reason,
            error,
            created,
            started,
            ended,
            timeout,
        ) = self;
        let corrupt = |reason: String| DbError::Corrupt {
            id: id.clone(),
            reason,
        };
        let spec = serde_json::from_str(&spec).map_err(|e| corrupt(format!("spec: {e}")))?;
        let status =
            Status::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status:?}")))?;
        Ok(SandboxRow {
            id,
            namespace,
            name,
            image,
            spec,
            status,
            reason,
            error,
            created_at: created,
            started_at: started,
            terminated_at: ended,
            timeout_secs: timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, name: Option<&str>, created_at: i64) -> SandboxRow {
        SandboxRow {
            id: id.into(),
            namespace: "default".into(),
            name: name.map(Into::into),
            image: "busybox".into(),
            spec: serde_json::json!({"image": "busybox"}),
            status: Status::Pending,
            reason: None,
            error: None,
            created_at,
            started_at: None,
            terminated_at: None,
            timeout_secs: 0,
        }
    }

    #[test]
    fn migrations_apply_once_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert!(db.insert_sandbox(&row("a", None, 1)).unwrap());
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.sandbox("a").unwrap().unwrap().image, "busybox");
    }

    #[test]
    fn keys_made_before_scopes_become_admin_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database as the release before key scopes left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO api_keys (id, name, secret_sha256, created_at)
                 VALUES ('k0', 'old', 'h0', 1)",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let old = db.key_by_secret("h0", 2).unwrap().unwrap();
        assert!(old.is_admin() && old.covers("any"), "{old:?}");
        db.insert_key("k1", "team", "h1", 3, Some("a")).unwrap();
        let team = db.key_by_secret("h1", 4).unwrap().unwrap();
        assert_eq!(team.namespace.as_deref(), Some("a"));
        assert!(team.covers("a") && !team.covers("b") && !team.is_admin());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Db::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Db::open(&path),
            Err(DbError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn live_names_are_unique_and_free_again_after_termination() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        assert!(db.insert_sandbox(&row("a", Some("web"), 1)).unwrap());
        assert!(!db.insert_sandbox(&row("b", Some("web"), 2)).unwrap());
        assert!(
            db.mark_terminated("a", Reason::UserRequested, None, 3)
                .unwrap()
        );
        assert!(!db.mark_terminated("a", Reason::Timeout, None, 4).unwrap());
        assert_eq!(
            db.sandbox("a").unwrap().unwrap().reason.as_deref(),
            Some("user_requested")
        );
        assert!(db.insert_sandbox(&row("b", Some("web"), 2)).unwrap());
        assert_eq!(
            db.sandbox_by_name("default", "web").unwrap().unwrap().id,
            "b"
        );
        assert!(db.insert_sandbox(&row("c", Some("api"), 3)).unwrap());
        assert!(
            !db.set_name("b", Some("api")).unwrap(),
            "two live sandboxes named api"
        );
        assert!(
            db.set_name("a", Some("web")).unwrap(),
            "a terminated one may keep any name"
        );
    }

    #[test]
    fn pages_follow_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        for i in 0..5 {
            db.insert_sandbox(&row(&format!("s{i}"), None, 10)).unwrap();
        }
        let first = db.list_sandboxes(Some("default"), None, 2, true).unwrap();
        assert_eq!(
            first.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["s0", "s1"]
        );
        let last = first.last().unwrap();
        let next = db
            .list_sandboxes(Some("default"), Some((last.created_at, &last.id)), 10, true)
            .unwrap();
        assert_eq!(
            next.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["s2", "s3", "s4"]
        );
        db.mark_terminated("s3", Reason::Lost, None, 11).unwrap();
        assert_eq!(db.list_sandboxes(None, None, 10, false).unwrap().len(), 4);
    }

    #[test]
    fn keys_are_found_by_hash_and_removed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("s.db")).unwrap();
        db.insert_key("k1", "ci", "abc", 1, None).unwrap();
        assert_eq!(
            db.key_by_secret("abc", 5).unwrap().unwrap().last_used_at,
            Some(5)
        );
        assert!(db.key_by_secret("nope", 5).unwrap().is_none());
        assert!(db.remove_key("ci").unwrap());
        assert!(db.keys().unwrap().is_empty());
    }
}
