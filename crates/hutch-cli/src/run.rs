//! `hutch run`: one command in a fresh sandbox, Docker's semantics for entrypoint and
//! command, live output with stdout and stderr kept apart, stdin passed through, and the
//! command's exit code (128 + signal when it was killed) as ours.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hutch_api::{
    CreateSandboxRequest, CreateSandboxResources, CreateSandboxResponse, ErrorBody, Health,
    PullImageRequest, SandboxStatus,
};
use hutch_runtime::agent::{AgentClient, ExecEvent, channel_body};
use hutch_runtime::gvisor::{GvisorBackend, GvisorConfig};
use hutch_runtime::{Backend, RuntimeError, SandboxSpec};
use hutch_store::Image;
use hutch_wire::{BootOutcome, StartProcess, StdinMode};
use hyper::Method;
use tokio::io::AsyncReadExt;

use crate::client;
use crate::pull::{PullPolicy, RegistryArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkArg {
    None,
    Default,
}

#[derive(Args)]
pub struct RunArgs {
    /// CPUs the sandbox may use (fractions allowed).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory limit in MiB; the process that exceeds it is killed and reported oom_killed.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Environment variable for the command (repeatable); a bare NAME passes ours through.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Replace the image's ENTRYPOINT ("" clears it).
    #[arg(long)]
    entrypoint: Option<String>,
    /// The sandbox's network: `none` (loopback only) or `default` (its own network out
    /// through the host, fenced from the host and other sandboxes: the SDK's default).
    #[arg(long, value_enum, default_value_t = NetworkArg::None)]
    network: NetworkArg,
    /// Keep the sandbox after the command exits.
    #[arg(long)]
    keep: bool,
    /// Pass stdin through even when it is a terminal.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Use the embedded runtime even when a server is running.
    #[arg(long)]
    local: bool,
    /// When to pull the image from its registry: missing, always or never.
    #[arg(long, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    /// Reach the image's registry over plain HTTP (see `hutch image pull --help`).
    #[arg(long)]
    insecure: bool,
    /// Image name in the local store.
    image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(last = true)]
    command: Vec<String>,
}

fn backend() -> anyhow::Result<GvisorBackend> {
    backend_at(crate::home())
}

/// The gVisor backend over the state directory `home` (its store is `home/store`).
pub fn backend_at(home: std::path::PathBuf) -> anyhow::Result<GvisorBackend> {
    let store = crate::image::open_store_at(&home)?;
    let agent_binary = crate::agent_binary::ensure(&home)?;
    Ok(GvisorBackend::new(
        GvisorConfig { home, agent_binary },
        store,
    )?)
}

pub fn info(json: bool) -> anyhow::Result<()> {
    let backend = backend()?;
    let caps = backend.capabilities();
    if json {
        let value = serde_json::json!({
            "backend": backend.name(),
            "platform": backend.runsc().platform,
            "runtime": caps.runtime(),
            "capabilities": caps.features,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("backend: {}", backend.name());
    if let Some(rt) = caps.runtime() {
        println!(
            "runtime: {} {} (platform {})",
            rt.runtime, rt.version, rt.platform
        );
        for note in &rt.notes {
            println!("  {note}");
        }
    }
    println!("capabilities:");
    for (name, cap) in caps.iter() {
        match cap {
            hutch_runtime::Capability::Supported => println!("  {name:<24} supported"),
            hutch_runtime::Capability::Unsupported { reason } => {
                println!("  {name:<24} unsupported: {reason}")
            }
        }
    }
    Ok(())
}

/// `--env` values as `K=V`; Docker's rule for a bare `K`: the caller's value passes through,
/// and a variable the caller does not have is left out.
fn env_pairs(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|kv| {
            if kv.contains('=') {
                Some(kv.clone())
            } else {
                std::env::var(kv).ok().map(|v| format!("{kv}={v}"))
            }
        })
        .collect()
}

/// Docker's rule: `--entrypoint` replaces the image's and drops its CMD; a command given on
/// the line replaces CMD.
fn argv(args: &RunArgs, config: &hutch_store::ImageConfig) -> anyhow::Result<Vec<String>> {
    let entrypoint: Vec<String> = match &args.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd = if !args.command.is_empty() {
        args.command.clone()
    } else if args.entrypoint.is_some() {
        Vec::new()
    } else {
        config.cmd.clone().unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    anyhow::ensure!(
        !argv.is_empty(),
        "no command given and the image {} has no ENTRYPOINT or CMD",
        args.image
    );
    Ok(argv)
}

/// Runs through a server when one is found (see [`find_server`]), else embedded.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    if !args.local
        && let Some(api) = find_server().await?
    {
        tracing::debug!(%api, "running through the server");
        return run_on_server(args, &api).await;
    }
    tracing::debug!("running with the embedded runtime");
    run_embedded(args).await
}

/// The server `hutch run` should use: `$HUTCH_SERVER` when set (it must answer), else the
/// server `hutch serve` published in this state directory (`serve.json`), when it proves it
/// knows the secret written there. Whoever else listens on that address (the server may have
/// stopped) cannot, and is not used: the run stays embedded.
async fn find_server() -> anyhow::Result<Option<String>> {
    if let Ok(url) = std::env::var("HUTCH_SERVER")
        && !url.is_empty()
    {
        client::json(&url, Method::GET, "/healthz", None, None)
            .await
            .with_context(|| format!("HUTCH_SERVER={url} does not answer"))?;
        return Ok(Some(url));
    }
    let home = crate::home();
    let Some(published) = hutch_state::discovery::read(&home) else {
        return Ok(None);
    };
    let challenge = hutch_state::discovery::challenge()?;
    let headers = [(hutch_state::discovery::CHALLENGE_HEADER, challenge.as_str())];
    let probe = client::json_with(
        &published.api,
        Method::GET,
        "/healthz",
        None,
        &headers,
        None,
    );
    let Ok(Ok(health)) = tokio::time::timeout(Duration::from_millis(500), probe).await else {
        return Ok(None);
    };
    let Ok(health) = serde_json::from_value::<Health>(health) else {
        return Ok(None);
    };
    let proven = health
        .proof
        .is_some_and(|proof| published.verify(&challenge, &proof));
    let same_home = health.state_id == hutch_state::state_id(&home);
    if proven && same_home {
        Ok(Some(published.api))
    } else {
        tracing::warn!(api = %published.api, "the listener at the published server address is not the server; running embedded");
        Ok(None)
    }
}

/// Has the server pull `reference`, drawing its progress events.
/// The longest progress line `server_pull` holds (a line is one small JSON event).
const MAX_PULL_LINE: usize = 64 << 10;

async fn server_pull(api: &str, reference: &str) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let body = serde_json::to_string(&PullImageRequest {
        reference: reference.to_string(),
    })?;
    let resp = client::send(
        api,
        Method::POST,
        "/hutch/v1/images/pull",
        None,
        client::full(body),
    )
    .await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = client::read_whole(body).await?;
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => anyhow::bail!("{}", e.error),
            Err(_) => anyhow::bail!("{}", String::from_utf8_lossy(&bytes)),
        }
    }
    let renderer = hutch_registry::Renderer::new(std::io::stderr().is_terminal());
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        anyhow::ensure!(
            pending.len() <= MAX_PULL_LINE || pending.contains(&b'\n'),
            "the server sent a progress line over {} KiB",
            MAX_PULL_LINE >> 10
        );
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
            if value["event"] == "error" {
                anyhow::bail!("{}", value["message"].as_str().unwrap_or("the pull failed"));
            }
            if let Ok(event) = serde_json::from_value::<hutch_registry::Event>(value) {
                renderer.handle(event);
            }
        }
    }
    Ok(())
}

/// `hutch run` against a server: create through the lifecycle API, run through the proxy
/// with the same framed, reattachable exec the embedded path uses, then delete.
async fn run_on_server(args: RunArgs, api: &str) -> anyhow::Result<u8> {
    // The server resolves the name as a create would: a template, else a stored image.
    let name = args.image.clone();
    let path = format!("/hutch/v1/images/{name}");
    let lookup = client::call::<Image>(api, Method::GET, &path, None, None::<&()>).await;
    let image = match (args.pull, lookup) {
        (PullPolicy::Never, found) => found?,
        (PullPolicy::Missing, Ok(found)) => found,
        _ => {
            server_pull(api, &args.image).await?;
            client::call(api, Method::GET, &path, None, None::<&()>).await?
        }
    };
    let argv = argv(&args, &image.config)?;
    // The command runs through the proxy: no template CMD at create.
    let body = CreateSandboxRequest {
        image: Some(name),
        resources: Some(CreateSandboxResources {
            cpus: args.cpus,
            memory_mb: args.memory.map(|m| m as i64),
            ..CreateSandboxResources::default()
        }),
        entrypoint: Some(Vec::new()),
        network: match args.network {
            NetworkArg::None => Some(hutch_api::NetworkConfig {
                allow_internet_access: false,
                allow_out: Vec::new(),
                deny_out: Vec::new(),
            }),
            NetworkArg::Default => None,
        },
        ..CreateSandboxRequest::default()
    };
    let created: CreateSandboxResponse = client::call(
        api,
        Method::POST,
        &crate::sbx::sandboxes_path(),
        None,
        Some(&body),
    )
    .await
    .context("creating the sandbox")?;
    let id = created.sandbox_id;
    let outcome = async {
        let (proxy, _, _) = crate::sbx::route(api, &id).await?;
        let key = std::env::var("HUTCH_API_KEY").ok();
        let agent = AgentClient::via_proxy(&proxy, &id, key.as_deref())?;
        let forward_stdin = args.interactive || !std::io::stdin().is_terminal();
        let env: std::collections::BTreeMap<String, String> = env_pairs(&args.env)
            .into_iter()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        let process = StartProcess {
            command: argv[0].clone(),
            args: argv[1..].to_vec(),
            env: (!env.is_empty()).then_some(env),
            working_dir: args.workdir.clone(),
            user: args.user.clone().map(hutch_wire::ProcessUser::Spec),
            stdin_mode: if forward_stdin {
                StdinMode::Pipe
            } else {
                StdinMode::Closed
            },
            ..StartProcess::default()
        };
        let alive = async || {
            match crate::sbx::get(api, &id).await {
                Ok(info) => info.status == SandboxStatus::Running,
                // The server itself may be restarting; the sandbox outlives it.
                Err(_) => true,
            }
        };
        drive(&agent, &process, forward_stdin, alive).await
    }
    .await;
    if args.keep {
        eprintln!("hutch: kept sandbox {id}");
    } else if let Err(e) = client::json(
        api,
        Method::DELETE,
        &format!("{}/{id}", crate::sbx::sandboxes_path()),
        None,
        None,
    )
    .await
    {
        eprintln!("hutch: removing sandbox {id}: {e}");
    }
    outcome
}

async fn run_embedded(args: RunArgs) -> anyhow::Result<u8> {
    let backend = backend()?;
    tracing::debug!("backend ready");
    let registry = RegistryArgs {
        insecure: args.insecure,
        ..RegistryArgs::default()
    };
    let templates =
        hutch_state::templates::Templates::open(&crate::home(), backend.store().clone())?;
    let image = match templates.image_of(&args.image) {
        Some(name) => backend.store().image(&name)?,
        None => crate::pull::resolve(backend.store(), &args.image, args.pull, &registry).await?,
    };
    let argv = argv(&args, &image.config)?;
    let spec = SandboxSpec {
        image: image.name.clone(),
        cpus: args.cpus,
        memory_mb: args.memory,
        env: env_pairs(&args.env),
        working_dir: args.workdir.clone(),
        user: args.user.clone(),
        network: match args.network {
            NetworkArg::None => hutch_runtime::NetworkMode::None,
            NetworkArg::Default => hutch_runtime::NetworkMode::Egress,
        },
        ..SandboxSpec::default()
    };
    let forward_stdin = args.interactive || !std::io::stdin().is_terminal();
    let process = StartProcess {
        command: argv[0].clone(),
        args: argv[1..].to_vec(),
        stdin_mode: if forward_stdin {
            StdinMode::Pipe
        } else {
            StdinMode::Closed
        },
        ..StartProcess::default()
    };
    if !args.keep {
        return run_one_shot(&backend, spec, &process, forward_stdin).await;
    }
    let sandbox = backend.create(spec).await.context("creating the sandbox")?;
    let id = sandbox.info.id.clone();
    let alive = async || backend.runsc().knows(&id);
    let outcome = drive(&sandbox.agent, &process, forward_stdin, alive).await;
    tracing::debug!(%id, "process finished");
    if args.keep {
        eprintln!("hutch: kept sandbox {id}");
    } else if let Err(e) = backend.delete(&id).await {
        eprintln!("hutch: removing sandbox {id}: {e}");
    }
    tracing::debug!(%id, "sandbox removed");
    outcome
}

/// A sandbox that lives as long as its command (no `--keep`): the command is the agent's
/// boot process on our own stdio, as `runsc run` would run it, so no exec round trip and no
/// shutdown request stand between the user and the floor.
async fn run_one_shot(
    backend: &dyn Backend,
    spec: SandboxSpec,
    process: &StartProcess,
    forward_stdin: bool,
) -> anyhow::Result<u8> {
    let run = backend
        .run_attached(spec, process, forward_stdin)
        .await
        .context("creating the sandbox")?;
    tracing::debug!(id = %run.info.id, "one-shot sandbox started");
    let agent = run.agent.clone();
    let mut finished = std::pin::pin!(backend.wait_attached(run));
    let mut interrupts = 0u32;
    let outcome = loop {
        tokio::select! {
            outcome = &mut finished => break outcome,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                let signal = if interrupts > 1 { libc::SIGKILL } else { libc::SIGINT };
                let agent = agent.clone();
                tokio::spawn(async move {
                    let _ = agent.signal(hutch_wire::BOOT_PROCESS_NAME, signal).await;
                });
            }
        }
    };
    tracing::debug!("one-shot sandbox removed");
    match outcome {
        Ok(BootOutcome::Exit(exit)) => {
            if exit.oom_killed {
                eprintln!(
                    "hutch: out of memory: the memory limit killed the command or one of its processes"
                );
            }
            Ok(exit.shell_code().clamp(0, 255) as u8)
        }
        Ok(BootOutcome::Error(e)) => {
            eprintln!("hutch: {}", e.error);
            Ok(failure_code(&e.code))
        }
        // runsc could not start the sandbox: Docker's code for a run that failed to start.
        Err(e @ RuntimeError::BackendFailure { .. }) => {
            eprintln!("hutch: {e}");
            Ok(125)
        }
        Err(e) => {
            eprintln!("hutch: {e}");
            Ok(137)
        }
    }
}

/// Docker's codes for a command that could not start.
fn failure_code(code: &str) -> u8 {
    match code {
        "command_not_found" => 127,
        "command_not_executable" => 126,
        _ => 125,
    }
}

/// Runs the process to completion, reattaching if the agent's connection drops.
async fn drive(
    agent: &AgentClient,
    process: &StartProcess,
    forward_stdin: bool,
    sandbox_alive: impl AsyncFn() -> bool,
) -> anyhow::Result<u8> {
    let mut stream = match agent.exec(process).await {
        Ok(stream) => stream,
        Err(RuntimeError::ProcessFailure { code, message }) => {
            eprintln!("hutch: {message}");
            return Ok(failure_code(&code));
        }
        Err(e) => return Err(e.into()),
    };
    let mut pid = None;
    let mut next_seq = 0u64;
    let mut interrupts = 0u32;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut reconnect_deadline: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if let Some(pid) = pid {
                    let signal = if interrupts > 1 { libc::SIGKILL } else { libc::SIGINT };
                    let _ = agent.signal(pid, signal).await;
                }
                continue;
            }
        };
        match event {
            Ok(Some(ExecEvent::Started { pid: p })) => {
                pid = Some(p);
                if forward_stdin {
                    tokio::spawn(pump_stdin(agent.clone(), p));
                }
            }
            Ok(Some(ExecEvent::Stdout { seq, data })) => {
                next_seq = seq + 1;
                stdout.write_all(&data).context("writing stdout")?;
                stdout.flush().ok();
            }
            Ok(Some(ExecEvent::Stderr { seq, data })) => {
                next_seq = seq + 1;
                stderr.write_all(&data).context("writing stderr")?;
            }
            Ok(Some(ExecEvent::Gap { first_available })) => {
                eprintln!(
                    "hutch: output lost while disconnected (chunks {next_seq}..{first_available})"
                );
                next_seq = first_available;
            }
            Ok(Some(ExecEvent::Exit(exit))) => {
                stdout.flush().ok();
                if exit.oom_killed {
                    eprintln!(
                        "hutch: out of memory: the memory limit killed the command or one of its processes"
                    );
                }
                return Ok(exit.shell_code().clamp(0, 255) as u8);
            }
            Ok(None) => anyhow::bail!("the process stream ended without an exit status"),
            Err(RuntimeError::AgentUnavailable { reason, .. }) => {
                let Some(pid) = pid else {
                    anyhow::bail!("lost the sandbox before the process started: {reason}");
                };
                if !sandbox_alive().await {
                    eprintln!("hutch: the sandbox was killed while the command ran ({reason})");
                    return Ok(137);
                }
                let deadline = *reconnect_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(30));
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("lost the sandbox's agent and it did not come back: {reason}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(resumed) = agent.attach(pid, next_seq).await {
                    stream = resumed;
                    reconnect_deadline = None;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn pump_stdin(agent: AgentClient, pid: i64) {
    let (tx, body) = channel_body(8);
    let upload = tokio::spawn({
        let agent = agent.clone();
        async move { agent.write_stdin(pid, body).await }
    });
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = upload.await;
    let _ = agent.close_stdin(pid).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pull_progress_line_past_the_cap_is_refused_not_buffered() {
        // One "line" of 1 MiB without a newline: held whole, it would end in a parse, not
        // in this error.
        let base = crate::client::tests::answer_once(vec![b' '; 1 << 20]).await;
        let err = server_pull(&base, "busybox")
            .await
            .expect_err("an endless line was accepted");
        assert!(format!("{err:#}").contains("progress line over"), "{err:#}");
    }
}
