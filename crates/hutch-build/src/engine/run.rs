//! RUN: a sandbox over the layers so far, the command in it, and its writable layer as the
//! next layer; and the removal of RUN sandboxes whose build died.

use std::collections::BTreeMap;
use std::time::Duration;

use hutch_runtime::agent::ExecEvent;
use hutch_runtime::{Backend, SandboxSpec};
use hutch_wire::StartProcess;

use super::state::State;
use super::{BuildEvent, BuildRequest, Engine};
use crate::dockerfile::Command;
use crate::error::BuildError;

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
                Ok(layer) => {
                    self.add_layer_from(state, &layer.upper, &layer.mount_points)
                        .await
                }
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
                        kind: hutch_runtime::AgentUnreachable::Disrupted,
                        reason: "the RUN step's stream ended without an exit".into(),
                    });
                }
            }
        }
    }
}
