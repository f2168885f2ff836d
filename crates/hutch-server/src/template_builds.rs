//! Template builds as the Tensorlake SDK drives them: prepare, a builder sandbox running
//! `tl-rootfs-build --spec ... --metadata-out ...`, complete.
//!
//! There is one build engine: the host's (`hutch_build`). The builder sandbox runs the
//! `hutch/rootfs-builder` image, whose `tl-rootfs-build` is the agent binary under another
//! name. It hands the spec and the build context over the *build channel*, a unix socket the
//! host listens on only in builder sandboxes (`/run/hutch/build.sock`, next to the agent's),
//! and prints what the host reports. The host builds (every RUN in a sandbox of its own, steps
//! cached), records the result on the build row (`built`), and answers with the metadata the
//! SDK reads back. `complete` then registers the template in one transaction.
//!
//! Trust: the build id alone claims nothing. Prepare hands out a random build token (only its
//! hash is stored) inside the spec the SDK passes through to the builder; the channel needs
//! both, a build is claimed once, and the Dockerfile built is the one given to prepare.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use hutch_build::engine::{BuildEvent, BuildRequest, Engine};
use hutch_runtime::gvisor::GvisorBackend;
use hutch_store::Store;
use hutch_wire::build_channel::{
    BUILD_SOCKET_NAME, BuildChannelEvent, BuildHello, MAX_HELLO_BYTES,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::task::JoinHandle;

use crate::db::templates::BuildResult;
use crate::db::{BuildRow, Db};
use crate::error::ApiError;
use crate::sandboxes::{Sandboxes, now_ms, random_hex};
use crate::templates::{
    NewBuild, SNAPSHOT_FORMAT, Templates, build_not_found, new_build, snapshot_uri, template_image,
    template_not_found, validate_name,
};

/// What a builder sandbox gets: it only relays, the host does the work.
const BUILDER_CPUS: f64 = 1.0;
const BUILDER_MEMORY_MB: i64 = 512;
const BUILDER_DISK_MB: u64 = 10 * 1024;
/// How long a builder sandbox lives after its build ended, if nobody deletes it.
const BUILDER_GRACE_SECS: i64 = 300;
/// A build that is built but not completed after this long is dropped at the next start.
const ABANDONED_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How often a running server sweeps builds nobody will complete.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long the build channel waits for the builder to send or read anything.
const CHANNEL_IDLE: std::time::Duration = std::time::Duration::from_secs(120);

pub struct Builds {
    db: Arc<Db>,
    templates: Templates,
    backend: Arc<GvisorBackend>,
    store: Store,
    registry: hutch_registry::Client,
    sandboxes: Arc<Sandboxes>,
    /// Build-channel listeners, by builder sandbox.
    listeners: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// The limits every RUN of a build gets.
#[derive(Clone, Copy, Debug, Default)]
struct Limits {
    cpus: Option<f64>,
    memory_mb: Option<u64>,
}

/// `POST .../sandbox-template-builds`, as the SDK sends it (older SDKs send fewer fields).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrepareBody {
    name: String,
    dockerfile: String,
    #[serde(default)]
    base_image: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    rootfs_node_kind: Option<String>,
    #[serde(default)]
    parent_template: Option<ParentRef>,
    // `additionalLocalImages` (templates a `COPY --from` names) needs nothing here: the
    // host engine resolves template names itself. Unknown fields are ignored.
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    template_id: String,
    #[serde(default)]
    name: Option<String>,
}

/// `POST .../{build}/complete`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompleteBody {
    snapshot_id: String,
    snapshot_uri: String,
    #[serde(default)]
    snapshot_format_version: Option<String>,
    #[serde(default)]
    rootfs_node_kind: Option<String>,
    #[serde(default)]
    parent_manifest_uri: Option<String>,
}

fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Builds {
    pub fn new(
        db: Arc<Db>,
        templates: Templates,
        backend: Arc<GvisorBackend>,
        store: Store,
        registry: hutch_registry::Client,
        sandboxes: Arc<Sandboxes>,
    ) -> Arc<Self> {
        // Builds a previous server was running died with it; their images will never be
        // registered.
        match db.fail_interrupted_builds(now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(builds = n, "marked builds interrupted by a restart failed"),
            Err(e) => tracing::error!(error = %e, "settling interrupted builds"),
        }
        let this = Arc::new(Self {
            db,
            templates,
            backend,
            store,
            registry,
            sandboxes,
            listeners: Mutex::new(HashMap::new()),
        });
        this.sweep();
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match weak.upgrade() {
                    Some(builds) => builds.sweep(),
                    None => return,
                }
            }
        });
        this
    }

    /// Drops builds nobody completed for a day (their client is gone) and removes the images
    /// of failed builds: now, and every [`SWEEP_EVERY`] while the server runs.
    fn sweep(&self) {
        let now = now_ms();
        if let Ok(n @ 1..) = self.db.fail_abandoned_builds(now - ABANDONED_AFTER_MS, now) {
            tracing::info!(builds = n, "dropped builds nobody completed");
        }
        if let Ok(images) = self.db.unregistered_build_images() {
            for image in images {
                match self.store.remove_image(&image) {
                    Ok(_) => tracing::info!(%image, "removed the image of a failed build"),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        tracing::warn!(%image, error = %e, "removing a failed build's image");
                        continue;
                    }
                }
                let _ = self.db.forget_build_image(&image);
            }
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Opens the build channel of a builder sandbox.
    pub fn listen(self: &Arc<Self>, sandbox: &str) {
        let listener = match self.backend.listen_in_sandbox(sandbox, BUILD_SOCKET_NAME) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%sandbox, error = %e, "cannot open the build channel");
                return;
            }
        };
        let this = Arc::clone(self);
        let id = sandbox.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let this = Arc::clone(&this);
                let id = id.clone();
                tokio::spawn(async move { this.serve_channel(id, stream).await });
            }
        });
        if let Some(old) = self.lock().insert(sandbox.to_string(), task) {
            old.abort();
        }
    }

    /// Closes the build channel of a sandbox that is gone (a build in flight goes on).
    pub fn forget(&self, sandbox: &str) {
        if let Some(task) = self.lock().remove(sandbox) {
            task.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepare: checks everything that can be checked before a builder sandbox exists.
    pub fn prepare(&self, body: Value) -> Result<Value, ApiError> {
        let body: PrepareBody = serde_json::from_value(body)
            .map_err(|e| ApiError::bad_request(format!("invalid build request: {e}")))?;
        validate_name(&body.name)?;
        if body.dockerfile.trim().is_empty() {
            return Err(ApiError::bad_request("the Dockerfile is empty"));
        }
        // A syntax error fails here, naming the line, before any sandbox starts.
        let parsed = hutch_build::dockerfile::parse(&body.dockerfile).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "dockerfile_invalid",
                format!("Dockerfile line {}: {}", e.line, e.message),
            )
        })?;
        if parsed.stages.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "dockerfile_invalid",
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
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "template_changed",
                        format!(
                            "template {} is now called {:?}, not {name:?}",
                            row.id, row.name
                        ),
                    ));
                }
                Some(row)
            }
            None if body.rootfs_node_kind.as_deref() == Some("diff") => {
                return Err(ApiError::bad_request(
                    "a diff build needs its parentTemplate",
                ));
            }
            None => None,
        };
        // A template with children cannot be replaced: say so now, not after the build.
        if let Some(existing) = self.db.template_by_name(&body.name)? {
            let children = self.db.template_children(&existing.id)?;
            if !children.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "template_has_children",
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
        Ok(json!({
            "buildId": id,
            "buildToken": token,
            "templateId": template_id,
            "snapshotId": row.snapshot_id,
            "snapshotUri": snapshot_uri(&template_id),
            "rootfsNodeKind": row.node_kind.as_str(),
            "builder": {
                "image": crate::default_image::BUILDER_IMAGE,
                "command": hutch_wire::build_channel::ROOTFS_BUILD_COMMAND,
                "cpus": BUILDER_CPUS,
                "memoryMb": BUILDER_MEMORY_MB,
                "diskMb": BUILDER_DISK_MB,
            },
            "parent": parent.as_ref().map(|p| json!({
                "parentManifestUri": p.snapshot_uri,
                "rootfsDiskBytes": p.rootfs_disk_bytes,
                "templateId": p.id,
                "name": p.name,
            })),
        }))
    }

    pub fn status(&self, id: &str) -> Result<Value, ApiError> {
        let b = self.db.build(id)?.ok_or_else(|| build_not_found(id))?;
        Ok(json!({
            "buildId": b.id,
            "name": b.name,
            "state": b.state.as_str(),
            "rootfsNodeKind": b.node_kind.as_str(),
            "parentTemplateId": b.parent_id,
            "templateId": b.template_id,
            "snapshotId": b.snapshot_id,
            "builderSandboxId": b.builder_sandbox,
            "error": b.error,
            "createdAt": b.created_at,
            "updatedAt": b.updated_at,
        }))
    }

    /// Complete: registers the template the host built; the client's report must agree.
    pub fn complete(&self, id: &str, body: Value) -> Result<Value, ApiError> {
        let body: CompleteBody = serde_json::from_value(body)
            .map_err(|e| ApiError::bad_request(format!("invalid completion: {e}")))?;
        let build = self.db.build(id)?.ok_or_else(|| build_not_found(id))?;
        let mismatch = |what: &str, said: &str, recorded: &str| {
            ApiError::new(
                StatusCode::CONFLICT,
                "snapshot_mismatch",
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
        Ok(self.templates.json(&row))
    }

    async fn serve_channel(self: Arc<Self>, sandbox: String, stream: tokio::net::UnixStream) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        // A builder that stops sending (or reading) must not hold a thread forever.
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(CHANNEL_IDLE)).is_err()
            || stream.set_write_timeout(Some(CHANNEL_IDLE)).is_err()
        {
            return;
        }
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        // Bounded: a builder that stops reading costs the server a few MiB at most.
        let (tx, rx) = crate::build_events::bounded(crate::build_events::OUTPUT_BYTES);
        let writer_thread = std::thread::spawn(move || write_events(writer, rx));
        let this = Arc::clone(&self);
        let sbx = sandbox.clone();
        let received = tokio::task::spawn_blocking(move || this.receive(&sbx, stream)).await;
        let (build, context) = match received {
            Ok(Ok(got)) => got,
            Ok(Err(message)) => {
                tracing::warn!(%sandbox, %message, "refused a build request");
                tx.send(BuildChannelEvent::Error { message });
                drop(tx);
                let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
                return;
            }
            Err(_) => return,
        };
        tracing::info!(%sandbox, build = %build.id, "building a template for a builder sandbox");
        // The builder sandbox must outlive the build, whatever timeout its creator gave it.
        let _ = self.sandboxes.db().set_timeout(&sandbox, 0);
        let started = std::time::Instant::now();
        // A task of its own: a builder that goes away mid-build cancels nothing halfway.
        let this = Arc::clone(&self);
        let events = tx.clone();
        let limits = self.limits_of(&sandbox);
        let outcome = tokio::spawn(async move {
            let result = this.run(&build, context.as_deref(), limits, &events).await;
            if let Some(dir) = context {
                let _ = std::fs::remove_dir_all(dir);
            }
            // Recorded here, with the build: whatever happens to the channel.
            if let Err(message) = &result {
                let _ = this.db.fail_build(&build.id, message, now_ms());
            }
            (build, result)
        })
        .await;
        if let Ok(row) = self.sandboxes.db().sandbox(&sandbox)
            && let Some(row) = row
        {
            let ran = (now_ms() - row.started_at.unwrap_or(row.created_at)) / 1000;
            let _ = self
                .sandboxes
                .db()
                .set_timeout(&sandbox, ran + BUILDER_GRACE_SECS);
        }
        let final_event = match outcome {
            Ok((build, Ok(metadata))) => {
                tracing::info!(build = %build.id, secs = started.elapsed().as_secs_f64(), "template build done");
                BuildChannelEvent::Done { metadata }
            }
            Ok((build, Err(message))) => {
                tracing::warn!(build = %build.id, %message, "template build failed");
                BuildChannelEvent::Error { message }
            }
            Err(e) => BuildChannelEvent::Error {
                message: format!("the build task failed: {e}"),
            },
        };
        tx.send(final_event);
        drop(tx);
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    }

    /// The resources the builder sandbox was created with.
    fn limits_of(&self, sandbox: &str) -> Limits {
        let spec = self
            .sandboxes
            .db()
            .sandbox(sandbox)
            .ok()
            .flatten()
            .map(|row| row.spec)
            .unwrap_or_default();
        Limits {
            cpus: spec["cpus"].as_f64(),
            memory_mb: spec["memory_mb"].as_u64(),
        }
    }

    /// Reads the hello and the context (blocking), and claims the build.
    fn receive(
        &self,
        sandbox: &str,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<(BuildRow, Option<PathBuf>), String> {
        let mut reader = BufReader::with_capacity(256 << 10, stream);
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_HELLO_BYTES as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the build request: {e}"))?;
        if line.last() != Some(&b'\n') {
            return Err("the build request line is missing or too long".into());
        }
        let hello: BuildHello = serde_json::from_slice(&line)
            .map_err(|e| format!("the build request is not valid: {e}"))?;
        let field = |name: &str| {
            hello
                .spec
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let id = field("buildId").ok_or("the spec names no buildId")?;
        let token = field("buildToken").ok_or("the spec carries no buildToken")?;
        let build = self
            .db
            .build(&id)
            .map_err(|e| e.to_string())?
            .filter(|b| b.token_sha256 == token_hash(&token))
            .ok_or_else(|| format!("build {id} is unknown, or its token does not match"))?;
        if !self
            .db
            .claim_build(&id, sandbox, now_ms())
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "build {id} is {}, not waiting for a builder",
                build.state.as_str()
            ));
        }
        let import = field("importImageReference");
        if let Some(reference) = &import
            && !same_reference(reference, &build.base_image, &build.dockerfile)
        {
            let message = format!("the spec imports {reference:?}, not what build {id} prepared");
            let _ = self.db.fail_build(&id, &message, now_ms());
            return Err(message);
        }
        if import.is_some() {
            return Ok((build, None));
        }
        if !hello.context {
            let message = "a Dockerfile build needs its context".to_string();
            let _ = self.db.fail_build(&id, &message, now_ms());
            return Err(message);
        }
        let dir = tempfile::Builder::new()
            .prefix("build-context-")
            .tempdir_in(self.store.root().join("tmp"))
            .map_err(|e| format!("creating the context directory: {e}"))?
            .keep();
        // No bigger than the root filesystem it is for.
        let mut limited = (&mut reader).take(build.rootfs_disk_bytes);
        let unpacked = unpack_context(&mut limited, &dir);
        let unpacked = match unpacked {
            Ok(()) if limited.limit() == 0 => Err(std::io::Error::other(format!(
                "the context is larger than the template's {} byte disk",
                build.rootfs_disk_bytes
            ))),
            other => other,
        };
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&dir);
            let message = format!("receiving the build context: {e}");
            let _ = self.db.fail_build(&id, &message, now_ms());
            return Err(message);
        }
        Ok((build, Some(dir)))
    }

    /// Builds (or imports) for `build` and records the result; the metadata for the builder.
    async fn run(
        &self,
        build: &BuildRow,
        context: Option<&Path>,
        limits: Limits,
        events: &crate::build_events::EventSender,
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
                let templates = self.templates.clone();
                let resolve = move |n: &str| templates.image_of(n);
                let engine = Engine {
                    backend: &self.backend,
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
                return Err(e.message);
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

/// An import build's spec must import what prepare was told (`FROM <reference>`).
fn same_reference(reference: &str, base_image: &str, dockerfile: &str) -> bool {
    reference == base_image || dockerfile.trim() == format!("FROM {reference}")
}

fn write_events(
    mut socket: std::os::unix::net::UnixStream,
    rx: crate::build_events::EventReceiver,
) {
    let mut broken = false;
    for event in rx {
        if broken {
            continue;
        }
        let Ok(mut line) = serde_json::to_vec(&event) else {
            continue;
        };
        line.push(b'\n');
        if socket.write_all(&line).is_err() {
            // The builder went away; the build goes on and its result is recorded anyway.
            broken = true;
        }
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

/// Unpacks a build context tar into `dir`: regular files, directories and symlinks only, never
/// outside `dir` (the tar crate refuses `..` and writes through symlinks out of it), owners
/// not kept (COPY sets them).
fn unpack_context(reader: &mut impl Read, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        if !entry.unpack_in(dir)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the context entry {:?} leaves the context",
                    entry.path().unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar entry with a raw name (the tar crate's own setters refuse `..`).
    fn entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn finish(mut tar: Vec<u8>) -> Vec<u8> {
        tar.extend_from_slice(&[0; 1024]);
        tar
    }

    #[test]
    fn a_context_keeps_files_dirs_and_symlinks() {
        let mut tar = Vec::new();
        entry(&mut tar, "./src/", tar::EntryType::Directory, "", b"");
        entry(
            &mut tar,
            "./src/a.txt",
            tar::EntryType::Regular,
            "",
            b"hello",
        );
        entry(
            &mut tar,
            "./link",
            tar::EntryType::Symlink,
            "src/a.txt",
            b"",
        );
        entry(&mut tar, "./dev", tar::EntryType::Char, "", b"");
        let dir = tempfile::tempdir().unwrap();
        unpack_context(&mut finish(tar).as_slice(), dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("src/a.txt")).unwrap(),
            b"hello"
        );
        assert!(dir.path().join("link").is_symlink());
        assert!(!dir.path().join("dev").exists(), "devices are not context");
    }

    #[test]
    fn a_context_never_writes_outside_its_directory() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("ctx");
        std::fs::create_dir(&dir).unwrap();

        let mut tar = Vec::new();
        entry(
            &mut tar,
            "../escaped.txt",
            tar::EntryType::Regular,
            "",
            b"x",
        );
        let err = unpack_context(&mut finish(tar).as_slice(), &dir).unwrap_err();
        assert!(err.to_string().contains("leaves the context"), "{err}");
        assert!(!outer.path().join("escaped.txt").exists());

        // A symlink to the outside, then a file written through it.
        let mut tar = Vec::new();
        let target = outer.path().to_str().unwrap();
        entry(&mut tar, "out", tar::EntryType::Symlink, target, b"");
        entry(
            &mut tar,
            "out/through.txt",
            tar::EntryType::Regular,
            "",
            b"x",
        );
        assert!(unpack_context(&mut finish(tar).as_slice(), &dir).is_err());
        assert!(!outer.path().join("through.txt").exists());
    }

    #[test]
    fn an_import_spec_must_import_what_was_prepared() {
        assert!(same_reference("r/x:1", "r/x:1", "FROM r/x:1\n"));
        assert!(same_reference("r/x:1", "", "FROM r/x:1\n"));
        assert!(!same_reference("r/evil:1", "r/x:1", "FROM r/x:1\n"));
    }
}
