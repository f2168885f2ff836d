//! The OCI runtime bundle of a sandbox: `config.json` with the agent as PID 1.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hutch_wire::AgentConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
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
    /// A network namespace Hutch wired to join (instead of a new, empty one), and the
    /// resolv.conf naming the sandbox's resolver.
    pub network: Option<(PathBuf, &'a Path)>,
    /// The caller's extra mounts (validated by `create`).
    pub mounts: &'a [crate::ExtraMount],
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
    if let Some((_, resolv)) = &spec.network {
        mounts.push(
            MountBuilder::default()
                .destination("/etc/resolv.conf")
                .typ("bind")
                .source(*resolv)
                .options(vec!["bind".into(), "ro".into()])
                .build()
                .map_err(invalid)?,
        );
    }
    for extra in spec.mounts {
        let mount = match &extra.kind {
            crate::ExtraMountKind::Bind { source, read_only } => MountBuilder::default()
                .destination(&extra.destination)
                .typ("bind")
                .source(source)
                .options(vec![
                    "bind".into(),
                    if *read_only { "ro" } else { "rw" }.into(),
                    "nosuid".into(),
                    "nodev".into(),
                ]),
            crate::ExtraMountKind::Tmpfs { size } => {
                let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                if let Some(bytes) = size {
                    options.push(format!("size={bytes}"));
                }
                MountBuilder::default()
                    .destination(&extra.destination)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
            }
        };
        mounts.push(mount.build().map_err(invalid)?);
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
        if let Some((netns, _)) = &spec.network {
            let mut namespaces = linux.namespaces().clone().unwrap_or_default();
            namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(netns.clone())
                    .build()
                    .map_err(invalid)?,
            );
            linux.set_namespaces(Some(namespaces));
        }
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

#[cfg(test)]
mod tests {

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        config: AgentConfig,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for d in ["rootfs", "run"] {
                std::fs::create_dir(dir.path().join(d)).unwrap();
            }
            std::fs::write(dir.path().join("agent"), b"").unwrap();
            Self {
                dir,
                config: AgentConfig::default(),
            }
        }

        fn rootfs(&self) -> PathBuf {
            self.dir.path().join("rootfs")
        }

        fn spec(&self, tmp_in_rootfs: bool) -> Spec {
            let (rootfs, agent, run) = (
                self.rootfs(),
                self.dir.path().join("agent"),
                self.dir.path().join("run"),
            );
            build(&BundleSpec {
                rootfs: &rootfs,
                agent_binary: &agent,
                socket_dir: &run,
                hostname: "box",
                agent_config: &self.config,
                cpus: None,
                memory_backstop_bytes: None,
                cgroup: Some(PathBuf::from("/hutch/box")),
                pids_backstop: 4242,
                tmp_in_rootfs,
                network: None,
                mounts: &[],
            })
            .unwrap()
        }
    }

    fn mount<'a>(spec: &'a Spec, destination: &str) -> Option<&'a oci_spec::runtime::Mount> {
        spec.mounts()
            .as_ref()?
            .iter()
            .find(|m| m.destination() == Path::new(destination))
    }

    fn options(m: &oci_spec::runtime::Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn every_sandbox_has_a_pids_backstop_and_its_own_cgroup_even_without_limits() {
        let spec = Fixture::new().spec(false);
        let linux = spec.linux().as_ref().unwrap();
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 4242);
        assert!(resources.memory().is_none() && resources.cpu().is_none());
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/hutch/box"))
        );
    }

    #[test]
    fn limits_reach_the_cgroup() {
        let f = Fixture::new();
        let (rootfs, agent, run) = (
            f.rootfs(),
            f.dir.path().join("agent"),
            f.dir.path().join("run"),
        );
        let spec = build(&BundleSpec {
            rootfs: &rootfs,
            agent_binary: &agent,
            socket_dir: &run,
            hostname: "box",
            agent_config: &f.config,
            cpus: Some(1.5),
            memory_backstop_bytes: Some(768 << 20),
            cgroup: None,
            pids_backstop: 100,
            tmp_in_rootfs: false,
            network: None,
            mounts: &[],
        })
        .unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let cpu = resources.cpu().clone().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
        assert_eq!(resources.memory().unwrap().limit(), Some(768 << 20));
    }

    #[test]
    fn the_sandbox_gets_its_own_network_namespace_never_the_hosts() {
        let spec = Fixture::new().spec(false);
        let namespaces = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap_or_default();
        let net = namespaces
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .expect("a network namespace");
        // A path would join an existing namespace, such as the host's.
        assert!(net.path().is_none(), "{net:?}");
        for typ in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
        ] {
            assert!(
                namespaces
                    .iter()
                    .any(|n| n.typ() == typ && n.path().is_none()),
                "{typ:?}"
            );
        }
    }

    #[test]
    fn the_agent_is_pid_1_from_a_read_only_bind_with_its_config() {
        let mut f = Fixture::new();
        f.config.pids_limit = Some(77);
        let spec = f.spec(false);
        let process = spec.process().as_ref().unwrap();
        assert_eq!(
            process.args().as_deref(),
            Some(&[AGENT_PATH_IN_SANDBOX.to_string()][..])
        );
        let env = process.env().clone().unwrap_or_default();
        let config = env
            .iter()
            .find_map(|kv| kv.strip_prefix(&format!("{}=", hutch_wire::AGENT_CONFIG_ENV)))
            .expect("the agent's config in its environment");
        let config: AgentConfig = serde_json::from_str(config).unwrap();
        assert_eq!(config.pids_limit, Some(77));
        let agent = mount(&spec, AGENT_PATH_IN_SANDBOX).unwrap();
        assert_eq!(
            agent.source().as_deref(),
            Some(f.dir.path().join("agent").as_path())
        );
        assert!(options(agent).contains(&"ro".to_string()));
        let socket = mount(&spec, hutch_wire::AGENT_SOCKET_DIR).unwrap();
        assert_eq!(
            socket.source().as_deref(),
            Some(f.dir.path().join("run").as_path())
        );
        // Nothing that reaches past gVisor's own kernel.
        let caps = process.capabilities().as_ref().unwrap();
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.clone().unwrap_or_default();
            assert!(!set.contains(&Capability::SysAdmin) && !set.contains(&Capability::NetAdmin));
            assert!(set.contains(&Capability::Setuid));
        }
    }

    #[test]
    fn tmp_is_runscs_tmpfs_unless_the_rootfs_keeps_it() {
        let f = Fixture::new();
        std::fs::create_dir(f.rootfs().join("tmp")).unwrap();
        assert!(mount(&f.spec(false), "/tmp").is_none());
        let spec = f.spec(true);
        let tmp = mount(&spec, "/tmp").expect("the rootfs's /tmp bound over /tmp");
        assert_eq!(
            tmp.source().as_deref(),
            Some(f.rootfs().join("tmp").as_path())
        );
        let opts = options(tmp);
        for o in ["bind", "rw", "nosuid", "nodev"] {
            assert!(opts.contains(&o.to_string()), "{opts:?}");
        }
    }

    #[test]
    fn a_tmp_symlink_in_the_image_is_resolved_inside_the_rootfs() {
        let f = Fixture::new();
        let rootfs = f.rootfs();
        std::fs::create_dir(rootfs.join("etc")).unwrap();
        // Image content: `/tmp -> /etc` must bind the image's `/etc`, not the host's.
        std::os::unix::fs::symlink("/etc", rootfs.join("tmp")).unwrap();
        let spec = f.spec(true);
        let tmp = mount(&spec, "/tmp").unwrap();
        assert_eq!(tmp.source().as_deref(), Some(rootfs.join("etc").as_path()));
        // A `/tmp` that is no directory in the image leaves runsc's tmpfs in place.
        std::fs::remove_file(rootfs.join("tmp")).unwrap();
        std::fs::write(rootfs.join("tmp"), b"").unwrap();
        assert!(mount(&f.spec(true), "/tmp").is_none());
        std::fs::remove_file(rootfs.join("tmp")).unwrap();
        std::os::unix::fs::symlink("/nowhere", rootfs.join("tmp")).unwrap();
        assert!(mount(&f.spec(true), "/tmp").is_none());
    }

    #[test]
    fn kernel_filesystems_are_mounted_nosuid() {
        let spec = Fixture::new().spec(false);
        // `/proc` is gVisor's own procfs, with the runtime spec's default (no options).
        assert!(mount(&spec, "/proc").is_some());
        for destination in ["/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"] {
            let Some(m) = mount(&spec, destination) else {
                panic!("no {destination} mount");
            };
            assert!(
                options(m).contains(&"nosuid".to_string()),
                "{destination}: {m:?}"
            );
        }
        for destination in ["/sys", "/dev/shm"] {
            let m = mount(&spec, destination).unwrap();
            assert!(
                options(m).contains(&"nodev".to_string()),
                "{destination}: {m:?}"
            );
        }
    }

    #[test]
    fn the_bundle_is_written_as_config_json() {
        let f = Fixture::new();
        let bundle = f.dir.path().join("bundle");
        write(&f.spec(false), &bundle).unwrap();
        let loaded = Spec::load(bundle.join("config.json")).unwrap();
        assert_eq!(loaded.hostname().as_deref(), Some("box"));
        assert_eq!(loaded, f.spec(false));
    }
}
