//! The measurements: each figure times ours and its floor alternately, after one unmeasured
//! warm-up of each side.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use http_body_util::BodyExt;
use hutch_runtime::agent::{AgentClient, ExecEvent};
use hutch_runtime::gvisor::GvisorBackend;
use hutch_runtime::{Backend, SandboxSpec};
use hutch_wire::StartProcess;

use crate::host::{HostProcess, kib_field};
use crate::setup::Setup;
use crate::stats::Samples;

pub struct Latency {
    pub figure: String,
    pub n: usize,
    pub ours: Samples,
    pub floor: Samples,
    /// The most ours/floor (median) may be.
    pub goal: Option<f64>,
    pub ours_is: String,
    pub floor_is: String,
}

pub struct AgentMemory {
    pub rss_kib: u64,
    /// Why the file API could not read `/proc/1/status`, if it could not.
    pub file_api_error: Option<String>,
}

pub struct Memory {
    /// Readings of the agent's memory: when, and what.
    pub agent: Vec<(String, AgentMemory)>,
    pub host: Vec<HostProcess>,
}

/// One timed child process.
struct Outcome {
    /// From spawn to the first byte on its stdout.
    first_byte: Option<Duration>,
    /// From spawn to its exit (and its stdout closed).
    total: Duration,
    stdout: Vec<u8>,
}

/// Runs `cmd` to completion with stdin from /dev/null, timestamping its first stdout byte.
fn timed(cmd: &mut Command, what: &str) -> anyhow::Result<Outcome> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let stderr = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut first_byte = None;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout
            .read(&mut buf)
            .with_context(|| format!("reading {what}'s stdout"))?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| start.elapsed());
        out.extend_from_slice(&buf[..n]);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {what}"))?;
    let total = start.elapsed();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({status}): {}", tail.join(" | "));
    }
    Ok(Outcome {
        first_byte,
        total,
        stdout: out,
    })
}

fn raw_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "hb-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Figure 1: `hutch run busybox -- true` against `runsc run` of the same rootfs, wall clock.
pub fn run_true(setup: &Setup, n: usize) -> anyhow::Result<Latency> {
    eprintln!("hutch-bench: figure 1, `hutch run busybox -- true` vs `runsc run` ({n} iterations)");
    let mut ours = Samples::default();
    let mut floor = Samples::default();
    for i in 0..=n {
        let o = timed(
            setup.hutch().args(["run", "busybox", "--", "true"]),
            "hutch run busybox -- true",
        )?;
        let f = timed(
            &mut setup.raw_run(&setup.bundle_true, &raw_id()),
            "runsc run (true)",
        )?;
        if i > 0 {
            ours.push(o.total);
            floor.push(f.total);
        }
    }
    Ok(Latency {
        figure: "1. `hutch run busybox -- true`, whole command".into(),
        n,
        ours,
        floor,
        goal: Some(1.15),
        ours_is: "wall time of the `hutch run busybox -- true` process (a one-shot sandbox: `true` is the agent's boot process, on the CLI's stdio; the sandbox ends with it and is removed; no limit was asked, so runsc runs with --ignore-cgroups, where the floor's runsc creates and joins a cgroup: 1b compares both with one)"
            .into(),
        floor_is: format!(
            "wall time of `runsc --platform={} --network=none run` of an umoci-unpacked bundle \
             of the same image running /bin/true",
            setup.platform
        ),
    })
}

/// Figure 1b: the same with a memory limit on both sides, so that both pay for a cgroup.
pub fn run_true_limited(setup: &Setup, n: usize) -> anyhow::Result<Latency> {
    let limit = crate::setup::LIMIT_MIB.to_string();
    eprintln!(
        "hutch-bench: figure 1b, `hutch run --memory {limit}` vs `runsc run` with a limit ({n} iterations)"
    );
    let mut ours = Samples::default();
    let mut floor = Samples::default();
    for i in 0..=n {
        let o = timed(
            setup
                .hutch()
                .args(["run", "--memory", &limit, "busybox", "--", "true"]),
            "hutch run --memory busybox -- true",
        )?;
        let f = timed(
            &mut setup.raw_run(&setup.bundle_true_limited, &raw_id()),
            "runsc run (true, memory limit)",
        )?;
        if i > 0 {
            ours.push(o.total);
            floor.push(f.total);
        }
    }
    Ok(Latency {
        figure: format!("1b. `hutch run --memory {limit} busybox -- true`, whole command"),
        n,
        ours,
        floor,
        goal: Some(1.15),
        ours_is: "as in 1, with a memory limit: runsc creates and joins a cgroup for the sandbox"
            .into(),
        floor_is: format!(
            "as in 1, with `linux.resources.memory.limit` of {limit} MiB in the bundle"
        ),
    })
}

/// Spawn to the first byte of `echo hi`'s output, a new sandbox each time, for `ours` and
/// `floor` alternating: the medians' samples, the first (warm-up) iteration left out.
fn echo_first_bytes(
    n: usize,
    mut ours: impl FnMut() -> Command,
    mut floor: impl FnMut() -> Command,
    names: [&str; 2],
) -> anyhow::Result<(Samples, Samples)> {
    let (mut o_samples, mut f_samples) = (Samples::default(), Samples::default());
    for i in 0..=n {
        let o = timed(&mut ours(), names[0])?;
        let f = timed(&mut floor(), names[1])?;
        for (side, out) in [(names[0], &o), (names[1], &f)] {
            ensure!(
                out.stdout == b"hi\n",
                "{side} printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if i > 0 {
            o_samples.push(
                o.first_byte
                    .with_context(|| format!("no output from {}", names[0]))?,
            );
            f_samples.push(
                f.first_byte
                    .with_context(|| format!("no output from {}", names[1]))?,
            );
        }
    }
    Ok((o_samples, f_samples))
}

/// Figure 2: spawn to the first byte of `echo hi`'s output, a new sandbox each time.
pub fn first_byte(setup: &Setup, n: usize) -> anyhow::Result<Latency> {
    eprintln!("hutch-bench: figure 2, create to first byte of `echo hi` ({n} iterations)");
    let (ours, floor) = echo_first_bytes(
        n,
        || {
            let mut c = setup.hutch();
            c.args(["run", "busybox", "--", "echo", "hi"]);
            c
        },
        || setup.raw_run(&setup.bundle_echo, &raw_id()),
        ["hutch run busybox -- echo hi", "runsc run (echo hi)"],
    )?;
    Ok(Latency {
        figure: "2. create → first byte of `echo hi` (cold)".into(),
        n,
        ours,
        floor,
        goal: None,
        ours_is: "from spawning `hutch run busybox -- echo hi` to the first byte on its stdout"
            .into(),
        floor_is: "the same for `runsc run` of the raw bundle running /bin/echo hi".into(),
    })
}

/// Figure 2n: figure 2 with the sandbox on its own network (namespace, veth, nftables
/// chains, runsc's netstack) against figure 2 without one, in the same run.
pub fn first_byte_network(setup: &Setup, n: usize) -> anyhow::Result<Latency> {
    eprintln!("hutch-bench: figure 2n, create to first byte with a network ({n} iterations)");
    let (ours, floor) = echo_first_bytes(
        n,
        || {
            let mut c = setup.hutch();
            // DNS nowhere: the benchmark sends no query off the machine.
            c.env("HUTCH_SANDBOX_DNS", "127.0.0.1").args([
                "run",
                "--network",
                "default",
                "busybox",
                "--",
                "echo",
                "hi",
            ]);
            c
        },
        || {
            let mut c = setup.hutch();
            c.args(["run", "busybox", "--", "echo", "hi"]);
            c
        },
        ["hutch run --network default", "hutch run (no network)"],
    )?;
    Ok(Latency {
        figure: "2n. create → first byte of `echo hi`, with a network against without".into(),
        n,
        ours,
        floor,
        goal: Some(1.10),
        ours_is: "`hutch run --network default busybox -- echo hi`, spawn to first byte".into(),
        floor_is: "`hutch run busybox -- echo hi` (no network: loopback only)".into(),
    })
}

/// One `true` through the agent: request, then the stream drained up to the exit event.
async fn agent_exec_true(agent: &AgentClient) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut stream = agent
        .exec(&StartProcess {
            command: "true".into(),
            ..Default::default()
        })
        .await
        .context("agent exec of true")?;
    loop {
        match stream.next().await.context("reading the exec stream")? {
            Some(ExecEvent::Exit(exit)) => {
                ensure!(exit.shell_code() == 0, "true exited with {exit:?}");
                return Ok(start.elapsed());
            }
            Some(_) => {}
            None => bail!("the exec stream ended without an exit event"),
        }
    }
}

/// Figure 3: `true` through the agent against `runsc exec` into the same sandbox.
pub fn exec_true(
    setup: &Setup,
    runtime: &tokio::runtime::Runtime,
    agent: &AgentClient,
    id: &str,
    n: usize,
) -> anyhow::Result<Latency> {
    eprintln!("hutch-bench: figure 3, exec round trip of `true` ({n} iterations)");
    let mut ours = Samples::default();
    let mut floor = Samples::default();
    for i in 0..=n {
        let o = runtime.block_on(agent_exec_true(agent))?;
        let f = timed(&mut setup.raw_exec(id, &["true"]), "runsc exec true")?;
        if i > 0 {
            ours.push(o);
            floor.push(f.total);
        }
    }
    Ok(Latency {
        figure: "3. exec round trip of `true` in a running sandbox".into(),
        n,
        ours,
        floor,
        goal: Some(0.33),
        ours_is: "`AgentClient::exec` of `true` until its exit event, over the agent's \
                  connection"
            .into(),
        floor_is: "wall time of `runsc exec <sandbox> true` into the same sandbox".into(),
    })
}

/// Figure 4, untouched: the agent's memory read from outside with `runsc exec cat`, so that
/// the agent serves no request for it.
pub fn agent_rss_runsc(setup: &Setup, id: &str) -> anyhow::Result<AgentMemory> {
    let out = timed(
        &mut setup.raw_exec(id, &["cat", "/proc/1/status"]),
        "runsc exec cat /proc/1/status",
    )?;
    parse_status(&String::from_utf8_lossy(&out.stdout), None)
}

/// Figure 4: the agent's resident set, as the sandbox's `/proc/1/status` reports it, read
/// through the file API; if that fails, with `runsc exec cat`, and the failure is kept for
/// the report.
pub fn agent_rss(
    setup: &Setup,
    runtime: &tokio::runtime::Runtime,
    agent: &AgentClient,
    id: &str,
) -> anyhow::Result<AgentMemory> {
    match runtime.block_on(read_through_file_api(agent, "/proc/1/status")) {
        Ok(text) => parse_status(&text, None),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("hutch-bench: the file API failed on /proc/1/status ({e}); using runsc exec");
            let mut memory = agent_rss_runsc(setup, id)?;
            memory.file_api_error = Some(e);
            Ok(memory)
        }
    }
}

fn parse_status(text: &str, file_api_error: Option<String>) -> anyhow::Result<AgentMemory> {
    let rss_kib = kib_field(text, "VmRSS:")
        .with_context(|| format!("no VmRSS in the sandbox's /proc/1/status: {text:?}"))?;
    Ok(AgentMemory {
        rss_kib,
        file_api_error,
    })
}

/// The agent's largest mappings by resident size, for the log.
pub fn log_agent_smaps(setup: &Setup, id: &str) {
    let Ok(out) = timed(
        &mut setup.raw_exec(id, &["cat", "/proc/1/smaps"]),
        "runsc exec cat /proc/1/smaps",
    ) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut mapping = "";
    let mut sizes: Vec<(u64, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with(|c: char| c.is_ascii_hexdigit()) && line.contains('-') {
            mapping = line;
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            let kib = kib.split_whitespace().next().and_then(|v| v.parse().ok());
            let fields: Vec<&str> = mapping.split_whitespace().collect();
            let name = fields.get(5).copied().unwrap_or("[anon]");
            let perms = fields.get(1).copied().unwrap_or("");
            sizes.push((kib.unwrap_or(0), format!("{perms} {name}")));
        }
    }
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (kib, what) in sizes.iter().take(6) {
        eprintln!("hutch-bench:   agent mapping {what}: Rss {kib} KiB");
    }
}

async fn read_through_file_api(agent: &AgentClient, path: &str) -> anyhow::Result<String> {
    let body = agent.read_file(path).await.context("GET /api/v1/files")?;
    let bytes = body.collect().await.context("reading the body")?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    ensure!(
        !text.is_empty(),
        "the file API returned an empty body for {path}"
    );
    Ok(text)
}

/// What `hutch run` spends before creating anything: `hutch info` does the same set-up
/// (process start, tokio, opening the store, finding the agent and runsc) and exits.
pub fn cli_overhead(setup: &Setup, n: usize) -> anyhow::Result<(String, Samples)> {
    let mut samples = Samples::default();
    for i in 0..=n {
        let o = timed(setup.hutch().arg("info"), "hutch info")?;
        if i > 0 {
            samples.push(o.total);
        }
    }
    Ok((
        "`hutch info` (process start, store open, backend set-up)".into(),
        samples,
    ))
}

/// `hutch run`'s phases through the library: a kept sandbox's create, exec of `true` and
/// delete, then the one-shot path (`run_attached`, `wait_attached`).
pub async fn phases(backend: &GvisorBackend, n: usize) -> anyhow::Result<Vec<(String, Samples)>> {
    eprintln!("hutch-bench: phases of create + exec + delete through the library ({n} iterations)");
    let mut create = Samples::default();
    let mut exec = Samples::default();
    let mut delete = Samples::default();
    let mut total = Samples::default();
    for i in 0..=n {
        let t0 = Instant::now();
        let sandbox = backend
            .create(SandboxSpec {
                image: "busybox:latest".into(),
                ..Default::default()
            })
            .await
            .context("creating a sandbox")?;
        let t1 = Instant::now();
        let ran = agent_exec_true(&sandbox.agent).await;
        let t2 = Instant::now();
        let deleted = backend.delete(&sandbox.info.id).await;
        let t3 = Instant::now();
        ran?;
        deleted.with_context(|| format!("deleting sandbox {}", sandbox.info.id))?;
        if i > 0 {
            create.push(t1 - t0);
            exec.push(t2 - t1);
            delete.push(t3 - t2);
            total.push(t3 - t0);
        }
    }
    // The one-shot path `hutch run` takes without --keep.
    let mut launch = Samples::default();
    let mut finish = Samples::default();
    let mut one_shot = Samples::default();
    let process = hutch_wire::StartProcess {
        command: "true".into(),
        ..Default::default()
    };
    for i in 0..=n {
        let t0 = Instant::now();
        let run = backend
            .run_attached(
                SandboxSpec {
                    image: "busybox:latest".into(),
                    ..Default::default()
                },
                &process,
                false,
            )
            .await
            .context("starting a one-shot sandbox")?;
        let t1 = Instant::now();
        let outcome = backend.wait_attached(run).await;
        let t2 = Instant::now();
        match outcome.context("a one-shot sandbox")? {
            hutch_wire::BootOutcome::Exit(exit) if exit.shell_code() == 0 => {}
            other => anyhow::bail!("one-shot `true` failed: {other:?}"),
        }
        if i > 0 {
            launch.push(t1 - t0);
            finish.push(t2 - t1);
            one_shot.push(t2 - t0);
        }
    }
    Ok(vec![
        (
            "one-shot: `run_attached` (mount, bundle, start `runsc run`)".into(),
            launch,
        ),
        (
            "one-shot: `wait_attached` (boot, the agent starts `true` first, sandbox ends, unmount)"
                .into(),
            finish,
        ),
        ("library total, one-shot (what `hutch run` does)".into(), one_shot),
        (
            "kept: `backend.create` (mount, bundle, `runsc run`, agent dials home)".into(),
            create,
        ),
        ("kept: exec of `true` (first one in the sandbox)".into(), exec),
        (
            "kept: `backend.delete` (agent shutdown, runsc teardown, unmount)".into(),
            delete,
        ),
        (
            "library total, kept (create + exec + delete: `hutch run --keep` and the server)"
                .into(),
            total,
        ),
    ])
}
