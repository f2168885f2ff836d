//! The template registry: named templates over images in the store, with their lineage.
//!
//! A template is an image in the store under `hutch-template:<id>` plus a row in the state
//! database. A *base* template owns its whole root filesystem; a *diff* template was built
//! `FROM` another template and its image's layers start with the parent's, so it costs only
//! the layers it adds (layers are content-addressed and shared). A parent cannot be removed
//! while templates are built on it.
//!
//! Used by the server (the platform API and template builds) and by the CLI (`hutch template`,
//! `FROM <template>` in `hutch image build`), which open the same database.

use std::path::Path;
use std::sync::Arc;

use hutch_store::{Image, Store};

use crate::db::{BuildRow, BuildState, Db, NodeKind, TemplateRow, templates::BuildResult};
use crate::error::{Conflict, Invalid, Kind, StateError};
use crate::{now_ms, random_hex};

/// The store repository template images live in: `hutch-template:<template id>`.
pub const TEMPLATE_REPO: &str = "hutch-template";
/// What `snapshotFormatVersion` says of a Hutch template: OCI layers in the local store.
pub const SNAPSHOT_FORMAT: &str = "hutch_oci_layers_v1";
/// The rootfs disk size a template gets when nobody names one (the SDK's default).
pub const DEFAULT_ROOTFS_DISK_BYTES: u64 = 10 << 30;

pub fn snapshot_uri(template_id: &str) -> String {
    format!("hutch://templates/{template_id}")
}

pub fn template_image(template_id: &str) -> String {
    format!("{TEMPLATE_REPO}:{template_id}")
}

#[derive(Clone)]
pub struct Templates {
    db: Arc<Db>,
    store: Store,
}

/// A template to register from an image already in the store (a local build).
pub struct Registration<'a> {
    pub name: &'a str,
    pub image: &'a Image,
    pub parent: Option<&'a TemplateRow>,
    pub dockerfile: &'a str,
    pub public: bool,
    pub rootfs_disk_bytes: Option<u64>,
}

impl Templates {
    pub fn new(db: Arc<Db>, store: Store) -> Self {
        Self { db, store }
    }

    /// Opens the registry of the state directory `home` (for the CLI).
    pub fn open(home: &Path, store: Store) -> Result<Self, StateError> {
        let db = Db::open(&home.join(crate::DB_FILE))?;
        Ok(Self::new(Arc::new(db), store))
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    pub fn list(&self) -> Result<Vec<TemplateRow>, StateError> {
        Ok(self.db.templates()?)
    }

    /// A template by id, else by name.
    pub fn find(&self, id_or_name: &str) -> Result<Option<TemplateRow>, StateError> {
        if let Some(row) = self.db.template(id_or_name)? {
            return Ok(Some(row));
        }
        Ok(self.db.template_by_name(id_or_name)?)
    }

    /// The template with this id (ids only).
    pub fn by_id(&self, id: &str) -> Result<Option<TemplateRow>, StateError> {
        Ok(self.db.template(id)?)
    }

    /// The template with this name (names only).
    pub fn by_name(&self, name: &str) -> Result<Option<TemplateRow>, StateError> {
        Ok(self.db.template_by_name(name)?)
    }

    pub fn get(&self, id_or_name: &str) -> Result<TemplateRow, StateError> {
        self.find(id_or_name)?
            .ok_or_else(|| template_not_found(id_or_name))
    }

    /// The store image of the template `name` (id or name), if there is one.
    pub fn image_of(&self, name: &str) -> Option<String> {
        self.find(name).ok().flatten().map(|t| t.image)
    }

    /// Removes a template and releases its image; refused while templates are built on it.
    pub fn remove(&self, id_or_name: &str) -> Result<TemplateRow, StateError> {
        let row = self.get(id_or_name)?;
        match self.db.delete_template(&row.id)? {
            Ok(Some(row)) => {
                self.release_image(&row.image);
                Ok(row)
            }
            Ok(None) => Err(template_not_found(id_or_name)),
            Err(conflict) => Err(conflict_error(conflict)),
        }
    }

    fn release_image(&self, image: &str) {
        match self.store.remove_image(image) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(%image, error = %e, "releasing a template's image"),
        }
    }

    /// Own, total and snapshot bytes of `image` over `parent`'s layers.
    pub fn sizes(&self, image: &Image, parent: Option<&TemplateRow>) -> Result<Sizes, StateError> {
        let parent_layers = match parent {
            Some(p) => self.store.image(&p.image).map_err(store_error)?.layers,
            None => Vec::new(),
        };
        if !image.layers.starts_with(&parent_layers) {
            return Err(StateError::conflict(
                Conflict::LineageMismatch,
                format!(
                    "the built image does not sit on the layers of its parent template {}",
                    parent.map(|p| p.name.as_str()).unwrap_or_default()
                ),
            ));
        }
        let mut sizes = Sizes::default();
        for (i, layer) in image.layers.iter().enumerate() {
            let (unpacked, blob) = self.store.layer_sizes(layer).map_err(store_error)?;
            sizes.total_bytes += unpacked;
            if i >= parent_layers.len() {
                sizes.own_bytes += unpacked;
                sizes.snapshot_size_bytes += blob;
            }
        }
        Ok(sizes)
    }

    /// Registers an image already in the store as the template `name` (replacing a template
    /// of that name that has no children), through the same path as a seed build.
    pub fn register(&self, r: Registration<'_>) -> Result<TemplateRow, StateError> {
        validate_name(r.name)?;
        let sizes = self.sizes(r.image, r.parent)?;
        let mut build = new_build(NewBuild {
            name: r.name,
            dockerfile: r.dockerfile,
            base_image: &r
                .parent
                .map(|p| p.name.clone())
                .unwrap_or_else(|| r.image.name.clone()),
            public: r.public,
            parent: r.parent,
            rootfs_disk_bytes: r.rootfs_disk_bytes,
            token_sha256: String::new(),
        })?;
        build.state = BuildState::Building;
        let now = build.created_at;
        let image = template_image(&build.template_id);
        self.store.tag(&r.image.name, &image).map_err(store_error)?;
        self.db.insert_build(&build)?;
        let result = BuildResult {
            image: image.clone(),
            image_id: r.image.id.to_string(),
            snapshot_size_bytes: sizes.snapshot_size_bytes,
            own_bytes: sizes.own_bytes,
            total_bytes: sizes.total_bytes,
        };
        self.db.finish_build(&build.id, &result, now)?;
        self.complete(&build.id)
            .inspect_err(|_| self.release_image(&image))
    }

    /// Registers the template of a built build (one transaction; see `Db::complete_build`).
    pub fn complete(&self, build_id: &str) -> Result<TemplateRow, StateError> {
        let build = self
            .db
            .build(build_id)?
            .ok_or_else(|| build_not_found(build_id))?;
        let uri = snapshot_uri(&build.template_id);
        match self
            .db
            .complete_build(build_id, &uri, SNAPSHOT_FORMAT, now_ms())?
        {
            Ok((row, replaced)) => {
                if let Some(old) = replaced {
                    self.release_image(&old.image);
                }
                tracing::info!(template = %row.name, id = %row.id, kind = row.node_kind.as_str(), "registered a template");
                Ok(row)
            }
            Err(conflict) => Err(conflict_error(conflict)),
        }
    }

    /// The template as the platform API shows it (the `tensorlake` crate's `SandboxTemplate`
    /// plus Hutch's lineage and size fields).
    pub fn to_api(&self, row: &TemplateRow) -> hutch_api::Template {
        let parent = row
            .parent_id
            .as_deref()
            .and_then(|id| self.db.template(id).ok().flatten());
        hutch_api::Template {
            id: row.id.clone(),
            name: row.name.clone(),
            snapshot_id: row.snapshot_id.clone(),
            snapshot_uri: row.snapshot_uri.clone(),
            snapshot_format_version: row.snapshot_format.clone(),
            snapshot_size_bytes: row.snapshot_size_bytes,
            rootfs_disk_bytes: row.rootfs_disk_bytes,
            rootfs_node_kind: node_kind(row.node_kind),
            public: row.public,
            dockerfile: row.dockerfile.clone(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            parent_template_id: row.parent_id.clone(),
            parent_template_name: parent.map(|p| p.name),
            image: row.image.clone(),
            image_id: row.image_id.clone(),
            own_bytes: row.own_bytes,
            total_bytes: row.total_bytes,
            build_id: row.build_id.clone(),
        }
    }
}

/// A recorded node kind as the platform API names it.
pub(crate) fn node_kind(kind: NodeKind) -> hutch_api::NodeKind {
    match kind {
        NodeKind::Base => hutch_api::NodeKind::Base,
        NodeKind::Diff => hutch_api::NodeKind::Diff,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Unpacked bytes of the layers the template adds.
    pub own_bytes: u64,
    /// Unpacked bytes of the whole root filesystem.
    pub total_bytes: u64,
    /// Stored (blob) bytes of the layers the template adds.
    pub snapshot_size_bytes: u64,
}

/// What a new build is asked to make.
pub(crate) struct NewBuild<'a> {
    pub name: &'a str,
    pub dockerfile: &'a str,
    pub base_image: &'a str,
    pub public: bool,
    pub parent: Option<&'a TemplateRow>,
    /// Default: the parent's, else [`DEFAULT_ROOTFS_DISK_BYTES`].
    pub rootfs_disk_bytes: Option<u64>,
    pub token_sha256: String,
}

/// A `prepared` build row with fresh build, template and snapshot ids.
pub(crate) fn new_build(b: NewBuild<'_>) -> Result<BuildRow, StateError> {
    let now = now_ms();
    Ok(BuildRow {
        id: format!("bld_{}", random_hex(10)?),
        token_sha256: b.token_sha256,
        name: b.name.to_string(),
        dockerfile: b.dockerfile.to_string(),
        base_image: b.base_image.to_string(),
        public: b.public,
        node_kind: if b.parent.is_some() {
            NodeKind::Diff
        } else {
            NodeKind::Base
        },
        parent_id: b.parent.map(|p| p.id.clone()),
        template_id: new_template_id()?,
        snapshot_id: format!("snap_{}", random_hex(10)?),
        rootfs_disk_bytes: b.rootfs_disk_bytes.unwrap_or_else(|| {
            b.parent
                .map_or(DEFAULT_ROOTFS_DISK_BYTES, |p| p.rootfs_disk_bytes)
        }),
        state: BuildState::Prepared,
        builder_sandbox: None,
        image: None,
        image_id: None,
        snapshot_size_bytes: None,
        own_bytes: None,
        total_bytes: None,
        error: None,
        created_at: now,
        updated_at: now,
    })
}

pub(crate) fn new_template_id() -> Result<String, StateError> {
    Ok(format!("tpl_{}", random_hex(10)?))
}

/// Template names: what the SDK accepts, minus what would be confused with an id or a path.
pub fn validate_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with("tpl_")
        && !name.starts_with("sandbox_template_")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
        && !name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if ok {
        Ok(())
    } else {
        Err(StateError::invalid(
            Invalid::TemplateName,
            format!(
                "invalid template name {name:?}: use 1-128 characters of letters, digits, '-', '_', \
                 '.', ':' and '/', not starting with \"tpl_\""
            ),
        ))
    }
}

pub fn template_not_found(what: &str) -> StateError {
    StateError::not_found(Kind::Template, what)
}

pub fn build_not_found(id: &str) -> StateError {
    StateError::not_found(Kind::Build, id)
}

fn store_error(e: hutch_store::StoreError) -> StateError {
    StateError::Store(e)
}

fn conflict_error(conflict: crate::db::templates::TemplateConflict) -> StateError {
    use crate::db::templates::TemplateConflict as C;
    match conflict {
        C::HasChildren { id, children } => StateError::conflict(
            Conflict::TemplateHasChildren,
            format!(
                "template {id} has templates built on it ({}); remove those first",
                children.join(", ")
            ),
        ),
        C::BuildState { id, state } => StateError::conflict(
            Conflict::BuildNotBuilt,
            format!(
                "template build {id} is {}, not built: nothing to register",
                state.as_str()
            ),
        ),
    }
}
