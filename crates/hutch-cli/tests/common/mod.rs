//! Shared harness of the integration tests: real fixtures, a private state directory per
//! test (with one image store shared between tests), and leak checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use hutch_runtime::gvisor::{GvisorBackend, GvisorConfig};
use hutch_store::Store;

pub mod buildah;
pub mod faulty;
pub mod registry;
pub mod server;
pub mod testnet;
pub mod tree;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn hutch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hutch")
}

/// Builds the fixture images once (cached across runs by the scripts themselves).
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("HUTCH_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hutch/fixtures")
            });
        let status = Command::new("bash")
            .arg(workspace().join("fixtures/build-all.sh"))
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("running fixtures/build-all.sh");
        assert!(status.success(), "building fixtures failed");
        dir
    })
}

/// The image store shared by all tests (imports are concurrency-safe).
fn shared_store() -> PathBuf {
    workspace().join("target/test-store")
}

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hh")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(shared_store()).unwrap();
        std::os::unix::fs::symlink(shared_store(), dir.path().join("store")).unwrap();
        Self { dir }
    }

    /// A home with a store of its own, empty: for tests that count, remove or corrupt
    /// what the store holds, which the store shared by the other tests must never see.
    pub fn private() -> Self {
        let home = Self::new();
        std::fs::remove_file(home.path().join("store")).unwrap();
        home
    }

    /// A home with a store of its own holding the named fixtures.
    pub fn private_with(images: &[&str]) -> Self {
        let home = Self::private();
        for image in images {
            let out = home.run(&[
                "image",
                "import",
                fixtures().join(image).to_str().unwrap(),
                "--name",
                image,
            ]);
            assert!(out.status.success(), "import {image}: {}", stderr(&out));
        }
        home
    }

    /// A home with the named fixture imported (`busybox` or `debian`).
    pub fn with(images: &[&str]) -> Self {
        let home = Self::new();
        for image in images {
            home.ensure_image(image);
        }
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn hutch(&self) -> Command {
        let mut cmd = Command::new(hutch_bin());
        cmd.env("HUTCH_HOME", self.path()).env_remove("HUTCH_LOG");
        cmd
    }

    pub fn ensure_image(&self, name: &str) {
        let store = Store::open(&shared_store()).unwrap();
        if store.image(name).is_ok() {
            return;
        }
        let out = self
            .hutch()
            .args(["image", "import"])
            .arg(fixtures().join(name))
            .args(["--name", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "import {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `hutch` with `args`, stdin closed.
    pub fn run(&self, args: &[&str]) -> Output {
        self.hutch()
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    pub fn backend(&self) -> GvisorBackend {
        let out = self.hutch().arg("agent-path").output().unwrap();
        assert!(out.status.success());
        let agent_binary = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let store = Store::open(&self.path().join("store")).unwrap();
        GvisorBackend::new(
            GvisorConfig {
                home: self.path().to_path_buf(),
                agent_binary,
            },
            store,
        )
        .unwrap()
    }

    /// Nothing of any sandbox is left: directories, runsc state, mounts, processes, pins.
    pub fn assert_clean(&self) {
        let sandboxes: Vec<_> = std::fs::read_dir(self.path().join("sandboxes"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(sandboxes.is_empty(), "sandbox dirs left: {sandboxes:?}");
        let runsc_state: Vec<_> = std::fs::read_dir(self.path().join("runsc"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "build.json")
                    .collect()
            })
            .unwrap_or_default();
        assert!(runsc_state.is_empty(), "runsc state left: {runsc_state:?}");
        let home = self.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leaked: Vec<_> = mounts.lines().filter(|l| l.contains(&home)).collect();
        assert!(leaked.is_empty(), "mounts left: {leaked:?}");
        let procs = processes_mentioning(&home);
        assert!(procs.is_empty(), "processes left: {procs:?}");
        // No loop device still backed by a sandbox's disk image.
        let loops: Vec<String> = std::fs::read_dir("/sys/block")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        std::fs::read_to_string(e.path().join("loop/backing_file")).ok()
                    })
                    .filter(|f| f.starts_with(&home))
                    .collect()
            })
            .unwrap_or_default();
        assert!(loops.is_empty(), "loop devices left: {loops:?}");
        // No sandbox network of this home: a slot names its sandbox's directory, and a
        // slot's namespace, veth and nftables chains go with it.
        let slots: Vec<_> = std::fs::read_dir("/run/hutch/net")
            .map(|d| d.flatten().collect())
            .unwrap_or_default();
        for slot in slots {
            let name = slot.file_name().to_string_lossy().into_owned();
            let owner = std::fs::read_to_string(slot.path()).unwrap_or_default();
            assert!(
                !(name.starts_with("slot-") && owner.starts_with(&home)),
                "network slot left: {name} ({owner}): {:?}",
                name.strip_prefix("slot-")
                    .and_then(|n| n.parse().ok())
                    .map(hutch_runtime::net::host::leftovers)
            );
        }
    }
}

/// Pids (and command lines) of processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid != me && cmdline.contains(needle)).then_some((pid, cmdline))
        })
        .collect()
}

/// Creates a key with `hutch key create NAME <scope...>`; returns its secret.
pub fn key(home: &Home, name: &str, scope: &[&str]) -> String {
    let mut args = vec!["key", "create", name, "--json"];
    args.extend_from_slice(scope);
    let out = home.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    key["secret"].as_str().unwrap().to_string()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
