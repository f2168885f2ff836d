//! The one runtime API every backend implements, and the types it speaks.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hutch_wire::{BootOutcome, StartProcess};
use serde::{Deserialize, Serialize};

use crate::agent::AgentClient;
use crate::capability::{Capabilities, CapabilityName};
use crate::error::{Result, RuntimeError};

/// What a sandbox mostly does, for a backend whose choices trade one cost for another (runsc's
/// platforms: one may start processes faster, the other run syscalls faster).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Commands and exec round trips, each short: process creation decides.
    #[default]
    Interactive,
    /// Long commands doing file and system work (image build steps): syscalls decide.
    Batch,
}

impl Workload {
    fn is_interactive(&self) -> bool {
        *self == Workload::Interactive
    }
}

/// How a sandbox reaches the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Loopback only.
    #[default]
    None,
    /// Its own network, reaching out through the host under [`SandboxSpec::network_policy`].
    Egress,
}

/// What to create. Image defaults (env, workdir, user) apply where a field is unset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Chosen by the backend when unset.
    #[serde(default)]
    pub id: Option<String>,
    /// A name in the image store, e.g. `busybox:latest`.
    pub image: String,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// `KEY=VALUE` entries layered over the image's environment.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub network: NetworkMode,
    /// What an [`NetworkMode::Egress`] sandbox may reach.
    #[serde(default)]
    pub network_policy: crate::net::NetworkPolicy,
    /// Caller's bookkeeping, kept with the sandbox's record (e.g. which server owns it).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Keep `/tmp` in the root filesystem, so that what is written there is part of the
    /// sandbox's writable layer (image builds); by default runsc mounts a fresh tmpfs there.
    #[serde(default)]
    pub tmp_in_rootfs: bool,
    /// The most processes (and threads) that may exist in the sandbox at once; `None` is
    /// [`DEFAULT_PIDS_LIMIT`]. There is always a limit: every process in a sandbox costs
    /// the host processes and threads, so a fork bomb must end inside it (`EAGAIN`).
    #[serde(default)]
    pub pids_limit: Option<u32>,
    /// The sandbox's disk in MiB: its writes land on a filesystem of this size of its own
    /// (ENOSPC past it). `None`: they share the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    /// More mounts: host directories or files the caller made (a build's `RUN --mount`
    /// caches, bind sources and secrets), or tmpfs. Their contents are never part of the
    /// writable layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ExtraMount>,
    /// What the sandbox mostly does; a backend may run it differently (see [`Workload`]).
    #[serde(default, skip_serializing_if = "Workload::is_interactive")]
    pub workload: Workload,
}

/// See [`Backend::network_lease`].
pub struct NetworkLease {
    /// The namespace (`/run/netns/...`) to make sockets in.
    pub netns: std::path::PathBuf,
    /// The resolver reachable from it (the same one a sandbox there would use).
    pub resolver: std::net::Ipv4Addr,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl NetworkLease {
    pub fn new(
        netns: std::path::PathBuf,
        resolver: std::net::Ipv4Addr,
        release: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        Self {
            netns,
            resolver,
            release: Some(release),
        }
    }
}

impl Drop for NetworkLease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// The most extra mounts a sandbox takes.
pub const MAX_EXTRA_MOUNTS: usize = 64;

/// One of [`SandboxSpec::mounts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraMount {
    /// Where, inside the sandbox: an absolute path, resolved by the sandbox's own kernel.
    pub destination: String,
    pub kind: ExtraMountKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtraMountKind {
    /// A host path the caller created and owns (never one a sandbox or an image names).
    Bind {
        source: std::path::PathBuf,
        read_only: bool,
    },
    Tmpfs {
        /// Bytes; `None`: the sandbox's memory bounds it.
        size: Option<u64>,
    },
}

/// The pids limit of a sandbox whose spec names none.
pub const DEFAULT_PIDS_LIMIT: u32 = 1024;
/// The largest pids limit a spec may ask for.
pub const MAX_PIDS_LIMIT: u32 = 32768;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Stopped,
    /// The backend has a record but the runtime does not know the sandbox.
    Lost,
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Lost => "lost",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub state: SandboxState,
    pub image: String,
    pub image_id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub spec: SandboxSpec,
}

/// A sandbox and the client to its agent.
#[derive(Clone)]
pub struct Sandbox {
    pub info: SandboxInfo,
    pub agent: AgentClient,
}

/// A one-shot sandbox started by [`Backend::run_attached`]: its command runs on the caller's
/// stdio; [`Backend::wait_attached`] reports how it ended and removes the sandbox.
pub struct AttachedRun {
    pub info: SandboxInfo,
    /// The agent, reachable once it has dialed home (the command does not wait for that).
    pub agent: AgentClient,
    /// What the backend that started the run needs to finish it; opaque to everyone else.
    backend_state: Box<dyn Any + Send>,
}

impl AttachedRun {
    pub fn new(info: SandboxInfo, agent: AgentClient, backend_state: impl Any + Send) -> Self {
        Self {
            info,
            agent,
            backend_state: Box::new(backend_state),
        }
    }

    /// The run's parts, with the backend's state as the `T` it put there; the run back
    /// unchanged when it holds something else (another backend's run).
    pub fn into_parts<T: Any>(self) -> Result<(SandboxInfo, AgentClient, T), Box<Self>> {
        match self.backend_state.downcast::<T>() {
            Ok(state) => Ok((self.info, self.agent, *state)),
            Err(backend_state) => Err(Box::new(Self {
                backend_state,
                ..self
            })),
        }
    }
}

/// A stopped sandbox's writes ([`Backend::writable_layer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritableLayer {
    /// An overlayfs upper directory: whiteouts are 0/0 character devices, opaque
    /// directories carry `trusted.overlay.opaque=y`.
    pub upper: PathBuf,
    /// Paths in `upper`, relative, that are the backend's mount points rather than the
    /// sandbox's writes: a layer made of `upper` leaves them out.
    pub mount_points: Vec<PathBuf>,
}

/// How [`Backend::checkpoint`] saves a sandbox (issue 16).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOptions {
    /// Keep the sandbox running afterwards; by default it stops once saved.
    #[serde(default)]
    pub leave_running: bool,
    /// Save the filesystem only (the writable layer), not the memory of its processes.
    #[serde(default)]
    pub filesystem_only: bool,
}

/// A saved sandbox: what [`Backend::restore`] needs to bring it back. The backend owns the
/// format of the files in `dir`; this descriptor is what a caller records about them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDescriptor {
    /// The sandbox that was saved.
    pub sandbox_id: String,
    /// The directory holding the saved state.
    pub dir: PathBuf,
    /// The image the sandbox ran, by name and id: a restore needs the same layers below.
    pub image: String,
    pub image_id: String,
    /// The spec the sandbox was created with, which a restore starts from.
    pub spec: SandboxSpec,
    /// Whether the memory of its processes was saved (else the filesystem only).
    pub memory: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// The backend that wrote it: another backend cannot restore it.
    pub backend: String,
}

/// What [`Backend::restore`] brings back, and as which sandbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub snapshot: SnapshotDescriptor,
    /// The new sandbox's id; chosen by the backend when unset.
    #[serde(default)]
    pub id: Option<String>,
    /// Labels of the new sandbox, in place of the saved spec's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A sandbox runtime. Implementations must clean up after every failure, including ones
/// halfway through `create`: no mount, runtime container, process or directory is left.
///
/// Operations not every backend offers are methods here too, each named by a
/// [`CapabilityName`], with a default that refuses with
/// [`RuntimeError::UnsupportedCapability`] (the reason the backend reports for it). They are
/// not a separate extension trait so that a caller holding a `dyn Backend` reaches them
/// without knowing the concrete type; callers check [`Backend::capabilities`] up front, and
/// a backend adds one by overriding the method and reporting the capability supported.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Creates and starts a sandbox; returns once its agent answers.
    async fn create(&self, spec: SandboxSpec) -> Result<Sandbox>;
    /// Connects to an existing sandbox's agent (after a restart of the caller, say).
    async fn attach(&self, id: &str) -> Result<Sandbox>;
    async fn inspect(&self, id: &str) -> Result<SandboxInfo>;
    async fn list(&self) -> Result<Vec<SandboxInfo>>;
    /// SIGTERM to everything inside, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    async fn kill(&self, id: &str) -> Result<()>;
    /// Kills if needed and removes every trace of the sandbox.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Removes what a process killed mid-create or mid-delete left without a record (only
    /// what is older than `min_age`: a create in progress elsewhere is not touched). Returns
    /// how many sandboxes' remains were removed; a backend that leaves none has nothing to do.
    fn sweep_incomplete(&self, min_age: Duration) -> usize {
        let _ = min_age;
        0
    }

    /// Runs `process` as a one-shot sandbox's first process, on this process's stdout and
    /// stderr (and stdin when `stdin`): nothing stands between boot and the command, and the
    /// sandbox ends when the command does. The agent still dials home, for signals and the
    /// rest of the API while it runs. [`CapabilityName::SandboxRunAttached`].
    async fn run_attached(
        &self,
        spec: SandboxSpec,
        process: &StartProcess,
        stdin: bool,
    ) -> Result<AttachedRun> {
        let _ = (spec, process, stdin);
        Err(refuse(self, CapabilityName::SandboxRunAttached))
    }

    /// Waits for a run of [`Backend::run_attached`] to end, removes its sandbox, and says
    /// how its command ended.
    async fn wait_attached(&self, run: AttachedRun) -> Result<BootOutcome> {
        let _ = run;
        Err(refuse(self, CapabilityName::SandboxRunAttached))
    }

    /// The writable layer of the sandbox `id`, complete once it has stopped: a build turns
    /// it into an image layer. [`CapabilityName::SandboxWritableLayer`].
    fn writable_layer(&self, id: &str) -> Result<WritableLayer> {
        let _ = id;
        Err(refuse(self, CapabilityName::SandboxWritableLayer))
    }

    /// A sandbox's kind of network without a sandbox: a namespace wired exactly as a
    /// sandbox's (its own address, `policy`, the fence), for the host to make sockets in. A
    /// build's `ADD <url>` downloads through one, so its traffic is a build step's. Released
    /// when the lease drops. [`CapabilityName::NetworkEgress`].
    fn network_lease(&self, policy: &crate::net::NetworkPolicy) -> Result<NetworkLease> {
        let _ = policy;
        Err(refuse(self, CapabilityName::NetworkEgress))
    }

    /// Listens on a unix socket the sandbox `id` reaches at `/run/hutch/<name>`; the caller
    /// decides what speaks there (the build channel of builder sandboxes is one).
    /// [`CapabilityName::SandboxSocket`].
    fn listen_in_sandbox(&self, id: &str, name: &str) -> Result<tokio::net::UnixListener> {
        let _ = (id, name);
        Err(refuse(self, CapabilityName::SandboxSocket))
    }

    /// Replaces the egress policy of the running sandbox `id`, which has its own network
    /// ([`NetworkMode::Egress`]): new connections follow it at once. Also the seam a
    /// restore re-attaches networking through. [`CapabilityName::NetworkAttach`].
    async fn attach_network(&self, id: &str, policy: &crate::net::NetworkPolicy) -> Result<()> {
        let _ = (id, policy);
        Err(refuse(self, CapabilityName::NetworkAttach))
    }

    /// Changes the cpus and the memory limit of the running sandbox `id`, with no restart;
    /// a dimension given as `None` stays. A process over a lowered memory limit is
    /// OOM-killed alone. [`CapabilityName::SandboxResize`].
    async fn resize(&self, id: &str, cpus: Option<f64>, memory_mb: Option<u64>) -> Result<()> {
        let _ = (id, cpus, memory_mb);
        Err(refuse(self, CapabilityName::SandboxResize))
    }

    /// The connection attempts of sandbox `id` after sequence number `after`, oldest first
    /// (see `net::audit`). [`CapabilityName::NetworkAudit`].
    async fn egress(&self, id: &str, after: u64) -> Result<Vec<crate::net::audit::EgressEntry>> {
        let _ = (id, after);
        Err(refuse(self, CapabilityName::NetworkAudit))
    }

    /// Saves the sandbox `id` into `dir` (which must be empty or missing).
    /// [`CapabilityName::SandboxCheckpoint`].
    async fn checkpoint(
        &self,
        id: &str,
        dir: &Path,
        options: &CheckpointOptions,
    ) -> Result<SnapshotDescriptor> {
        let _ = (id, dir, options);
        Err(refuse(self, CapabilityName::SandboxCheckpoint))
    }

    /// Starts a new sandbox from a checkpoint; returns once its agent answers.
    /// [`CapabilityName::SandboxRestore`].
    async fn restore(&self, spec: RestoreSpec) -> Result<Sandbox> {
        let _ = spec;
        Err(refuse(self, CapabilityName::SandboxRestore))
    }
}

/// The refusal of an operation `backend` does not implement.
fn refuse<B: Backend + ?Sized>(backend: &B, capability: CapabilityName) -> RuntimeError {
    RuntimeError::unsupported(backend.name(), &backend.capabilities(), capability)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Capability, CapabilityReason};
    use crate::error::RetryClass;

    /// A backend with only the required operations, reporting network attach as coming
    /// later and saying nothing of the others.
    struct Minimal;

    #[async_trait::async_trait]
    impl Backend for Minimal {
        fn name(&self) -> &'static str {
            "minimal"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
                .supported(&[CapabilityName::SandboxCreate])
                .unsupported(
                    CapabilityName::NetworkAttach,
                    CapabilityReason::FeatureGated {
                        feature: "networks".into(),
                    },
                )
        }
        async fn create(&self, _: SandboxSpec) -> Result<Sandbox> {
            Err(RuntimeError::InvalidSpec {
                reason: "test".into(),
            })
        }
        async fn attach(&self, id: &str) -> Result<Sandbox> {
            Err(RuntimeError::NotFound { id: id.into() })
        }
        async fn inspect(&self, id: &str) -> Result<SandboxInfo> {
            Err(RuntimeError::NotFound { id: id.into() })
        }
        async fn list(&self) -> Result<Vec<SandboxInfo>> {
            Ok(Vec::new())
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<()> {
            Ok(())
        }
        async fn kill(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<()> {
            Ok(())
        }
    }

    fn refused_as(result: Result<impl Sized>, expected: CapabilityName) -> CapabilityReason {
        match result {
            Err(e @ RuntimeError::UnsupportedCapability { .. }) => {
                assert_eq!(e.code(), "unsupported_capability");
                assert_eq!(e.retry_class(), RetryClass::NotRetryable);
                let RuntimeError::UnsupportedCapability {
                    backend,
                    capability,
                    reason,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(backend, "minimal");
                assert_eq!(capability, expected);
                reason
            }
            Err(e) => panic!("{expected}: expected an unsupported capability, got {e}"),
            Ok(_) => panic!("{expected}: a default implementation succeeded"),
        }
    }

    fn info(id: &str) -> SandboxInfo {
        SandboxInfo {
            id: id.into(),
            state: SandboxState::Running,
            image: "busybox:latest".into(),
            image_id: "sha256:00".into(),
            created_at: 0,
            spec: SandboxSpec::default(),
        }
    }

    fn agent() -> AgentClient {
        AgentClient::via_proxy("http://127.0.0.1:9", "sbx", None).unwrap()
    }

    #[tokio::test]
    async fn operations_a_backend_does_not_implement_are_refused_with_its_reason() {
        let backend: &dyn Backend = &Minimal;
        let permanent = |reason: CapabilityReason| {
            assert!(
                matches!(reason, CapabilityReason::Permanent { .. }),
                "{reason:?}"
            )
        };
        permanent(refused_as(
            backend
                .run_attached(SandboxSpec::default(), &StartProcess::default(), false)
                .await,
            CapabilityName::SandboxRunAttached,
        ));
        permanent(refused_as(
            backend
                .wait_attached(AttachedRun::new(info("a"), agent(), ()))
                .await,
            CapabilityName::SandboxRunAttached,
        ));
        permanent(refused_as(
            backend.writable_layer("a"),
            CapabilityName::SandboxWritableLayer,
        ));
        permanent(refused_as(
            backend.listen_in_sandbox("a", "build.sock"),
            CapabilityName::SandboxSocket,
        ));
        permanent(refused_as(
            backend
                .checkpoint(
                    "a",
                    Path::new("/nonexistent"),
                    &CheckpointOptions::default(),
                )
                .await,
            CapabilityName::SandboxCheckpoint,
        ));
        let snapshot = SnapshotDescriptor {
            sandbox_id: "a".into(),
            dir: "/nonexistent".into(),
            image: "busybox:latest".into(),
            image_id: "sha256:00".into(),
            spec: SandboxSpec::default(),
            memory: true,
            created_at: 0,
            backend: "minimal".into(),
        };
        permanent(refused_as(
            backend
                .restore(RestoreSpec {
                    snapshot,
                    id: None,
                    labels: BTreeMap::new(),
                })
                .await,
            CapabilityName::SandboxRestore,
        ));
        // The reason the backend reports, not a generic one.
        assert_eq!(
            refused_as(
                backend
                    .attach_network("a", &crate::net::NetworkPolicy::default())
                    .await,
                CapabilityName::NetworkAttach,
            ),
            CapabilityReason::FeatureGated {
                feature: "networks".into()
            }
        );
        assert!(matches!(
            backend.capabilities().get(CapabilityName::NetworkAttach),
            Capability::Unsupported { .. }
        ));
    }

    #[test]
    fn an_attached_run_gives_its_state_back_only_as_its_own_type() {
        struct Mine(u32);
        let run = AttachedRun::new(info("one"), agent(), Mine(7));
        let run = match run.into_parts::<String>() {
            Ok(_) => panic!("another backend's state was taken for a String"),
            Err(run) => *run,
        };
        assert_eq!(run.info.id, "one");
        let (info, _, Mine(n)) = run.into_parts::<Mine>().ok().unwrap();
        assert_eq!((info.id.as_str(), n), ("one", 7));
    }
}
