//! Invoking `runsc`: the global flags every call shares, and the few subcommands used.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use crate::error::{Result, RuntimeError};

const BACKEND: &str = "gvisor";

/// Whether the Sentry opens sandbox files itself (runsc's `--directfs`, on by default since
/// 2023) rather than asking the gofer for each. See `docs/ARCHITECTURE.md` for the
/// measurement and the security argument behind the choice.
const DIRECTFS: bool = true;

/// runsc's log in a sandbox's directory (warnings and errors only: it stays empty while
/// all goes well).
pub const RUNSC_LOG: &str = "runsc.log";

/// Where a sandbox's stdio (its agent's, and so a boot process's) goes.
pub enum SupervisorStdio {
    /// A console log file (stdin is /dev/null).
    Log(std::path::PathBuf),
    /// These.
    Given {
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    },
}

#[derive(Clone, Debug)]
pub struct Runsc {
    pub binary: PathBuf,
    pub root: PathBuf,
    /// The platform of interactive sandboxes: [`RunscBuild::platform`] unless
    /// `$HUTCH_RUNSC_PLATFORM` says.
    pub platform: String,
    /// `$HUTCH_RUNSC_PLATFORM` was given: every sandbox runs on it.
    forced: bool,
    pub build: RunscBuild,
}

/// What `runsc state`/`list` report for one container.
#[derive(Debug, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub pid: i64,
}

impl Runsc {
    /// Finds `runsc` on PATH (or `$HUTCH_RUNSC`) and picks the best platform it offers here
    /// ([`RunscBuild::platform`]).
    pub fn detect(root: PathBuf) -> Result<Self> {
        let binary = std::env::var_os("HUTCH_RUNSC")
            .map(PathBuf::from)
            .or_else(|| find_on_path("runsc"))
            .ok_or_else(|| RuntimeError::BackendFailure {
                backend: BACKEND,
                message: "runsc (gVisor) is not installed: apt-get install runsc".into(),
            })?;
        std::fs::create_dir_all(&root)
            .map_err(|e| RuntimeError::io(format!("creating {}", root.display()), e))?;
        let build = detect_build(&binary, &root);
        let (platform, forced) = match std::env::var("HUTCH_RUNSC_PLATFORM") {
            Ok(p) if !p.is_empty() => (p, true),
            _ => (build.platform.clone(), false),
        };
        Ok(Self {
            binary,
            root,
            platform,
            forced,
            build,
        })
    }

    /// The platform a sandbox of `workload` runs on: for interactive ones the faster at
    /// process creation here, for batch ones (build steps) the faster at syscalls
    /// ([`PlatformRace`]); `$HUTCH_RUNSC_PLATFORM` for all when given.
    pub fn platform_for(&self, workload: crate::Workload) -> &str {
        match (&self.build.race, workload) {
            (Some(race), crate::Workload::Batch) if !self.forced => race.io_winner(),
            _ => &self.platform,
        }
    }

    /// What `capabilities()` and `hutch info` report of this runsc: version, platform, the
    /// flags chosen, and what an old build lacks.
    pub fn details(&self) -> crate::capability::RuntimeDetails {
        let b = &self.build;
        let mut notes = Vec::new();
        if self.platform != b.platform {
            notes.push(format!(
                "platform {} chosen by $HUTCH_RUNSC_PLATFORM",
                self.platform
            ));
        }
        if !b.has_systrap {
            notes.push(
                "this build has no systrap platform (ptrace only), whose syscalls cost less on \
                 many hosts; runsc 2023 or later has it"
                    .into(),
            );
        } else if let Some(failure) = &b.systrap_failure {
            notes.push(format!(
                "systrap does not work on this host, so ptrace: {failure}"
            ));
        } else if let Some(race) = &b.race {
            notes.push(format!(
                "{} is faster at process creation here: {RACE_FORKS} fork+execs in a fresh \
                 sandbox took {} ms on systrap, {} ms on ptrace \
                 (HUTCH_RUNSC_PLATFORM overrides)",
                race.winner(),
                race.systrap_ms,
                race.ptrace_ms
            ));
            notes.push(format!(
                "build steps run on {}, the faster at syscalls here: {RACE_WRITES} file writes \
                 took {} ms on systrap, {} ms on ptrace",
                self.platform_for(crate::Workload::Batch),
                race.systrap_io_ms,
                race.ptrace_io_ms
            ));
        }
        if b.has_overlay2 {
            notes.push(
                "--overlay2=none: root filesystem writes go to the sandbox's host upper layer \
                 (builds commit it, snapshots copy it)"
                    .into(),
            );
        }
        if b.has_directfs {
            notes.push(format!("--directfs={}", DIRECTFS));
        }
        if !b.fast_checkpoint() {
            notes.push(
                "checkpoints take seconds on builds before 2024 (6.2 s measured for busybox)"
                    .into(),
            );
        }
        crate::capability::RuntimeDetails {
            runtime: "runsc".into(),
            version: b.version.clone(),
            platform: self.platform.clone(),
            notes,
        }
    }

    fn command(&self) -> Command {
        self.command_on(&self.platform)
    }

    fn command_on(&self, platform: &str) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--root={}", self.root.display()))
            .arg(format!("--platform={platform}"))
            .arg("--host-uds=open")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // Root filesystem writes must land in the sandbox's host `upper/` (the writable
        // layer builds commit and snapshots copy), not in runsc's own overlay inside the
        // sandbox, which 2023+ builds default to (`root:self`).
        if self.build.has_overlay2 {
            cmd.arg("--overlay2=none");
        }
        if self.build.has_directfs {
            cmd.arg(format!("--directfs={DIRECTFS}"));
        }
        cmd
    }

    /// Starts `runsc run` in the foreground, in its own session, as the sandbox's supervisor:
    /// it lives as long as the sandbox (outliving the caller if need be) and, when the agent
    /// exits, tears the sandbox down and removes runsc's state itself. That teardown is the
    /// same fast path a plain `runsc run` takes; `runsc delete --force` is seconds slower.
    ///
    /// Without `cgroups`, runsc leaves the sandbox in the caller's cgroup. Joining a cgroup
    /// costs about 23 ms here (the first write to a v1 `cgroup.procs` waits for an RCU grace
    /// period, seen in `runsc --debug` logs), a sixth of a whole `runsc run`; a sandbox with
    /// no CPU or memory limit has no use for one.
    ///
    /// With `network`, the sandbox joins the network namespace its spec names and runs
    /// runsc's own network stack there (`--network=sandbox`); see [`hide_host_net_sysctls`].
    ///
    /// The sandbox runs on the platform [`Runsc::platform_for`] its `workload` gives; the
    /// other runsc commands (exec, kill, state) reach it whatever platform they name.
    pub fn spawn_supervisor(
        &self,
        id: &str,
        bundle: &Path,
        stdio: SupervisorStdio,
        cgroups: bool,
        network: bool,
        workload: crate::Workload,
    ) -> Result<Child> {
        let mut cmd = self.command_on(self.platform_for(workload));
        // `HUTCH_RUNSC_NETWORK=host` hands a networked sandbox's sockets to the host kernel
        // inside its namespace: for measuring netstack against it (docs/benchmarks.md), not
        // for use (the host's whole TCP/IP stack becomes attack surface).
        if network && std::env::var("HUTCH_RUNSC_NETWORK").as_deref() == Ok("host") {
            cmd.arg("--network=host");
        } else if network {
            cmd.arg("--network=sandbox");
            let paths = SysctlPaths::new()?;
            // SAFETY: the closure runs in the forked child before exec and only makes raw
            // syscalls (unshare, mount, open_tree, mkdir, move_mount, close) on C strings
            // built before the fork: no allocation, no lock, nothing async-signal-unsafe.
            unsafe {
                cmd.pre_exec(move || hide_host_net_sysctls(&paths));
            }
        }
        if !network {
            cmd.arg("--network=none");
        }
        if !cgroups {
            cmd.arg("--ignore-cgroups");
        }
        // runsc's own errors (a bad spec, a failed boot) also go to this file, beside the
        // stderr the caller may not be watching; a failed start is reported from it.
        if let Some(dir) = bundle.parent() {
            cmd.arg(format!("--log={}", dir.join(RUNSC_LOG).display()));
        }
        match stdio {
            SupervisorStdio::Log(console_log) => {
                let log = std::fs::File::create(&console_log).map_err(|e| {
                    RuntimeError::io(format!("creating {}", console_log.display()), e)
                })?;
                let log_err = log
                    .try_clone()
                    .map_err(|e| RuntimeError::io("duplicating the console log", e))?;
                cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
            }
            SupervisorStdio::Given {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin).stdout(stdout).stderr(stderr);
            }
        }
        cmd.arg("run")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(id)
            .kill_on_drop(false)
            // Its own process group: a Ctrl-C meant for the caller must not reach it.
            .process_group(0);
        cmd.spawn()
            .map_err(|e| RuntimeError::io("starting runsc", e))
    }

    async fn simple(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .arg("--network=none")
            .args(args)
            .output()
            .await
            .map_err(|e| RuntimeError::io("running runsc", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!(
                    "runsc {} failed: {}",
                    args.first().unwrap_or(&""),
                    last_lines(&String::from_utf8_lossy(&out.stderr), 4)
                ),
            })
        }
    }

    pub async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        self.simple(&["kill", "--all", id, signal]).await.map(drop)
    }

    /// Kills (if needed) and deletes; succeeds if runsc no longer knows the container.
    pub async fn delete_force(&self, id: &str) -> Result<()> {
        match self.simple(&["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(e) => match self.state(id).await? {
                None => Ok(()),
                Some(_) => Err(e),
            },
        }
    }

    /// The container's state, `None` if runsc does not know it.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>> {
        if !self.knows(id) {
            return Ok(None);
        }
        let json = self.simple(&["state", id]).await?;
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!("unreadable runsc state: {e}"),
            })
    }

    /// Whether runsc holds state for `id`, read from its state directory without running it.
    /// A lock file alone does not count: `runsc list` and `state` re-create the lock of a
    /// container that is being destroyed (see [`Self::remove_stale_locks`]).
    pub fn knows(&self, id: &str) -> bool {
        std::fs::read_dir(&self.root)
            .map(|d| {
                d.flatten().any(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(&format!("{id}_")) && !name.ends_with(".lock")
                })
            })
            .unwrap_or(false)
    }

    /// Removes lock files of `id` once no state remains for it, and the control socket
    /// runsc 2023+ keeps in its root (`runsc-<id>.sock`), which a sandbox killed rather
    /// than ended leaves behind.
    pub fn remove_stale_locks(&self, id: &str) {
        if self.knows(id) {
            return;
        }
        let _ = std::fs::remove_file(self.root.join(format!("runsc-{id}.sock")));
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&format!("{id}_")) && name.ends_with(".lock") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Every container runsc keeps state for, read from the state files without running
    /// runsc (which would take locks, and costs a Go process start). A container whose
    /// sandbox process is gone is reported `stopped`, whatever its file says.
    pub fn scan(&self) -> Vec<ContainerState> {
        #[derive(Deserialize)]
        struct StateFile {
            id: String,
            status: String,
            #[serde(default)]
            sandbox: Option<SandboxPid>,
        }
        #[derive(Deserialize)]
        struct SandboxPid {
            #[serde(default)]
            pid: i64,
        }
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        // runsc rewrites a state file in place (truncate, then write): a read in between sees
        // it empty or cut short. Such a container is not gone, so read it again.
        let read_state = |path: &Path| -> Option<StateFile> {
            for attempt in 0..5 {
                if let Ok(bytes) = std::fs::read(path)
                    && let Ok(state) = serde_json::from_slice::<StateFile>(&bytes)
                {
                    return Some(state);
                }
                if attempt < 4 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            None
        };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".state"))
            .filter_map(|e| read_state(&e.path()))
            .map(|f| {
                let pid = f.sandbox.map_or(0, |s| s.pid);
                // SAFETY: signal 0 only checks that the process exists.
                let alive = pid > 0 && unsafe { libc::kill(pid as i32, 0) } == 0;
                ContainerState {
                    id: f.id,
                    status: if alive { f.status } else { "stopped".into() },
                    pid,
                }
            })
            .collect()
    }

    pub async fn list(&self) -> Result<Vec<ContainerState>> {
        let json = self.simple(&["list", "--format=json"]).await?;
        if json.trim().is_empty() || json.trim() == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(&json).map_err(|e| RuntimeError::BackendFailure {
            backend: BACKEND,
            message: format!("unreadable runsc list: {e}"),
        })
    }
}

/// The paths [`hide_host_net_sysctls`] needs, as C strings made before the fork.
pub struct SysctlPaths {
    root: std::ffi::CString,
    keep: Vec<(std::ffi::CString, std::ffi::CString)>,
    tmpfs: std::ffi::CString,
    options: std::ffi::CString,
    empty: std::ffi::CString,
}

/// The `/proc/sys` directories a networked runsc still sees: everything but `net`.
const KEPT_SYSCTLS: &[&str] = &["vm", "kernel", "fs"];

impl SysctlPaths {
    fn new() -> Result<Self> {
        let c = |s: &str| {
            std::ffi::CString::new(s)
                .map_err(|e| RuntimeError::io("a sysctl path", std::io::Error::other(e)))
        };
        Ok(Self {
            root: c("/proc/sys")?,
            keep: KEPT_SYSCTLS
                .iter()
                .map(|d| Ok((c(&format!("/proc/sys/{d}"))?, c(&format!("/proc/sys/{d}"))?)))
                .collect::<Result<_>>()?,
            tmpfs: c("tmpfs")?,
            options: c("size=16k,mode=0555")?,
            empty: c("")?,
        })
    }
}

/// In the child that becomes `runsc run`, before exec: a mount namespace of its own (mounts
/// still propagate in from the host's) whose `/proc/sys` is a small tmpfs with only `vm`,
/// `kernel` and `fs` of the real one bound back.
///
/// Why: runsc up to at least 2024-07 refuses `--network=sandbox` when it thinks it is in
/// the host's network namespace, and it decides that by the presence of
/// `/proc/sys/net/core/rmem_default`, which kernels since 6.x show in every namespace. The
/// sandbox really is in its own namespace (its spec names Hutch's); hiding `net` makes the
/// check see that. runsc's children (gofer, Sentry) pivot into their own roots and never
/// read the host's `/proc/sys/net`.
fn hide_host_net_sysctls(p: &SysctlPaths) -> std::io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain syscalls on valid NUL-terminated strings that outlive the calls; the
    // file descriptors opened are closed before returning.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS).into())?;
        check(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            )
            .into(),
        )?;
        let mut trees = [-1 as libc::c_long; 3];
        for (slot, (from, _)) in trees.iter_mut().zip(&p.keep) {
            *slot = check(libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                from.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            ))?;
        }
        check(
            libc::mount(
                p.tmpfs.as_ptr(),
                p.root.as_ptr(),
                p.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                p.options.as_ptr().cast(),
            )
            .into(),
        )?;
        for (tree, (_, to)) in trees.iter().zip(&p.keep) {
            check(libc::mkdir(to.as_ptr(), 0o555).into())?;
            check(libc::syscall(
                libc::SYS_move_mount,
                *tree as libc::c_int,
                p.empty.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ))?;
            libc::close(*tree as libc::c_int);
        }
    }
    Ok(())
}

/// What one runsc binary is and offers, learnt once per binary (see [`detect_build`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunscBuild {
    /// `runsc --version`'s first line, without its `runsc version ` prefix
    /// (e.g. `0.0~20240729.0`).
    pub version: String,
    /// The platform sandboxes run on: where the build has systrap and a probe sandbox booted
    /// on it here, the faster of systrap and ptrace at process creation ([`PlatformRace`]);
    /// else ptrace (kvm hangs on these PVM hosts).
    pub platform: String,
    /// The build has systrap, whether or not it worked here.
    pub has_systrap: bool,
    /// The build has `--overlay2` (2023 on), whose default since then (`root:self`) puts the
    /// root filesystem's writes in an overlay inside the sandbox instead of Hutch's `upper/`.
    pub has_overlay2: bool,
    /// The build has `--directfs` (2023 on): the Sentry opens the container's files itself
    /// through file descriptors the gofer donates, instead of asking the gofer per operation.
    pub has_directfs: bool,
    /// Why systrap is not used although the build has it (the probe's error), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systrap_failure: Option<String>,
    /// Both platforms timed on this host, when the build has systrap and it works here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race: Option<PlatformRace>,
}

/// The fork+execs of `/bin/true` each platform runs in [`race_platforms`].
pub const RACE_FORKS: u32 = 100;

/// The file writes (a shell builtin's `echo x > FILE`: open, write, close, no process) each
/// platform runs in [`race_platforms`].
pub const RACE_WRITES: u32 = 1000;

/// How long [`RACE_FORKS`] fork+execs of `/bin/true` from a shell loop took here in a
/// sandbox on each platform, its boot left out (the best of two rounds, alternating).
///
/// Why a race and not "systrap where it works": which platform is faster depends on the
/// host. On one 2-CPU EPYC VM systrap ran 300 fork+execs 6x faster than ptrace; on another
/// of the same kind it was 2.6x slower, and the exec round trip through the agent took
/// 31 ms against 9 ms. Process creation is what commands, exec round trips and shell loops
/// are made of, so it decides for interactive sandboxes (see docs/ARCHITECTURE.md and
/// docs/benchmarks.md).
///
/// Build steps are made of syscalls instead (pip, compilers, unpacking): on the host where
/// ptrace won process creation (913 ms against 512 ms), systrap ran 3000 small file writes
/// in Python 8x faster and a `pip install` build twice as fast. So [`RACE_WRITES`] file
/// writes are timed too, and decide for batch sandboxes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRace {
    pub systrap_ms: u64,
    pub ptrace_ms: u64,
    /// [`RACE_WRITES`] file writes on each.
    #[serde(default)]
    pub systrap_io_ms: u64,
    #[serde(default)]
    pub ptrace_io_ms: u64,
}

impl PlatformRace {
    /// The faster at process creation: systrap unless ptrace is more than a tenth faster
    /// (systrap is runsc's default, so a near tie goes to it).
    pub fn winner(&self) -> &'static str {
        Self::faster(self.systrap_ms, self.ptrace_ms)
    }

    /// The faster at syscalls (file writes), by the same rule.
    pub fn io_winner(&self) -> &'static str {
        Self::faster(self.systrap_io_ms, self.ptrace_io_ms)
    }

    fn faster(systrap: u64, ptrace: u64) -> &'static str {
        if u128::from(ptrace) * 11 < u128::from(systrap) * 10 {
            "ptrace"
        } else {
            "systrap"
        }
    }
}

impl RunscBuild {
    /// The build's date from its version (`0.0~20240729.0` → 20240729), if it has one.
    pub fn date(&self) -> Option<u32> {
        let digits: String = self
            .version
            .split('~')
            .nth(1)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok().filter(|d| *d > 20_150_000)
    }

    /// Builds from before 2024 checkpoint in seconds (6.2 s for a busybox sandbox on this
    /// kind of host with the 2022-12 build) rather than a tenth of one.
    pub fn fast_checkpoint(&self) -> bool {
        self.date().is_some_and(|d| d >= 20_240_000)
    }
}

/// Learns what `binary` is, remembering the answer per runsc binary (path, size, mtime) in
/// `root`: the probes cost Go process starts and a probe sandbox's boot (~0.2 s), which
/// `hutch run` should not pay every time.
fn detect_build(binary: &Path, root: &Path) -> RunscBuild {
    let fingerprint = std::fs::metadata(binary)
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            // The leading tag changes whenever what is detected does. The host's kernel and
            // CPU count are part of it: which platform is faster depends on them.
            format!(
                "v4:{}:{}:{}:{}:{}",
                binary.display(),
                m.size(),
                m.mtime(),
                kernel_release(),
                std::thread::available_parallelism().map_or(0, |n| n.get())
            )
        })
        .unwrap_or_default();
    #[derive(Serialize, Deserialize)]
    struct Cached {
        fingerprint: String,
        build: RunscBuild,
    }
    let cache = root.join("build.json");
    if let Ok(bytes) = std::fs::read(&cache)
        && let Ok(cached) = serde_json::from_slice::<Cached>(&bytes)
        && cached.fingerprint == fingerprint
    {
        return cached.build;
    }
    // A detection killed midway left its probe's state directory or its unrenamed cache;
    // it also left no cache, so the next detection (this one) comes here and removes them.
    hutch_store::remove_dead_pid_entries(root, &[".probe.", ".build."]);
    let stdout = |args: &[&str]| {
        std::process::Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .output()
            // `runsc flags` writes to stderr, `--version` to stdout.
            .map(|o| {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text
            })
            .unwrap_or_default()
    };
    let version = stdout(&["--version"])
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("runsc version ")
        .to_string();
    let flags = stdout(&["flags"]);
    let has_flag = |name: &str| {
        flags.lines().any(|l| {
            l.trim_start().starts_with(&format!("-{name} ")) || l.trim() == format!("-{name}")
        })
    };
    let has_systrap = flags.contains("systrap");
    let mut build = RunscBuild {
        version,
        platform: "ptrace".into(),
        has_systrap,
        has_overlay2: has_flag("overlay2"),
        has_directfs: has_flag("directfs"),
        systrap_failure: None,
        race: None,
    };
    if has_systrap {
        match probe_platform(binary, root, "systrap") {
            Ok(()) => {
                let race = race_platforms(binary, root, &fingerprint);
                build.platform = race.winner().into();
                build.race = Some(race);
            }
            Err(e) => {
                tracing::warn!(error = %e, "runsc's systrap platform does not work here; using ptrace");
                build.systrap_failure = Some(e);
            }
        }
    }
    let tmp = root.join(format!(".build.{}", std::process::id()));
    let cached = Cached {
        fingerprint,
        build: build.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec(&cached)
        && std::fs::write(&tmp, bytes).is_ok()
    {
        let _ = std::fs::rename(&tmp, &cache);
    }
    // The cache of releases before 0.1, which knew only the platform.
    let _ = std::fs::remove_file(root.join("platform"));
    build
}

/// Where the platform race of every runsc binary is remembered for the whole machine when
/// Hutch runs as root (as it must to start sandboxes): the race costs a few seconds, and
/// every fresh `$HUTCH_HOME` (each test has one) would pay them again.
const SHARED_RACE_DIR: &str = "/var/cache/hutch";
const SHARED_RACE_FILE: &str = "runsc-platform.json";
/// The most races the shared file keeps (one per runsc binary and kernel).
const SHARED_RACE_ENTRIES: usize = 16;

/// Times both platforms (see [`PlatformRace`]), or takes the answer an earlier race on this
/// machine left for the same binary and host (`fingerprint`). Races are serialized by a
/// lock beside the shared file, so that concurrent detections neither race twice nor skew
/// each other's timings.
fn race_platforms(binary: &Path, root: &Path, fingerprint: &str) -> PlatformRace {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let shared = (unsafe { libc::geteuid() } == 0).then(|| PathBuf::from(SHARED_RACE_DIR));
    let Some(dir) = shared else {
        return run_race(binary, root);
    };
    let _ = std::fs::create_dir_all(&dir);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join("runsc-platform.lock"));
    let _guard = lock.ok().filter(|f| f.lock().is_ok());
    let file = dir.join(SHARED_RACE_FILE);
    let mut known = read_shared_races(&file);
    if let Some(race) = known.get(fingerprint) {
        return race.clone();
    }
    let race = run_race(binary, root);
    if known.len() >= SHARED_RACE_ENTRIES {
        known.clear();
    }
    known.insert(fingerprint.to_string(), race.clone());
    let tmp = dir.join(format!(".{SHARED_RACE_FILE}.{}", std::process::id()));
    hutch_store::remove_dead_pid_entries(&dir, &[&format!(".{SHARED_RACE_FILE}.")]);
    if let Ok(bytes) = serde_json::to_vec(&known)
        && std::fs::write(&tmp, bytes).is_ok()
        && std::fs::rename(&tmp, &file).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
    race
}

/// The shared races, if the file is a regular file this user owns that nobody else may
/// write (another local user must not choose the platform of root's sandboxes).
fn read_shared_races(file: &Path) -> std::collections::BTreeMap<String, PlatformRace> {
    use std::os::unix::fs::MetadataExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file);
    let Ok(mut f) = opened else {
        return Default::default();
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let trusted = f
        .metadata()
        .is_ok_and(|m| m.is_file() && m.uid() == me && m.mode() & 0o022 == 0 && m.len() < 65_536);
    let mut bytes = Vec::new();
    if !trusted || std::io::Read::read_to_end(&mut f, &mut bytes).is_err() {
        return Default::default();
    }
    serde_json::from_slice(&bytes).unwrap_or_default()
}

/// Two rounds, the platforms alternating; each platform's best.
fn run_race(binary: &Path, root: &Path) -> PlatformRace {
    let mut best = PlatformRace {
        systrap_ms: u64::MAX,
        ptrace_ms: u64::MAX,
        systrap_io_ms: u64::MAX,
        ptrace_io_ms: u64::MAX,
    };
    let forks = format!("i=0; while [ $i -lt {RACE_FORKS} ]; do /bin/true; i=$((i+1)); done");
    // `runsc do` keeps the sandbox's writes in memory: the host's /tmp is not touched.
    let writes = format!(
        "i=0; while [ $i -lt {RACE_WRITES} ]; do echo x > /tmp/.hutch-race-$i; i=$((i+1)); done"
    );
    for _ in 0..2 {
        for platform in ["ptrace", "systrap"] {
            let boot = time_do(binary, root, platform, &["/bin/true"]);
            let timed = |script: &str| {
                let with_loop = time_do(binary, root, platform, &["/bin/sh", "-c", script])?;
                Some(with_loop.saturating_sub(boot?))
            };
            let (fork_ms, io_ms) = (
                timed(&forks).unwrap_or(u64::MAX),
                timed(&writes).unwrap_or(u64::MAX),
            );
            let (fork_slot, io_slot) = if platform == "ptrace" {
                (&mut best.ptrace_ms, &mut best.ptrace_io_ms)
            } else {
                (&mut best.systrap_ms, &mut best.systrap_io_ms)
            };
            *fork_slot = (*fork_slot).min(fork_ms);
            *io_slot = (*io_slot).min(io_ms);
        }
    }
    tracing::info!(
        systrap_ms = best.systrap_ms,
        ptrace_ms = best.ptrace_ms,
        systrap_io_ms = best.systrap_io_ms,
        ptrace_io_ms = best.ptrace_io_ms,
        interactive = best.winner(),
        batch = best.io_winner(),
        "timed runsc's platforms at {RACE_FORKS} fork+execs and {RACE_WRITES} file writes"
    );
    best
}

/// The longest one timed `runsc do` may take: a platform that hangs (kvm does on some
/// hosts) must not hold the machine-wide race lock, and every Hutch process behind it,
/// for ever.
const RACE_RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Milliseconds `runsc do ARGS` takes on `platform`, if it succeeds within
/// [`RACE_RUN_LIMIT`]; killed past it.
fn time_do(binary: &Path, root: &Path, platform: &str, args: &[&str]) -> Option<u64> {
    time_do_within(binary, root, platform, args, RACE_RUN_LIMIT)
}

fn time_do_within(
    binary: &Path,
    root: &Path,
    platform: &str,
    args: &[&str],
    limit: std::time::Duration,
) -> Option<u64> {
    let probe_root = root.join(format!(".probe.{}", std::process::id()));
    let started = std::time::Instant::now();
    let child = std::process::Command::new(binary)
        .arg(format!("--root={}", probe_root.display()))
        .arg(format!("--platform={platform}"))
        .arg("--network=none")
        .arg("--ignore-cgroups")
        .arg("do")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let status = child.ok().and_then(|mut child| {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() < limit => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        }
    });
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&probe_root);
    status
        .filter(|s| s.success())
        .map(|_| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// `uname -r`, from /proc (empty if unreadable).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Boots a throwaway sandbox on `platform` running the host's `/bin/true` (`runsc do`), in a
/// state directory of its own so nothing of it is mistaken for a Hutch sandbox.
fn probe_platform(binary: &Path, root: &Path, platform: &str) -> std::result::Result<(), String> {
    let probe_root = root.join(format!(".probe.{}", std::process::id()));
    let out = std::process::Command::new(binary)
        .arg(format!("--root={}", probe_root.display()))
        .arg(format!("--platform={platform}"))
        .arg("--network=none")
        .arg("--ignore-cgroups")
        .args(["do", "/bin/true"])
        .stdin(Stdio::null())
        .output();
    let _ = std::fs::remove_dir_all(&probe_root);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`runsc --platform={platform} do /bin/true` failed ({}): {}",
            o.status,
            last_lines(&String::from_utf8_lossy(&o.stderr), 3)
        )),
        Err(e) => Err(format!("running runsc: {e}")),
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_near_tie_goes_to_systrap_and_a_clear_ptrace_win_to_ptrace() {
        let race = |systrap_ms, ptrace_ms| PlatformRace {
            systrap_ms,
            ptrace_ms,
            systrap_io_ms: 0,
            ptrace_io_ms: 0,
        };
        assert_eq!(race(500, 500).winner(), "systrap");
        assert_eq!(race(500, 460).winner(), "systrap");
        assert_eq!(race(700, 370).winner(), "ptrace");
        assert_eq!(race(300, 1800).winner(), "systrap");
        // A platform whose probe failed counts as infinitely slow.
        assert_eq!(race(u64::MAX, 400).winner(), "ptrace");
        assert_eq!(race(400, u64::MAX).winner(), "systrap");
    }

    /// This host's race: ptrace starts processes faster, systrap runs syscalls faster. Build
    /// steps (batch) take systrap, interactive sandboxes ptrace, unless the platform is forced.
    #[test]
    fn batch_sandboxes_take_the_platform_faster_at_syscalls() {
        let race = PlatformRace {
            systrap_ms: 913,
            ptrace_ms: 512,
            systrap_io_ms: 120,
            ptrace_io_ms: 900,
        };
        assert_eq!((race.winner(), race.io_winner()), ("ptrace", "systrap"));
        let mut runsc = Runsc {
            binary: "/usr/bin/runsc".into(),
            root: "/nonexistent".into(),
            platform: "ptrace".into(),
            forced: false,
            build: RunscBuild {
                platform: "ptrace".into(),
                has_systrap: true,
                race: Some(race),
                ..RunscBuild::default()
            },
        };
        assert_eq!(runsc.platform_for(crate::Workload::Interactive), "ptrace");
        assert_eq!(runsc.platform_for(crate::Workload::Batch), "systrap");
        // $HUTCH_RUNSC_PLATFORM decides for every sandbox.
        runsc.forced = true;
        assert_eq!(runsc.platform_for(crate::Workload::Batch), "ptrace");
        // No race (an old build, or systrap failing here): the one platform for both.
        runsc.forced = false;
        runsc.build.race = None;
        assert_eq!(runsc.platform_for(crate::Workload::Batch), "ptrace");
    }

    /// A platform that hangs is killed at the limit and counts as infinitely slow.
    #[test]
    fn a_hanging_runsc_is_killed_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("runsc");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let took = time_do_within(
            &fake,
            dir.path(),
            "systrap",
            &["/bin/true"],
            std::time::Duration::from_millis(300),
        );
        assert_eq!(took, None);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    /// The shared races decide root's platform: a file someone else could have written, or
    /// a symlink to one, is not read.
    #[test]
    fn shared_races_are_read_only_from_a_file_nobody_else_may_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(SHARED_RACE_FILE);
        let races = r#"{"fp":{"systrap_ms":900,"ptrace_ms":100}}"#;
        std::fs::write(&file, races).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_shared_races(&file)["fp"].winner(), "ptrace");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            read_shared_races(&file).is_empty(),
            "world-writable file read"
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_shared_races(&link).is_empty(), "symlink followed");

        std::fs::write(&file, b"{not json").unwrap();
        assert!(read_shared_races(&file).is_empty());
    }
}
