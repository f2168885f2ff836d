//! Templates and template builds in the state database.
//!
//! A template is registered in one transaction from a build the host finished (`built`):
//! there is never a half-registered template. A template whose name a new build takes is
//! replaced in the same transaction, unless other templates are built on it.

use rusqlite::{OptionalExtension, Row, params};

use super::{Db, DbError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A full root filesystem.
    Base,
    /// Layers over a parent template's.
    Diff,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Diff => "diff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "base" => Some(Self::Base),
            "diff" => Some(Self::Diff),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TemplateRow {
    pub id: String,
    pub name: String,
    pub public: bool,
    pub node_kind: NodeKind,
    pub parent_id: Option<String>,
    /// The image in the store this template starts sandboxes from.
    pub image: String,
    pub image_id: String,
    pub snapshot_id: String,
    pub snapshot_uri: String,
    pub snapshot_format: String,
    pub snapshot_size_bytes: u64,
    pub rootfs_disk_bytes: u64,
    /// Unpacked bytes of the layers this template adds (all of them for a base).
    pub own_bytes: u64,
    /// Unpacked bytes of the whole root filesystem (parent layers included).
    pub total_bytes: u64,
    pub dockerfile: String,
    pub build_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildState {
    /// Prepared; no builder has claimed it yet.
    Prepared,
    /// A builder sandbox handed it to the host engine, which is building.
    Building,
    /// Built: the image is in the store, waiting for `complete`.
    Built,
    Failed,
    /// Registered as a template.
    Completed,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Building => "building",
            Self::Built => "built",
            Self::Failed => "failed",
            Self::Completed => "completed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "prepared" => Self::Prepared,
            "building" => Self::Building,
            "built" => Self::Built,
            "failed" => Self::Failed,
            "completed" => Self::Completed,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BuildRow {
    pub id: String,
    pub token_sha256: String,
    pub name: String,
    pub dockerfile: String,
    pub base_image: String,
    pub public: bool,
    pub node_kind: NodeKind,
    pub parent_id: Option<String>,
    /// The id the template gets when the build completes.
    pub template_id: String,
    pub snapshot_id: String,
    pub rootfs_disk_bytes: u64,
    pub state: BuildState,
    pub builder_sandbox: Option<String>,
    pub image: Option<String>,
    pub image_id: Option<String>,
    pub snapshot_size_bytes: Option<u64>,
    pub own_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What the host's build produced.
#[derive(Clone, Debug)]
pub struct BuildResult {
    pub image: String,
    pub image_id: String,
    pub snapshot_size_bytes: u64,
    pub own_bytes: u64,
    pub total_bytes: u64,
}

/// Why a template cannot be removed or replaced.
#[derive(Debug)]
pub enum TemplateConflict {
    /// Other templates are built on it.
    HasChildren { id: String, children: Vec<String> },
    /// The build is not in a state that allows this.
    BuildState { id: String, state: BuildState },
}

const TEMPLATE_COLUMNS: &str = "id, name, public, node_kind, parent_id, image, image_id, \
    snapshot_id, snapshot_uri, snapshot_format, snapshot_size_bytes, rootfs_disk_bytes, \
    own_bytes, total_bytes, dockerfile, build_id, created_at, updated_at";

const BUILD_COLUMNS: &str = "id, token_sha256, name, dockerfile, base_image, public, node_kind, \
    parent_id, template_id, snapshot_id, rootfs_disk_bytes, state, builder_sandbox, image, \
    image_id, snapshot_size_bytes, own_bytes, total_bytes, error, created_at, updated_at";

fn corrupt(id: String, reason: String) -> DbError {
    DbError::Corrupt { id, reason }
}

fn template_row(r: &Row<'_>) -> rusqlite::Result<(TemplateRow, String)> {
    Ok((
        TemplateRow {
            id: r.get(0)?,
            name: r.get(1)?,
            public: r.get(2)?,
            node_kind: NodeKind::Base,
            parent_id: r.get(4)?,
            image: r.get(5)?,
            image_id: r.get(6)?,
            snapshot_id: r.get(7)?,
            snapshot_uri: r.get(8)?,
            snapshot_format: r.get(9)?,
            snapshot_size_bytes: r.get::<_, i64>(10)? as u64,
            rootfs_disk_bytes: r.get::<_, i64>(11)? as u64,
            own_bytes: r.get::<_, i64>(12)? as u64,
            total_bytes: r.get::<_, i64>(13)? as u64,
            dockerfile: r.get(14)?,
            build_id: r.get(15)?,
            created_at: r.get(16)?,
            updated_at: r.get(17)?,
        },
        r.get(3)?,
    ))
}

fn parse_template((mut row, kind): (TemplateRow, String)) -> Result<TemplateRow> {
    row.node_kind = NodeKind::parse(&kind)
        .ok_or_else(|| corrupt(row.id.clone(), format!("unknown node kind {kind:?}")))?;
    Ok(row)
}

fn build_row(r: &Row<'_>) -> rusqlite::Result<(BuildRow, String, String)> {
    let opt_u64 = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.map(|v| v as u64));
    Ok((
        BuildRow {
            id: r.get(0)?,
            token_sha256: r.get(1)?,
            name: r.get(2)?,
            dockerfile: r.get(3)?,
            base_image: r.get(4)?,
            public: r.get(5)?,
            node_kind: NodeKind::Base,
            parent_id: r.get(7)?,
            template_id: r.get(8)?,
            snapshot_id: r.get(9)?,
            rootfs_disk_bytes: r.get::<_, i64>(10)? as u64,
            state: BuildState::Prepared,
            builder_sandbox: r.get(12)?,
            image: r.get(13)?,
            image_id: r.get(14)?,
            snapshot_size_bytes: opt_u64(15)?,
            own_bytes: opt_u64(16)?,
            total_bytes: opt_u64(17)?,
            error: r.get(18)?,
            created_at: r.get(19)?,
            updated_at: r.get(20)?,
        },
        r.get(6)?,
        r.get(11)?,
    ))
}

fn parse_build((mut row, kind, state): (BuildRow, String, String)) -> Result<BuildRow> {
    row.node_kind = NodeKind::parse(&kind)
        .ok_or_else(|| corrupt(row.id.clone(), format!("unknown node kind {kind:?}")))?;
    row.state = BuildState::parse(&state)
        .ok_or_else(|| corrupt(row.id.clone(), format!("unknown build state {state:?}")))?;
    Ok(row)
}

impl Db {
    pub fn templates(&self) -> Result<Vec<TemplateRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY name"
        ))?;
        let rows = stmt.query_map([], template_row)?;
        rows.map(|r| r.map_err(DbError::from).and_then(parse_template))
            .collect()
    }

    pub fn template(&self, id: &str) -> Result<Option<TemplateRow>> {
        self.template_where("id", id)
    }

    pub fn template_by_name(&self, name: &str) -> Result<Option<TemplateRow>> {
        self.template_where("name", name)
    }

    fn template_where(&self, column: &str, value: &str) -> Result<Option<TemplateRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM templates WHERE {column} = ?1"
        ))?;
        stmt.query_row([value], template_row)
            .optional()?
            .map(parse_template)
            .transpose()
    }

    /// The names of the templates built directly on `id`.
    pub fn template_children(&self, id: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT name FROM templates WHERE parent_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map([id], |r| r.get(0))?;
        rows.map(|r| r.map_err(DbError::from)).collect()
    }

    /// Removes a template that no other template is built on.
    pub fn delete_template(
        &self,
        id: &str,
    ) -> Result<std::result::Result<Option<TemplateRow>, TemplateConflict>> {
        let Some(row) = self.template(id)? else {
            return Ok(Ok(None));
        };
        let children = self.template_children(id)?;
        if !children.is_empty() {
            return Ok(Err(TemplateConflict::HasChildren {
                id: id.to_string(),
                children,
            }));
        }
        // The foreign key refuses it too if a child appeared in between.
        self.conn()
            .execute("DELETE FROM templates WHERE id = ?1", [id])?;
        Ok(Ok(Some(row)))
    }

    pub fn insert_build(&self, row: &BuildRow) -> Result<()> {
        self.conn().execute(
            &format!(
                "INSERT INTO template_builds ({BUILD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                 ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
            ),
            params![
                row.id,
                row.token_sha256,
                row.name,
                row.dockerfile,
                row.base_image,
                row.public,
                row.node_kind.as_str(),
                row.parent_id,
                row.template_id,
                row.snapshot_id,
                row.rootfs_disk_bytes as i64,
                row.state.as_str(),
                row.builder_sandbox,
                row.image,
                row.image_id,
                row.snapshot_size_bytes.map(|v| v as i64),
                row.own_bytes.map(|v| v as i64),
                row.total_bytes.map(|v| v as i64),
                row.error,
                row.created_at,
                row.updated_at,
            ],
        )?;
        Ok(())
    }

    pub fn build(&self, id: &str) -> Result<Option<BuildRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {BUILD_COLUMNS} FROM template_builds WHERE id = ?1"
        ))?;
        stmt.query_row([id], build_row)
            .optional()?
            .map(parse_build)
            .transpose()
    }

    /// Marks a prepared build as building in `sandbox`; false if it was not `prepared`.
    pub fn claim_build(&self, id: &str, sandbox: &str, at: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE template_builds SET state = 'building', builder_sandbox = ?2, updated_at = ?3
             WHERE id = ?1 AND state = 'prepared'",
            params![id, sandbox, at],
        )?;
        Ok(n == 1)
    }

    pub fn finish_build(&self, id: &str, result: &BuildResult, at: i64) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE template_builds SET state = 'built', image = ?2, image_id = ?3,
                 snapshot_size_bytes = ?4, own_bytes = ?5, total_bytes = ?6, updated_at = ?7
             WHERE id = ?1 AND state = 'building'",
            params![
                id,
                result.image,
                result.image_id,
                result.snapshot_size_bytes as i64,
                result.own_bytes as i64,
                result.total_bytes as i64,
                at
            ],
        )?;
        Ok(n == 1)
    }

    pub fn fail_build(&self, id: &str, error: &str, at: i64) -> Result<()> {
        self.conn().execute(
            "UPDATE template_builds SET state = 'failed', error = ?2, updated_at = ?3
             WHERE id = ?1 AND state IN ('prepared', 'building')",
            params![id, error, at],
        )?;
        Ok(())
    }

    /// Builds a previous server left `building`: their engine died with it.
    pub fn fail_interrupted_builds(&self, at: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE template_builds SET state = 'failed',
                 error = 'the server stopped during the build', updated_at = ?1
             WHERE state = 'building'",
            [at],
        )?)
    }

    /// Builds built before `cutoff` that nobody completed: their client is gone.
    pub fn fail_abandoned_builds(&self, cutoff: i64, at: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE template_builds SET state = 'failed',
                 error = 'built, but never completed', updated_at = ?2
             WHERE state = 'built' AND updated_at < ?1",
            params![cutoff, at],
        )?)
    }

    /// Store images of builds that will never be registered, and of no template.
    pub fn unregistered_build_images(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT image FROM template_builds
             WHERE image IS NOT NULL AND state = 'failed'
               AND image NOT IN (SELECT image FROM templates)",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.map(|r| r.map_err(DbError::from)).collect()
    }

    /// Records that a failed build's image is gone from the store.
    pub fn forget_build_image(&self, image: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE template_builds SET image = NULL WHERE image = ?1 AND state = 'failed'",
            [image],
        )?;
        Ok(())
    }

    /// Registers the template of a `built` build, replacing a template of the same name that
    /// has no children, in one transaction. Returns the new template and the one replaced.
    pub fn complete_build(
        &self,
        id: &str,
        snapshot_uri: &str,
        snapshot_format: &str,
        at: i64,
    ) -> Result<std::result::Result<(TemplateRow, Option<TemplateRow>), TemplateConflict>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let build = tx
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE id = ?1"),
                [id],
                build_row,
            )
            .map_err(DbError::from)
            .and_then(parse_build)?;
        if build.state != BuildState::Built {
            return Ok(Err(TemplateConflict::BuildState {
                id: id.to_string(),
                state: build.state,
            }));
        }
        let replaced = tx
            .query_row(
                &format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE name = ?1"),
                [&build.name],
                template_row,
            )
            .optional()?
            .map(parse_template)
            .transpose()?;
        if let Some(old) = &replaced {
            let mut stmt = tx.prepare("SELECT name FROM templates WHERE parent_id = ?1")?;
            let children: Vec<String> = stmt
                .query_map([&old.id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            drop(stmt);
            if !children.is_empty() {
                return Ok(Err(TemplateConflict::HasChildren {
                    id: old.id.clone(),
                    children,
                }));
            }
            tx.execute("DELETE FROM templates WHERE id = ?1", [&old.id])?;
        }
        let missing = |what: &str| corrupt(id.to_string(), format!("a built build without {what}"));
        let row = TemplateRow {
            id: build.template_id.clone(),
            name: build.name.clone(),
            public: build.public,
            node_kind: build.node_kind,
            parent_id: build.parent_id.clone(),
            image: build.image.clone().ok_or_else(|| missing("an image"))?,
            image_id: build
                .image_id
                .clone()
                .ok_or_else(|| missing("an image id"))?,
            snapshot_id: build.snapshot_id.clone(),
            snapshot_uri: snapshot_uri.to_string(),
            snapshot_format: snapshot_format.to_string(),
            snapshot_size_bytes: build.snapshot_size_bytes.unwrap_or(0),
            rootfs_disk_bytes: build.rootfs_disk_bytes,
            own_bytes: build.own_bytes.unwrap_or(0),
            total_bytes: build.total_bytes.unwrap_or(0),
            dockerfile: build.dockerfile.clone(),
            build_id: Some(build.id.clone()),
            created_at: at,
            updated_at: at,
        };
        tx.execute(
            &format!(
                "INSERT INTO templates ({TEMPLATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
                 ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
            ),
            params![
                row.id,
                row.name,
                row.public,
                row.node_kind.as_str(),
                row.parent_id,
                row.image,
                row.image_id,
                row.snapshot_id,
                row.snapshot_uri,
                row.snapshot_format,
                row.snapshot_size_bytes as i64,
                row.rootfs_disk_bytes as i64,
                row.own_bytes as i64,
                row.total_bytes as i64,
                row.dockerfile,
                row.build_id,
                row.created_at,
                row.updated_at,
            ],
        )?;
        tx.execute(
            "UPDATE template_builds SET state = 'completed', updated_at = ?2 WHERE id = ?1",
            params![id, at],
        )?;
        tx.commit()?;
        Ok(Ok((row, replaced)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(db: &Db, id: &str, name: &str, parent: Option<&str>, template_id: &str) {
        let parent = parent.map(|p| db.template(p).unwrap().unwrap());
        let mut row = crate::templates::new_build(crate::templates::NewBuild {
            name,
            dockerfile: "FROM x\n",
            base_image: "x",
            public: false,
            parent: parent.as_ref(),
            rootfs_disk_bytes: None,
            token_sha256: String::new(),
        })
        .unwrap();
        row.id = id.into();
        row.template_id = template_id.into();
        db.insert_build(&row).unwrap();
        assert!(db.claim_build(id, "sbx", 2).unwrap());
        assert!(!db.claim_build(id, "other", 2).unwrap(), "claimed once");
        let result = BuildResult {
            image: format!("hutch-template:{template_id}"),
            image_id: "sha256:00".into(),
            snapshot_size_bytes: 10,
            own_bytes: 20,
            total_bytes: 30,
        };
        assert!(db.finish_build(id, &result, 3).unwrap());
    }

    fn complete(
        db: &Db,
        id: &str,
    ) -> std::result::Result<(TemplateRow, Option<TemplateRow>), TemplateConflict> {
        db.complete_build(id, "hutch://t", "f", 4).unwrap()
    }

    #[test]
    fn lineage_guards_removal_and_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("h.db")).unwrap();
        build(&db, "b1", "base", None, "tpl_1");
        let (base, replaced) = complete(&db, "b1").unwrap();
        assert!(replaced.is_none());
        assert!(matches!(
            complete(&db, "b1"),
            Err(TemplateConflict::BuildState { .. })
        ));
        build(&db, "b2", "child", Some(&base.id), "tpl_2");
        let (child, _) = complete(&db, "b2").unwrap();
        assert_eq!(child.node_kind, NodeKind::Diff);
        assert_eq!(db.template_children(&base.id).unwrap(), ["child"]);

        // Neither removed nor replaced while it has a child.
        assert!(matches!(
            db.delete_template(&base.id).unwrap(),
            Err(TemplateConflict::HasChildren { .. })
        ));
        build(&db, "b3", "base", None, "tpl_3");
        assert!(matches!(
            complete(&db, "b3"),
            Err(TemplateConflict::HasChildren { .. })
        ));
        assert_eq!(db.template_by_name("base").unwrap().unwrap().id, "tpl_1");

        // Without children a rebuild replaces it.
        db.delete_template(&child.id).unwrap().unwrap();
        let (new, replaced) = complete(&db, "b3").unwrap();
        assert_eq!(new.id, "tpl_3");
        assert_eq!(replaced.unwrap().id, "tpl_1");
        assert_eq!(db.templates().unwrap().len(), 1);
    }

    #[test]
    fn builds_a_dead_server_was_running_fail() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("h.db")).unwrap();
        build(&db, "b1", "a", None, "tpl_1");
        // A second build, claimed but not finished.
        let mut row = db.build("b1").unwrap().unwrap();
        row.id = "b2".into();
        row.state = BuildState::Building;
        db.insert_build(&row).unwrap();
        assert_eq!(db.fail_interrupted_builds(9).unwrap(), 1);
        assert_eq!(
            db.fail_abandoned_builds(3, 9).unwrap(),
            0,
            "built at 3: not before 3"
        );
        let failed = db.build("b2").unwrap().unwrap();
        assert_eq!(failed.state, BuildState::Failed);
        assert_eq!(db.build("b1").unwrap().unwrap().state, BuildState::Built);
        assert_eq!(
            db.unregistered_build_images().unwrap(),
            ["hutch-template:tpl_1"]
        );
        db.forget_build_image("hutch-template:tpl_1").unwrap();
        assert!(db.unregistered_build_images().unwrap().is_empty());
    }
}
