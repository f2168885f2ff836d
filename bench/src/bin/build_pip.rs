//! `hutch-bench-build-pip`: a Python app whose Dockerfile `pip install`s 10 packages from a
//! PyPI simple index on a test host (TEST-NET-3, in a namespace the bench makes), built by
//! `hutch image build` beside `buildah bud` from the same run.
//!
//! - Cold: an empty store (the Debian base pulled from a local `docker-registry`) against an
//!   empty buildah storage. Goal ≤ 0.8× buildah.
//! - Rebuild after changing one source file: the `COPY . /app` before the install changes, so
//!   the install runs again, with `RUN --mount=type=cache,target=/root/.cache/pip` keeping
//!   the wheels pip fetched. Goal ≤ 0.5× buildah (which has the same cache mount).
//!
//! The wheels (10 packages and their dependencies, for CPython 3.11 on x86_64, and pip's own
//! wheel, which the Debian fixture lacks and which runs as a zip) are downloaded from PyPI once
//! into `~/.cache/hutch/bench/`. Both builders reach the index at 203.0.113.250 only.
//!
//! usage: hutch-bench-build-pip [HUTCH_BINARY]; N from HUTCH_BENCH_N (default 3).

#[path = "../buildah.rs"]
mod buildah;
#[path = "../cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../registry.rs"]
mod registry;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../testnet.rs"]
#[allow(dead_code)]
mod testnet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use buildah::Buildah;
use registry::{Registry, timed};
use stats::{Samples, ms, ratio};
use testnet::{Kill, NS, TEST_HOST, TestNet};

/// What the app installs (pip resolves their dependencies from the index too).
const PACKAGES: [&str; 10] = [
    "requests",
    "flask",
    "attrs",
    "packaging",
    "six",
    "python-dateutil",
    "toml",
    "tabulate",
    "colorama",
    "click",
];

const PORT: u16 = 8080;

/// The wheels and pip's own wheel, downloaded from PyPI once.
fn wheels() -> anyhow::Result<(PathBuf, PathBuf)> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = Path::new(&home).join(".cache/hutch/bench/pip-index");
    let (wheels, pip) = (cache.join("wheels"), cache.join("pip"));
    let python = workspace().join("target/pyvenv/bin/python");
    if !python.is_file() {
        bail!(
            "{} is missing: run `make pytest` once (it makes the venv)",
            python.display()
        );
    }
    if !wheels.join(".complete").exists() {
        std::fs::create_dir_all(&wheels)?;
        registry::run(
            Command::new(&python)
                .args(["-m", "pip", "download", "-q", "--only-binary=:all:"])
                .args([
                    "--python-version",
                    "3.11",
                    "--implementation",
                    "cp",
                    "--abi",
                    "cp311",
                ])
                .args(["--platform", "manylinux2014_x86_64", "-d"])
                .arg(&wheels)
                .args(PACKAGES),
        )?;
        std::fs::write(wheels.join(".complete"), "")?;
    }
    if !pip.join(".complete").exists() {
        std::fs::create_dir_all(&pip)?;
        registry::run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--only-binary=:all:",
                    "--no-deps",
                    "-d",
                ])
                .arg(&pip)
                .arg("pip"),
        )?;
        std::fs::write(pip.join(".complete"), "")?;
    }
    let pip_wheel = std::fs::read_dir(&pip)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("no pip wheel")?;
    Ok((wheels, pip_wheel))
}

/// A PEP 503 simple index of `wheels` under `root`: `/simple/<name>/` pages linking to
/// `/files/<wheel>`.
fn write_index(wheels: &Path, root: &Path) -> anyhow::Result<usize> {
    let files = root.join("files");
    std::fs::create_dir_all(&files)?;
    let mut projects: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for entry in std::fs::read_dir(wheels)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.ends_with(".whl") {
            continue;
        }
        std::fs::copy(entry.path(), files.join(&name))?;
        let project = name
            .split('-')
            .next()
            .unwrap_or_default()
            .to_lowercase()
            .replace(['_', '.'], "-");
        projects.entry(project).or_default().push(name);
    }
    for (project, files) in &projects {
        let dir = root.join("simple").join(project);
        std::fs::create_dir_all(&dir)?;
        let links: String = files
            .iter()
            .map(|f| format!("<a href=\"/files/{f}\">{f}</a><br>\n"))
            .collect();
        std::fs::write(
            dir.join("index.html"),
            format!("<html><body>\n{links}</body></html>\n"),
        )?;
    }
    Ok(projects.len())
}

fn write_context(dir: &Path, registry: &str, pip_wheel: &Path, version: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::copy(pip_wheel, dir.join("pip.whl"))?;
    std::fs::write(dir.join("requirements.txt"), PACKAGES.join("\n") + "\n")?;
    std::fs::write(
        dir.join("src/app.py"),
        format!("import flask, requests, tabulate\nVERSION = {version}\nprint(VERSION)\n"),
    )?;
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {registry}/debian:1\n\
             ENV PYTHONDONTWRITEBYTECODE=1\n\
             WORKDIR /app\n\
             COPY . /app\n\
             RUN --mount=type=cache,target=/root/.cache/pip \\\n\
             \x20   python3 /app/pip.whl/pip install --disable-pip-version-check --root-user-action=ignore --break-system-packages \\\n\
             \x20   --index-url http://{TEST_HOST}:{PORT}/simple --trusted-host {TEST_HOST} -r requirements.txt\n\
             RUN python3 src/app.py > /app/version.txt\n\
             CMD [\"python3\", \"/app/src/app.py\"]\n"
        ),
    )?;
    Ok(())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let hutch = cli::hutch_binary();
    let n = cli::iterations(3);
    let (wheels, pip_wheel) = wheels()?;
    let www = tempfile::tempdir()?;
    let projects = write_index(&wheels, www.path())?;
    let _net = TestNet::make()?;
    let _httpd = Kill(
        Command::new("ip")
            .args(["netns", "exec", NS, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{TEST_HOST}:{PORT}"))
            .arg("-h")
            .arg(www.path())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let registry = Registry::start()?;
    let host = format!("127.0.0.1:{}", registry.port);
    registry.push(&cli::fixtures_dir().join("debian"), "debian:1")?;

    eprintln!(
        "hutch-bench-build-pip: {n} rounds; index of {projects} projects at {TEST_HOST}:{PORT}"
    );
    let (mut cold, mut cold_floor) = (Samples::default(), Samples::default());
    let (mut warm, mut warm_floor) = (Samples::default(), Samples::default());
    for _ in 0..n {
        let context = tempfile::tempdir()?;
        write_context(context.path(), &host, &pip_wheel, 1)?;
        let home = tempfile::Builder::new()
            .prefix("hbpip")
            .tempdir_in("/tmp")?;
        let build = |ctx: &Path| {
            let mut cmd = Command::new(&hutch);
            cmd.env("HUTCH_HOME", home.path())
                .args([
                    "image",
                    "build",
                    "--insecure-registry",
                    &host,
                    "-t",
                    "bench:1",
                ])
                .arg(ctx);
            cmd
        };
        let buildah = Buildah::new()?;
        // Alternating, each cold against an empty store and storage.
        cold.push(timed(&mut build(context.path()))?);
        cold_floor.push(timed(&mut buildah.bud(context.path()))?);
        // One source file changes: the COPY and everything after it run again.
        write_context(context.path(), &host, &pip_wheel, 2)?;
        warm.push(timed(&mut build(context.path()))?);
        warm_floor.push(timed(&mut buildah.bud(context.path()))?);
        let out = Command::new(&hutch)
            .env("HUTCH_HOME", home.path())
            .args(["run", "bench:1", "--", "cat", "/app/version.txt"])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() != "2" {
            bail!(
                "the rebuilt image does not hold the changed file: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    println!("| figure | hutch p50 | buildah p50 | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| cold build, pip install of {} packages from the local index | {} | {} | {:.2}x | <= 0.8x |",
        PACKAGES.len(),
        ms(cold.median()),
        ms(cold_floor.median()),
        ratio(cold.median(), cold_floor.median())
    );
    println!(
        "| rebuild after one source file changed (pip cache mount) | {} | {} | {:.2}x | <= 0.5x |",
        ms(warm.median()),
        ms(warm_floor.median()),
        ratio(warm.median(), warm_floor.median())
    );
    println!(
        "p95: hutch cold {}, buildah cold {}, hutch rebuild {}, buildah rebuild {}",
        ms(cold.p95()),
        ms(cold_floor.p95()),
        ms(warm.p95()),
        ms(warm_floor.p95())
    );
    Ok(())
}
