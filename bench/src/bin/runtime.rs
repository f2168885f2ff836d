//! `hutch-bench-runtime`: what a workload pays for running in a gVisor sandbox rather than on
//! the host, with the runsc in use (`$HUTCH_RUNSC`, else the one on `PATH`). Every figure runs
//! the same command in one running Debian + python3 sandbox, through the agent (as
//! `hutch exec` and the SDKs do), and on the host, alternating, after one unmeasured warm-up
//! of each side:
//!
//! 1. 300 fork+execs of `/bin/true` from a `sh` loop.
//! 2. `python3 -I -S -c "import ..."` of heavy standard-library modules.
//! 3. `pip install --no-index --no-deps --target` of a small pure-Python wheel written at
//!    bench time. The image has no pip, so both sides run the same pip from Debian's
//!    `python3-pip-whl` wheel, unpacked and byte-compiled once beforehand.
//! 4. `python3 -m zipfile -e` of that pip wheel into a new directory: some 500 files created.
//!
//! Both sides run `/usr/bin/python3` (Debian 12's 3.11 on the host and in the image) with
//! `-I -S`, so that neither environment variables nor site-packages differ. In the sandbox
//! the files live in the root filesystem (`/opt/hb`), not on runsc's `/tmp` tmpfs, so that
//! they take the path a workload's files take; on the host, below `HUTCH_BENCH_HOME`.
//!
//! usage: hutch-bench-runtime [HUTCH_BINARY] (default `$HUTCH_BIN`, else
//! `target/release/hutch`). `HUTCH_BENCH_N` sets every figure's iterations (default 5 for the
//! fork loop and pip, 10 for the others); `HUTCH_BENCH_HOME` and `HUTCH_FIXTURES` as for
//! `hutch-bench`. Report on stdout, progress on stderr.

#[path = "../host.rs"]
#[allow(dead_code)]
mod host;
#[path = "../measure.rs"]
#[allow(dead_code)]
mod measure;
#[path = "../setup.rs"]
#[allow(dead_code)]
mod setup;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hutch_runtime::agent::{AgentClient, ExecEvent, full};
use hutch_runtime::{Backend, SandboxSpec};
use hutch_wire::StartProcess;

use setup::Setup;
use stats::{Samples, ms, ratio};

/// The python both sides run: Debian's, the same build as the image's.
const PYTHON: &str = "/usr/bin/python3";
/// Where Debian's `python3-pip-whl` (pulled in by `python3-venv`) keeps pip's wheel.
const PIP_WHEELS: &str = "/usr/share/python-wheels";
/// The sandbox's work directory: in its root filesystem, not on runsc's `/tmp` tmpfs.
const SANDBOX_WORK: &str = "/opt/hb";
const FORKS: usize = 300;
/// Modules of the standard library that pull in much of the rest; all are in the image.
const MODULES: &str = "json, decimal, email.parser, email.mime.multipart, http.client, \
    http.server, urllib.request, xml.etree.ElementTree, xml.dom.minidom, sqlite3, asyncio, \
    unittest, argparse, logging.handlers, subprocess, csv, pathlib, tarfile, zipfile, \
    concurrent.futures, multiprocessing, ssl, hashlib, ctypes, uuid, zoneinfo, dataclasses, \
    inspect, typing";
/// The wheel `pip install` installs: this many modules besides `__init__.py`.
const WHEEL_MODULES: usize = 20;
const WHEEL_FILE: &str = "hbtiny-1.0-py3-none-any.whl";
/// Writes a pure-Python wheel by hand (`OUT MODULES`): the package, METADATA, WHEEL and a
/// RECORD with each file's hash, zipped. No network, no setuptools.
const MAKE_WHEEL: &str = r#"
import base64, hashlib, sys, zipfile
out, modules = sys.argv[1], int(sys.argv[2])
name, version = "hbtiny", "1.0"
info = f"{name}-{version}.dist-info"
files = {f"{name}/__init__.py": "from . import m0\n"}
for i in range(modules):
    files[f"{name}/m{i}.py"] = "".join(f"def f{j}(x):\n    return x * {j} + {i}\n" for j in range(20))
files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: hutch-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
record = []
for path, text in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(text.encode())}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for path, text in files.items():
        z.writestr(path, text)
"#;

const DEFAULT_N_SLOW: usize = 5;
const DEFAULT_N: usize = 10;

fn main() {
    if let Err(e) = run() {
        eprintln!("hutch-bench-runtime: error: {e:#}");
        std::process::exit(1);
    }
}

/// `HUTCH_BENCH_N` for every figure, else `default`.
fn iterations(default: usize) -> anyhow::Result<usize> {
    match std::env::var("HUTCH_BENCH_N") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("HUTCH_BENCH_N must be a positive integer, got {v:?}")),
        _ => Ok(default),
    }
}

/// A command both sides run, its paths already those of the side.
struct Job {
    program: String,
    args: Vec<String>,
}

impl Job {
    fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// One figure: the same job timed on the host and in the sandbox.
struct Figure {
    name: String,
    n: usize,
    host: Samples,
    sandbox: Samples,
    /// What is timed, for the notes below the table.
    what: String,
}

/// Runs jobs in the sandbox through its agent, and on the host.
struct Sides<'a> {
    runtime: &'a tokio::runtime::Runtime,
    agent: &'a AgentClient,
    /// The host's work directory (the sandbox's is [`SANDBOX_WORK`]).
    host_work: String,
}

impl Sides<'_> {
    /// Times `job(work, i)` on both sides, alternating, `n` times after a warm-up of each.
    fn figure(
        &self,
        name: &str,
        n: usize,
        what: &str,
        job: impl Fn(&str, usize) -> Job,
    ) -> anyhow::Result<Figure> {
        eprintln!("hutch-bench-runtime: {name} ({n} iterations)");
        let mut host = Samples::default();
        let mut sandbox = Samples::default();
        for i in 0..=n {
            let (s, _) = self.in_sandbox(&job(SANDBOX_WORK, i))?;
            let (h, _) = on_host(&job(&self.host_work, i))?;
            if i > 0 {
                sandbox.push(s);
                host.push(h);
            }
        }
        Ok(Figure {
            name: name.into(),
            n,
            host,
            sandbox,
            what: what.into(),
        })
    }

    /// Runs `job` on both sides once, untimed: preparation.
    fn both(&self, job: impl Fn(&str) -> Job) -> anyhow::Result<()> {
        self.in_sandbox(&job(SANDBOX_WORK))?;
        on_host(&job(&self.host_work))?;
        Ok(())
    }

    /// `job` through the agent: from the exec request to its exit event; its stdout.
    fn in_sandbox(&self, job: &Job) -> anyhow::Result<(Duration, Vec<u8>)> {
        self.runtime.block_on(async {
            let start = Instant::now();
            let mut stream = self
                .agent
                .exec(&StartProcess {
                    command: job.program.clone(),
                    args: job.args.clone(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("agent exec of {}", job.program))?;
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            loop {
                match stream.next().await.context("reading the exec stream")? {
                    Some(ExecEvent::Exit(exit)) => {
                        let took = start.elapsed();
                        ensure!(
                            exit.shell_code() == 0,
                            "in the sandbox, `{} {}` failed ({exit:?}): {}",
                            job.program,
                            job.args.join(" "),
                            tail(&stderr)
                        );
                        return Ok((took, stdout));
                    }
                    Some(ExecEvent::Stdout { data, .. }) => stdout.extend(data),
                    Some(ExecEvent::Stderr { data, .. }) => stderr.extend(data),
                    Some(_) => {}
                    None => bail!("the exec stream ended without an exit event"),
                }
            }
        })
    }
}

/// `job` on the host: from spawn to exit; its stdout.
fn on_host(job: &Job) -> anyhow::Result<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let out = Command::new(&job.program)
        .args(&job.args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", job.program))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "on the host, `{} {}` failed ({}): {}",
        job.program,
        job.args.join(" "),
        out.status,
        tail(&out.stderr)
    );
    Ok((took, out.stdout))
}

/// The last lines of a process's stderr, for an error message.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Debian's pip wheel (`python3-pip-whl`).
fn pip_wheel() -> anyhow::Result<PathBuf> {
    let found = std::fs::read_dir(PIP_WHEELS).ok().and_then(|dir| {
        dir.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("pip-") && n.ends_with(".whl"))
        })
    });
    found.with_context(|| {
        format!(
            "no pip wheel in {PIP_WHEELS}: apt-get install python3-pip-whl \
             (python3-venv, which `make setup` installs, pulls it in)"
        )
    })
}

fn run() -> anyhow::Result<()> {
    let n_slow = iterations(DEFAULT_N_SLOW)?;
    let n = iterations(DEFAULT_N)?;
    let setup = match std::env::args_os().nth(1) {
        Some(hutch) => Setup::prepare_for(PathBuf::from(hutch))?,
        None => Setup::prepare()?,
    };
    ensure!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is missing on the host: apt-get install python3"
    );
    let pip = pip_wheel()?;
    setup.import_fixture("debian")?;

    let (runtime, backend) = setup.library()?;
    let host_work = tempfile::Builder::new()
        .prefix("runtime-host")
        .tempdir_in(&setup.home)
        .context("creating the host's work directory")?;
    let host_work_path = host_work.path().to_string_lossy().into_owned();

    let started = now_utc();
    eprintln!("hutch-bench-runtime: creating a debian sandbox");
    let sandbox = runtime
        .block_on(backend.create(SandboxSpec {
            image: "debian:latest".into(),
            ..Default::default()
        }))
        .context("creating a debian sandbox through the library")?;
    let id = sandbox.info.id.clone();
    let sides = Sides {
        runtime: &runtime,
        agent: &sandbox.agent,
        host_work: host_work_path,
    };
    let measured = measure_all(&sides, &pip, n_slow, n);
    eprintln!("hutch-bench-runtime: deleting sandbox {id}");
    let deleted = runtime.block_on(backend.delete(&id));
    let (pythons, figures) = measured?;
    deleted.with_context(|| format!("deleting sandbox {id}"))?;

    print_report(&setup, &started, &pip, &pythons, &figures);
    Ok(())
}

/// The python versions of both sides, then every figure.
fn measure_all(
    sides: &Sides,
    pip: &Path,
    n_slow: usize,
    n: usize,
) -> anyhow::Result<((String, String), Vec<Figure>)> {
    let version = Job::new(PYTHON, &["--version"]);
    let version_of = |out: Vec<u8>| String::from_utf8_lossy(&out).trim().to_string();
    let pythons = (
        version_of(on_host(&version)?.1),
        version_of(sides.in_sandbox(&version)?.1),
    );

    // The files pip needs on both sides: the wheel to install, written by hand on the host,
    // and pip itself, unpacked and byte-compiled once (its modules are then read from
    // `__pycache__` as an installed pip's would be).
    eprintln!("hutch-bench-runtime: preparing pip and the wheel on both sides");
    let host_wheel = format!("{}/{WHEEL_FILE}", sides.host_work);
    on_host(&Job::new(
        PYTHON,
        &[
            "-I",
            "-S",
            "-c",
            MAKE_WHEEL,
            &host_wheel,
            &WHEEL_MODULES.to_string(),
        ],
    ))
    .context("writing the wheel")?;
    let host_pip = format!("{}/pip.whl", sides.host_work);
    std::fs::copy(pip, &host_pip).with_context(|| format!("copying {}", pip.display()))?;
    for (from, to) in [
        (host_wheel.as_str(), format!("{SANDBOX_WORK}/{WHEEL_FILE}")),
        (host_pip.as_str(), format!("{SANDBOX_WORK}/pip.whl")),
    ] {
        let bytes = std::fs::read(from).with_context(|| format!("reading {from}"))?;
        sides
            .runtime
            .block_on(sides.agent.write_file(&to, full(bytes)))
            .with_context(|| format!("writing {to} into the sandbox"))?;
    }
    sides.both(|w| {
        Job::new(
            PYTHON,
            &[
                "-I",
                "-S",
                "-m",
                "zipfile",
                "-e",
                &format!("{w}/pip.whl"),
                &format!("{w}/pip"),
            ],
        )
    })?;
    sides.both(|w| {
        Job::new(
            PYTHON,
            &["-I", "-S", "-m", "compileall", "-q", &format!("{w}/pip")],
        )
    })?;

    let fork_loop = format!("i=0; while [ $i -lt {FORKS} ]; do /bin/true; i=$((i+1)); done");
    let import = format!("import {MODULES}");
    let figures = vec![
        sides.figure(
            &format!("R1. {FORKS} fork+exec of `/bin/true` (sh loop)"),
            n_slow,
            &format!("`/bin/sh -c '{fork_loop}'` (dash on both sides)"),
            |_, _| Job::new("/bin/sh", &["-c", &fork_loop]),
        )?,
        sides.figure(
            "R2. `python3 -I -S -c 'import …'` of heavy stdlib modules",
            n,
            &format!("`{PYTHON} -I -S -c 'import {MODULES}'`"),
            |_, _| Job::new(PYTHON, &["-I", "-S", "-c", &import]),
        )?,
        sides.figure(
            "R3. `pip install` of a local wheel (`--no-index --no-deps --target`)",
            n_slow,
            &format!(
                "`{PYTHON} -I -S WORK/pip/pip install --isolated --no-index --no-deps \
                 --no-cache-dir --target WORK/site-I WORK/{WHEEL_FILE}` into a new directory \
                 each time: a hand-written wheel of {} modules; pip {} run from its wheel \
                 unpacked and byte-compiled beforehand (the image has no pip)",
                WHEEL_MODULES + 1,
                pip_version(pip)
            ),
            |w, i| {
                Job::new(
                    PYTHON,
                    &[
                        "-I",
                        "-S",
                        &format!("{w}/pip/pip"),
                        "install",
                        "--isolated",
                        "--no-index",
                        "--no-deps",
                        "--no-cache-dir",
                        "--disable-pip-version-check",
                        "--root-user-action=ignore",
                        "--quiet",
                        "--target",
                        &format!("{w}/site-{i}"),
                        &format!("{w}/{WHEEL_FILE}"),
                    ],
                )
            },
        )?,
        sides.figure(
            "R4. `python3 -m zipfile -e` of pip's wheel (file creation)",
            n,
            "`python3 -I -S -m zipfile -e WORK/pip.whl WORK/unzip-I`: pip's wheel (some 500 \
             files, 7 MiB unpacked) into a new directory each time",
            |w, i| {
                Job::new(
                    PYTHON,
                    &[
                        "-I",
                        "-S",
                        "-m",
                        "zipfile",
                        "-e",
                        &format!("{w}/pip.whl"),
                        &format!("{w}/unzip-{i}"),
                    ],
                )
            },
        )?,
    ];
    Ok((pythons, figures))
}

/// pip's version from its wheel's name (`pip-23.0.1-py3-none-any.whl`).
fn pip_version(wheel: &Path) -> String {
    wheel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').nth(1))
        .unwrap_or("?")
        .to_string()
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn print_report(
    setup: &Setup,
    started: &str,
    pip: &Path,
    pythons: &(String, String),
    figures: &[Figure],
) {
    let version = setup.runsc_version();
    let short = version.trim_start_matches("runsc version ");
    println!(
        "### Workloads in a sandbox against the host (runsc {short}, {})\n",
        setup.platform
    );
    println!("| Setting | |");
    println!("|---|---|");
    println!("| Run | {started} |");
    println!(
        "| runsc | `{}`: {version}, platform {} |",
        setup.runsc.display(),
        setup.platform
    );
    println!("| hutch | `{}` |", setup.hutch.display());
    println!(
        "| python3 | host `{PYTHON}`: {}; sandbox `{PYTHON}`: {} |",
        pythons.0, pythons.1
    );
    println!(
        "| Image | debian fixture, {} |",
        setup.fixtures.join("debian").display()
    );
    println!("| pip | `{}` |", pip.display());
    println!();
    println!(
        "| Figure | N | Host median | Host p95 | Sandbox median | Sandbox p95 | Ratio median |"
    );
    println!("|---|---|---|---|---|---|---|");
    for f in figures {
        let (hm, sm) = (f.host.median(), f.sandbox.median());
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} |",
            f.name,
            f.n,
            ms(hm),
            ms(f.host.p95()),
            ms(sm),
            ms(f.sandbox.p95()),
            ratio(sm, hm)
        );
    }
    println!(
        "\nOne unmeasured warm-up of each side, then host and sandbox alternate. Ratio is \
         sandbox / host. Sandbox: the command run through the agent (`AgentClient::exec`, as \
         `hutch exec` does) in one running sandbox, from the request to the exit event (so it \
         includes one exec round trip, a few ms: `hutch-bench` figure 3); work files in its \
         root filesystem (`{SANDBOX_WORK}`). Host: the same command spawned \
         directly; work files below `{}`.\n",
        setup.home.display()
    );
    for f in figures {
        println!("- {}: {}.", f.name, f.what);
    }
    if let Some(forks) = figures.first() {
        let per = |d: Duration| d / FORKS as u32;
        println!(
            "\nPer fork+exec (R1 / {FORKS}): host {}, sandbox {}.",
            ms(per(forks.host.median())),
            ms(per(forks.sandbox.median()))
        );
    }
}
