//! The OCI runtime bundle of a sandbox: `config.json` with the agent as PID 1.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hutch_wire::AgentConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

use crate::error::{Result, RuntimeError};

/// Where the agent binary appears inside the sandbox.
pub const AGENT_PATH_IN_SANDBOX: &str = "/run/hutch-agent";

pub struct BundleSpec<'a> {
    pub rootfs: &'a Path,
    pub agent_binary: &'a Path,
    pub socket_dir: &'a Path,
    pub hostname: &'a str,
    pub agent_config: &'a AgentConfig,
    pub cpus: Option<f64>,
    /// The host cgroup limit: the user's limit plus headroom (the agent enforces the user's).
    pub memory_backstop_bytes: Option<u64>,
    pub cgroup: Option<PathBuf>,
    /// The host cgroup's `pids.max`: the sandbox's own limit (which the agent enforces
    /// inside) times what one guest process costs the host, as a backstop.
    pub pids_backstop: i64,
    /// Bind the rootfs's own `/tmp` over `/tmp` instead of runsc's tmpfs.
    pub tmp_in_rootfs: bool,
}

fn invalid(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidSpec {
        reason: format!("building the OCI spec: {e}"),
    }
}

/// Docker's default capability set: enough for root inside to drop to users, chown, bind
/// low ports; nothing that reaches the host (and gVisor stands between anyway).
fn default_capabilities() -> HashSet<Capability> {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

pub fn build(spec: &BundleSpec<'_>) -> Result<Spec> {
    let caps = default_capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(caps.clone())
        .ambient(caps)
        .build()
        .map_err(invalid)?;
    let config_json = serde_json::to_string(spec.agent_config).map_err(invalid)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(invalid)?,
        )
        .args(vec![AGENT_PATH_IN_SANDBOX.to_string()])
        .env(vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("{}={config_json}", hutch_wire::AGENT_CONFIG_ENV),
        ])
        .cwd("/")
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()
        .map_err(invalid)?;

    let mut oci = Spec::default();
    oci.set_process(Some(process));
    oci.set_hostname(Some(spec.hostname.to_string()));
    oci.set_root(Some(
        RootBuilder::default()
            .path(spec.rootfs)
            .readonly(false)
            .build()
            .map_err(invalid)?,
    ));
    let mut mounts = oci.mounts().clone().unwrap_or_default();
    mounts.push(
        MountBuilder::default()
            .destination(AGENT_PATH_IN_SANDBOX)
            .typ("bind")
            .source(spec.agent_binary)
            .options(vec!["bind".into(), "ro".into()])
            .build()
            .map_err(invalid)?,
    );
    mounts.push(
        MountBuilder::default()
            .destination(hutch_wire::AGENT_SOCKET_DIR)
            .typ("bind")
            .source(spec.socket_dir)
            .options(vec!["bind".into(), "rw".into()])
            .build()
            .map_err(invalid)?,
    );
    if spec.tmp_in_rootfs
        && let Some(tmp) = rootfs_tmp(spec.rootfs)
    {
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("bind")
                .source(tmp)
                .options(vec![
                    "bind".into(),
                    "rw".into(),
                    "nosuid".into(),
                    "nodev".into(),
                ])
                .build()
                .map_err(invalid)?,
        );
    }
    oci.set_mounts(Some(mounts));

    let mut linux = oci
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().unwrap_or_default());
    {
        // Always a cgroup, whatever the caller asked for: the pids limit is not optional.
        let mut resources = LinuxResourcesBuilder::default().pids(
            LinuxPidsBuilder::default()
                .limit(spec.pids_backstop)
                .build()
                .map_err(invalid)?,
        );
        if let Some(bytes) = spec.memory_backstop_bytes {
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(bytes as i64)
                    .build()
                    .map_err(invalid)?,
            );
        }
        if let Some(cpus) = spec.cpus {
            let period: u64 = 100_000;
            resources = resources.cpu(
                LinuxCpuBuilder::default()
                    .period(period)
                    .quota((cpus * period as f64) as i64)
                    .build()
                    .map_err(invalid)?,
            );
        }
        linux.set_resources(Some(resources.build().map_err(invalid)?));
        linux.set_cgroups_path(spec.cgroup.clone());
    }
    oci.set_linux(Some(linux));
    Ok(oci)
}

/// The image's own `/tmp` as a host path runsc can bind without following anything out of
/// the rootfs: image content decides what `/tmp` is (a symlink to `/etc` gave a RUN step the
/// host's `/etc`), so it is resolved inside the rootfs, as the sandbox would see it, into a
/// path with no symlink left. `None` when it is missing or not a directory: runsc's tmpfs
/// (inside gVisor) serves `/tmp` then. The rootfs does not change before runsc reads the
/// spec: its layers are immutable and the sandbox has not started.
fn rootfs_tmp(rootfs: &Path) -> Option<PathBuf> {
    let real = hutch_store::rooted::real_path(rootfs, Path::new("/tmp")).ok()?;
    hutch_store::rooted::is_dir(rootfs, Path::new("/tmp")).then_some(real)
}

pub fn write(spec: &Spec, bundle_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(bundle_dir)
        .map_err(|e| RuntimeError::io(format!("creating {}", bundle_dir.display()), e))?;
    spec.save(bundle_dir.join("config.json")).map_err(invalid)
}
