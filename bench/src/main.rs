//! `hutch-bench`: measures Hutch against the floor it sits on (raw `runsc`), both sides in the
//! same run, and prints Markdown tables fit for `docs/benchmarks.md`.
//!
//! Progress goes to stderr; the report alone goes to stdout. Run as root, after
//! `cargo build --release` and `fixtures/build-all.sh`. Knobs (environment):
//! `HUTCH_BENCH_N` (iterations of every figure; default 20 for the cheap ones, 10 for the
//! ones that create a sandbox), `HUTCH_BENCH_HOME` (state directory, default
//! `/tmp/hutch-bench-home`), `HUTCH_BIN`, `HUTCH_FIXTURES`, `HUTCH_AGENT_BIN`.

mod host;
mod measure;
mod setup;
mod stats;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use hutch_runtime::{Backend, SandboxSpec};

use measure::{Latency, Memory};
use setup::Setup;
use stats::{mib, ms, ratio};

const DEFAULT_N_CHEAP: usize = 20;
const DEFAULT_N_CREATE: usize = 10;
/// The idle agent's resident set must stay under this.
const AGENT_RSS_GOAL_KIB: u64 = 5 * 1024;
/// The second idle reading: well past the 10 s after which tokio ends an idle blocking-pool
/// thread.
const IDLE_LONG_SECS: u64 = 15;

fn main() {
    if let Err(e) = run() {
        eprintln!("hutch-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn iterations() -> anyhow::Result<(usize, usize)> {
    match std::env::var("HUTCH_BENCH_N") {
        Ok(v) if !v.trim().is_empty() => {
            let n: usize =
                v.trim().parse().ok().filter(|&n| n > 0).with_context(|| {
                    format!("HUTCH_BENCH_N must be a positive integer, got {v:?}")
                })?;
            Ok((n, n))
        }
        _ => Ok((DEFAULT_N_CHEAP, DEFAULT_N_CREATE)),
    }
}

fn run() -> anyhow::Result<()> {
    let (n_cheap, n_create) = iterations()?;
    let setup = Setup::prepare()?;
    setup.clean_raw();
    let (runtime, backend) = setup.library()?;

    let started = now_utc();
    let mut latency: Vec<Latency> = vec![
        measure::run_true(&setup, n_create)?,
        measure::run_true_limited(&setup, n_create)?,
        measure::first_byte(&setup, n_create)?,
        measure::first_byte_network(&setup, n_create)?,
    ];

    eprintln!("hutch-bench: creating the sandbox for figures 3 and 4");
    let sandbox = runtime
        .block_on(backend.create(SandboxSpec {
            image: "busybox:latest".into(),
            ..Default::default()
        }))
        .context("creating a busybox sandbox through the library")?;
    let id = sandbox.info.id.clone();
    // The memory readings go through `runsc exec cat`, which the agent takes no part in, so
    // that reading does not disturb what is read; the file API's reading comes last.
    let in_sandbox = (|| -> anyhow::Result<(Latency, Memory)> {
        let mut agent = Vec::new();
        agent.push((
            "just booted (no request served yet)".to_string(),
            measure::agent_rss_runsc(&setup, &id)?,
        ));
        eprintln!("hutch-bench: the agent's largest mappings just after boot:");
        measure::log_agent_smaps(&setup, &id);
        let exec = measure::exec_true(&setup, &runtime, &sandbox.agent, &id, n_cheap)?;
        let execs_done = Instant::now();
        for idle in [1, IDLE_LONG_SECS] {
            eprintln!("hutch-bench: figure 4, agent memory after {idle} s idle");
            let since = Duration::from_secs(idle);
            std::thread::sleep(since.saturating_sub(execs_done.elapsed()));
            agent.push((
                format!("{idle} s idle after {} execs of `true`", n_cheap + 1),
                measure::agent_rss_runsc(&setup, &id)?,
            ));
            eprintln!("hutch-bench: the agent's largest mappings after {idle} s idle:");
            measure::log_agent_smaps(&setup, &id);
        }
        agent.push((
            format!("then read through the file API ({IDLE_LONG_SECS} s idle, one file read)"),
            measure::agent_rss(&setup, &runtime, &sandbox.agent, &id)?,
        ));
        eprintln!("hutch-bench: the agent's largest mappings after a file read:");
        measure::log_agent_smaps(&setup, &id);
        let host = host::processes(&id);
        Ok((exec, Memory { agent, host }))
    })();
    eprintln!("hutch-bench: deleting sandbox {id}");
    let deleted = runtime.block_on(backend.delete(&id));
    let (exec, memory) = in_sandbox?;
    deleted.with_context(|| format!("deleting sandbox {id}"))?;
    latency.push(exec);

    let mut phases = vec![measure::cli_overhead(&setup, n_create)?];
    phases.extend(runtime.block_on(measure::phases(&backend, n_create))?);

    print_report(
        &setup, &started, n_cheap, n_create, &latency, &memory, &phases,
    );
    Ok(())
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn machine(setup: &Setup) -> Vec<(&'static str, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let runsc = setup.runsc_version();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| host::kib_field(&m, "MemTotal:"));
    vec![
        ("CPUs (nproc)", cpus.to_string()),
        ("CPU model", model),
        ("Memory", mem_kib.map_or_else(|| "unknown".into(), mib)),
        ("Kernel (uname -r)", kernel),
        ("runsc", format!("{runsc}, platform {}", setup.platform)),
        ("hutch", hutch_revision(setup)),
        (
            "Image",
            format!("busybox fixture, {}", setup.fixture.display()),
        ),
    ]
}

/// The `hutch` binary measured: when it was built, the commit the tree was at, and whether
/// the sources have changed since.
fn hutch_revision(setup: &Setup) -> String {
    let ws = setup::workspace();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&ws)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let built = Command::new("date")
        .arg("-u")
        .arg("-r")
        .arg(&setup.hutch)
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut out = format!("`{}`, built {built}", setup.hutch.display());
    if let Some(head) = git(&["rev-parse", "--short", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        out.push_str(&format!(
            "; tree at commit {head}{}",
            if dirty {
                " plus uncommitted changes"
            } else {
                ""
            }
        ));
    }
    let binary_time = std::fs::metadata(&setup.hutch)
        .and_then(|m| m.modified())
        .ok();
    if let Some(binary_time) = binary_time
        && newest_source(&ws.join("crates")).is_some_and(|t| t > binary_time)
    {
        out.push_str(" (**sources changed since the build**: `cargo build --release`)");
    }
    out
}

/// The newest modification time of a Rust source or manifest under `dir` that goes into a
/// binary.
fn newest_source(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            // Only what goes into the binary: not tests, examples or build output.
            let skip = ["target", "tests", "examples", "benches"];
            if path
                .file_name()
                .is_some_and(|n| skip.iter().any(|s| n == *s))
            {
                continue;
            }
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(time);
    }
    newest
}

fn print_report(
    setup: &Setup,
    started: &str,
    n_cheap: usize,
    n_create: usize,
    latency: &[Latency],
    memory: &Memory,
    phases: &[(String, stats::Samples)],
) {
    println!("## Run of {started}\n");
    println!("| Machine | |");
    println!("|---|---|");
    for (k, v) in machine(setup) {
        println!("| {k} | {v} |");
    }
    println!(
        "\nIterations: {n_create} for figures that create a sandbox, {n_cheap} for the others, \
         after one unmeasured warm-up of each side. p95 is nearest-rank (the maximum below 20 \
         samples). Ours and the floor alternate, iteration by iteration.\n"
    );

    println!("### Latency\n");
    println!(
        "| Figure | N | Ours median | Ours p95 | Floor median | Floor p95 | Ratio median | Ratio p95 | Goal | Met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in latency {
        let (om, op) = (row.ours.median(), row.ours.p95());
        let (fm, fp) = (row.floor.median(), row.floor.p95());
        let r = ratio(om, fm);
        let (goal, met) = match row.goal {
            Some(g) => (
                format!("≤ {g:.2}"),
                if r <= g { "yes" } else { "**no**" }.to_string(),
            ),
            None => ("—".into(), "—".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
            row.figure,
            row.n,
            ms(om),
            ms(op),
            ms(fm),
            ms(fp),
            r,
            ratio(op, fp),
            goal,
            met
        );
    }
    println!();
    for row in latency {
        println!(
            "- {}: ours = {}; floor = {}.",
            row.figure, row.ours_is, row.floor_is
        );
    }

    println!("\n### Memory\n");
    println!("| Figure | Value | Goal | Met |");
    println!("|---|---|---|---|");
    let met = |kib: u64| {
        if kib <= AGENT_RSS_GOAL_KIB {
            "yes"
        } else {
            "**no**"
        }
    };
    let goal = format!("≤ {}", mib(AGENT_RSS_GOAL_KIB));
    for (when, m) in &memory.agent {
        println!(
            "| Agent (PID 1) VmRSS, {when} | {} | {goal} | {} |",
            mib(m.rss_kib),
            met(m.rss_kib)
        );
    }
    for p in &memory.host {
        println!("| Host: {} | {} | — | — |", p.what, mib(p.rss_kib));
    }
    if memory.host.is_empty() {
        println!("| Host: runsc processes of the sandbox | not found | — | — |");
    }
    let file_api_error = memory
        .agent
        .iter()
        .find_map(|(_, m)| m.file_api_error.as_ref());
    match file_api_error {
        None => println!(
            "\nThe agent's figures are what the Sentry reports in the sandbox's `/proc/1/status`, \
             read with `runsc exec cat` (the agent takes no part) except for the last, read \
             through the agent's file API."
        ),
        Some(e) => println!(
            "\nThe agent's figures are what the Sentry reports in the sandbox's `/proc/1/status`, \
             read with `runsc exec cat` (the agent takes no part). **The agent's file API \
             could not read that file** (`{e}`), so the last row was read with `runsc exec cat` \
             right after the failed file-API read."
        ),
    }
    println!(
        "Host figures are `VmRSS` of the host processes whose command line names the sandbox, \
         and of the Sentry's children."
    );

    println!(
        "\n### Where `hutch run`'s time goes\n\nThe CLI's set-up, then the library's calls timed one by one in this process, a new \
         sandbox each iteration.\n"
    );
    println!("| Phase | N | Median | p95 |");
    println!("|---|---|---|---|");
    for (name, s) in phases {
        println!(
            "| {name} | {} | {} | {} |",
            n_create,
            ms(s.median()),
            ms(s.p95())
        );
    }
    if let Some(run) = latency.first() {
        let sum: Duration = phases
            .iter()
            .filter(|(name, _)| name.starts_with("one-shot:"))
            .map(|(_, s)| s.median())
            .sum();
        println!(
            "\nFor comparison: `hutch run busybox -- true` took {} (median, figure 1) and \
             `runsc run` of /bin/true {}; the medians of the two one-shot phases add up to {}.",
            ms(run.ours.median()),
            ms(run.floor.median()),
            ms(sum)
        );
    }
}
