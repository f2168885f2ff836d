//! The gVisor backend: each sandbox is a `runsc` container whose rootfs is an overlay of the
//! image's layers, whose PID 1 is `hutch-agent`, and whose agent dials home over a unix
//! socket in the sandbox's directory.
//!
//! Layout under `<home>/sandboxes/<id>/`: `sandbox.json` (the record), `bundle/config.json`,
//! `rootfs/` (the overlay mount), `upper/` and `work/` (the overlay's writable side), `run/`
//! (bind-mounted at `/run/hutch`, holds `agent.sock`) and `console.log` (the agent's stdio).

mod bundle;
pub use bundle::AGENT_PATH_IN_SANDBOX;
mod persist;
pub mod rootfs;
mod runsc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hutch_store::Store;
use hutch_wire::{AgentConfig, BootOutcome, StartProcess};

use crate::agent::{AgentClient, AgentLink};
use crate::backend::{
    AttachedRun, Backend, DEFAULT_PIDS_LIMIT, MAX_PIDS_LIMIT, NetworkMode, Sandbox, SandboxInfo,
    SandboxSpec, SandboxState, WritableLayer,
};
use crate::capability::{Capabilities, CapabilityName as C, CapabilityReason};
use crate::error::{Result, RuntimeError};
use crate::net::{self, Attachment, NetSettings};
use persist::SandboxRecord;
pub use runsc::Runsc;

/// What a one-shot sandbox's [`AttachedRun`] carries for [`Backend::wait_attached`].
struct AttachedState {
    supervisor: tokio::process::Child,
    /// Threads copying the sandbox's output to ours (see [`caller_output`]).
    copiers: Vec<std::thread::JoinHandle<()>>,
}

/// What a one-shot sandbox writes to our fd `fd` (1 or 2) with. Pipes and terminals are
/// handed over as they are. A regular file is not: gVisor writes a host file at offsets of
/// its own, from 0, overwriting what the file already held (`(echo a; runsc run ..) > f`
/// loses the `a`), so it gets a pipe whose contents a thread appends to the file.
fn caller_output(fd: i32) -> Result<(Stdio, Option<std::thread::JoinHandle<()>>)> {
    // SAFETY: `stat` is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor number into a stat we own; a closed one just fails.
    let is_file = unsafe { libc::fstat(fd, &mut st) } == 0
        && (st.st_mode & libc::S_IFMT == libc::S_IFREG
            || st.st_mode & libc::S_IFMT == libc::S_IFBLK);
    if !is_file {
        return Ok((Stdio::inherit(), None));
    }
    let (read, write) = std::io::pipe().map_err(|e| RuntimeError::io("creating a pipe", e))?;
    // SAFETY: dup of our own descriptor, owned by the copier from here on.
    let target = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if target < 0 {
        return Err(RuntimeError::io(
            "duplicating an output descriptor",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `target` is a fresh descriptor nothing else owns.
    let mut target = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(target) };
    // A plain read/write loop, not `std::io::copy`: that splices, and a splice blocked on
    // an empty pipe has already taken the file offset, so with stdout and stderr on one file
    // (`> f 2>&1`) the second stream overwrote the first (seen, then fixed).
    let copier = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut read = read;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match read.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if target.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    Ok((Stdio::from(write), Some(copier)))
}
use runsc::last_lines;

/// Creates `dir` (and its parents) if missing and makes it 0700, also when it already existed
/// with a wider mode (state directories made by older versions were 0755).
fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| RuntimeError::io(format!("making {} private", dir.display()), e))
}

const BACKEND: &str = "gvisor";
/// How long a new sandbox's agent has to dial home.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the supervisor may take to tear a sandbox down after its agent exited.
const SUPERVISOR_EXIT: Duration = Duration::from_secs(10);

/// Where the backend keeps its state, and the agent binary it mounts into sandboxes.
#[derive(Clone, Debug)]
pub struct GvisorConfig {
    pub home: PathBuf,
    pub agent_binary: PathBuf,
}

pub struct GvisorBackend {
    home: PathBuf,
    store: Store,
    runsc: Runsc,
    agent_binary: PathBuf,
    links: Mutex<HashMap<String, AgentLink>>,
    /// `runsc run` supervisors this process started, to reap them and learn of their exit.
    supervisors: Mutex<HashMap<String, tokio::process::Child>>,
    /// How sandboxes' networks are laid out, or why this host cannot give them one.
    net: std::result::Result<NetSettings, String>,
    /// Sandboxes this process is creating: a teardown of one waits for its create to end,
    /// so that a delete of a booting sandbox returns only once nothing of it is left.
    creating: Mutex<std::collections::HashSet<String>>,
    /// The resolvers of sandboxes whose policy names hosts (see `net::dns`).
    resolvers: Mutex<HashMap<String, net::dns::Resolver>>,
    /// The egress audit log, when this process reads it (`hutch serve`).
    audit: Option<Arc<net::audit::AuditLog>>,
}

/// A networked sandbox's attachment, beside its record.
const NET_FILE: &str = "net.json";

impl GvisorBackend {
    /// Releases the network leases (`leases/lease-PID-RAND`) of processes that are gone: a
    /// build killed during an `ADD <url>` leaves its lease's namespace and addresses behind
    /// until this runs (at the next lease, and at start-up through `sweep_incomplete`).
    fn release_dead_leases(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.home.join("leases")) else {
            return 0;
        };
        let mut released = 0;
        for entry in entries.flatten() {
            let pid = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("lease-"))
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                net::host::detach_owner(&entry.path());
                let _ = std::fs::remove_dir_all(entry.path());
                released += 1;
            }
        }
        released
    }

    pub fn new(config: GvisorConfig, store: Store) -> Result<Self> {
        if !config.agent_binary.is_file() {
            return Err(RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!("agent binary {} not found", config.agent_binary.display()),
            });
        }
        // The state directory holds every sandbox's files, sockets and image-controlled
        // setuid binaries: no other host user may traverse it.
        let sandboxes = config.home.join("sandboxes");
        for dir in [&config.home, &sandboxes] {
            private_dir(dir)?;
        }
        let runsc = Runsc::detect(config.home.join("runsc"))?;
        // runsc's netstack in a namespace Hutch wires works from the 2024-07 build on; the
        // 2022 build fails to set up the interface (measured).
        let net = if runsc.build.date().is_some_and(|d| d >= 20_240_700) {
            net::host::host_support()
                .and_then(|()| NetSettings::from_env().map_err(|e| e.to_string()))
        } else {
            Err(format!(
                "runsc {} cannot run its network stack in a namespace Hutch wires; \
                 the 2024-07 build or later can",
                runsc.build.version
            ))
        };
        if let Err(why) = &net {
            tracing::info!(%why, "sandboxes get no network here");
        }
        Ok(Self {
            home: config.home,
            store,
            runsc,
            agent_binary: config.agent_binary,
            links: Mutex::new(HashMap::new()),
            supervisors: Mutex::new(HashMap::new()),
            net,
            creating: Mutex::new(Default::default()),
            resolvers: Mutex::new(HashMap::new()),
            audit: None,
        })
    }

    /// Lays sandboxes' networks out as `settings` says (`hutch serve`'s flags), where this
    /// host can give sandboxes networks at all.
    pub fn configure_network(&mut self, settings: NetSettings) {
        if self.net.is_ok() {
            self.net = Ok(settings);
        }
    }

    /// Reads the egress audit log of this host's sandbox networks (one process per host
    /// can: `hutch serve` does). Without it, `egress` is refused, typed.
    pub fn enable_egress_audit(&mut self) {
        let Ok(settings) = &self.net else {
            return;
        };
        let log = Arc::new(net::audit::AuditLog::default());
        match net::audit::start(Arc::clone(&log), settings.cidr) {
            Ok(()) => self.audit = Some(log),
            Err(e) => {
                tracing::warn!(error = %e, "no egress audit log (is another hutch serve reading it?)")
            }
        }
    }

    /// The sandbox's network attachment, if it has one.
    fn attachment(&self, id: &str) -> Option<Attachment> {
        let bytes = std::fs::read(self.dir(id).join(NET_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Starts, updates or stops the sandbox's resolver to match `policy`: it runs while
    /// the policy names hosts.
    fn follow_names(
        &self,
        id: &str,
        settings: &NetSettings,
        attachment: &Attachment,
        policy: &net::ParsedPolicy,
    ) -> Result<()> {
        let Ok(mut resolvers) = self.resolvers.lock() else {
            return Ok(());
        };
        if !policy.has_names() {
            resolvers.remove(id);
            return Ok(());
        }
        if let Some(r) = resolvers.get(id) {
            r.set_policy(policy.clone());
            return Ok(());
        }
        let upstream = settings
            .dns
            .first()
            .copied()
            .ok_or_else(|| RuntimeError::InvalidSpec {
                reason: "host names in a network policy need an upstream resolver \
                     (hutch serve --sandbox-dns), and this host has none"
                    .into(),
            })?;
        let resolver =
            net::dns::Resolver::start(attachment, upstream, policy.clone(), self.audit.clone())?;
        resolvers.insert(id.to_string(), resolver);
        Ok(())
    }

    /// Removes the sandbox's network, if it has one.
    fn detach_network(&self, id: &str) {
        if let Ok(mut resolvers) = self.resolvers.lock() {
            resolvers.remove(id);
        }
        if let (Some(audit), Some(a)) = (&self.audit, self.attachment(id)) {
            audit.close(a.slot);
        }
        if self.net.is_ok() {
            net::host::detach_owner(&self.dir(id));
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runsc(&self) -> &Runsc {
        &self.runsc
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.home.join("sandboxes").join(id)
    }

    fn cached_link(&self, id: &str) -> Option<AgentLink> {
        self.links.lock().ok()?.get(id).cloned()
    }

    fn forget_link(&self, id: &str) {
        let link = self.links.lock().ok().and_then(|mut l| l.remove(id));
        if let Some(link) = link {
            link.disconnect();
        }
    }

    async fn provision(&self, id: &str, spec: &SandboxSpec) -> Result<Sandbox> {
        let (link, mut supervisor, info, _) = self.launch(id, spec, None)?;
        let dir = self.dir(id);
        // Ready when the agent dials home; a supervisor that exits first failed to boot.
        let failure = tokio::select! {
            connected = link.wait_connected(BOOT_TIMEOUT) => connected.err().map(|e| e.to_string()),
            status = supervisor.wait() => Some(match status {
                Ok(status) => format!("runsc exited during boot ({status})"),
                Err(e) => format!("waiting for runsc: {e}"),
            }),
        };
        if let Some(reason) = failure {
            let _ = supervisor.start_kill();
            let _ = supervisor.wait().await;
            let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
            return Err(RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!("{reason}; sandbox console: {}", last_lines(&console, 6)),
            });
        }
        if let Ok(mut supervisors) = self.supervisors.lock() {
            supervisors.insert(id.to_string(), supervisor);
        }
        tracing::debug!(%id, "agent connected");
        if let Ok(mut links) = self.links.lock() {
            links.insert(id.to_string(), link.clone());
        }
        Ok(Sandbox {
            info,
            agent: AgentClient::new(link),
        })
    }

    /// Prepares the sandbox's directory, rootfs and bundle, listens for its agent and starts
    /// the `runsc run` supervisor. With `boot`, the agent's first process is that command on
    /// the supervisor's stdio, which is this process's (stdin only when asked).
    fn launch(
        &self,
        id: &str,
        spec: &SandboxSpec,
        boot: Option<(&StartProcess, bool)>,
    ) -> Result<(
        AgentLink,
        tokio::process::Child,
        SandboxInfo,
        Vec<std::thread::JoinHandle<()>>,
    )> {
        let image = self.store.image(&spec.image)?;
        let dir = self.dir(id);
        let (rootfs_dir, mut upper, mut work, run) = (
            dir.join("rootfs"),
            dir.join("upper"),
            dir.join("work"),
            dir.join("run"),
        );
        // The sandbox's directory is private to root. `upper` stays 0755: overlayfs shows its
        // mode as the sandbox's `/`. `run` is 0700 so that only root inside the sandbox (the
        // agent) reaches the dial-home socket.
        private_dir(&dir)?;
        for d in [&rootfs_dir, &upper, &work] {
            std::fs::create_dir_all(d)
                .map_err(|e| RuntimeError::io(format!("creating {}", d.display()), e))?;
        }
        private_dir(&run)?;
        if let Some(mb) = spec.disk_mb {
            (upper, work) = rootfs::make_disk(&dir, mb)?;
        }
        let created_at = hutch_wire::clock::now_ms();
        let record = SandboxRecord {
            id: id.to_string(),
            image: image.name.clone(),
            image_id: image.id.to_string(),
            layers: image.layers.iter().map(ToString::to_string).collect(),
            created_at,
            spec: spec.clone(),
            agent_secret: Some(random_hex(hutch_wire::AGENT_SECRET_LEN / 2)?),
        };
        record.save(&dir)?;
        write_secret(&run, record.agent_secret.as_deref().unwrap_or_default())?;
        let network = match (&spec.network, &self.net) {
            (NetworkMode::Egress, Ok(settings)) => {
                let parsed = spec.network_policy.parse()?;
                let attachment = net::host::attach(settings, &dir, &parsed)?;
                if let Some(audit) = &self.audit {
                    // A new sandbox in the slot: nothing of the one before.
                    audit.close(attachment.slot);
                    audit.open(attachment.slot);
                }
                self.follow_names(id, settings, &attachment, &parsed)?;
                let json = serde_json::to_vec(&attachment).map_err(|e| {
                    RuntimeError::io("encoding the network attachment", std::io::Error::other(e))
                })?;
                std::fs::write(dir.join(NET_FILE), json)
                    .map_err(|e| RuntimeError::io("saving the network attachment", e))?;
                // The sandbox's resolver is its gateway (DNS there goes to the upstream).
                let resolv = dir.join("resolv.conf");
                std::fs::write(&resolv, format!("nameserver {}\n", attachment.gateway))
                    .map_err(|e| RuntimeError::io("writing resolv.conf", e))?;
                Some((attachment, resolv))
            }
            (NetworkMode::Egress, Err(why)) => {
                return Err(RuntimeError::UnsupportedCapability {
                    backend: BACKEND,
                    capability: C::NetworkEgress,
                    reason: CapabilityReason::HostGated {
                        detail: why.clone(),
                    },
                });
            }
            (NetworkMode::None, _) => None,
        };
        self.store.pin(id, &image.layers)?;
        let lower: Vec<PathBuf> = image
            .layers
            .iter()
            .map(|l| self.store.layer_dir(l))
            .collect();
        let lower = if lower.is_empty() {
            let empty = self.home.join("empty-layer");
            std::fs::create_dir_all(&empty)
                .map_err(|e| RuntimeError::io("creating the empty layer", e))?;
            vec![empty]
        } else {
            lower
        };
        rootfs::mount_overlay(&lower, &upper, &work, &rootfs_dir)?;
        tracing::debug!(%id, "rootfs mounted");

        let agent_config = AgentConfig {
            env: merge_env(&image.config.env, &spec.env),
            working_dir: spec
                .working_dir
                .clone()
                .or(image.config.working_dir.clone()),
            user: spec
                .user
                .clone()
                .or(image.config.user.clone())
                .filter(|u| !u.is_empty()),
            memory_limit_bytes: spec.memory_mb.map(|mb| mb << 20),
            pids_limit: Some(spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT)),
            output_buffer_bytes: None,
            boot: boot.map(|(process, _)| process.clone()),
        };
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| id.chars().take(12).collect());
        let oci = bundle::build(&bundle::BundleSpec {
            rootfs: &rootfs_dir,
            agent_binary: &self.agent_binary,
            socket_dir: &run,
            hostname: &hostname,
            agent_config: &agent_config,
            cpus: spec.cpus,
            memory_backstop_bytes: spec.memory_mb.map(memory_backstop),
            cgroup: Some(PathBuf::from(format!("/hutch/{id}"))),
            pids_backstop: host_pids_backstop(spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT)),
            tmp_in_rootfs: spec.tmp_in_rootfs,
            network: network
                .as_ref()
                .map(|(a, resolv)| (a.netns_path(), resolv.as_path())),
            mounts: &spec.mounts,
        })?;
        bundle::write(&oci, &dir.join("bundle"))?;

        let link = AgentLink::listen(
            &run.join(hutch_wire::AGENT_SOCKET_NAME),
            record.agent_secret.clone(),
        )?;
        let mut copiers = Vec::new();
        let stdio = match boot {
            None => runsc::SupervisorStdio::Log(dir.join("console.log")),
            Some((_, stdin)) => {
                let (stdout, out_copier) = caller_output(1)?;
                let (stderr, err_copier) = caller_output(2)?;
                copiers.extend(out_copier.into_iter().chain(err_copier));
                runsc::SupervisorStdio::Given {
                    stdin: if stdin {
                        Stdio::inherit()
                    } else {
                        Stdio::null()
                    },
                    stdout,
                    stderr,
                }
            }
        };
        let supervisor = self.runsc.spawn_supervisor(
            id,
            &dir.join("bundle"),
            stdio,
            true,
            network.is_some(),
            spec.workload,
        )?;
        let info = SandboxInfo {
            id: id.to_string(),
            state: SandboxState::Running,
            image: image.name,
            image_id: image.id.to_string(),
            created_at,
            spec: spec.clone(),
        };
        Ok((link, supervisor, info, copiers))
    }

    /// Checks a spec and settles the new sandbox's id.
    fn admit(&self, spec: &mut SandboxSpec) -> Result<String> {
        if spec.network == NetworkMode::Egress {
            if let Err(why) = &self.net {
                return Err(RuntimeError::UnsupportedCapability {
                    backend: BACKEND,
                    capability: C::NetworkEgress,
                    reason: CapabilityReason::HostGated {
                        detail: why.clone(),
                    },
                });
            }
            spec.network_policy.parse()?;
        }
        if let Some(cpus) = spec.cpus
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(RuntimeError::InvalidSpec {
                reason: format!("cpus must be between 0 and 1024, got {cpus}"),
            });
        }
        if let Some(pids) = spec.pids_limit
            && !(16..=MAX_PIDS_LIMIT).contains(&pids)
        {
            return Err(RuntimeError::InvalidSpec {
                reason: format!("pids_limit must be between 16 and {MAX_PIDS_LIMIT}, got {pids}"),
            });
        }
        if let Some(mb) = spec.memory_mb
            && !(16..=1 << 22).contains(&mb)
        {
            return Err(RuntimeError::InvalidSpec {
                reason: format!("memory must be at least 16 MiB, got {mb} MiB"),
            });
        }
        validate_mounts(&spec.mounts)?;
        for kv in &spec.env {
            if !kv.contains('=') || kv.starts_with('=') {
                return Err(RuntimeError::InvalidSpec {
                    reason: format!("environment entry {kv:?} is not KEY=VALUE"),
                });
            }
        }
        let id = match spec.id.clone() {
            Some(id) => {
                validate_id(&id)?;
                id
            }
            None => random_id()?,
        };
        spec.id = Some(id.clone());
        if self.dir(&id).exists() || self.runsc.knows(&id) {
            return Err(RuntimeError::AlreadyExists { id });
        }
        Ok(id)
    }

    /// Ends the sandbox: the agent is asked to exit (SIGTERM to everything, SIGKILL after
    /// `grace`), which makes the `runsc run` supervisor tear it down; runsc's own kill and
    /// delete are the fallback when the agent does not answer.
    async fn end(&self, id: &str, grace: Duration) -> Result<()> {
        let link = self.cached_link(id).or_else(|| {
            // Not ours yet (created by another process): connect briefly if it runs.
            let socket = self.dir(id).join("run").join(hutch_wire::AGENT_SOCKET_NAME);
            let secret = self.record(id).ok()?.agent_secret;
            (self.runsc.knows(id) && socket.exists())
                .then(|| AgentLink::listen(&socket, secret).ok())
                .flatten()
        });
        if let Some(link) = link {
            let _ = AgentClient::new(link).shutdown(grace).await;
        }
        let supervisor = self.supervisors.lock().ok().and_then(|mut s| s.remove(id));
        let exited = match supervisor {
            Some(mut child) => {
                let done = tokio::time::timeout(SUPERVISOR_EXIT, child.wait())
                    .await
                    .is_ok();
                if !done {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
                done
            }
            None => self.wait_gone(id, SUPERVISOR_EXIT).await,
        };
        self.forget_link(id);
        if !exited || self.runsc.knows(id) {
            tracing::debug!(%id, "agent did not end the sandbox; using runsc delete");
            self.runsc.delete_force(id).await?;
        }
        Ok(())
    }

    /// Removes every trace of `id`, best effort, reporting the first failure.
    async fn teardown(&self, id: &str) -> Result<()> {
        // A create of this sandbox in progress here (a delete of a booting sandbox): let it
        // finish first, or what it makes after this teardown would outlive it.
        let patience = tokio::time::Instant::now() + BOOT_TIMEOUT + SUPERVISOR_EXIT;
        while self.creating.lock().is_ok_and(|c| c.contains(id))
            && tokio::time::Instant::now() < patience
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A supervisor this process started is waited for (or killed) by `end`; only a
        // sandbox another process started can have a runsc still booting unseen.
        let ours = self.supervisors.lock().is_ok_and(|s| s.contains_key(id));
        let mut first_error = self.end(id, Duration::ZERO).await.err();
        // A `runsc run` left by a process killed mid-create may still be booting: runsc has
        // no state for it yet, so `end` found nothing to stop, and it would bring the
        // sandbox up after this teardown. Its processes (supervisor, sandbox, gofer) name
        // this runsc root and the sandbox's id or bundle.
        if !ours && kill_runsc_processes(&self.runsc.root, id) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.runsc.knows(id)
                && let Err(e) = self.runsc.delete_force(id).await
            {
                first_error.get_or_insert(e);
            }
        }
        let dir = self.dir(id);
        self.detach_network(id);
        if let Err(e) = rootfs::unmount(&dir.join("rootfs")) {
            first_error.get_or_insert(e);
        }
        for leftover in rootfs::mounts_under(&dir) {
            let _ = rootfs::unmount(&leftover);
        }
        if dir.exists()
            && rootfs::mounts_under(&dir).is_empty()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            first_error.get_or_insert(RuntimeError::io(format!("removing {}", dir.display()), e));
        }
        if let Err(e) = self.store.unpin(id) {
            first_error.get_or_insert(e.into());
        }
        remove_cgroups(id);
        self.runsc.remove_stale_locks(id);
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until runsc no longer holds state for `id`.
    async fn wait_gone(&self, id: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.runsc.knows(id) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn record(&self, id: &str) -> Result<SandboxRecord> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.join(persist::RECORD_FILE).exists() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        SandboxRecord::load(&dir)
    }

    fn info(record: SandboxRecord, state: SandboxState) -> SandboxInfo {
        SandboxInfo {
            id: record.id,
            state,
            image: record.image,
            image_id: record.image_id,
            created_at: record.created_at,
            spec: record.spec,
        }
    }
}

#[async_trait::async_trait]
impl Backend for GvisorBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let later = |feature: &str| CapabilityReason::FeatureGated {
            feature: feature.into(),
        };
        let caps = Capabilities::default()
            .supported(&[
                C::SandboxCreate,
                C::SandboxStop,
                C::SandboxKill,
                C::SandboxDelete,
                C::SandboxList,
                C::CpuLimit,
                C::MemoryLimit,
                C::ProcessOomReporting,
                C::NetworkNone,
                C::ProcessRun,
                C::ProcessStart,
                C::ProcessStream,
                C::ProcessStdin,
                C::ProcessSignal,
                C::ProcessReattach,
                C::ProcessPty,
                C::FilesystemRead,
                C::FilesystemWrite,
                C::FilesystemList,
                C::FilesystemStat,
                // The agent's inotify watches (gVisor has inotify).
                C::FilesystemWatch,
            ])
            .unsupported(C::SandboxSuspend, later("suspend and resume"))
            .unsupported(C::SnapshotFilesystem, later("filesystem snapshots"))
            .unsupported(C::SnapshotMemory, later("memory snapshots"))
            .supported(&[
                C::WarmPool,
                C::SandboxResize,
                C::SandboxRunAttached,
                C::SandboxWritableLayer,
                C::SandboxSocket,
            ])
            .unsupported(
                C::SandboxCheckpoint,
                later("checkpoint and restore, issue 16"),
            )
            .unsupported(C::SandboxRestore, later("checkpoint and restore, issue 16"))
            .with_runtime(self.runsc.details());
        match &self.net {
            Ok(_) if self.audit.is_some() => {
                caps.supported(&[C::NetworkEgress, C::NetworkAttach, C::NetworkAudit])
            }
            Ok(_) => caps
                .supported(&[C::NetworkEgress, C::NetworkAttach])
                .unsupported(
                    C::NetworkAudit,
                    CapabilityReason::HostGated {
                        detail: "the egress audit log is read by hutch serve only".into(),
                    },
                ),
            Err(why) => {
                let host = CapabilityReason::HostGated {
                    detail: why.clone(),
                };
                caps.unsupported(C::NetworkEgress, host.clone())
                    .unsupported(C::NetworkAttach, host.clone())
                    .unsupported(C::NetworkAudit, host)
            }
        }
    }

    /// Removes what sandboxes left half-made or half-removed: a directory with no record
    /// (a process killed between creating it and saving the record, or in the middle of
    /// removing it), with its mounts, pin, cgroups and any runsc process. Only directories
    /// older than `min_age` are touched: a create in progress elsewhere writes its record
    /// within milliseconds. Returns how many were removed.
    fn sweep_incomplete(&self, min_age: Duration) -> usize {
        let leases = self.release_dead_leases();
        if leases > 0 {
            tracing::info!(
                leases,
                "released the network leases of processes that are gone"
            );
        }
        let Ok(entries) = std::fs::read_dir(self.home.join("sandboxes")) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let dir = entry.path();
            let old_enough = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if validate_id(&id).is_err()
                || !old_enough
                || dir.join(persist::RECORD_FILE).exists()
                || self.runsc.knows(&id)
            {
                continue;
            }
            kill_runsc_processes(&self.runsc.root, &id);
            self.detach_network(&id);
            for mount in rootfs::mounts_under(&dir) {
                let _ = rootfs::unmount(&mount);
            }
            if !rootfs::mounts_under(&dir).is_empty() {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(%id, error = %e, "removing an incomplete sandbox directory");
                continue;
            }
            let _ = self.store.unpin(&id);
            remove_cgroups(&id);
            removed += 1;
        }
        removed
    }

    async fn create(&self, mut spec: SandboxSpec) -> Result<Sandbox> {
        let id = self.admit(&mut spec)?;
        if let Ok(mut creating) = self.creating.lock() {
            creating.insert(id.clone());
        }
        let provisioned = self.provision(&id, &spec).await;
        if let Ok(mut creating) = self.creating.lock() {
            creating.remove(&id);
        }
        match provisioned {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                if let Err(cleanup) = self.teardown(&id).await {
                    tracing::warn!(%id, error = %cleanup, "cleanup after a failed create");
                }
                Err(e)
            }
        }
    }

    async fn attach(&self, id: &str) -> Result<Sandbox> {
        let record = self.record(id)?;
        let state = self.inspect(id).await?.state;
        if state != SandboxState::Running {
            return Err(RuntimeError::NotRunning {
                id: id.to_string(),
                state: state.to_string(),
            });
        }
        let link = match self.cached_link(id) {
            Some(link) => link,
            None => {
                let link = AgentLink::listen(
                    &self.dir(id).join("run").join(hutch_wire::AGENT_SOCKET_NAME),
                    record.agent_secret.clone(),
                )?;
                link.wait_connected(BOOT_TIMEOUT).await?;
                if let Ok(mut links) = self.links.lock() {
                    links.insert(id.to_string(), link.clone());
                }
                link
            }
        };
        // A sandbox adopted after a restart gets its audit log (from now: its rules are made
        // again, naming this process's log group) and its resolver back.
        if let (Some(audit), Ok(settings), Some(a)) = (&self.audit, &self.net, self.attachment(id))
            && let Ok(parsed) = record.spec.network_policy.parse()
        {
            audit.open(a.slot);
            let (settings, held) = (settings.clone(), a.clone());
            let applied =
                tokio::task::spawn_blocking(move || net::host::apply(&settings, &held, &parsed))
                    .await;
            if let Ok(Err(e)) = applied {
                tracing::warn!(%id, error = %e, "re-applying the network policy");
            }
        }
        if let (Ok(settings), Some(attachment)) = (&self.net, self.attachment(id))
            && let Ok(parsed) = record.spec.network_policy.parse()
            && parsed.has_names()
            && let Err(e) = self.follow_names(id, settings, &attachment, &parsed)
        {
            tracing::warn!(%id, error = %e, "restarting the sandbox's resolver");
        }
        Ok(Sandbox {
            info: Self::info(record, SandboxState::Running),
            agent: AgentClient::new(link),
        })
    }

    async fn inspect(&self, id: &str) -> Result<SandboxInfo> {
        let record = self.record(id)?;
        // From the state files, like `list`: no Go process start and no lock taken.
        let state = self
            .runsc
            .scan()
            .into_iter()
            .find(|c| c.id == id)
            .map_or(SandboxState::Stopped, |c| runsc_state(&c.status));
        Ok(Self::info(record, state))
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>> {
        let states: HashMap<String, String> = self
            .runsc
            .scan()
            .into_iter()
            .map(|c| (c.id, c.status))
            .collect();
        let dir = self.home.join("sandboxes");
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| RuntimeError::io(format!("reading {}", dir.display()), e))?;
        for entry in entries.flatten() {
            let Ok(record) = SandboxRecord::load(&entry.path()) else {
                continue;
            };
            let state = states
                .get(&record.id)
                .map_or(SandboxState::Stopped, |s| runsc_state(s));
            out.push(Self::info(record, state));
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        self.record(id)?;
        self.end(id, grace).await
    }

    async fn kill(&self, id: &str) -> Result<()> {
        self.stop(id, Duration::ZERO).await
    }

    async fn delete(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        if !self.dir(id).exists() && !self.runsc.knows(id) {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        self.teardown(id).await
    }

    /// The way `runsc run` runs a container: the command is the agent's boot process.
    async fn run_attached(
        &self,
        mut spec: SandboxSpec,
        process: &StartProcess,
        stdin: bool,
    ) -> Result<AttachedRun> {
        let id = self.admit(&mut spec)?;
        match self.launch(&id, &spec, Some((process, stdin))) {
            Ok((link, supervisor, info, copiers)) => Ok(AttachedRun::new(
                info,
                AgentClient::new(link),
                AttachedState {
                    supervisor,
                    copiers,
                },
            )),
            Err(e) => {
                if let Err(cleanup) = self.teardown(&id).await {
                    tracing::warn!(%id, error = %cleanup, "cleanup after a failed create");
                }
                Err(e)
            }
        }
    }

    async fn wait_attached(&self, run: AttachedRun) -> Result<BootOutcome> {
        let (info, agent, mut state) =
            run.into_parts::<AttachedState>()
                .map_err(|run| RuntimeError::InvalidSpec {
                    reason: format!(
                        "sandbox {} is not a one-shot run of this backend",
                        run.info.id
                    ),
                })?;
        let id = info.id.clone();
        let status = state.supervisor.wait().await;
        // The sandbox's processes are gone, so the copies reach end of file.
        for copier in state.copiers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || copier.join()).await;
        }
        let run_dir = self.dir(&id).join("run");
        // The run directory is writable from inside: a planted symlink is refused, not
        // followed (it would show a host file in the error below), and sizes are bounded.
        let read_run = |name: &str, max: u64| {
            hutch_store::rooted::read_no_follow(&run_dir, std::path::Path::new(name), max)
        };
        let outcome = read_run(hutch_wire::BOOT_OUTCOME_FILE, 64 << 10)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<BootOutcome>(&bytes).ok());
        let log = read_run(hutch_wire::AGENT_LOG_FILE, 1 << 20)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        // Read before teardown removes the cgroup.
        let pids_hit = pids_limit_reached(&id);
        // runsc ends with 128 when it fails itself, and the agent removes its secret first
        // thing: both, and the agent never ran, so the status is runsc's (a failed start),
        // not the command's. The run directory is the sandbox's to write: the file is looked
        // at, never followed, and a command's own exit code other than 128 is never
        // mistaken for it whatever it planted there.
        let never_started = (outcome.is_none()
            && status.as_ref().ok().and_then(|s| s.code()) == Some(RUNSC_FAILED)
            && std::fs::symlink_metadata(run_dir.join(hutch_wire::AGENT_SECRET_FILE))
                .is_ok_and(|m| m.file_type().is_file()))
        .then(|| runsc_failed(&self.dir(&id), &status));
        drop(agent);
        self.forget_link(&id);
        if let Err(e) = self.teardown(&id).await {
            tracing::warn!(%id, error = %e, "removing a one-shot sandbox");
        }

        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
        if pids_hit {
            return Err(RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!(
                    "the sandbox ended: its processes reached the host's limit of {} tasks \
                     (a fork bomb?); the limit inside is {} processes",
                    host_pids_backstop(info.spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT)),
                    info.spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT),
                ),
            });
        }
        if let Some(failed) = never_started {
            return Err(failed);
        }
        // No outcome file: a plain exit, whose code the agent made runsc's.
        match status.as_ref().ok().and_then(|s| s.code()) {
            Some(code) => Ok(BootOutcome::Exit(hutch_wire::ExitInfo {
                exit_code: Some(code.into()),
                signal: None,
                oom_killed: false,
                reason: hutch_wire::ProcessExitReason::Exited,
            })),
            None => Err(RuntimeError::BackendFailure {
                backend: BACKEND,
                message: format!(
                    "the sandbox ended before its command did (runsc: {}){}",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    if log.trim().is_empty() {
                        String::new()
                    } else {
                        format!("; agent log: {}", last_lines(&log, 6))
                    }
                ),
            }),
        }
    }

    /// The socket is in the directory of the dial-home socket, which runsc lets the sandbox
    /// connect out of.
    fn listen_in_sandbox(&self, id: &str, name: &str) -> Result<tokio::net::UnixListener> {
        validate_id(id)?;
        if name.is_empty()
            || name == hutch_wire::AGENT_SOCKET_NAME
            || name.contains('/')
            || name.starts_with('.')
        {
            return Err(RuntimeError::InvalidSpec {
                reason: format!("{name:?} cannot name a socket in the sandbox"),
            });
        }
        let run = self.dir(id).join("run");
        if !run.is_dir() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        let path = run.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(format!("removing {}", path.display()), e)),
        }
        tokio::net::UnixListener::bind(&path)
            .map_err(|e| RuntimeError::io(format!("listening on {}", path.display()), e))
    }

    /// The overlay's upper directory, less Hutch's mount points in it.
    async fn resize(&self, id: &str, cpus: Option<f64>, memory_mb: Option<u64>) -> Result<()> {
        let agent = self.attach(id).await?.agent;
        let cgroup = SandboxCgroup::of(id);
        if let Some(mb) = memory_mb {
            let user = mb << 20;
            let backstop = memory_backstop(mb);
            let growing = cgroup.memory_limit().is_none_or(|now| backstop >= now);
            if growing {
                // Room on the host first, then the agent lets processes use it.
                cgroup.set_memory_limit(backstop)?;
                agent.set_memory_limit(user).await?;
            } else {
                // The agent first: it kills the largest process over the new limit, alone;
                // the host backstop follows once usage is under it.
                agent.set_memory_limit(user).await?;
                let mut tries = 0;
                loop {
                    match cgroup.set_memory_limit(backstop) {
                        Ok(()) => break,
                        Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        if let Some(cpus) = cpus {
            cgroup.set_cpus(cpus)?;
        }
        Ok(())
    }

    async fn attach_network(&self, id: &str, policy: &net::NetworkPolicy) -> Result<()> {
        let settings = self
            .net
            .as_ref()
            .map_err(|why| RuntimeError::UnsupportedCapability {
                backend: BACKEND,
                capability: C::NetworkAttach,
                reason: CapabilityReason::HostGated {
                    detail: why.clone(),
                },
            })?;
        let parsed = policy.parse()?;
        let record = self.record(id)?;
        let Some(attachment) = self.attachment(id) else {
            return Err(RuntimeError::InvalidSpec {
                reason: format!(
                    "sandbox {id} was created without a network ({:?}); a policy applies only \
                     to a sandbox created with one",
                    record.spec.network
                ),
            });
        };
        let owned = settings.clone();
        let (held, policy_now) = (attachment.clone(), parsed.clone());
        tokio::task::spawn_blocking(move || net::host::apply(&owned, &held, &policy_now))
            .await
            .map_err(|e| {
                RuntimeError::io("applying a network policy", std::io::Error::other(e))
            })??;
        self.follow_names(id, settings, &attachment, &parsed)?;
        // The record keeps the policy in force, for inspect and for a later re-attach.
        let mut record = record;
        record.spec.network_policy = policy.clone();
        record.save(&self.dir(id))
    }

    async fn egress(&self, id: &str, after: u64) -> Result<Vec<net::audit::EgressEntry>> {
        let Some(audit) = &self.audit else {
            return Err(RuntimeError::UnsupportedCapability {
                backend: BACKEND,
                capability: C::NetworkAudit,
                reason: CapabilityReason::HostGated {
                    detail: "the egress audit log is read by hutch serve only".into(),
                },
            });
        };
        self.record(id)?;
        Ok(self
            .attachment(id)
            .map(|a| audit.entries(a.slot, after))
            .unwrap_or_default())
    }

    fn network_lease(&self, policy: &crate::net::NetworkPolicy) -> Result<crate::NetworkLease> {
        let settings = self
            .net
            .as_ref()
            .map_err(|why| RuntimeError::UnsupportedCapability {
                backend: BACKEND,
                capability: C::NetworkEgress,
                reason: CapabilityReason::HostGated {
                    detail: why.clone(),
                },
            })?;
        let parsed = policy.parse()?;
        if parsed.has_names() {
            // Names are policed by a per-sandbox resolver a lease does not run.
            return Err(RuntimeError::InvalidSpec {
                reason: "a network lease takes a policy of addresses only (no host names)".into(),
            });
        }
        // The owner directory marks the slot taken; one whose process is gone is released
        // here (and its slot swept by the next attach).
        let leases = self.home.join("leases");
        std::fs::create_dir_all(&leases).map_err(|e| RuntimeError::io("creating leases/", e))?;
        self.release_dead_leases();
        let owner = leases.join(format!("lease-{}-{}", std::process::id(), random_hex(8)?));
        std::fs::create_dir(&owner).map_err(|e| RuntimeError::io("creating a lease", e))?;
        let attachment = match net::host::attach(settings, &owner, &parsed) {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&owner);
                return Err(e);
            }
        };
        Ok(crate::NetworkLease::new(
            attachment.netns_path(),
            attachment.gateway,
            Box::new(move || {
                net::host::detach_owner(&owner);
                let _ = std::fs::remove_dir_all(&owner);
            }),
        ))
    }

    fn writable_layer(&self, id: &str) -> Result<WritableLayer> {
        let record = self.record(id)?;
        let upper = rootfs::upper_of(&self.dir(id));
        let mut mount_points = vec![PathBuf::from("run/hutch"), PathBuf::from("run/hutch-agent")];
        // runsc creates `/run` for those two when the image has none: not content either.
        let image_has_run = record.layers.iter().any(|l| {
            hutch_store::Digest::parse(l)
                // The entry itself, never what a symlink there points to on the host.
                .map(|d| std::fs::symlink_metadata(self.store.layer_dir(&d).join("run")).is_ok())
                .unwrap_or(false)
        });
        if !image_has_run {
            mount_points.push(PathBuf::from("run"));
        }
        // A networked sandbox's /etc/resolv.conf is Hutch's bind mount.
        if self.attachment(id).is_some() {
            mount_points.push(PathBuf::from("etc/resolv.conf"));
        }
        Ok(WritableLayer {
            upper,
            mount_points,
        })
    }
}

fn runsc_state(status: &str) -> SandboxState {
    match status {
        "running" => SandboxState::Running,
        "created" | "creating" => SandboxState::Creating,
        "stopped" | "paused" => SandboxState::Stopped,
        _ => SandboxState::Lost,
    }
}

fn merge_env(image: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(image.len() + overrides.len());
    for kv in image.iter().chain(overrides) {
        let key = kv.split('=').next().unwrap_or_default();
        out.retain(|existing| existing.split('=').next() != Some(key));
        out.push(kv.clone());
    }
    out
}

/// Sandbox ids name directories and runsc containers: keep them boring.
/// Extra mounts: a bounded number, at clean absolute paths that do not cover what the
/// sandbox needs (its root, `/run/hutch*`, `/proc`, `/dev`, `/sys`), from absolute host
/// sources.
fn validate_mounts(mounts: &[crate::ExtraMount]) -> Result<()> {
    if mounts.len() > crate::MAX_EXTRA_MOUNTS {
        return Err(RuntimeError::InvalidSpec {
            reason: format!("at most {} extra mounts", crate::MAX_EXTRA_MOUNTS),
        });
    }
    for m in mounts {
        let d = m.destination.as_str();
        let clean = d.starts_with('/')
            && d.len() > 1
            && d.len() <= 4096
            && !d.contains('\0')
            && d.split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        let reserved = ["/run/hutch", "/run/hutch-agent", "/proc", "/dev", "/sys"]
            .iter()
            .any(|r| d == *r || d.starts_with(&format!("{r}/")) || r.starts_with(&format!("{d}/")));
        if !clean || reserved {
            return Err(RuntimeError::InvalidSpec {
                reason: format!("cannot mount at {d:?}"),
            });
        }
        if let crate::ExtraMountKind::Bind { source, .. } = &m.kind
            && !source.is_absolute()
        {
            return Err(RuntimeError::InvalidSpec {
                reason: format!(
                    "a bind mount's source must be absolute: {}",
                    source.display()
                ),
            });
        }
    }
    Ok(())
}

pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec {
            reason: format!("sandbox id {id:?} must be 1-64 characters of a-z, 0-9, '-' and '_'"),
        })
    }
}

/// The host tasks (processes and threads) a sandbox of `limit` guest processes may use:
/// under gVisor's ptrace platform each guest process costs the host about ten (measured:
/// 1,100 guest processes held ~11,000 host tasks), plus the Sentry's own. Reaching it makes
/// the Sentry panic, so the agent's limit inside must act long before, even when the host
/// is loaded and the agent samples late: hence the margin.
fn host_pids_backstop(limit: u32) -> i64 {
    i64::from(limit) * 16 + 2048
}

/// SIGKILLs every process whose command line names the runsc state root `root` and the
/// sandbox `id` (its `runsc run` supervisor, sandbox and gofer); returns how many.
fn kill_runsc_processes(root: &std::path::Path, id: &str) -> usize {
    let root = format!("--root={}", root.display());
    let in_path = format!("/{id}/");
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for pid in procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
    {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let names_root = args.contains(&root.as_bytes());
        // The id itself (`runsc run ... <id>`), or a path through its directory (the
        // gofer's `--bundle=<home>/sandboxes/<id>/bundle`).
        let names_id = args.iter().any(|a| {
            *a == id.as_bytes() || a.windows(in_path.len()).any(|w| w == in_path.as_bytes())
        });
        if names_root && names_id {
            // SAFETY: kill(2) on a pid read from /proc; a pid gone since fails harmlessly.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                killed += 1;
            }
        }
    }
    killed
}

/// Whether the sandbox's host pids cgroup ever refused a task (`pids.events`: `max N`).
fn pids_limit_reached(id: &str) -> bool {
    std::fs::read_to_string(format!("/sys/fs/cgroup/pids/hutch/{id}/pids.events"))
        .ok()
        .and_then(|events| {
            events
                .lines()
                .find_map(|l| l.strip_prefix("max ")?.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

/// The exit status of a `runsc` that failed itself (a bad flag, a spec it refused, a
/// sandbox it could not start), in the 2022 and 2024 builds alike.
const RUNSC_FAILED: i32 = 128;

/// The error of a sandbox whose runsc ended before its agent started, with what runsc said.
/// Read before teardown removes the sandbox's directory.
fn runsc_failed(
    dir: &std::path::Path,
    status: &std::io::Result<std::process::ExitStatus>,
) -> RuntimeError {
    let log =
        hutch_store::rooted::read_no_follow(dir, std::path::Path::new(runsc::RUNSC_LOG), 1 << 20)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
    // runsc logs JSON lines (`{"msg": ..., "level": ...}`); show the messages.
    let messages: Vec<String> = log
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or_else(|| line.to_string())
        })
        .collect();
    RuntimeError::BackendFailure {
        backend: BACKEND,
        message: format!(
            "runsc failed before the sandbox started ({}){}",
            status
                .as_ref()
                .map_or_else(|e| e.to_string(), |s| s.to_string()),
            if messages.is_empty() {
                String::new()
            } else {
                format!(": {}", last_lines(&messages.join("\n"), 4))
            }
        ),
    }
}

/// Writes the agent's secret where only it will read it (see
/// [`hutch_wire::AGENT_SECRET_FILE`]), owner-only, replacing anything planted there.
fn write_secret(run: &std::path::Path, secret: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = run.join(hutch_wire::AGENT_SECRET_FILE);
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|mut f| f.write_all(secret.as_bytes()))
        .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
}

fn random_id() -> Result<String> {
    hutch_wire::ids::sandbox_id().map_err(|e| RuntimeError::io("reading random bytes", e))
}

/// `n` random bytes, as hex.
fn random_hex(n: usize) -> Result<String> {
    hutch_wire::ids::random_hex(n).map_err(|e| RuntimeError::io("reading random bytes", e))
}

/// The host cgroup's memory limit for a user limit of `mb`: the agent enforces the user's
/// limit per process; the host's is a backstop above it (its OOM would take the sandbox).
fn memory_backstop(mb: u64) -> u64 {
    let user = mb << 20;
    user + (user / 2).max(256 << 20)
}

/// A sandbox's host cgroup (`/hutch/<id>`), v1 (a directory per controller) or v2 (unified).
struct SandboxCgroup {
    id: String,
    unified: bool,
}

impl SandboxCgroup {
    fn of(id: &str) -> Self {
        Self {
            id: id.to_string(),
            unified: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        }
    }

    fn file(&self, controller: &str, name: &str) -> PathBuf {
        if self.unified {
            PathBuf::from(format!("/sys/fs/cgroup/hutch/{}/{name}", self.id))
        } else {
            PathBuf::from(format!(
                "/sys/fs/cgroup/{controller}/hutch/{}/{name}",
                self.id
            ))
        }
    }

    fn write(&self, path: &Path, value: &str) -> Result<()> {
        std::fs::write(path, value)
            .map_err(|e| RuntimeError::io(format!("writing {value} to {}", path.display()), e))
    }

    fn memory_limit(&self) -> Option<u64> {
        let name = if self.unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::read_to_string(self.file("memory", name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        let name = if self.unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        self.write(&self.file("memory", name), &bytes.to_string())
    }

    fn set_cpus(&self, cpus: f64) -> Result<()> {
        const PERIOD: u64 = 100_000;
        let quota = ((cpus * PERIOD as f64) as u64).max(1000);
        if self.unified {
            self.write(&self.file("cpu", "cpu.max"), &format!("{quota} {PERIOD}"))
        } else {
            self.write(&self.file("cpu", "cpu.cfs_period_us"), &PERIOD.to_string())?;
            self.write(&self.file("cpu", "cpu.cfs_quota_us"), &quota.to_string())
        }
    }
}

fn remove_cgroups(id: &str) {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for controller in controllers.flatten() {
        let dir: PathBuf = controller.path().join("hutch").join(id);
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}
