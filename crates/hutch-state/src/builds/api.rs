//! Prepare, status and complete: what the platform API asks of template builds.

use hutch_api::{
    BuildParent, BuilderSpec, CompleteBuildRequest, PrepareBuildRequest, PrepareBuildResponse,
    Template, TemplateBuild,
};

use super::{BUILDER_CPUS, BUILDER_DISK_MB, BUILDER_MEMORY_MB, Builds, token_hash};
use crate::db::BuildState;
use crate::error::{Conflict, Invalid, StateError};
use crate::random_hex;
use crate::templates::{
    NewBuild, SNAPSHOT_FORMAT, build_not_found, new_build, node_kind, snapshot_uri,
    template_not_found, validate_name,
};

impl Builds {
    /// Prepare: checks everything that can be checked before a builder sandbox exists.
    pub fn prepare(&self, body: PrepareBuildRequest) -> Result<PrepareBuildResponse, StateError> {
        validate_name(&body.name)?;
        // The build channel and RUN's writes come from the backend: refused up front, before
        // anything is recorded, on one that offers neither.
        let capabilities = self.backend.capabilities();
        for needed in [
            hutch_runtime::CapabilityName::SandboxSocket,
            hutch_runtime::CapabilityName::SandboxWritableLayer,
        ] {
            if !capabilities.is_supported(needed) {
                return Err(hutch_runtime::RuntimeError::unsupported(
                    self.backend.name(),
                    &capabilities,
                    needed,
                )
                .into());
            }
        }
        if body.dockerfile.trim().is_empty() {
            return Err(StateError::invalid(
                Invalid::Request,
                "the Dockerfile is empty",
            ));
        }
        // A syntax error fails here, naming the line, before any sandbox starts.
        let parsed = hutch_build::dockerfile::parse(&body.dockerfile).map_err(|e| {
            StateError::invalid(
                Invalid::Dockerfile,
                format!("Dockerfile line {}: {}", e.line, e.message),
            )
        })?;
        if parsed.stages.is_empty() {
            return Err(StateError::invalid(
                Invalid::Dockerfile,
                "the Dockerfile has no FROM",
            ));
        }
        let parent = match &body.parent_template {
            Some(p) => {
                let row = self
                    .db
                    .template(&p.template_id)?
                    .ok_or_else(|| template_not_found(&p.template_id))?;
                if let Some(name) = &p.name
                    && *name != row.name
                {
                    return Err(StateError::conflict(
                        Conflict::TemplateChanged,
                        format!(
                            "template {} is now called {:?}, not {name:?}",
                            row.id, row.name
                        ),
                    ));
                }
                Some(row)
            }
            None if body.rootfs_node_kind.as_deref() == Some("diff") => {
                return Err(StateError::invalid(
                    Invalid::Request,
                    "a diff build needs its parentTemplate",
                ));
            }
            None => None,
        };
        // A template with children cannot be replaced: say so now, not after the build.
        if let Some(existing) = self.db.template_by_name(&body.name)? {
            let children = self.db.template_children(&existing.id)?;
            if !children.is_empty() {
                return Err(StateError::conflict(
                    Conflict::TemplateHasChildren,
                    format!(
                        "template {:?} has templates built on it ({}); it cannot be replaced",
                        body.name,
                        children.join(", ")
                    ),
                ));
            }
        }
        let token = random_hex(24)?;
        let row = new_build(NewBuild {
            name: &body.name,
            dockerfile: &body.dockerfile,
            base_image: body.base_image.as_deref().unwrap_or_default(),
            public: body.public,
            parent: parent.as_ref(),
            rootfs_disk_bytes: None,
            token_sha256: token_hash(&token),
        })?;
        let (id, template_id) = (row.id.clone(), row.template_id.clone());
        self.db.insert_build(&row)?;
        tracing::info!(build = %id, name = %row.name, kind = row.node_kind.as_str(), "prepared a template build");
        Ok(PrepareBuildResponse {
            build_id: id,
            build_token: token,
            snapshot_uri: snapshot_uri(&template_id),
            template_id,
            snapshot_id: row.snapshot_id,
            rootfs_node_kind: node_kind(row.node_kind),
            builder: BuilderSpec {
                image: crate::default_image::BUILDER_IMAGE.into(),
                command: hutch_wire::build_channel::ROOTFS_BUILD_COMMAND.into(),
                cpus: BUILDER_CPUS,
                memory_mb: BUILDER_MEMORY_MB,
                disk_mb: BUILDER_DISK_MB,
            },
            parent: parent.map(|p| BuildParent {
                parent_manifest_uri: p.snapshot_uri,
                rootfs_disk_bytes: p.rootfs_disk_bytes,
                template_id: p.id,
                name: p.name,
            }),
        })
    }

    /// The name the build `id` registers its template under, if there is such a build.
    pub fn name_of(&self, id: &str) -> Result<Option<String>, StateError> {
        Ok(self.db.build(id)?.map(|b| b.name))
    }

    pub fn status(&self, id: &str) -> Result<TemplateBuild, StateError> {
        let b = self.db.build(id)?.ok_or_else(|| build_not_found(id))?;
        Ok(TemplateBuild {
            build_id: b.id,
            name: b.name,
            state: build_state(b.state),
            rootfs_node_kind: node_kind(b.node_kind),
            parent_template_id: b.parent_id,
            template_id: b.template_id,
            snapshot_id: b.snapshot_id,
            builder_sandbox_id: b.builder_sandbox,
            error: b.error,
            created_at: b.created_at,
            updated_at: b.updated_at,
        })
    }

    /// Complete: registers the template the host built; the client's report must agree.
    pub fn complete(&self, id: &str, body: CompleteBuildRequest) -> Result<Template, StateError> {
        let build = self.db.build(id)?.ok_or_else(|| build_not_found(id))?;
        let mismatch = |what: &str, said: &str, recorded: &str| {
            StateError::conflict(
                Conflict::SnapshotMismatch,
                format!("{what} {said:?} is not the one build {id} produced ({recorded:?})"),
            )
        };
        if body.snapshot_id != build.snapshot_id {
            return Err(mismatch(
                "snapshotId",
                &body.snapshot_id,
                &build.snapshot_id,
            ));
        }
        let uri = snapshot_uri(&build.template_id);
        if body.snapshot_uri != uri {
            return Err(mismatch("snapshotUri", &body.snapshot_uri, &uri));
        }
        if let Some(format) = &body.snapshot_format_version
            && format != SNAPSHOT_FORMAT
        {
            return Err(mismatch("snapshotFormatVersion", format, SNAPSHOT_FORMAT));
        }
        if let Some(kind) = &body.rootfs_node_kind
            && kind != build.node_kind.as_str()
        {
            return Err(mismatch("rootfsNodeKind", kind, build.node_kind.as_str()));
        }
        if let (Some(said), Some(parent)) = (&body.parent_manifest_uri, &build.parent_id) {
            let recorded = self
                .db
                .template(parent)?
                .map(|p| p.snapshot_uri)
                .unwrap_or_default();
            if *said != recorded {
                return Err(mismatch("parentManifestUri", said, &recorded));
            }
        }
        let row = self.templates.complete(id)?;
        Ok(self.templates.to_api(&row))
    }
}

/// A recorded build state as the platform API names it.
fn build_state(state: BuildState) -> hutch_api::BuildState {
    match state {
        BuildState::Prepared => hutch_api::BuildState::Prepared,
        BuildState::Building => hutch_api::BuildState::Building,
        BuildState::Built => hutch_api::BuildState::Built,
        BuildState::Failed => hutch_api::BuildState::Failed,
        BuildState::Completed => hutch_api::BuildState::Completed,
    }
}
