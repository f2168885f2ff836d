//! RUN: a sandbox over the layers so far, the command in it, and its writable layer as the
//! next layer; and the removal of RUN sandboxes whose build died.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hutch_runtime::agent::ExecEvent;
use hutch_runtime::{Backend, NetworkMode, SandboxSpec};
use hutch_wire::StartProcess;

use super::mounts::{Resolved, mounts_key};
use super::state::State;
use super::{BuildEvent, BuildRequest, Engine};
use crate::dockerfile::{Command, Run, RunNetwork};
use crate::error::BuildError;
use crate::ignore::DockerIgnore;

/// The label naming the process that runs a RUN step's sandbox: `<pid>:<start time>`. A
/// build's sandboxes end with the step, so one whose owner is gone (killed mid-build) is an
/// orphan that [`sweep_orphans`] removes.
pub const OWNER_LABEL: &str = "hutch.build.owner";

/// This process, as [`OWNER_LABEL`] names it: the pid alone could be reused.
pub(super) fn owner_token() -> String {
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
pub async fn sweep_orphans(backend: &dyn Backend) -> usize {
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

impl Engine<'_> {
    pub(super) async fn run(
        &self,
        req: &BuildRequest,
        state: &mut State,
        args: &BTreeMap<String, String>,
        (stage, line): (usize, usize),
        run: &Run,
        (mounts, ignore): (&[Resolved<'_>], &DockerIgnore),
    ) -> Result<(), BuildError> {
        let file = req.dockerfile_name.as_str();
        let mount_error = |message: String| BuildError::Dockerfile {
            file: file.to_string(),
            line,
            message: format!("RUN --mount: {message}"),
        };
        let text = match &run.command {
            Command::Shell(s) => s.clone(),
            Command::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
        };
        // `--network=default` is the build's network; only `none` takes it away.
        let policy = match run.network {
            Some(RunNetwork::None) => None,
            Some(RunNetwork::Default) | None => req.network.clone().filter(|p| !p.is_offline()),
        };
        let parent = state.clone();
        // The key holds what the step runs (heredoc bodies too) and whether it had a
        // network, as BuildKit's does; not the policy, which does not change the result of
        // a step that succeeds.
        let bodies: Vec<(&str, &str)> = run
            .heredocs
            .iter()
            .map(|h| (h.word.as_str(), h.content.as_str()))
            .collect();
        let mounts_key =
            mounts_key(mounts, &req.context, ignore, &req.secrets).map_err(mount_error)?;
        state.chain(
            format!(
                "RUN {text} heredocs={bodies:?} network={} args={args:?} mounts={mounts_key}",
                policy.is_some()
            )
            .as_bytes(),
        );
        if self.cached(state)? {
            self.step(stage, line, &format!("RUN {text}"), true);
            return Ok(());
        }
        self.step(stage, line, &format!("RUN {text}"), false);
        let parent_image = self.commit(&parent).await?;
        let prepared = self
            .prepare_mounts(mounts, &req.context, ignore, &req.cache_scope, &req.secrets)
            .await
            .map_err(mount_error)?;
        // What the sandbox will make for the mounts, so none of it lands in the layer.
        let stubs = self.mount_stubs(&parent, &prepared.targets)?;
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
                // A step is one long command of file and system work: syscalls decide its
                // platform, not process creation.
                workload: hutch_runtime::Workload::Batch,
                memory_mb: req.memory_mb,
                cpus: req.cpus,
                network: if policy.is_some() {
                    NetworkMode::Egress
                } else {
                    NetworkMode::None
                },
                network_policy: policy.clone().unwrap_or_default(),
                mounts: prepared.mounts.clone(),
                ..SandboxSpec::default()
            })
            .await
            .map_err(|e| match e {
                hutch_runtime::RuntimeError::UnsupportedCapability { .. } if policy.is_some() => {
                    BuildError::Dockerfile {
                        file: file.to_string(),
                        line,
                        message: format!(
                            "RUN {text}: this host cannot give build steps a network ({e}); \
                             build with --network none, or RUN --network=none for this step"
                        ),
                    }
                }
                e => e.into(),
            })?;
        let id = sandbox.info.id.clone();
        // Build args reach RUN as environment variables, unless an ENV of the same name
        // shadows them.
        let mut visible: BTreeMap<String, String> = args
            .iter()
            .filter(|(k, _)| parent.env_lookup(k).is_none())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Secrets given as variables (`env=`): for this step's process only.
        visible.extend(prepared.env.clone());
        let outcome = self
            .run_in(&sandbox.agent, run, &parent.shell(), &visible)
            .await;
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
                Ok(layer) => {
                    let mut exclude = layer.mount_points.clone();
                    exclude.extend(stubs.left_out(&layer.upper));
                    self.add_layer_from(state, &layer.upper, &exclude).await
                }
                Err(e) => Err(e.into()),
            },
        };
        let used_cache = prepared.used_cache;
        // The scratch copies, secret files and cache locks end with the step.
        drop(prepared);
        if used_cache {
            let root = self.store.root().to_path_buf();
            let _ = tokio::task::spawn_blocking(move || {
                super::mounts::prune_caches(&root, super::mounts::cache_limit())
            })
            .await;
        }
        if let Err(e) = self.backend.delete(&id).await {
            tracing::warn!(%id, error = %e, "removing a build sandbox");
        }
        layer
    }

    async fn run_in(
        &self,
        agent: &hutch_runtime::agent::AgentClient,
        run: &Run,
        shell: &[String],
        args: &BTreeMap<String, String>,
    ) -> Result<hutch_wire::ExitInfo, hutch_runtime::RuntimeError> {
        // A shell-form command runs as SHELL's argv plus the text.
        let in_shell = |text: String| {
            let mut argv = shell.to_vec();
            argv.push(text);
            (argv[0].clone(), argv[1..].to_vec())
        };
        let (program, argv) = match heredoc_script(run) {
            Some(Script::File { name, body }) => {
                // BuildKit runs a `#!` script from a file outside the image's tree: here the
                // sandbox's own /dev, which no layer records.
                let path = format!("{SCRIPT_DIR}/{name}");
                agent.mkdir(SCRIPT_DIR).await?;
                agent
                    .write_file_with_mode(&path, 0o755, body.into_bytes())
                    .await?;
                (path, Vec::new())
            }
            Some(Script::Shell(script)) => in_shell(script),
            None => match &run.command {
                Command::Shell(s) => in_shell(s.clone()),
                Command::Exec(v) if !v.is_empty() => (v[0].clone(), v[1..].to_vec()),
                Command::Exec(_) => ("/bin/true".to_string(), Vec::new()),
            },
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
                        kind: hutch_runtime::AgentUnreachable::Disrupted,
                        reason: "the RUN step's stream ended without an exit".into(),
                    });
                }
            }
        }
    }
}

/// Where a RUN heredoc's `#!` script is written in the step's sandbox.
const SCRIPT_DIR: &str = "/dev/pipes";

/// What a RUN with heredocs runs.
#[derive(Debug, PartialEq, Eq)]
enum Script {
    /// A heredoc that is the whole command and starts with `#!`: run as a file.
    File { name: String, body: String },
    /// Text for the shell.
    Shell(String),
}

/// BuildKit's rules: a command that is one heredoc alone runs that body (a file if it starts
/// with `#!`, else the shell's script); any other command line runs in the shell with the
/// heredoc bodies and their delimiters after it, so the shell reads them as heredocs.
fn heredoc_script(run: &Run) -> Option<Script> {
    let Command::Shell(line) = &run.command else {
        return None;
    };
    match run.heredocs.as_slice() {
        [] => None,
        [only] if line.trim() == only.word => {
            let body = only.body();
            Some(if body.starts_with("#!") {
                Script::File {
                    name: only.name.clone(),
                    body,
                }
            } else {
                Script::Shell(body)
            })
        }
        all => {
            let mut script = line.clone();
            script.push('\n');
            for h in all {
                script.push_str(&h.content);
                script.push_str(&h.name);
                script.push('\n');
            }
            Some(Script::Shell(script))
        }
    }
}

/// The paths a step's mounts make in its sandbox's writable layer: each target, and each of
/// its parents the image lacked (left out only while they hold nothing but the way to a
/// mount).
pub(super) struct Stubs {
    /// (relative path, made for the mount rather than in the image)
    paths: Vec<(PathBuf, bool)>,
    targets: Vec<PathBuf>,
}

impl Stubs {
    /// What to leave out of the layer written from `upper`.
    fn left_out(&self, upper: &std::path::Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        // Deepest first, so a parent sees which of its children are left out.
        let mut paths = self.paths.clone();
        paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, made) in paths {
            if self.targets.contains(&path) {
                out.push(path);
                continue;
            }
            // A made parent: left out when it holds only left-out children. The upper
            // directory is the step's work: every component is checked with lstat (a link
            // the step put there is content, never followed on the host).
            let real_dir = path.ancestors().all(|a| {
                a.as_os_str().is_empty()
                    || std::fs::symlink_metadata(upper.join(a)).is_ok_and(|m| m.is_dir())
            });
            let only_stubs = real_dir
                && std::fs::read_dir(upper.join(&path)).is_ok_and(|entries| {
                    entries
                        .flatten()
                        .all(|e| out.contains(&path.join(e.file_name())))
                });
            if made && only_stubs {
                out.push(path);
            }
        }
        out
    }
}

impl Engine<'_> {
    fn mount_stubs(&self, parent: &State, targets: &[String]) -> Result<Stubs, BuildError> {
        if targets.is_empty() {
            return Ok(Stubs {
                paths: Vec::new(),
                targets: Vec::new(),
            });
        }
        let view = self.view(parent)?;
        let mut paths: Vec<(PathBuf, bool)> = Vec::new();
        for target in targets {
            let mut rel = PathBuf::new();
            for comp in target
                .trim_start_matches('/')
                .split('/')
                .filter(|c| !c.is_empty())
            {
                rel.push(comp);
                if paths.iter().any(|(p, _)| p == &rel) {
                    continue;
                }
                // The image's own view, never a host symlink.
                let made = view.metadata(&rel).is_err();
                paths.push((rel.clone(), made));
            }
        }
        // Parents the image had are not stubs.
        let targets: Vec<PathBuf> = targets
            .iter()
            .map(|t| PathBuf::from(t.trim_start_matches('/')))
            .collect();
        paths.retain(|(p, made)| *made || targets.contains(p));
        Ok(Stubs { paths, targets })
    }
}

#[cfg(test)]
mod heredoc_tests {
    use super::*;
    use crate::dockerfile::{Kind, parse};

    fn run_of(text: &str) -> Run {
        let parsed = parse(&format!("FROM scratch\n{text}")).unwrap();
        match &parsed.stages[0].instructions[0].kind {
            Kind::Run(run) => run.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lone_heredoc_is_the_script_and_others_go_to_the_shell() {
        assert_eq!(
            heredoc_script(&run_of("RUN <<EOF\necho a\necho b\nEOF")),
            Some(Script::Shell("echo a\necho b\n".into()))
        );
        assert_eq!(
            heredoc_script(&run_of("RUN <<-EOF\n\techo a\n\tEOF")),
            Some(Script::Shell("echo a\n".into()))
        );
        assert_eq!(
            heredoc_script(&run_of("RUN <<'S'\n#!/usr/bin/env python3\nprint(1)\nS")),
            Some(Script::File {
                name: "S".into(),
                body: "#!/usr/bin/env python3\nprint(1)\n".into()
            })
        );
        assert_eq!(
            heredoc_script(&run_of("RUN cat <<A >a && cat <<-B >b\none\nA\n\ttwo\n\tB")),
            Some(Script::Shell(
                "cat <<A >a && cat <<-B >b\none\nA\n\ttwo\nB\n".into()
            ))
        );
        assert_eq!(heredoc_script(&run_of("RUN echo hi")), None);
    }
}

#[cfg(test)]
mod stub_tests {
    use super::*;

    #[test]
    fn a_link_the_step_left_where_a_stub_was_is_kept_and_not_followed() {
        let upper = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        // Outside the layer: a directory holding only the mount's name.
        std::fs::create_dir(elsewhere.path().join("cache")).unwrap();
        // The step replaced the made parent `root` with a link to it.
        std::os::unix::fs::symlink(elsewhere.path(), upper.path().join("root")).unwrap();
        let stubs = Stubs {
            paths: vec![
                (PathBuf::from("root"), true),
                (PathBuf::from("root/cache"), true),
            ],
            targets: vec![PathBuf::from("root/cache")],
        };
        let out = stubs.left_out(upper.path());
        assert_eq!(
            out,
            vec![PathBuf::from("root/cache")],
            "the link was followed"
        );
        // A real made parent holding only the stub is left out.
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(upper.path().join("root/cache")).unwrap();
        let out = stubs.left_out(upper.path());
        assert_eq!(
            out,
            vec![PathBuf::from("root/cache"), PathBuf::from("root")]
        );
    }
}
