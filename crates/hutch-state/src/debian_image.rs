//! The Debian default image: what a create that names no image gets.
//!
//! Built offline from Debian's own packages with `mmdebstrap` (no registry, no Docker Hub):
//! a minbase bookworm with python3 (pip, venv), bash, coreutils, curl, wget, git,
//! ca-certificates, procps, iproute2 and unzip. The root filesystem is written as one tar
//! into the machine's cache (`$HUTCH_CACHE`, else `$XDG_CACHE_HOME/hutch`, else
//! `~/.cache/hutch`), named by a digest of the recipe, so every state directory on the machine
//! (and every test) imports the same bytes without downloading again. `SOURCE_DATE_EPOCH` is
//! fixed, so the same package versions give the same tar, byte for byte: the same layer
//! digest.
//!
//! The tar is imported into the store as a one-layer image through [`hutch_store::Ingest`]
//! (verified and unpacked by the store's own extraction, like any pulled layer).
//!
//! [`DefaultImages`] runs the build in the background the first time it is needed and
//! publishes its progress (phase by phase, from `mmdebstrap`'s own log) for the API and the
//! terminal.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use hutch_api::{DefaultImageStatus, ImageBuildState};
use hutch_store::{Digest, Image, IngestLayer, Store};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

/// The store name of the Debian image.
pub const DEBIAN_IMAGE: &str = "hutch/debian:bookworm";
const SUITE: &str = "bookworm";
/// What the image holds beyond minbase.
pub const PACKAGES: &[&str] = &[
    "bash",
    "ca-certificates",
    "coreutils",
    "curl",
    "git",
    "iproute2",
    "procps",
    "python3",
    "python3-pip",
    "python3-venv",
    "unzip",
    "wget",
];
/// 2024-01-01T00:00:00Z: every timestamp in the tar and the image config.
const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";
/// Bumped when the recipe changes in a way the inputs below do not show (2: the host's
/// resolv.conf and hostname no longer reach the image).
const RECIPE_VERSION: u32 = 2;

/// `mmdebstrap`'s progress lines, in order, and the phase each starts.
const PHASES: &[(&str, &str)] = &[
    ("running apt-get update", "update"),
    ("downloading packages", "download"),
    ("extracting archives", "extract"),
    ("installing essential packages", "install-essential"),
    ("installing remaining packages", "install"),
    ("cleaning package lists", "clean"),
    ("creating tarball", "pack"),
];
/// The phases above, plus the import into the store.
pub const STEPS: u32 = PHASES.len() as u32 + 1;

#[derive(Debug, thiserror::Error)]
pub enum DebianImageError {
    #[error(
        "cannot build the default Debian image: mmdebstrap is not installed \
         (install it with: apt-get install -y mmdebstrap)"
    )]
    NoMmdebstrap,
    #[error("mmdebstrap failed ({status}); its last lines:\n{tail}")]
    Mmdebstrap { status: String, tail: String },
    #[error(
        "the Debian mirror {mirror:?} is not a plain http(s) URL without credentials; the \
         mirror is written into the image every sandbox reads (set HUTCH_DEBIAN_MIRROR)"
    )]
    Mirror { mirror: String },
    #[error(
        "the image cache {path} may be written by another user: it must be owned by this \
         user and not group- or world-writable (set HUTCH_CACHE to a private directory)"
    )]
    Untrusted { path: String },
    #[error("building the default Debian image: {0}")]
    Io(#[from] std::io::Error),
    #[error("importing the default Debian image: {0}")]
    Store(#[from] hutch_store::StoreError),
}

/// The inputs that decide the image's bytes.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub mirror: String,
    pub packages: Vec<String>,
}

impl Recipe {
    /// The recipe this build of Hutch makes, from the mirror apt already uses
    /// (`$HUTCH_DEBIAN_MIRROR` overrides it).
    pub fn current() -> Self {
        Self {
            mirror: std::env::var("HUTCH_DEBIAN_MIRROR")
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(detect_mirror),
            packages: PACKAGES.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// The mirror goes into the image's `sources.list`, which every sandbox reads: one that
    /// carries credentials (`http://user:secret@host/`) is refused, never baked in.
    fn check(&self) -> Result<(), DebianImageError> {
        let after_scheme = self.mirror.split_once("://").map_or("", |(_, rest)| rest);
        let authority = after_scheme.split('/').next().unwrap_or_default();
        if authority.contains('@') || !self.mirror.starts_with("http") {
            return Err(DebianImageError::Mirror {
                mirror: redact(&self.mirror),
            });
        }
        Ok(())
    }

    /// The cache file name: suite and a digest of every input.
    fn file_name(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!(
            "v{RECIPE_VERSION}\n{SUITE}\n{EPOCH}\n{}\n{}",
            self.mirror,
            self.packages.join(",")
        ));
        format!("debian-{SUITE}-{}.tar", &hex::encode(h.finalize())[..16])
    }
}

/// `mirror` with whatever sits between `://` and `@` replaced, for error messages.
fn redact(mirror: &str) -> String {
    match (mirror.split_once("://"), mirror.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…{}", &mirror[at..]),
        _ => mirror.to_string(),
    }
}

/// The first `deb` URI apt uses for bookworm, else Debian's CDN.
fn detect_mirror() -> String {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    for stanza in deb822.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|s| s == SUITE)
            && let Some(uri) = field("URIs:").and_then(|u| u.split_whitespace().next())
        {
            return uri.to_string();
        }
    }
    let list = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    for line in list.lines() {
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        if words.len() >= 3 && words[0] == "deb" && words[2] == SUITE {
            return words[1].to_string();
        }
    }
    "http://deb.debian.org/debian".into()
}

/// The machine-wide cache of built root filesystems.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("HUTCH_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("hutch")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/hutch")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/hutch"))
        .join("images")
}

/// A phase reached: its name and how many came before it.
pub type OnPhase<'a> = &'a mut dyn FnMut(&str, u32, bool);

/// The cached root filesystem tar for `recipe`, made with `mmdebstrap` if the cache lacks it.
/// Calls `on_phase(name, step, cached)` as the build goes. Safe against other processes
/// building the same tar at once (they wait on a lock and reuse it).
pub fn ensure_tarball(recipe: &Recipe, on_phase: OnPhase<'_>) -> Result<PathBuf, DebianImageError> {
    recipe.check()?;
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    // What is cached becomes every sandbox's root: only files this user alone can write.
    for d in [dir.parent().unwrap_or(&dir), dir.as_path()] {
        if !trusted(d) {
            return Err(DebianImageError::Untrusted {
                path: d.display().to_string(),
            });
        }
    }
    let tar = dir.join(recipe.file_name());
    let cached = |tar: &Path| tar.is_file() && trusted(tar);
    if cached(&tar) {
        on_phase("pack", STEPS - 1, true);
        return Ok(tar);
    }
    let lock = File::create(dir.join(format!("{}.lock", recipe.file_name())))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if cached(&tar) {
        on_phase("pack", STEPS - 1, true);
        return Ok(tar);
    }
    // A build killed mid-way (the server with it) left its chroot, perhaps with /proc and
    // /sys still mounted in it: gone before the next one starts.
    let work = dir.join("work");
    sweep(&work)?;
    std::fs::create_dir_all(&work)?;
    let partial = dir.join(format!("{}.partial", recipe.file_name()));
    let _ = std::fs::remove_file(&partial);
    let result = run_mmdebstrap(recipe, &partial, &work, on_phase);
    let _ = sweep(&work);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &tar)?;
    prune_others(&dir, &recipe.file_name());
    drop(lock);
    Ok(tar)
}

/// Removes the cached tars (and their locks) of other recipes: one 300 MB tar per recipe
/// Hutch ever used would grow the cache without bound.
fn prune_others(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!("debian-{SUITE}-"))
            && (name.ends_with(".tar") || name.ends_with(".tar.lock"));
        if ours && !name.starts_with(keep) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `path` is owned by this user and nobody else may write it (a file someone else
/// could replace would become every sandbox's root filesystem).
fn trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.uid() == me && m.mode() & 0o022 == 0 && !m.file_type().is_symlink())
}

/// Removes `work` (what builds leave in it), unmounting whatever is mounted below first and
/// never crossing into another filesystem.
fn sweep(work: &Path) -> std::io::Result<()> {
    if !work.exists() {
        return Ok(());
    }
    let prefix = format!("{}/", work.display());
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in mounts {
        let c = std::ffi::CString::new(mount).map_err(std::io::Error::other)?;
        // SAFETY: a NUL-terminated path; MNT_DETACH unmounts even if busy.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    std::fs::remove_dir_all(work)
}

/// How long a build may take before it is killed (a mirror that stops answering).
const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

fn run_mmdebstrap(
    recipe: &Recipe,
    out: &Path,
    work: &Path,
    on_phase: OnPhase<'_>,
) -> Result<(), DebianImageError> {
    let mut command = Command::new("mmdebstrap");
    // SAFETY: prctl is async-signal-safe; the build dies with the process that started it,
    // and its chroot (in `work`) is swept by the next build.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        // mmdebstrap makes its chroot under $TMPDIR.
        .env("TMPDIR", work)
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .env("LC_ALL", "C.UTF-8")
        .args(["--variant=minbase", "--mode=root", "--format=tar"])
        // Device nodes are the runtime's business; a layer with them cannot be unpacked
        // without privileges.
        .arg("--skip=output/dev")
        // mmdebstrap copies the host's resolv.conf and hostname in for the build and leaves
        // them: the host's resolvers and name are not the sandboxes' business.
        .arg(r#"--customize-hook=printf '' > "$1/etc/resolv.conf"; echo localhost > "$1/etc/hostname""#)
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(SUITE)
        .arg(out)
        .arg(&recipe.mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DebianImageError::NoMmdebstrap,
            _ => e.into(),
        })?;
    // A build that hangs (a mirror that stops answering) is killed, and fails.
    let pid = child.id() as i32;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = Arc::clone(&done);
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + BUILD_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if watchdog.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        if !watchdog.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: kill(2) of the child this function spawned and has not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let mut tail = std::collections::VecDeque::with_capacity(30);
    if let Some(stderr) = child.stderr.take() {
        // Lines bounded: a runaway line is cut, never buffered whole.
        let mut reader = BufReader::new(stderr.take(u64::MAX));
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader).take(8192).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(msg) = text.strip_prefix("I: ")
                && let Some(step) = PHASES.iter().position(|(p, _)| msg.starts_with(p))
            {
                tracing::info!(phase = PHASES[step].1, "default image: {msg}");
                on_phase(PHASES[step].1, step as u32, false);
            }
            if tail.len() == 30 {
                tail.pop_front();
            }
            tail.push_back(text);
        }
    }
    let status = child.wait()?;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    if !status.success() {
        return Err(DebianImageError::Mmdebstrap {
            status: status.to_string(),
            tail: Vec::from(tail).join("\n"),
        });
    }
    Ok(())
}

/// Makes the Debian image `name` in `store` with this build's recipe: the cached tar (or a
/// new one), then its import, calling `on_phase` for each phase (the last is `import`).
pub fn build(store: &Store, name: &str, on_phase: OnPhase<'_>) -> Result<Image, DebianImageError> {
    let tar = ensure_tarball(&Recipe::current(), on_phase)?;
    on_phase("import", STEPS - 1, false);
    import(store, &tar, name)
}

/// Imports the root filesystem tar at `tar` into `store` as the one-layer image `name`.
pub fn import(store: &Store, tar: &Path, name: &str) -> Result<Image, DebianImageError> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(tar)?, &mut hasher)?;
    let layer = Digest::from_hex(&hex::encode(hasher.finalize()))?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["bash"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
        "history": [{
            "created": CREATED,
            "created_by": format!("hutch: mmdebstrap --variant=minbase {SUITE} + {}", PACKAGES.join(",")),
            // Which recipe made it: an image of an older recipe is made again.
            "comment": recipe_mark(tar),
        }],
    });
    let config = hutch_store::canonical_json(&config).map_err(std::io::Error::from)?;
    let config_digest = Digest::of_bytes(&config);
    let size = std::fs::metadata(tar)?.len();
    let manifest = hutch_store::canonical_json(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.to_string(),
            "size": size,
        }],
    }))
    .map_err(std::io::Error::from)?;
    let manifest_digest = Digest::of_bytes(&manifest);
    let ingest = store.ingest()?;
    ingest.add_bytes(&config, &config_digest, "config of the default image")?;
    ingest.add_bytes(&manifest, &manifest_digest, "manifest of the default image")?;
    if !store.has_layer(&layer) {
        ingest.add_layer(
            File::open(tar)?,
            &layer,
            Some(size),
            &layer,
            "root filesystem of the default image",
        )?;
    }
    let image = ingest.commit(
        name,
        &manifest_digest,
        &config_digest,
        &[IngestLayer {
            diff_id: layer.clone(),
            blob: layer,
        }],
    )?;
    Ok(image)
}

/// The mark an image made from the tar `tar` carries in its config: the tar's name, which
/// is the digest of its recipe.
fn recipe_mark(tar: &Path) -> String {
    format!(
        "hutch recipe {}",
        tar.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Whether the store's `name` is the Debian image of this build's recipe: one imported by
/// an older Hutch (another recipe, say one that kept the host's resolv.conf) is not, and is
/// made again.
pub fn is_current(store: &Store, name: &str) -> bool {
    let Ok(image) = store.image(name) else {
        return false;
    };
    let mark = recipe_mark(Path::new(&Recipe::current().file_name()));
    std::fs::read_to_string(store.blob_file(&image.id)).is_ok_and(|config| config.contains(&mark))
}

/// The default image of a server, built in the background when the store lacks it.
pub struct DefaultImages {
    store: Store,
    /// The store name creates that name no image get.
    name: String,
    status: watch::Sender<DefaultImageStatus>,
    building: std::sync::Mutex<bool>,
}

impl DefaultImages {
    /// `name` is the configured default image; only [`DEBIAN_IMAGE`] is built here (any
    /// other must be in the store, pulled or imported).
    pub fn new(store: Store, name: String) -> Arc<Self> {
        let ready = if name == DEBIAN_IMAGE {
            is_current(&store, &name)
        } else {
            store.image(&name).is_ok()
        };
        let status = DefaultImageStatus {
            image: name.clone(),
            state: if ready {
                ImageBuildState::Ready
            } else {
                ImageBuildState::Failed
            },
            phase: None,
            step: if ready { STEPS } else { 0 },
            steps: STEPS,
            cached: ready,
            started_at: None,
            finished_at: None,
            error: (!ready).then(|| format!("image {name:?} is not in the store")),
        };
        Arc::new(Self {
            store,
            name,
            status: watch::channel(status).0,
            building: std::sync::Mutex::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> DefaultImageStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<DefaultImageStatus> {
        self.status.subscribe()
    }

    /// Whether `name` is the default image and this server can build it.
    pub fn builds(&self, name: &str) -> bool {
        name == self.name && name == DEBIAN_IMAGE
    }

    /// Whether the default image is in the store as this build makes it.
    pub fn current(&self) -> bool {
        if self.builds(&self.name) {
            is_current(&self.store, &self.name)
        } else {
            self.store.image(&self.name).is_ok()
        }
    }

    /// Starts the build unless the image is there or a build runs.
    pub fn start(self: &Arc<Self>) {
        if !self.builds(&self.name) || self.current() {
            return;
        }
        {
            let mut building = self.building.lock().unwrap_or_else(|p| p.into_inner());
            if *building {
                return;
            }
            *building = true;
        }
        let started = crate::now_ms();
        self.status.send_modify(|s| {
            s.state = ImageBuildState::Building;
            s.phase = Some("update".into());
            s.step = 0;
            s.cached = false;
            s.started_at = Some(started);
            s.finished_at = None;
            s.error = None;
        });
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let result = this.build();
            let finished = crate::now_ms();
            match &result {
                Ok(image) => tracing::info!(
                    image = %image.name,
                    ms = finished - started,
                    "default image ready"
                ),
                Err(e) => tracing::error!(error = %e, "building the default image"),
            }
            this.status.send_modify(|s| {
                s.finished_at = Some(finished);
                s.phase = None;
                match result {
                    Ok(_) => {
                        s.state = ImageBuildState::Ready;
                        s.step = STEPS;
                    }
                    Err(e) => {
                        s.state = ImageBuildState::Failed;
                        s.error = Some(e.to_string());
                    }
                }
            });
            *this.building.lock().unwrap_or_else(|p| p.into_inner()) = false;
        });
    }

    fn build(&self) -> Result<Image, DebianImageError> {
        let status = &self.status;
        build(&self.store, &self.name, &mut |phase, step, cached| {
            status.send_modify(|s| {
                s.phase = Some(phase.into());
                s.step = step;
                s.cached |= cached;
            });
        })
    }

    /// Waits until the default image is in the store, starting its build if needed. The
    /// error is the build's.
    pub async fn ready(self: &Arc<Self>) -> Result<(), String> {
        if self.current() {
            return Ok(());
        }
        if !self.builds(&self.name) {
            return Err(format!("image {:?} is not in the store", self.name));
        }
        let mut status = self.subscribe();
        // A build that failed before is tried again by whoever needs the image next.
        if status.borrow().state != ImageBuildState::Building {
            self.start();
        }
        loop {
            {
                let s = status.borrow_and_update();
                match s.state {
                    ImageBuildState::Ready => return Ok(()),
                    ImageBuildState::Failed => {
                        return Err(s.error.clone().unwrap_or_else(|| "build failed".into()));
                    }
                    ImageBuildState::Building => {}
                }
            }
            if status.changed().await.is_err() {
                return Err("the default image build stopped".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_name_follows_every_input() {
        let a = Recipe {
            mirror: "http://deb.debian.org/debian".into(),
            packages: vec!["python3".into()],
        };
        let mut b = a.clone();
        assert_eq!(a.file_name(), b.file_name());
        b.packages.push("git".into());
        assert_ne!(a.file_name(), b.file_name());
        let mut c = a.clone();
        c.mirror = "http://mirror.example/debian".into();
        assert_ne!(a.file_name(), c.file_name());
        assert!(a.file_name().starts_with("debian-bookworm-"));
    }

    #[test]
    fn a_mirror_with_credentials_is_refused_and_not_echoed() {
        let recipe = |mirror: &str| Recipe {
            mirror: mirror.into(),
            packages: vec![],
        };
        assert!(recipe("http://deb.debian.org/debian").check().is_ok());
        assert!(recipe("https://mirror.example/debian").check().is_ok());
        let err = recipe("http://user:s3cret@mirror.example/debian")
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mirror.example") && !err.contains("s3cret"),
            "{err}"
        );
        assert!(recipe("file:///srv/debian").check().is_err());
        // Refused before anything runs or is written.
        let mut phases = 0;
        assert!(
            ensure_tarball(&recipe("http://a:b@mirror.example/d"), &mut |_, _, _| {
                phases += 1
            })
            .is_err()
        );
        assert_eq!(phases, 0);
    }

    #[test]
    fn only_files_this_user_alone_may_write_are_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("x.tar");
        std::fs::write(&tar, b"").unwrap();
        std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(trusted(&tar));
        std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            !trusted(&tar),
            "a world-writable tar could be anyone's image"
        );
        std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(!trusted(&tar));
        let link = dir.path().join("link.tar");
        std::os::unix::fs::symlink(&tar, &link).unwrap();
        assert!(!trusted(&link));
    }

    #[test]
    fn a_new_recipe_s_tar_replaces_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "debian-bookworm-old.tar",
            "debian-bookworm-old.tar.lock",
            "debian-bookworm-new.tar",
            "debian-bookworm-new.tar.lock",
            "unrelated.tar",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        prune_others(dir.path(), "debian-bookworm-new.tar");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "debian-bookworm-new.tar",
                "debian-bookworm-new.tar.lock",
                "unrelated.tar"
            ]
        );
    }

    #[test]
    fn a_killed_build_leaves_nothing_mounted_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let proc_dir = work.join("mmdebstrap.x").join("proc");
        std::fs::create_dir_all(&proc_dir).unwrap();
        let target = std::ffi::CString::new(proc_dir.to_str().unwrap()).unwrap();
        // SAFETY: mounting a tmpfs on a directory this test made.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "tests run as root");
        std::fs::write(proc_dir.join("f"), b"x").unwrap();
        sweep(&work).unwrap();
        assert!(!work.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(work.to_str().unwrap()));
    }

    #[test]
    fn a_missing_image_is_not_ready_and_another_name_is_not_built() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let images = DefaultImages::new(store, "someone/else:1".into());
        assert_eq!(images.status().state, ImageBuildState::Failed);
        assert!(!images.builds("someone/else:1"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(images.ready()).unwrap_err();
        assert!(err.contains("not in the store"), "{err}");
    }
}
