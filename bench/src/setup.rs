//! Everything the measurements need, found or prepared up front, with errors that say which
//! command builds what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use hutch_runtime::Backend;
use hutch_runtime::gvisor::{GvisorBackend, GvisorConfig, Runsc};
use hutch_store::Store;

/// The agent's static build, as hutch-cli's build script leaves it.
const AGENT_TARGET_PATH: &str = "target/agent/x86_64-unknown-linux-gnu/release/hutch-agent";

pub struct Setup {
    /// The release `hutch` binary under test.
    pub hutch: PathBuf,
    /// `HUTCH_HOME` for everything ours: the CLI runs and the library backend.
    pub home: PathBuf,
    /// The busybox OCI layout (tag `latest`).
    pub fixture: PathBuf,
    /// Where `fixtures/build-all.sh` put the images (`busybox`, `debian`, ...).
    pub fixtures: PathBuf,
    /// The agent binary the library backend mounts (the one `hutch` embeds).
    pub agent: PathBuf,
    /// The `runsc` that hutch uses, and the platform it picked; the floor uses both too.
    pub runsc: PathBuf,
    pub platform: String,
    /// runsc's state directory for the raw (floor) containers.
    pub raw_root: PathBuf,
    /// Raw OCI bundles of the same busybox rootfs, one per command.
    pub bundle_true: PathBuf,
    pub bundle_echo: PathBuf,
    /// `bundle_true` with a memory limit: runsc puts it in a cgroup with that limit.
    pub bundle_true_limited: PathBuf,
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Setup {
    /// Prepares for the `hutch` in `$HUTCH_BIN`, else the workspace's release build.
    pub fn prepare() -> anyhow::Result<Self> {
        let hutch =
            env_path("HUTCH_BIN").unwrap_or_else(|| workspace().join("target/release/hutch"));
        Self::prepare_for(hutch)
    }

    /// Checks what the figures need, imports the busybox fixture into the bench's home and
    /// unpacks the floor's bundles, all for the `hutch` binary `hutch`.
    pub fn prepare_for(hutch: PathBuf) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        ensure!(
            euid == 0,
            "hutch-bench must run as root: runsc and the overlay mounts need it"
        );
        let ws = workspace();
        ensure!(
            hutch.is_file(),
            "the release hutch binary {} is missing; build it with `cargo build --release` \
             (or `cargo build --release -p hutch-cli`) in {}, or point HUTCH_BIN at one",
            hutch.display(),
            ws.display()
        );
        let fixtures = env_path("HUTCH_FIXTURES").unwrap_or_else(|| {
            env_path("HOME")
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache/hutch/fixtures")
        });
        let fixture = fixtures.join("busybox");
        ensure!(
            fixture.join("index.json").is_file(),
            "the busybox fixture {} is missing; build it with `{}`",
            fixture.display(),
            ws.join("fixtures/build-all.sh").display()
        );
        let umoci = find_on_path("umoci").context(
            "umoci is not installed (it unpacks the floor's bundle): apt-get install umoci",
        )?;

        let home =
            env_path("HUTCH_BENCH_HOME").unwrap_or_else(|| PathBuf::from("/tmp/hutch-bench-home"));
        // The agent's socket lives under the home: a unix socket path has 108 bytes at most.
        ensure!(
            home.as_os_str().len() <= 40,
            "HUTCH_BENCH_HOME {} is too long for the sandbox socket paths below it; \
             use a short one such as /tmp/hutch-bench-home",
            home.display()
        );
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;

        let runsc = Runsc::detect(home.join("runsc")).context("finding runsc")?;

        let agent = agent_binary(&hutch, &home, &ws)?;

        let raw = home.join("raw");
        let raw_root = raw.join("runsc");
        std::fs::create_dir_all(&raw_root)
            .with_context(|| format!("creating {}", raw_root.display()))?;
        let bundle_true = raw.join("true");
        let bundle_echo = raw.join("echo");
        let bundle_true_limited = raw.join("true-limited");
        unpack_bundle(&umoci, &fixture, &bundle_true, &["/bin/true"], None)?;
        unpack_bundle(&umoci, &fixture, &bundle_echo, &["/bin/echo", "hi"], None)?;
        unpack_bundle(
            &umoci,
            &fixture,
            &bundle_true_limited,
            &["/bin/true"],
            Some(LIMIT_MIB << 20),
        )?;

        let setup = Self {
            hutch,
            home,
            fixture,
            fixtures,
            agent,
            runsc: runsc.binary,
            platform: runsc.platform,
            raw_root,
            bundle_true,
            bundle_echo,
            bundle_true_limited,
        };
        setup.import_fixture("busybox")?;
        Ok(setup)
    }

    /// Imports the fixture image `name` (an OCI layout in [`Self::fixtures`], as
    /// `fixtures/build-all.sh` leaves it) into the bench's home as `name:latest`.
    pub fn import_fixture(&self, name: &str) -> anyhow::Result<()> {
        let layout = self.fixtures.join(name);
        ensure!(
            layout.join("index.json").is_file(),
            "the {name} fixture {} is missing; build it with `{}`",
            layout.display(),
            workspace().join("fixtures/build-all.sh").display()
        );
        eprintln!("hutch-bench: importing {} as {name}", layout.display());
        let out = self
            .hutch()
            .args(["image", "import"])
            .arg(&layout)
            .args(["--name", name])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.hutch.display()))?;
        ensure!(
            out.status.success(),
            "`hutch image import` of {} failed: {}",
            layout.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// A tokio runtime and the library backend on the bench's home (the store `hutch`
    /// imported into), with the sandboxes an interrupted earlier run left there removed.
    pub fn library(&self) -> anyhow::Result<(tokio::runtime::Runtime, GvisorBackend)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let store = Store::open(&self.home.join("store"))
            .with_context(|| format!("opening the store in {}", self.home.display()))?;
        let backend = GvisorBackend::new(
            GvisorConfig {
                home: self.home.clone(),
                agent_binary: self.agent.clone(),
            },
            store,
        )?;
        runtime.block_on(async {
            for sandbox in backend.list().await.context("listing leftover sandboxes")? {
                eprintln!("hutch-bench: removing leftover sandbox {}", sandbox.id);
                backend
                    .delete(&sandbox.id)
                    .await
                    .with_context(|| format!("removing leftover sandbox {}", sandbox.id))?;
            }
            anyhow::Ok(())
        })?;
        Ok((runtime, backend))
    }

    /// `runsc --version`'s first line for the runsc in use.
    pub fn runsc_version(&self) -> String {
        Command::new(&self.runsc)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into())
    }

    /// `hutch ARGS...` against the bench's home.
    pub fn hutch(&self) -> Command {
        hutch_command(&self.hutch, &self.home)
    }

    /// `runsc run` of a raw bundle, the floor of figures 1 and 2.
    pub fn raw_run(&self, bundle: &Path, id: &str) -> Command {
        let mut cmd = Command::new(&self.runsc);
        cmd.arg(format!("--root={}", self.raw_root.display()))
            .arg(format!("--platform={}", self.platform))
            .arg("--network=none")
            .arg("run")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(id);
        cmd
    }

    /// A raw bundle of the busybox rootfs running `argv` (made now, under the raw root's
    /// directory), for floors other than `true` and `echo`.
    #[allow(dead_code)] // Only some bench binaries use it.
    pub fn raw_bundle(&self, name: &str, argv: &[&str]) -> anyhow::Result<PathBuf> {
        let umoci =
            find_on_path("umoci").context("umoci is not installed: apt-get install umoci")?;
        let dir = self.raw_root.parent().unwrap_or(&self.home).join(name);
        unpack_bundle(&umoci, &self.fixture, &dir, argv, None)?;
        Ok(dir)
    }

    /// `runsc exec` into a sandbox the library made (its runsc root is `HOME/runsc`).
    pub fn raw_exec(&self, id: &str, argv: &[&str]) -> Command {
        let mut cmd = Command::new(&self.runsc);
        cmd.arg(format!("--root={}", self.home.join("runsc").display()))
            .arg(format!("--platform={}", self.platform))
            .arg("exec")
            .arg(id)
            .args(argv);
        cmd
    }

    /// Removes raw containers an interrupted earlier run left behind.
    pub fn clean_raw(&self) {
        let listed = Command::new(&self.runsc)
            .arg(format!("--root={}", self.raw_root.display()))
            .args(["list", "--quiet"])
            .stdin(Stdio::null())
            .output();
        let Ok(listed) = listed else { return };
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            eprintln!("hutch-bench: removing leftover raw container {id}");
            let _ = Command::new(&self.runsc)
                .arg(format!("--root={}", self.raw_root.display()))
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .output();
        }
    }
}

fn hutch_command(hutch: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(hutch);
    cmd.env("HUTCH_HOME", home).env_remove("HUTCH_LOG");
    cmd
}

/// The agent `hutch` embeds (`hutch agent-path`), else `$HUTCH_AGENT_BIN`, else the build
/// script's output.
fn agent_binary(hutch: &Path, home: &Path, ws: &Path) -> anyhow::Result<PathBuf> {
    let out = hutch_command(hutch, home)
        .arg("agent-path")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", hutch.display()))?;
    if out.status.success() {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if path.is_file() {
            return Ok(path);
        }
    }
    let fallback = env_path("HUTCH_AGENT_BIN").unwrap_or_else(|| ws.join(AGENT_TARGET_PATH));
    if fallback.is_file() {
        return Ok(fallback);
    }
    bail!(
        "no agent binary: `hutch agent-path` did not give one and {} is missing; \
         `cargo build --release -p hutch-cli` builds it",
        fallback.display()
    )
}

/// The memory limit of the limited figure, in MiB (`hutch run --memory` and the floor's
/// `linux.resources.memory.limit`).
pub const LIMIT_MIB: u64 = 256;

/// `umoci unpack` of the fixture into `dir`, then a config.json fit for a plain `runsc run`:
/// writable rootfs at `rootfs`, no terminal, `argv` as the process, and a memory limit if
/// given (which makes runsc create and join a cgroup for it).
fn unpack_bundle(
    umoci: &Path,
    fixture: &Path,
    dir: &Path,
    argv: &[&str],
    memory_limit: Option<u64>,
) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let out = Command::new(umoci)
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:latest", fixture.display()))
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .context("running umoci")?;
    ensure!(
        out.status.success(),
        "umoci unpack of {} failed: {}",
        fixture.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let path = dir.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    config["root"] = serde_json::json!({ "path": "rootfs", "readonly": false });
    config["process"]["terminal"] = serde_json::json!(false);
    config["process"]["args"] = serde_json::json!(argv);
    if let Some(limit) = memory_limit {
        config["linux"]["resources"]["memory"] = serde_json::json!({ "limit": limit });
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
