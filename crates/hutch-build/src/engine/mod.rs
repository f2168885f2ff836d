//! The build engine: a Dockerfile's stages into images in the store. Every RUN runs in a
//! sandbox over the layers so far and its writes (the sandbox's writable layer) become the
//! next layer; COPY and ADD stage their files in a directory that becomes a layer the same
//! way. Every step's result is an image in the store named by a key over its parent's key,
//! the instruction and its inputs, so an unchanged step is found and not run again.
//!
//! This module drives the stages and their instructions; [`state`] is a stage's result so
//! far (layers, config, cache key), [`commit`] writes layers and records images, [`copy`]
//! stages COPY, ADD and WORKDIR content, and [`run`] runs RUN in a sandbox. The engine
//! reaches sandboxes only through [`Backend`]: any backend that offers
//! [`CapabilityName::SandboxWritableLayer`] can build.

mod commit;
mod config;
mod copy;
mod fetch;
pub mod mounts;
mod run;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hutch_runtime::{Backend, CapabilityName};
use hutch_store::{Image, Store};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::dockerfile::{self, ArgDecl, Command, Dockerfile, Kind, Stage};
use crate::error::BuildError;
use crate::expand::{expand, expand_heredoc};
use crate::ignore::DockerIgnore;
use crate::merged::MergedView;
pub use run::{OWNER_LABEL, sweep_orphans};
use state::State;

/// Store names of cached steps: `hutch-build/step:<key>`.
pub const CACHE_REPO: &str = "hutch-build/step";

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
    /// The network RUN steps get (unless one says `--network=none`): the sandbox network under
    /// this policy, as Docker gives builds a network by default; `None` for none at all.
    pub network: Option<hutch_runtime::net::NetworkPolicy>,
    /// `--secret id=...` values for `RUN --mount=type=secret`: never stored, keyed or shown.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Whose cache mounts these are: builds of one scope share `RUN --mount=type=cache` ids,
    /// builds of another never see them (the CLI: its store; a server: a namespace).
    pub cache_scope: String,
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

/// The store image of a registered template's name, if there is such a template.
pub type TemplateResolver = dyn Fn(&str) -> Option<String> + Send + Sync;

pub struct Engine<'a> {
    pub backend: &'a dyn Backend,
    pub store: &'a Store,
    pub registry: &'a hutch_registry::Client,
    pub events: &'a (dyn Fn(BuildEvent) + Send + Sync),
    /// Registered templates: the store image of a template name, looked up before the
    /// store and the registry for `FROM` and `COPY --from`.
    pub templates: Option<&'a TemplateResolver>,
}

/// CMD or ENTRYPOINT as the config stores it: a shell form runs with the stage's SHELL.
fn cmd_json(command: &Command, shell: &[String]) -> Value {
    match command {
        Command::Exec(argv) => json!(argv),
        Command::Shell(text) => {
            let mut argv = shell.to_vec();
            argv.push(text.clone());
            json!(argv)
        }
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

        // Global ARGs: visible to FROM lines only, unless redeclared in a stage. Docker's
        // automatic platform ARGs are among them: this builder builds for linux/amd64.
        let mut global: BTreeMap<String, String> = PLATFORM_ARGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
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
                // `ARG TARGETARCH` alone keeps the automatic value.
                .or_else(|| global.get(name).cloned())
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
        // RUN needs the sandbox's writes back: refuse before any work, not at the first RUN.
        let capabilities = self.backend.capabilities();
        let runs = parsed.stages[..=last.min(parsed.stages.len().saturating_sub(1))]
            .iter()
            .flat_map(|s| &s.instructions)
            .any(|i| matches!(i.kind, Kind::Run(_)));
        if runs && !capabilities.is_supported(CapabilityName::SandboxWritableLayer) {
            return Err(hutch_runtime::RuntimeError::unsupported(
                self.backend.name(),
                &capabilities,
                CapabilityName::SandboxWritableLayer,
            )
            .into());
        }
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
        if let Some(platform) = &stage.platform {
            let platform = expand_with(platform, global, escape).map_err(|e| err(stage.line, e))?;
            if !SUPPORTED_PLATFORMS.contains(&platform.trim().to_ascii_lowercase().as_str()) {
                return Err(err(
                    stage.line,
                    format!(
                        "FROM --platform={platform}: this builder makes linux/amd64 images only \
                         (RUN steps execute on this host); drop the flag or use linux/amd64"
                    ),
                ));
            }
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
        // The base's ONBUILD triggers run first, as Docker runs them, and are not inherited.
        let triggers = self.onbuild_triggers(&mut state, stage.line, escape, &err)?;
        // ARGs in scope for this stage; build args apply to declared ones only.
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        for instruction in triggers.iter().chain(&stage.instructions) {
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
                    let c = &cmd_json(c, &state.shell());
                    state.config["config"]["Entrypoint"] = c.clone();
                    // Docker: a new ENTRYPOINT clears an inherited CMD, not this stage's.
                    if !state.cmd_set {
                        state.config["config"]["Cmd"] = Value::Null;
                    }
                    state.chain(format!("ENTRYPOINT {c}").as_bytes());
                    self.step(index, line, "ENTRYPOINT", true);
                }
                Kind::Cmd(c) => {
                    let c = cmd_json(c, &state.shell());
                    state.config["config"]["Cmd"] = c.clone();
                    state.cmd_set = true;
                    state.chain(format!("CMD {c}").as_bytes());
                    self.step(index, line, "CMD", true);
                }
                Kind::Config {
                    instruction,
                    args: text,
                    setting,
                } => {
                    let before = state.clone();
                    let words = |words: &[String]| -> Result<Vec<String>, BuildError> {
                        words.iter().map(|w| ex(w, &args, &before)).collect()
                    };
                    config::apply(&mut state, setting, &words).map_err(|e| match e {
                        config::Error::Build(e) => e,
                        config::Error::Invalid(message) => err(line, message),
                    })?;
                    state.chain(format!("{instruction} {setting:?}").as_bytes());
                    self.step(index, line, &format!("{instruction} {text}"), true);
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
                    let (sources, heredocs, dest, from, chown, chmod, options, add) = match kind {
                        Kind::Copy {
                            sources,
                            heredocs,
                            dest,
                            from,
                            chown,
                            chmod,
                            options,
                        } => (
                            sources,
                            heredocs,
                            dest,
                            from.as_ref(),
                            chown,
                            chmod,
                            options,
                            false,
                        ),
                        Kind::Add {
                            sources,
                            heredocs,
                            dest,
                            chown,
                            chmod,
                            options,
                        } => (sources, heredocs, dest, None, chown, chmod, options, true),
                        _ => unreachable!("matched COPY or ADD above"),
                    };
                    // Inline files: named by their delimiter, bodies expanded unless the
                    // delimiter was quoted.
                    let inline = heredocs
                        .iter()
                        .map(|h| {
                            let body = h.body();
                            let body = if h.expand {
                                expand_heredoc(&body, &|n| lookup(&args, &state, n), escape)
                                    .map_err(|e| err(line, format!("heredoc {}: {e}", h.word)))?
                            } else {
                                body
                            };
                            Ok((h.name.clone(), body.into_bytes()))
                        })
                        .collect::<Result<Vec<_>, BuildError>>()?;
                    let sources = sources
                        .iter()
                        .map(|s| ex(s, &args, &state))
                        .collect::<Result<Vec<_>, _>>()?;
                    if add
                        && options.checksum.is_some()
                        && sources.iter().any(|s| !s.contains("://"))
                    {
                        return Err(err(
                            line,
                            "ADD --checksum: a checksum can't be specified for non-HTTP(S) sources"
                                .into(),
                        ));
                    }
                    let dest = ex(dest, &args, &state)?;
                    if add && sources.iter().any(|s| s.contains("://")) {
                        if !inline.is_empty() || sources.iter().any(|s| !s.contains("://")) {
                            return Err(err(
                                line,
                                "ADD: give URLs and other sources in separate ADD instructions"
                                    .into(),
                            ));
                        }
                        let checksum = options
                            .checksum
                            .as_ref()
                            .map(|c| ex(c, &args, &state))
                            .transpose()?;
                        self.add_urls(
                            &mut state,
                            req,
                            (index, line),
                            &sources,
                            &dest,
                            chown.as_deref(),
                            chmod.as_deref(),
                            checksum.as_deref(),
                        )
                        .await?;
                        continue;
                    }
                    let from_state = match from {
                        None => None,
                        Some(f) => {
                            let f = ex(f, &args, &state)?;
                            Some(
                                self.state_of_from(parsed, done, index, &f, "COPY --from")
                                    .await
                                    .map_err(|e| err(line, e))?,
                            )
                        }
                    };
                    self.copy(
                        &mut state,
                        req,
                        ignore,
                        index,
                        line,
                        (&sources, &inline),
                        &dest,
                        from_state.as_ref(),
                        chown.as_deref(),
                        chmod.as_deref(),
                        options,
                        add,
                    )
                    .await?;
                }
                Kind::Run(run) => {
                    let mut resolved = Vec::new();
                    for m in &run.mounts {
                        let word = |w: &Option<String>| {
                            w.as_ref().map(|w| ex(w, &args, &state)).transpose()
                        };
                        let from = match word(&m.from)? {
                            Some(f) => Some(
                                self.state_of_from(parsed, done, index, &f, "RUN --mount from")
                                    .await
                                    .map_err(|e| err(line, e))?,
                            ),
                            None => None,
                        };
                        let id = word(&m.id)?;
                        let target = match word(&m.target)? {
                            Some(t) => t,
                            // A secret's default place.
                            None => format!("/run/secrets/{}", id.clone().unwrap_or_default()),
                        };
                        let target = state.absolute(&target);
                        resolved.push(mounts::Resolved {
                            mount: m,
                            target,
                            source: word(&m.source)?,
                            id,
                            from,
                        });
                    }
                    self.run(
                        req,
                        &mut state,
                        &args,
                        (index, line),
                        run,
                        (&resolved, ignore),
                    )
                    .await?;
                }
            }
        }
        Ok(state)
    }

    /// The state a `--from` names: an earlier stage (by name or index) or an image.
    async fn state_of_from(
        &self,
        parsed: &Dockerfile,
        done: &[State],
        index: usize,
        f: &str,
        what: &str,
    ) -> Result<State, String> {
        let found = parsed.stages[..index]
            .iter()
            .position(|s| s.name.as_deref() == Some(f.to_lowercase().as_str()))
            .or_else(|| f.parse::<usize>().ok().filter(|i| *i < index));
        if found.is_none()
            && let Ok(n) = f.parse::<usize>()
        {
            return Err(format!(
                "{what}={f}: no build stage {n} before this one (stages are numbered from 0; this is stage {index})"
            ));
        }
        match found {
            Some(i) => Ok(done[i].clone()),
            None if parsed
                .stages
                .iter()
                .any(|s| s.name.as_deref() == Some(f.to_lowercase().as_str())) =>
            {
                Err(format!(
                    "{what}={f}: circular dependency: stage {f:?} is this one or comes after it, and stages may only copy from earlier ones"
                ))
            }
            None => self
                .image_state(f)
                .await
                .map_err(|e| format!("{what}={f}: {e}")),
        }
    }

    /// The ONBUILD triggers of a stage's base, parsed as instructions (at the FROM line), and
    /// removed from the config the stage inherits.
    fn onbuild_triggers(
        &self,
        state: &mut State,
        line: usize,
        escape: char,
        err: &dyn Fn(usize, String) -> BuildError,
    ) -> Result<Vec<dockerfile::Instruction>, BuildError> {
        let triggers = state.config_strings("OnBuild");
        if let Some(config) = state.config["config"].as_object_mut() {
            config.remove("OnBuild");
        }
        if triggers.is_empty() {
            return Ok(Vec::new());
        }
        state.chain(format!("ONBUILD-TRIGGERS {triggers:?}").as_bytes());
        // An image's config is untrusted: a trigger is one instruction on one line, and
        // never FROM, ONBUILD or MAINTAINER (a newline could smuggle in a stage or a
        // heredoc body).
        check_triggers(&triggers).map_err(|e| err(line, e))?;
        let directive = if escape == '`' { "# escape=`\n" } else { "" };
        let text = format!("{directive}FROM scratch\n{}\n", triggers.join("\n"));
        let parsed = dockerfile::parse(&text).map_err(|e| {
            err(
                line,
                format!("an ONBUILD trigger of the base image: {}", e.message),
            )
        })?;
        Ok(parsed
            .stages
            .into_iter()
            .flat_map(|s| s.instructions)
            .map(|mut i| {
                i.line = line;
                i
            })
            .collect())
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
}

/// The most ONBUILD triggers, and bytes of one, taken from a base image.
const MAX_TRIGGERS: usize = 64;
const MAX_TRIGGER_BYTES: usize = 64 << 10;

fn check_triggers(triggers: &[String]) -> Result<(), String> {
    if triggers.len() > MAX_TRIGGERS {
        return Err(format!(
            "the base image has more than {MAX_TRIGGERS} ONBUILD triggers"
        ));
    }
    for t in triggers {
        let first = t
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if t.len() > MAX_TRIGGER_BYTES
            || t.contains(['\n', '\r'])
            || matches!(first.as_str(), "" | "FROM" | "ONBUILD" | "MAINTAINER")
        {
            return Err(format!(
                "the base image has an ONBUILD trigger Docker would refuse: {:?}",
                t.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Docker's automatic platform ARGs, for the one platform this builder makes.
const PLATFORM_ARGS: [(&str, &str); 8] = [
    ("TARGETPLATFORM", "linux/amd64"),
    ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"),
    ("TARGETVARIANT", ""),
    ("BUILDPLATFORM", "linux/amd64"),
    ("BUILDOS", "linux"),
    ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""),
];

/// What `FROM --platform=` may name.
const SUPPORTED_PLATFORMS: [&str; 3] = ["linux/amd64", "linux/x86_64", "linux/amd64/v1"];

fn expand_with(
    word: &str,
    vars: &BTreeMap<String, String>,
    escape: char,
) -> Result<String, String> {
    expand(word, &|n| vars.get(n).cloned(), escape)
}

#[cfg(test)]
mod tests;
