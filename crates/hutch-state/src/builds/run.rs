//! The build itself: a Dockerfile build by the host's engine (every RUN in a sandbox of its
//! own, with the builder sandbox's limits), or an import of the image the spec names; the
//! result recorded on the build row (`built`), and the metadata the builder reads back.

use std::path::Path;
use std::sync::Arc;

use hutch_build::engine::{BuildEvent, BuildRequest, Engine};
use hutch_wire::build_channel::BuildChannelEvent;
use serde_json::{Value, json};

use super::{Builds, Limits, events};
use crate::db::BuildRow;
use crate::db::templates::BuildResult;
use crate::now_ms;
use crate::templates::{SNAPSHOT_FORMAT, snapshot_uri, template_image};

impl Builds {
    /// Builds (or imports) for `build` and records the result; the metadata for the builder.
    pub(super) async fn run(
        &self,
        build: &BuildRow,
        context: Option<&Path>,
        limits: Limits,
        events: &events::EventSender,
    ) -> Result<Value, String> {
        let send = |e: BuildChannelEvent| events.send(e);
        let parent = match &build.parent_id {
            Some(id) => Some(
                self.db
                    .template(id)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("the parent template {id} was removed"))?,
            ),
            None => None,
        };
        let name = template_image(&build.template_id);
        let image = match context {
            None => {
                let reference = build.base_image.clone();
                send(BuildChannelEvent::Status {
                    message: format!("Pulling {reference} into the store..."),
                });
                let parsed =
                    hutch_registry::Reference::parse(&reference).map_err(|e| e.to_string())?;
                let log = |event: hutch_registry::Event| {
                    if let hutch_registry::Event::LayerDone { digest, size } = event {
                        send(BuildChannelEvent::Status {
                            message: format!("pulled layer {digest} ({size} bytes)"),
                        });
                    }
                };
                let pulled = hutch_registry::pull(&self.registry, &self.store, &parsed, &log)
                    .await
                    .map_err(|e| e.to_string())?;
                self.store
                    .tag(&pulled.name, &name)
                    .map_err(|e| e.to_string())?
            }
            Some(dir) => {
                let relay = |event: BuildEvent| {
                    let e = match event {
                        BuildEvent::Step {
                            stage,
                            line,
                            text,
                            cached,
                        } => BuildChannelEvent::Step {
                            text: format!(
                                "[stage {stage}] line {line}: {text}{}",
                                if cached { " (cached)" } else { "" }
                            ),
                        },
                        BuildEvent::Output { stderr, data } => BuildChannelEvent::Output {
                            stderr,
                            data: String::from_utf8_lossy(&data).into_owned(),
                        },
                        BuildEvent::Warning { line, message } => BuildChannelEvent::Warning {
                            message: format!("line {line}: {message}"),
                        },
                    };
                    events.send(e);
                };
                // `FROM hutch/default` (or the SDK's `tensorlake/ubuntu-minimal`) is the
                // server's default image: a build in its first minute waits for it.
                let default = self.sandboxes.default_image().to_string();
                let images = Arc::clone(self.sandboxes.default_images());
                if images.builds(&default) {
                    let _ = images.ready().await;
                }
                let templates = self.templates.clone();
                let resolve = move |n: &str| {
                    templates
                        .image_of(n)
                        .or_else(|| crate::default_image::builtin(n, &default))
                };
                let engine = Engine {
                    backend: self.backend.as_ref(),
                    store: &self.store,
                    registry: &self.registry,
                    events: &relay,
                    templates: Some(&resolve),
                };
                let request = BuildRequest {
                    context: dir.to_path_buf(),
                    dockerfile: build.dockerfile.clone(),
                    dockerfile_name: "Dockerfile".into(),
                    tag: Some(name.clone()),
                    build_args: Default::default(),
                    target: None,
                    // The builder sandbox's resources are the build's: the SDK's `cpus` and
                    // `memory_mb` options (and its advice to raise them) mean these.
                    memory_mb: limits.memory_mb,
                    cpus: limits.cpus,
                    // And its network: RUN steps reach what the builder sandbox may reach.
                    network: limits.network.clone(),
                    // The SDK has no way to pass secrets; a required one fails the step.
                    secrets: Default::default(),
                    // Cache mounts are shared within a namespace, never across.
                    cache_scope: format!("namespace:{}", limits.namespace),
                };
                engine.build(&request).await.map_err(|e| match e {
                    hutch_build::BuildError::RunFailed { oom: true, .. } => format!(
                        "{e}\nThe build ran out of memory: its RUN steps get the builder \
                         sandbox's memory. Retry with a larger `memory_mb` (now {} MiB).",
                        limits
                            .memory_mb
                            .map_or("unlimited".into(), |m| m.to_string())
                    ),
                    e => e.to_string(),
                })?
            }
        };
        let sizes = match self.templates.sizes(&image, parent.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.store.remove_image(&name);
                return Err(e.to_string());
            }
        };
        let result = BuildResult {
            image: name.clone(),
            image_id: image.id.to_string(),
            snapshot_size_bytes: sizes.snapshot_size_bytes,
            own_bytes: sizes.own_bytes,
            total_bytes: sizes.total_bytes,
        };
        if !self
            .db
            .finish_build(&build.id, &result, now_ms())
            .map_err(|e| e.to_string())?
        {
            let _ = self.store.remove_image(&name);
            return Err(format!("build {} was settled while it ran", build.id));
        }
        let mut metadata = json!({
            "snapshot_id": build.snapshot_id,
            "snapshot_uri": snapshot_uri(&build.template_id),
            "snapshot_format_version": SNAPSHOT_FORMAT,
            "snapshot_size_bytes": sizes.snapshot_size_bytes,
            "rootfs_disk_bytes": build.rootfs_disk_bytes,
            "rootfs_node_kind": build.node_kind.as_str(),
            "image_id": image.id.to_string(),
            "own_bytes": sizes.own_bytes,
            "total_bytes": sizes.total_bytes,
        });
        if let Some(p) = &parent {
            metadata["parent_manifest_uri"] = json!(p.snapshot_uri);
        }
        Ok(metadata)
    }
}
