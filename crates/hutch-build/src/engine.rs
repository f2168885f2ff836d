//! The build engine: a Dockerfile's stages into images in the store. Every RUN runs in a
//! gVisor sandbox over the layers so far and its writes (the sandbox's overlay upper
//! directory) become the next layer; COPY and ADD stage their files in a directory that
//! becomes a layer the same way. Every step's result is an image in the store named by a
//! key over its parent's key, the instruction and its inputs, so an unchanged step is
//! found and not run again.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_runtime::agent::ExecEvent;
use hutch_runtime::gvisor::GvisorBackend;
use hutch_runtime::{Backend, SandboxSpec};
use hutch_store::{Digest, Image, IngestLayer, Store, write_layer_zstd};
use hutch_wire::StartProcess;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::context::{EntryKind, digest_sources, resolve_sources, walk};
use crate::dockerfile::{self, ArgDecl, Command, Dockerfile, Kind, Stage};
use crate::error::BuildError;
use crate::expand::expand;
use crate::ignore::DockerIgnore;
use crate::merged::{MergedView, resolve_owner};

/// Store names of cached steps: `hutch-build/step:<key>`.
pub const CACHE_REPO: &str = "hutch-build/step";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Built layers are stored and pushed zstd-compressed (OCI 1.1; Docker 23+, containerd
/// 1.5+, podman and buildah read it).
const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const LAYER_ZSTD_LEVEL: i32 = 3;

pub struct BuildRequest {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile's text, and how to name it in messages.
    pub dockerfile: String,
    pub dockerfile_name: String,
    /// The name the result gets in the store.
    pub tag: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// Build up to this stage (default: the last).
    pub target: Option<String>,
    /// Limits of every RUN's sandbox: a RUN past `memory_mb` is killed and reported out of
    /// memory, naming its line.
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
}

/// What a build reports while it works.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    Step {
        stage: usize,
        line: usize,
        text: String,
        cached: bool,
    },
    Output {
        stderr: bool,
        data: bytes::Bytes,
    },
    Warning {
        line: usize,
        message: String,
    },
}

/// The label naming the process that runs a RUN step's sandbox: `<pid>:<start time>`. A
/// build's sandboxes end with the step, so one whose owner is gone (killed mid-build) is an
/// orphan that [`sweep_orphans`] removes.
pub const OWNER_LABEL: &str = "hutch.build.owner";

/// This process, as [`OWNER_LABEL`] names it: the pid alone could be reused.
fn owner_token() -> String {
    let pid = std::process::id();
    format!("{pid}:{}", start_time(pid).unwrap_or(0))
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn owner_alive(token: &str) -> bool {
    let Some((pid, started)) = token.split_once(':') else {
        return false;
    };
    match (pid.parse::<u32>(), started.parse::<u64>()) {
        (Ok(pid), Ok(started)) => start_time(pid) == Some(started),
        _ => false,
    }
}

/// Removes the RUN sandboxes of builds whose process is gone (a server or CLI killed
/// mid-build): their mounts, layer pins and runsc containers would otherwise stay forever.
/// Returns how many were removed.
pub async fn sweep_orphans(backend: &GvisorBackend) -> usize {
    let Ok(sandboxes) = backend.list().await else {
        return 0;
    };
    let mut removed = 0;
    for sandbox in sandboxes {
        let labels = &sandbox.spec.labels;
        if labels.get("hutch.build").map(String::as_str) != Some("run") {
            continue;
        }
        // Sandboxes of builds from before owners were recorded count as orphans too: no
        // build outlives its process.
        if labels.get(OWNER_LABEL).is_some_and(|o| owner_alive(o)) {
            continue;
        }
        match backend.delete(&sandbox.id).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(id = %sandbox.id, error = %e, "removing an orphaned build sandbox")
            }
        }
    }
    removed
}

/// The store image of a registered template's name, if there is such a template.
pub type TemplateResolver = dyn Fn(&str) -> Option<String> + Send + Sync;

pub struct Engine<'a> {
    pub backend: &'a GvisorBackend,
    pub store: &'a Store,
    pub registry: &'a hutch_registry::Client,
    pub events: &'a (dyn Fn(BuildEvent) + Send + Sync),
    /// Registered templates: the store image of a template name, looked up before the
    /// store and the registry for `FROM` and `COPY --from`.
    pub templates: Option<&'a TemplateResolver>,
}

#[derive(Clone, Debug)]
struct Layer {
    diff_id: Digest,
    blob: Digest,
    media_type: String,
    size: u64,
}

/// A stage's result so far.
#[derive(Clone, Debug)]
struct State {
    layers: Vec<Layer>,
    /// The whole OCI image config (its `config` object is what instructions change).
    config: Value,
    key: String,
    /// Env keys set by this stage: re-setting one updates it in place, while re-setting an
    /// inherited one moves it to the end (buildah's order).
    stage_env: Vec<String>,
    /// Whether this stage set CMD: a later ENTRYPOINT clears only an inherited CMD.
    cmd_set: bool,
}

impl State {
    fn scratch() -> State {
        State {
            layers: Vec::new(),
            config: json!({"architecture": "amd64", "os": "linux", "config": {}}),
            key: hex::encode(Sha256::digest(b"scratch")),
            stage_env: Vec::new(),
            cmd_set: false,
        }
    }

    fn env(&self) -> Vec<String> {
        self.config["config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn env_lookup(&self, name: &str) -> Option<String> {
        self.env().into_iter().rev().find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env();
        let entry = format!("{key}={value}");
        let position = env.iter().position(|kv| kv.split('=').next() == Some(key));
        match position {
            Some(i) if self.stage_env.iter().any(|k| k == key) => env[i] = entry,
            _ => {
                env.retain(|kv| kv.split('=').next() != Some(key));
                env.push(entry);
                self.stage_env.push(key.to_string());
            }
        }
        self.config["config"]["Env"] = json!(env);
    }

    fn workdir(&self) -> String {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }

    fn chain(&mut self, what: &[u8]) {
        let mut h = Sha256::new();
        h.update(self.key.as_bytes());
        h.update([0]);
        h.update(what);
        self.key = hex::encode(h.finalize());
    }

    fn cache_name(&self) -> String {
        format!("{CACHE_REPO}:{}", self.key)
    }
}

fn cmd_json(command: &Command) -> Value {
    match command {
        Command::Exec(argv) => json!(argv),
        Command::Shell(text) => json!(["/bin/sh", "-c", text]),
    }
}

impl Engine<'_> {
    pub async fn build(&self, req: &BuildRequest) -> Result<Image, BuildError> {
        let file = req.dockerfile_name.clone();
        let syntax = |line: usize, message: String| BuildError::Dockerfile {
            file: file.clone(),
            line,
            message,
        };
        let parsed: Dockerfile =
            dockerfile::parse(&req.dockerfile).map_err(|e| syntax(e.line, e.message.clone()))?;
        // The context may be a client's upload: a `.dockerignore` symlink is not followed.
        let ignore_text =
            hutch_store::rooted::read_no_follow(&req.context, Path::new(".dockerignore"), 1 << 20)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
        let ignore = DockerIgnore::parse(&ignore_text);

        // Global ARGs: visible to FROM lines only, unless redeclared in a stage.
        let mut global: BTreeMap<String, String> = BTreeMap::new();
        for ArgDecl { name, default, .. } in &parsed.global_args {
            let value = req
                .build_args
                .get(name)
                .cloned()
                .or_else(|| {
                    default
                        .as_ref()
                        .map(|d| expand_with(d, &global, parsed.escape))
                        .transpose()
                        .ok()
                        .flatten()
                })
                .unwrap_or_default();
            global.insert(name.clone(), value);
        }
        let last = match &req.target {
            Some(t) => parsed
                .stages
                .iter()
                .position(|s| s.name.as_deref() == Some(t.to_lowercase().as_str()))
                .ok_or_else(|| syntax(1, format!("no stage named {t:?} to build (--target)")))?,
            None => parsed.stages.len().saturating_sub(1),
        };
        let mut done: Vec<State> = Vec::new();
        for (index, stage) in parsed.stages.iter().enumerate().take(last + 1) {
            let state = self
                .stage(req, &parsed, index, stage, &global, &done, &ignore)
                .await?;
            done.push(state);
        }
        let final_state = done.pop().ok_or_else(|| syntax(1, "no FROM".into()))?;
        let cached = self.commit(&final_state).await?;
        match &req.tag {
            Some(tag) => {
                let image = self.commit_as(&final_state, tag).await?;
                Ok(image)
            }
            None => Ok(cached),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stage(
        &self,
        req: &BuildRequest,
        parsed: &Dockerfile,
        index: usize,
        stage: &Stage,
        global: &BTreeMap<String, String>,
        done: &[State],
        ignore: &DockerIgnore,
    ) -> Result<State, BuildError> {
        let file = &req.dockerfile_name;
        let err = |line: usize, message: String| BuildError::Dockerfile {
            file: file.clone(),
            line,
            message,
        };
        let escape = parsed.escape;
        let base = expand_with(&stage.base, global, escape).map_err(|e| err(stage.line, e))?;
        if base.trim().is_empty() {
            return Err(err(
                stage.line,
                format!(
                    "FROM {}: the base image name is empty after expansion (a build-arg not given?)",
                    stage.base
                ),
            ));
        }
        (self.events)(BuildEvent::Step {
            stage: index,
            line: stage.line,
            text: format!("FROM {base}"),
            cached: false,
        });
        let mut state = if base.eq_ignore_ascii_case("scratch") {
            State::scratch()
        } else if let Some(i) = parsed.stages[..index]
            .iter()
            .position(|s| s.name.as_deref() == Some(base.to_lowercase().as_str()))
        {
            done[i].clone()
        } else {
            self.image_state(&base)
                .await
                .map_err(|e| err(stage.line, e.to_string()))?
        };
        state.stage_env.clear();
        state.cmd_set = false;
        // ARGs in scope for this stage; build args apply to declared ones only.
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        for instruction in &stage.instructions {
            let line = instruction.line;
            let lookup = |args: &BTreeMap<String, String>, state: &State, name: &str| {
                state.env_lookup(name).or_else(|| args.get(name).cloned())
            };
            let ex = |word: &str, args: &BTreeMap<String, String>, state: &State| {
                expand(word, &|n| lookup(args, state, n), escape).map_err(|e| err(line, e))
            };
            match &instruction.kind {
                Kind::Arg(decls) => {
                    for d in decls {
                        let value = match req.build_args.get(&d.name) {
                            Some(v) => v.clone(),
                            None => match &d.default {
                                Some(def) => ex(def, &args, &state)?,
                                None => global.get(&d.name).cloned().unwrap_or_default(),
                            },
                        };
                        args.insert(d.name.clone(), value);
                    }
                    self.step(
                        index,
                        line,
                        &format!(
                            "ARG {}",
                            decls
                                .iter()
                                .map(|d| d.name.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                        true,
                    );
                }
                Kind::Env(pairs) => {
                    for (k, v) in pairs {
                        let v = ex(v, &args, &state)?;
                        state.set_env(k, &v);
                    }
                    state.chain(format!("ENV {pairs:?}").as_bytes());
                    self.step(
                        index,
                        line,
                        &format!(
                            "ENV {}",
                            pairs
                                .iter()
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                        true,
                    );
                }
                Kind::Workdir(dir) => {
                    let dir = ex(dir, &args, &state)?;
                    let dir = if dir.starts_with('/') {
                        dir
                    } else {
                        format!("{}/{dir}", state.workdir().trim_end_matches('/'))
                    };
                    state.config["config"]["WorkingDir"] = json!(dir);
                    state.chain(format!("WORKDIR {dir}").as_bytes());
                    self.step(index, line, &format!("WORKDIR {dir}"), false);
                    self.ensure_dir(&mut state, &dir).await?;
                }
                Kind::User(user) => {
                    let user = ex(user, &args, &state)?;
                    state.config["config"]["User"] = json!(user);
                    state.chain(format!("USER {user}").as_bytes());
                    self.step(index, line, &format!("USER {user}"), true);
                }
                Kind::Entrypoint(c) => {
                    state.config["config"]["Entrypoint"] = cmd_json(c);
                    // Docker: a new ENTRYPOINT clears an inherited CMD, not this stage's.
                    if !state.cmd_set {
                        state.config["config"]["Cmd"] = Value::Null;
                    }
                    state.chain(format!("ENTRYPOINT {}", cmd_json(c)).as_bytes());
                    self.step(index, line, "ENTRYPOINT", true);
                }
                Kind::Cmd(c) => {
                    state.config["config"]["Cmd"] = cmd_json(c);
                    state.cmd_set = true;
                    state.chain(format!("CMD {}", cmd_json(c)).as_bytes());
                    self.step(index, line, "CMD", true);
                }
                Kind::Ignored {
                    instruction,
                    args: text,
                } => {
                    (self.events)(BuildEvent::Warning {
                        line,
                        // The reference's wording (the Tensorlake SDK's planning warning).
                        message: format!(
                            "Dockerfile instruction '{instruction}' is applied during the image \
                             build but has no effect when running sandboxes from this image \
                             ({instruction} {text})"
                        ),
                    });
                }
                kind @ (Kind::Copy { .. } | Kind::Add { .. }) => {
                    // COPY and ADD differ only in `--from` (COPY) and archives and URLs (ADD).
                    let (sources, dest, from, chown, chmod, add) = match kind {
                        Kind::Copy {
                            sources,
                            dest,
                            from,
                            chown,
                            chmod,
                        } => (sources, dest, from.as_ref(), chown, chmod, false),
                        Kind::Add {
                            sources,
                            dest,
                            chown,
                            chmod,
                        } => (sources, dest, None, chown, chmod, true),
                        _ => unreachable!("matched COPY or ADD above"),
                    };
                    let sources = sources
                        .iter()
                        .map(|s| ex(s, &args, &state))
                        .collect::<Result<Vec<_>, _>>()?;
                    if add && let Some(url) = sources.iter().find(|s| s.contains("://")) {
                        return Err(err(
                            line,
                            format!(
                                "ADD of a URL ({url}) is not supported: builds have no network"
                            ),
                        ));
                    }
                    let dest = ex(dest, &args, &state)?;
                    let from_state = match from {
                        None => None,
                        Some(f) => {
                            let f = ex(f, &args, &state)?;
                            let found = parsed.stages[..index]
                                .iter()
                                .position(|s| s.name.as_deref() == Some(f.to_lowercase().as_str()))
                                .or_else(|| f.parse::<usize>().ok().filter(|i| *i < index));
                            if found.is_none()
                                && let Ok(n) = f.parse::<usize>()
                            {
                                return Err(err(
                                    line,
                                    format!(
                                        "COPY --from={f}: no build stage {n} before this one (stages are numbered from 0; this is stage {index})"
                                    ),
                                ));
                            }
                            Some(match found {
                                Some(i) => done[i].clone(),
                                None if parsed.stages.iter().any(|s| {
                                    s.name.as_deref() == Some(f.to_lowercase().as_str())
                                }) =>
                                {
                                    return Err(err(
                                        line,
                                        format!(
                                            "COPY --from={f}: circular dependency: stage {f:?} is this one or comes after it, and stages may only copy from earlier ones"
                                        ),
                                    ));
                                }
                                None => self
                                    .image_state(&f)
                                    .await
                                    .map_err(|e| err(line, format!("COPY --from={f}: {e}")))?,
                            })
                        }
                    };
                    self.copy(
                        &mut state,
                        req,
                        ignore,
                        index,
                        line,
                        &sources,
                        &dest,
                        from_state.as_ref(),
                        chown.as_deref(),
                        chmod.as_deref(),
                        add,
                    )
                    .await?;
                }
                Kind::Run(command) => {
                    self.run(req, &mut state, &args, (index, line), command)
                        .await?;
                }
            }
        }
        Ok(state)
    }

    fn step(&self, stage: usize, line: usize, text: &str, cached: bool) {
        (self.events)(BuildEvent::Step {
            stage,
            line,
            text: text.to_string(),
            cached,
        });
    }

    /// The state of an image (local, else pulled): its layers, config and a key over its id.
    async fn image_state(&self, reference: &str) -> Result<State, BuildError> {
        if let Some(image) = self.templates.and_then(|t| t(reference)) {
            let image = self.store.image(&image)?;
            return self.image_state_of(&image);
        }
        let parsed = hutch_registry::Reference::parse(reference)?;
        let name = parsed.store_name();
        let image = match self.store.image(&name) {
            Ok(image) => image,
            Err(e) if e.is_not_found() => {
                let log = |_: hutch_registry::Event| {};
                hutch_registry::pull(self.registry, self.store, &parsed, &log).await?
            }
            Err(e) => return Err(e.into()),
        };
        self.image_state_of(&image)
    }

    fn image_state_of(&self, image: &Image) -> Result<State, BuildError> {
        let (layers, config) = self.stored(image)?;
        let mut state = State {
            layers,
            config,
            key: String::new(),
            stage_env: Vec::new(),
            cmd_set: false,
        };
        state.key = hex::encode(Sha256::digest(image.id.as_str().as_bytes()));
        Ok(state)
    }

    fn view(&self, state: &State) -> Result<MergedView, BuildError> {
        let dirs: Vec<PathBuf> = state
            .layers
            .iter()
            .rev()
            .map(|l| self.store.layer_dir(&l.diff_id))
            .collect();
        MergedView::new(&dirs)
    }

    /// The image of `state` under its cache name, made if missing.
    async fn commit(&self, state: &State) -> Result<Image, BuildError> {
        match self.store.image(&state.cache_name()) {
            Ok(image) => Ok(image),
            Err(e) if e.is_not_found() => self.commit_as(state, &state.cache_name()).await,
            Err(e) => Err(e.into()),
        }
    }

    async fn commit_as(&self, state: &State, name: &str) -> Result<Image, BuildError> {
        self.commit_with(state, name, None).await
    }

    /// Records `state` (plus `new_layer`, a tar file already hashed) as the image `name`.
    async fn commit_with(
        &self,
        state: &State,
        name: &str,
        new_layer: Option<(&Path, &Layer)>,
    ) -> Result<Image, BuildError> {
        let mut config = state.config.clone();
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": state.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        });
        if let Some(obj) = config.as_object_mut() {
            obj.remove("history");
        }
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| BuildError::Internal(e.to_string()))?;
        let config_digest = Digest::of_bytes(&config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": state.layers.iter().map(|l| json!({
                "mediaType": l.media_type, "digest": l.blob.to_string(), "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| BuildError::Internal(e.to_string()))?;
        let manifest_digest = Digest::of_bytes(&manifest_bytes);
        let store = self.store.clone();
        let name = name.to_string();
        let layers: Vec<IngestLayer> = state
            .layers
            .iter()
            .map(|l| IngestLayer {
                diff_id: l.diff_id.clone(),
                blob: l.blob.clone(),
            })
            .collect();
        let new_layer = new_layer.map(|(p, l)| (p.to_path_buf(), l.clone()));
        tokio::task::spawn_blocking(move || -> Result<Image, BuildError> {
            let ingest = store.ingest()?;
            if let Some((path, layer)) = &new_layer {
                let file = std::fs::File::open(path)
                    .map_err(|e| BuildError::io("reading a built layer", e))?;
                ingest.add_layer(
                    file,
                    &layer.blob,
                    Some(layer.size),
                    &layer.diff_id,
                    "built layer",
                )?;
            }
            ingest.add_bytes(&config_bytes, &config_digest, "the config")?;
            ingest.add_bytes(&manifest_bytes, &manifest_digest, "the manifest")?;
            Ok(ingest.commit(&name, &manifest_digest, &config_digest, &layers)?)
        })
        .await
        .map_err(|e| BuildError::Internal(e.to_string()))?
    }

    /// Adds the layer made of `tree` to `state` (whose key is already the step's), and
    /// records the result as the step's cache image.
    async fn add_layer_from(
        &self,
        state: &mut State,
        tree: &Path,
        exclude: &[PathBuf],
    ) -> Result<(), BuildError> {
        let scratch =
            tempfile::tempdir().map_err(|e| BuildError::io("creating a scratch directory", e))?;
        let blob = scratch.path().join("layer.tar.zst");
        let layer = {
            let (tree, exclude, blob) = (tree.to_path_buf(), exclude.to_vec(), blob.clone());
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::create(&blob)
                    .map_err(|e| BuildError::io("writing a layer", e))?;
                let written = write_layer_zstd(
                    &tree,
                    &exclude,
                    std::io::BufWriter::with_capacity(256 << 10, file),
                    LAYER_ZSTD_LEVEL,
                )?;
                Ok::<_, BuildError>(Layer {
                    diff_id: written.diff_id,
                    blob: written.blob,
                    media_type: OCI_LAYER_TAR_ZSTD.into(),
                    size: written.blob_size,
                })
            })
            .await
            .map_err(|e| BuildError::Internal(e.to_string()))??
        };
        state.layers.push(layer.clone());
        let name = state.cache_name();
        self.commit_with(state, &name, Some((&blob, &layer)))
            .await?;
        Ok(())
    }

    /// A stored image's layers (with their blobs, from its manifest) and its whole config.
    fn stored(&self, image: &Image) -> Result<(Vec<Layer>, Value), BuildError> {
        let manifest: Value = read_json(&self.store.blob_file(&image.manifest_digest))?;
        let config: Value = read_json(&self.store.blob_file(&image.id))?;
        let descs = manifest["layers"].as_array().cloned().unwrap_or_default();
        if descs.len() != image.layers.len() {
            return Err(BuildError::Internal(format!(
                "{}: its manifest and its record disagree on the layers",
                image.name
            )));
        }
        let layers = image
            .layers
            .iter()
            .zip(descs)
            .map(|(diff_id, d)| {
                Ok(Layer {
                    diff_id: diff_id.clone(),
                    blob: Digest::parse(d["digest"].as_str().unwrap_or_default())?,
                    media_type: d["mediaType"].as_str().unwrap_or(OCI_LAYER_TAR).to_string(),
                    size: d["size"].as_u64().unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, hutch_store::StoreError>>()?;
        Ok((layers, config))
    }

    /// A cached result for `state`'s current key, adopted into `state` when found.
    fn cached(&self, state: &mut State) -> Result<bool, BuildError> {
        match self.store.image(&state.cache_name()) {
            Ok(image) => {
                let (layers, config) = self.stored(&image)?;
                state.layers = layers;
                state.config = config;
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// WORKDIR creates its directory when the image lacks it (a small layer), owned by the
    /// current USER like the parents it creates, as buildah does.
    async fn ensure_dir(&self, state: &mut State, dir: &str) -> Result<(), BuildError> {
        if self.cached(state)? {
            return Ok(());
        }
        // One read-only view of the image serves the lookups and the parents' metadata.
        let view = self.view(state)?;
        let user = state.config["config"]["User"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let owner = if user.is_empty() {
            (0, 0)
        } else {
            resolve_owner(&view, &user).unwrap_or((0, 0))
        };
        if view.is_dir(dir) {
            drop(view);
            self.commit(state).await?;
            return Ok(());
        }
        let scratch =
            tempfile::tempdir().map_err(|e| BuildError::io("creating a scratch directory", e))?;
        let staged = scratch.path().join("tree");
        stage_parents(
            &view,
            &staged,
            &format!("{}/x", dir.trim_end_matches('/')),
            Some(owner),
        )?;
        drop(view);
        self.add_layer_from(state, &staged, &[]).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy(
        &self,
        state: &mut State,
        req: &BuildRequest,
        ignore: &DockerIgnore,
        stage: usize,
        line: usize,
        sources: &[String],
        dest: &str,
        from: Option<&State>,
        chown: Option<&str>,
        chmod: Option<&str>,
        add: bool,
    ) -> Result<(), BuildError> {
        let file = &req.dockerfile_name;
        let err = |message: String| BuildError::Dockerfile {
            file: file.clone(),
            line,
            message,
        };
        let verb = if add { "ADD" } else { "COPY" };
        let from_view = match from {
            Some(s) => Some(self.view(s)?),
            None => None,
        };
        let no_ignore = DockerIgnore::parse("");
        let (root, ign): (&Path, &DockerIgnore) = match &from_view {
            Some(v) => (v.root(), &no_ignore),
            None => (&req.context, ignore),
        };
        let entries =
            resolve_sources(root, ign, sources).map_err(|e| err(format!("{verb}: {e}")))?;
        let inputs =
            digest_sources(&entries, ign, root).map_err(|e| err(format!("{verb}: {e}")))?;
        let text = format!("{verb} {} {dest}", sources.join(" "));
        state.chain(
            format!(
                "{text} chown={chown:?} chmod={chmod:?} from={} inputs={inputs}",
                from.map_or("", |s| s.key.as_str())
            )
            .as_bytes(),
        );
        if self.cached(state)? {
            self.step(stage, line, &text, true);
            return Ok(());
        }
        self.step(stage, line, &text, false);
        let absolute = if dest.starts_with('/') {
            dest.to_string()
        } else {
            format!("{}/{dest}", state.workdir().trim_end_matches('/'))
        };
        let view = self.view(state)?;
        let owner = match chown {
            Some(spec) => {
                Some(resolve_owner(&view, spec).map_err(|e| err(format!("{verb} --chown: {e}")))?)
            }
            None => None,
        };
        let dest_is_dir = view.is_dir(&absolute);
        // Docker: a destination ending in `/` (or `.`), several sources, a directory source
        // or an existing directory is a directory to copy into; otherwise the file's new path.
        let into_dir = absolute.ends_with('/')
            || absolute.ends_with("/.")
            || dest == "."
            || entries.len() > 1
            || dest_is_dir
            || entries.iter().any(|e| matches!(e.kind, EntryKind::Dir));
        let mode = match chmod {
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .map_err(|_| err(format!("{verb} --chmod={m}: not an octal mode")))?,
            ),
            None => None,
        };
        let scratch =
            tempfile::tempdir().map_err(|e| BuildError::io("creating a scratch directory", e))?;
        let staged = scratch.path().join("tree");
        std::fs::create_dir_all(&staged).map_err(|e| BuildError::io("staging", e))?;
        let dest_rel = PathBuf::from(
            absolute
                .trim_start_matches('/')
                .trim_end_matches('.')
                .trim_end_matches('/'),
        );
        let parent_of = if into_dir {
            format!("/{}/x", dest_rel.display())
        } else {
            format!("/{}", dest_rel.display())
        };
        stage_parents(&view, &staged, &parent_of, owner)?;
        drop(view);
        let keep_owners = from.is_some();
        // Hardlinked files stay hardlinked (within this COPY), as buildah keeps them.
        let mut links: std::collections::HashMap<(u64, u64), PathBuf> =
            std::collections::HashMap::new();
        for entry in &entries {
            let base = if into_dir {
                match entry.kind {
                    EntryKind::Dir => staged.join(&dest_rel),
                    _ => staged
                        .join(&dest_rel)
                        .join(entry.rel.file_name().unwrap_or_default()),
                }
            } else {
                staged.join(&dest_rel)
            };
            if add && matches!(entry.kind, EntryKind::File) && looks_like_tar(&entry.abs) {
                let dir = if into_dir {
                    staged.join(&dest_rel)
                } else {
                    base.clone()
                };
                std::fs::create_dir_all(&dir).map_err(|e| BuildError::io("staging", e))?;
                extract_tar(&entry.abs, &dir, self.store.unpack_limits())
                    .map_err(|e| err(format!("ADD {}: {e}", entry.rel.display())))?;
                continue;
            }
            let items = walk(root, entry, ign).map_err(|e| err(format!("{verb}: {e}")))?;
            for item in &items {
                // A `.` source's items are named from the context root.
                let sub = if entry.rel == Path::new(".") {
                    if item.rel == Path::new(".") {
                        Path::new("")
                    } else {
                        item.rel.as_path()
                    }
                } else {
                    item.rel.strip_prefix(&entry.rel).unwrap_or(Path::new(""))
                };
                let target = if sub.as_os_str().is_empty() {
                    base.clone()
                } else {
                    base.join(sub)
                };
                let is_dest_dir =
                    matches!(entry.kind, EntryKind::Dir) && sub.as_os_str().is_empty();
                if let Ok(meta) = std::fs::symlink_metadata(&item.abs)
                    && meta.is_file()
                    && meta.nlink() > 1
                {
                    if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                        let _ = std::fs::remove_file(&target);
                        std::fs::hard_link(first, &target)
                            .map_err(|e| err(format!("{verb} {}: {e}", item.rel.display())))?;
                        continue;
                    }
                    links.insert((meta.dev(), meta.ino()), target.clone());
                }
                copy_item(&item.abs, &target, owner, mode, keep_owners, is_dest_dir)
                    .map_err(|e| err(format!("{verb} {}: {e}", item.rel.display())))?;
            }
        }
        if into_dir {
            let d = staged.join(&dest_rel);
            std::fs::create_dir_all(&d).map_err(|e| BuildError::io("staging", e))?;
        }
        self.add_layer_from(state, &staged, &[]).await
    }

    async fn run(
        &self,
        req: &BuildRequest,
        state: &mut State,
        args: &BTreeMap<String, String>,
        (stage, line): (usize, usize),
        command: &Command,
    ) -> Result<(), BuildError> {
        let file = req.dockerfile_name.as_str();
        let text = match command {
            Command::Shell(s) => s.clone(),
            Command::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
        };
        let parent = state.clone();
        state.chain(format!("RUN {text} args={args:?}").as_bytes());
        if self.cached(state)? {
            self.step(stage, line, &format!("RUN {text}"), true);
            return Ok(());
        }
        self.step(stage, line, &format!("RUN {text}"), false);
        let parent_image = self.commit(&parent).await?;
        let sandbox = self
            .backend
            .create(SandboxSpec {
                image: parent_image.name.clone(),
                labels: [
                    ("hutch.build".to_string(), "run".to_string()),
                    (OWNER_LABEL.to_string(), owner_token()),
                ]
                .into(),
                tmp_in_rootfs: true,
                memory_mb: req.memory_mb,
                cpus: req.cpus,
                ..SandboxSpec::default()
            })
            .await?;
        let id = sandbox.info.id.clone();
        // Build args reach RUN as environment variables, unless an ENV of the same name
        // shadows them.
        let visible: BTreeMap<String, String> = args
            .iter()
            .filter(|(k, _)| parent.env_lookup(k).is_none())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let outcome = self.run_in(&sandbox.agent, command, &visible).await;
        let stopped = self.backend.stop(&id, Duration::from_secs(5)).await;
        let layer = match (&outcome, stopped) {
            (Err(e), _) => Err(BuildError::Internal(format!(
                "{file}:{line}: RUN {text}: {e}"
            ))),
            (Ok(exit), _) if exit.shell_code() != 0 || exit.oom_killed => {
                Err(BuildError::RunFailed {
                    file: file.to_string(),
                    line,
                    command: text.clone(),
                    code: exit.shell_code(),
                    oom: exit.oom_killed,
                })
            }
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(_), Ok(())) => match self.backend.writable_layer(&id) {
                Ok((upper, exclude)) => self.add_layer_from(state, &upper, &exclude).await,
                Err(e) => Err(e.into()),
            },
        };
        if let Err(e) = self.backend.delete(&id).await {
            tracing::warn!(%id, error = %e, "removing a build sandbox");
        }
        layer
    }

    async fn run_in(
        &self,
        agent: &hutch_runtime::agent::AgentClient,
        command: &Command,
        args: &BTreeMap<String, String>,
    ) -> Result<hutch_wire::ExitInfo, hutch_runtime::RuntimeError> {
        let (program, argv) = match command {
            Command::Shell(s) => ("/bin/sh".to_string(), vec!["-c".to_string(), s.clone()]),
            Command::Exec(v) if !v.is_empty() => (v[0].clone(), v[1..].to_vec()),
            Command::Exec(_) => ("/bin/true".to_string(), Vec::new()),
        };
        // Build args are in the environment of RUN steps, not in the image.
        let env: BTreeMap<String, String> =
            args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let spec = StartProcess {
            command: program,
            args: argv,
            env: (!env.is_empty()).then_some(env),
            ..StartProcess::default()
        };
        let mut stream = agent.exec(&spec).await?;
        loop {
            match stream.next().await? {
                Some(ExecEvent::Stdout { data, .. }) => (self.events)(BuildEvent::Output {
                    stderr: false,
                    data: data.into(),
                }),
                Some(ExecEvent::Stderr { data, .. }) => (self.events)(BuildEvent::Output {
                    stderr: true,
                    data: data.into(),
                }),
                Some(ExecEvent::Exit(exit)) => return Ok(exit),
                Some(_) => {}
                None => {
                    return Err(hutch_runtime::RuntimeError::AgentUnavailable {
                        reason: "the RUN step's stream ended without an exit".into(),
                    });
                }
            }
        }
    }
}

/// Creates `path`'s parent directories under `staged`: each with the metadata it has in the
/// image (`view`) when it exists there (a layer's directory entry replaces the one below),
/// else as root 0755, or owned by `owner` when the instruction names one.
fn stage_parents(
    view: &MergedView,
    staged: &Path,
    path: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), BuildError> {
    let mut rel = PathBuf::new();
    let comps: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        rel.push(comp);
        let target = staged.join(&rel);
        std::fs::create_dir_all(&target).map_err(|e| BuildError::io("staging a directory", e))?;
        // Image content: looked up as the image sees it, never through a host symlink.
        match view.metadata(&rel) {
            Ok(meta) if meta.is_dir() => {
                let _ = std::fs::set_permissions(
                    &target,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                );
                let _ = std::os::unix::fs::chown(&target, Some(meta.uid()), Some(meta.gid()));
                if let Ok(real) = view.real_path(&rel) {
                    copy_mtime(&real, &target);
                }
            }
            _ => {
                let _ = std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755));
                let (uid, gid) = owner.unwrap_or((0, 0));
                let _ = std::os::unix::fs::chown(&target, Some(uid), Some(gid));
            }
        }
    }
    Ok(())
}

fn expand_with(
    word: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
) -> Result<String, String> {
    expand(word, &|n| vars.get(n).cloned(), escape)
}

fn read_json(path: &Path) -> Result<Value, BuildError> {
    let bytes = std::fs::read(path)
        .map_err(|e| BuildError::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::Internal(format!("{}: {e}", path.display())))
}

fn copy_mtime(from: &Path, to: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(from) {
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        if let Ok(c) =
            std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(to.as_os_str()))
        {
            // SAFETY: valid path and times array.
            unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
        }
    }
}

/// Copies one item (a file, a symlink, or a directory without its contents) to `dst`,
/// keeping modes and times. Owners become `owner` when given, else root (Docker's rule for
/// the context), while content from another stage or image keeps its owners. `--chmod`
/// applies to everything copied except the destination directory itself (buildah).
fn copy_item(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    keep_owners: bool,
    is_dest_dir: bool,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let (uid, gid) = owner.unwrap_or(if keep_owners {
        (meta.uid(), meta.gid())
    } else {
        (0, 0)
    });
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src)?;
        let _ = std::fs::remove_file(dst);
        std::os::unix::fs::symlink(target, dst)?;
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid))?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        let m = match mode {
            Some(m) if !is_dest_dir => m,
            _ => meta.mode() & 0o7777,
        };
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m))?;
        std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
    } else {
        std::fs::copy(src, dst)?;
        std::os::unix::fs::chown(dst, Some(uid), Some(gid))?;
        std::fs::set_permissions(
            dst,
            std::fs::Permissions::from_mode(mode.unwrap_or(meta.mode() & 0o7777)),
        )?;
    }
    copy_mtime(src, dst);
    Ok(())
}

fn looks_like_tar(path: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
    head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (n >= 262 && &head[257..262] == b"ustar")
}

/// ADD of a local archive: its contents, extracted into `dir` by the store's hardened
/// unpacker, under the rules and the budget an image layer gets (no path out of `dir`, no
/// device nodes, host-only xattrs dropped, sparse files sparse): a build context is as
/// untrusted as an image.
fn extract_tar(
    path: &Path,
    dir: &Path,
    limits: hutch_store::UnpackLimits,
) -> Result<(), hutch_store::StoreError> {
    let what = format!("ADD archive {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| hutch_store::StoreError::Io {
        context: format!("opening {what}"),
        source: e,
    })?;
    hutch_store::unpack_archive(file, dir, &what, limits).map(|_| ())
}
