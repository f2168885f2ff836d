//! Warm pools in the state database: the `pools` rows (a configuration and its generation)
//! and `pool_members`, which sandboxes belong to which pool and which are claimed.
//!
//! A claim is one `UPDATE ... RETURNING`: two claims never take the same warm sandbox, in
//! one process or across a restart.

use rusqlite::{OptionalExtension, params};

use super::{Db, DbError, Result};

/// One pool as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolRow {
    pub id: String,
    pub namespace: String,
    /// The pool's sandbox configuration: the create body its sandboxes are made from (JSON),
    /// plus `max_containers` and `warm_containers`.
    pub config: serde_json::Value,
    /// Bumped by every update: members of an older generation are evicted, not claimed.
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A pool's live members, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Running, unclaimed, of the current generation: what a claim takes at once.
    pub warm: usize,
    /// Pending (booting, or waiting for room), unclaimed, of the current generation.
    pub booting: usize,
    /// Claimed and not ended.
    pub claimed: usize,
    /// Unclaimed members of older generations, still being removed.
    pub stale: usize,
}

impl PoolCounts {
    /// Everything that counts against `max_containers`.
    pub fn total(&self) -> usize {
        self.warm + self.booting + self.claimed + self.stale
    }
}

/// A live member of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolMember {
    pub sandbox_id: String,
    pub generation: i64,
    pub claimed: bool,
    pub running: bool,
    /// The store image it was made from.
    pub image: String,
}

const POOL_COLUMNS: &str = "id, namespace, config, generation, created_at, updated_at";

fn pool_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn parse(raw: (String, String, String, i64, i64, i64)) -> Result<PoolRow> {
    let (id, namespace, config, generation, created_at, updated_at) = raw;
    let config = serde_json::from_str(&config).map_err(|e| DbError::Corrupt {
        id: id.clone(),
        reason: format!("pool config: {e}"),
    })?;
    Ok(PoolRow {
        id,
        namespace,
        config,
        generation,
        created_at,
        updated_at,
    })
}

impl Db {
    pub fn insert_pool(&self, row: &PoolRow) -> Result<()> {
        self.conn().execute(
            &format!("INSERT INTO pools ({POOL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                row.id,
                row.namespace,
                row.config.to_string(),
                row.generation,
                row.created_at,
                row.updated_at
            ],
        )?;
        Ok(())
    }

    pub fn pool(&self, id: &str) -> Result<Option<PoolRow>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {POOL_COLUMNS} FROM pools WHERE id = ?1"))?;
        stmt.query_row([id], pool_row)
            .optional()?
            .map(parse)
            .transpose()
    }

    /// Every pool (of `namespace` when given), oldest first.
    pub fn pools(&self, namespace: Option<&str>) -> Result<Vec<PoolRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {POOL_COLUMNS} FROM pools WHERE (?1 IS NULL OR namespace = ?1)
             ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![namespace], pool_row)?;
        rows.map(|r| r.map_err(DbError::from).and_then(parse))
            .collect()
    }

    /// Replaces a pool's configuration and bumps its generation; `false` if it is gone.
    pub fn update_pool(&self, id: &str, config: &serde_json::Value, at: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE pools SET config = ?2, generation = generation + 1, updated_at = ?3
             WHERE id = ?1",
            params![id, config.to_string(), at],
        )?;
        Ok(n == 1)
    }

    pub fn delete_pool(&self, id: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute("DELETE FROM pools WHERE id = ?1", [id])?;
        Ok(n == 1)
    }

    /// The live (not terminated) members of a pool.
    pub fn pool_members(&self, pool_id: &str) -> Result<Vec<PoolMember>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT m.sandbox_id, m.generation, m.claimed_at IS NOT NULL, s.status = 'running',
                    s.image
             FROM pool_members m JOIN sandboxes s ON s.id = m.sandbox_id
             WHERE m.pool_id = ?1 AND s.status != 'terminated'
             ORDER BY s.created_at",
        )?;
        let rows = stmt.query_map([pool_id], |r| {
            Ok(PoolMember {
                sandbox_id: r.get(0)?,
                generation: r.get(1)?,
                claimed: r.get(2)?,
                running: r.get(3)?,
                image: r.get(4)?,
            })
        })?;
        rows.map(|r| r.map_err(DbError::from)).collect()
    }

    /// Takes the oldest warm sandbox of the pool's `generation` (running, unclaimed) at
    /// `at`, in one transaction: marks it claimed, records its pool in its spec, and gives it
    /// a lifetime of `timeout_secs` from now (0: none). A crash leaves either a warm sandbox
    /// or a claimed one with its pool and lifetime, never a claimed one without. Returns its
    /// id.
    pub fn claim_warm(
        &self,
        pool_id: &str,
        generation: i64,
        at: i64,
        timeout_secs: i64,
    ) -> Result<Option<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let claimed: Option<String> = tx
            .query_row(
                "UPDATE pool_members SET claimed_at = ?3
                 WHERE sandbox_id = (
                     SELECT m.sandbox_id FROM pool_members m
                     JOIN sandboxes s ON s.id = m.sandbox_id
                     WHERE m.pool_id = ?1 AND m.generation = ?2 AND m.claimed_at IS NULL
                       AND s.status = 'running'
                     ORDER BY s.created_at LIMIT 1)
                 RETURNING sandbox_id",
                params![pool_id, generation, at],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = &claimed {
            // The time it waited warm is not the user's: the lifetime counts from the claim.
            tx.execute(
                "UPDATE sandboxes SET spec = json_patch(spec, ?2),
                     timeout_secs = CASE WHEN ?3 > 0
                         THEN (?4 - COALESCE(started_at, created_at)) / 1000 + ?3
                         ELSE timeout_secs END
                 WHERE id = ?1",
                params![
                    id,
                    serde_json::json!({"pool_id": pool_id}).to_string(),
                    timeout_secs,
                    at
                ],
            )?;
        }
        tx.commit()?;
        Ok(claimed)
    }

    /// Unclaimed live members of pools that no longer exist (a crash between a pool's
    /// delete and the end of its warm sandboxes): nobody can claim or see them.
    pub fn orphan_members(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT m.sandbox_id FROM pool_members m JOIN sandboxes s ON s.id = m.sandbox_id
             WHERE m.claimed_at IS NULL AND s.status != 'terminated'
               AND m.pool_id NOT IN (SELECT id FROM pools)",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.map(|r| r.map_err(DbError::from)).collect()
    }

    /// The error of the newest of the pool's sandboxes that failed to start after `since`
    /// (ms since the epoch), if one did.
    pub fn pool_startup_failure(&self, pool_id: &str, since: i64) -> Result<Option<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT COALESCE(s.error, 'the sandbox failed to start')
             FROM pool_members m JOIN sandboxes s ON s.id = m.sandbox_id
             WHERE m.pool_id = ?1 AND s.reason = 'startup_failed' AND s.terminated_at > ?2
             ORDER BY s.terminated_at DESC LIMIT 1",
        )?;
        Ok(stmt
            .query_row(params![pool_id, since], |r| r.get(0))
            .optional()?)
    }

    /// The pool sandbox `id` belongs to, and whether it is claimed.
    pub fn membership(&self, sandbox_id: &str) -> Result<Option<(String, bool)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT pool_id, claimed_at IS NOT NULL FROM pool_members WHERE sandbox_id = ?1",
        )?;
        Ok(stmt
            .query_row([sandbox_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }
}

/// Counts `members` against the pool's current `generation`.
pub fn count(members: &[PoolMember], generation: i64) -> PoolCounts {
    let mut c = PoolCounts::default();
    for m in members {
        match (m.claimed, m.generation == generation, m.running) {
            (true, _, _) => c.claimed += 1,
            (false, false, _) => c.stale += 1,
            (false, true, true) => c.warm += 1,
            (false, true, false) => c.booting += 1,
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{SandboxRow, Status};

    fn sandbox(db: &Db, id: &str, pool: &str, generation: i64, status: Status, at: i64) {
        let row = SandboxRow {
            id: id.into(),
            namespace: "default".into(),
            name: None,
            image: "i".into(),
            spec: serde_json::json!({}),
            status,
            reason: None,
            error: None,
            created_at: at,
            started_at: None,
            terminated_at: None,
            timeout_secs: 0,
        };
        assert!(
            db.insert_sandbox_in(&row, Some((pool, generation, false)))
                .unwrap()
        );
    }

    #[test]
    fn claims_take_each_warm_sandbox_once_oldest_first_and_hide_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        db.insert_pool(&PoolRow {
            id: "p".into(),
            namespace: "default".into(),
            config: serde_json::json!({"warm_containers": 2}),
            generation: 1,
            created_at: 0,
            updated_at: 0,
        })
        .unwrap();
        sandbox(&db, "b", "p", 1, Status::Running, 2);
        sandbox(&db, "a", "p", 1, Status::Running, 1);
        sandbox(&db, "c", "p", 1, Status::Pending, 3);
        sandbox(&db, "old", "p", 0, Status::Running, 0);
        let members = db.pool_members("p").unwrap();
        let c = count(&members, 1);
        assert_eq!((c.warm, c.booting, c.claimed, c.stale), (2, 1, 0, 1));
        // Unclaimed members are nobody's sandboxes yet.
        assert!(db.list_sandboxes(None, None, 100, true).unwrap().is_empty());
        assert_eq!(db.claim_warm("p", 1, 10, 0).unwrap().as_deref(), Some("a"));
        assert_eq!(db.claim_warm("p", 1, 11, 0).unwrap().as_deref(), Some("b"));
        // Booting and stale ones are never claimed.
        assert_eq!(db.claim_warm("p", 1, 12, 0).unwrap(), None);
        let listed: Vec<String> = db
            .list_sandboxes(None, None, 100, true)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, ["a", "b"]);
        assert_eq!(db.membership("a").unwrap(), Some(("p".into(), true)));
        // The claim wrote the pool into the sandbox's own row, in the same transaction.
        assert_eq!(db.sandbox("a").unwrap().unwrap().spec["pool_id"], "p");
        assert!(db.update_pool("p", &serde_json::json!({}), 20).unwrap());
        assert_eq!(db.pool("p").unwrap().unwrap().generation, 2);
        let c = count(&db.pool_members("p").unwrap(), 2);
        assert_eq!((c.warm, c.booting, c.claimed, c.stale), (0, 0, 2, 2));
    }

    #[test]
    fn a_claim_sets_the_lifetime_from_the_claim_and_orphans_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        db.insert_pool(&PoolRow {
            id: "p".into(),
            namespace: "default".into(),
            config: serde_json::json!({}),
            generation: 1,
            created_at: 0,
            updated_at: 0,
        })
        .unwrap();
        sandbox(&db, "w", "p", 1, Status::Running, 1_000);
        // Warm for 60 s, then claimed with a 30 s lifetime: it ends 30 s after the claim.
        assert_eq!(
            db.claim_warm("p", 1, 61_000, 30).unwrap().as_deref(),
            Some("w")
        );
        let row = db.sandbox("w").unwrap().unwrap();
        assert_eq!(row.timeout_secs, 90);
        assert_eq!(row.spec["pool_id"], "p");
        // A member whose pool is gone (a crash mid-delete) is an orphan, a claimed one is not.
        sandbox(&db, "o", "gone", 1, Status::Running, 2_000);
        let claimed = SandboxRow {
            id: "c".into(),
            ..db.sandbox("o").unwrap().unwrap()
        };
        assert!(
            db.insert_sandbox_in(&claimed, Some(("gone", 1, true)))
                .unwrap()
        );
        assert_eq!(db.orphan_members().unwrap(), ["o"]);
        assert_eq!(db.membership("c").unwrap(), Some(("gone".into(), true)));
    }
}
