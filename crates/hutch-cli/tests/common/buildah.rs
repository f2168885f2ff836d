//! The Dockerfile build corpus and its reference builder. `fixtures/builds/*` are cases that
//! must build (a `Dockerfile`, its context, and optionally `build-args`), `fixtures/builds-bad/*`
//! cases that must fail (`expected.txt` says how); see `fixtures/builds/README.md`.
//! `buildah_build` builds a case with `buildah bud --isolation chroot`, its bases pulled from a
//! test `Registry`, and unpacks the result with `umoci`: what a trusted builder makes of the
//! same inputs, to compare Hutch's build with.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::registry::Registry;
use super::workspace;

/// An image built by buildah, unpacked.
pub struct Built {
    /// The root filesystem as `umoci unpack` lays it out (whiteouts applied, owners kept).
    pub rootfs: PathBuf,
    /// The `config` object of the OCI image config: `Env`, `WorkingDir`, `User`, `Entrypoint`,
    /// `Cmd` (and `ExposedPorts`, `Labels`, ... which the comparison leaves out).
    pub config: serde_json::Value,
    /// The built image as an OCI layout, tag `latest` (one layer per RUN, COPY and ADD).
    pub image: PathBuf,
    /// What `buildah bud` printed (warnings included).
    pub log: String,
    _dir: tempfile::TempDir,
}

/// Where a bad case must fail: `expected.txt` holds `line: N` and `error: SUBSTRING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// 1-based line of the Dockerfile the error must name.
    pub line: usize,
    /// Text the error message must contain.
    pub error: String,
}

/// The cases that must build: the directories under `fixtures/builds`, in name order.
/// `$HUTCH_CORPUS_ONLY` (comma-separated substrings of case names) narrows them, for work on a
/// few cases.
pub fn cases() -> Vec<PathBuf> {
    let mut cases = case_dirs(&workspace().join("fixtures/builds"));
    if let Some(only) = corpus_filter() {
        cases.retain(|c| {
            let name = c.file_name().unwrap().to_string_lossy();
            only.iter().any(|o| name.contains(o.as_str()))
        });
    }
    cases
}

/// The substrings `$HUTCH_CORPUS_ONLY` lists, if set.
pub fn corpus_filter() -> Option<Vec<String>> {
    let only = std::env::var("HUTCH_CORPUS_ONLY").ok()?;
    Some(
        only.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    )
}

/// The cases that must fail: the directories under `fixtures/builds-bad`, in name order.
pub fn bad_cases() -> Vec<PathBuf> {
    case_dirs(&workspace().join("fixtures/builds-bad"))
}

fn case_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The `--build-arg`s a case is built with besides `REGISTRY`: the `KEY=VALUE` lines of its
/// `build-args` file (blank lines and `#` comments skipped), none if it has no such file.
pub fn case_build_args(case_dir: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(case_dir.join("build-args")) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{}/build-args: no `=` in {l:?}", case_dir.display()));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The environment variable `env=` secrets of the corpus read, and its value: set for both
/// builders.
pub const SECRET_ENV: (&str, &str) = ("HUTCH_CORPUS_SECRET", "an env secret: s3cr3t-env");

/// The `--secret` values a case is built with: the lines of its `secrets` file,
/// `id=ID,src=FILE` (FILE relative to the case directory, given to the builder under `root`,
/// where that builder sees the case) or `id=ID,env=VAR`; none if it has no such file.
pub fn case_secrets(case_dir: &Path, root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(case_dir.join("secrets")) else {
        return Vec::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.split(',')
                .map(|part| match part.strip_prefix("src=") {
                    Some(file) => format!("src={}", root.join(file).display()),
                    None => part.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// The `expected.txt` of a bad case.
pub fn expected_failure(case_dir: &Path) -> Expected {
    let path = case_dir.join("expected.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{}: no `{name}` line", path.display()))
            .to_owned()
    };
    Expected {
        line: field("line:")
            .parse()
            .unwrap_or_else(|e| panic!("{}: bad line number: {e}", path.display())),
        error: field("error:"),
    }
}

/// Builds `case_dir` (its `Dockerfile`, the directory as context) with `buildah bud --isolation
/// chroot --layers`, bases pulled over plain HTTP from `registry`, `--build-arg
/// REGISTRY=<host>` plus `args`; pushes the result to an OCI layout and `umoci unpack`s it.
/// Panics with buildah's output if the build fails.
pub fn buildah_build(case_dir: &Path, registry: &Registry, args: &[(&str, &str)]) -> Built {
    try_buildah_build(case_dir, registry, args)
        .unwrap_or_else(|log| panic!("buildah bud {} failed:\n{log}", case_dir.display()))
}

/// `buildah_build`, with `Err(buildah's output)` when `buildah bud` fails. Every call has a
/// storage of its own (removed before returning), so concurrent calls never meet.
pub fn try_buildah_build(
    case_dir: &Path,
    registry: &Registry,
    args: &[(&str, &str)],
) -> Result<Built, String> {
    // containers-storage refuses some characters in its paths; a tempdir name has none.
    let dir = tempfile::Builder::new()
        .prefix("hutch-buildah")
        .tempdir_in("/tmp")
        .unwrap();
    let storage = Storage::create(dir.path(), Reference::for_case(case_dir));
    // Paths as the buildah in use sees them: the case is /work in the trixie tree.
    let case_path = |p: &Path| -> PathBuf {
        match storage.reference {
            Reference::Bookworm => p.to_path_buf(),
            Reference::Trixie => Path::new("/work").join(p.strip_prefix(case_dir).unwrap()),
        }
    };
    let log_path = dir.path().join("bud.log");
    let log = File::create(&log_path).unwrap();
    let mut bud = storage.buildah(case_dir);
    bud.args([
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--format",
        "oci",
        "--pull",
    ])
    .args(["--tls-verify=false", "--identity-label=false"])
    // Without these, RUN leaves /etc/hosts and /etc/resolv.conf behind as well.
    .args(["--no-hosts", "--dns=none"])
    .arg("--authfile")
    .arg(storage.inner("auth.json"))
    .arg("--signature-policy")
    .arg(storage.inner("policy.json"))
    .arg("--build-arg")
    .arg(format!("REGISTRY={}", registry.host()));
    if storage.reference == Reference::Trixie {
        // RUN steps share the host's network (as buildah 1.28's chroot isolation does), and
        // get limits within the test's own (1.39 would raise them to 1048576, refused here).
        bud.args(["--network", "host"]).args([
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]);
    }
    for (key, value) in args {
        bud.arg("--build-arg").arg(format!("{key}={value}"));
    }
    for secret in case_secrets(case_dir, &case_path(case_dir)) {
        bud.arg("--secret").arg(secret);
    }
    bud.env(SECRET_ENV.0, SECRET_ENV.1);
    let status = bud
        .arg("-f")
        .arg(case_path(&case_dir.join("Dockerfile")))
        .args(["-t", IMAGE_NAME])
        .arg(case_path(case_dir))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("running buildah (apt-get install buildah)");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        return Err(format!("{status}\n{log}"));
    }

    let image = dir.path().join("image");
    let out = storage
        .buildah(case_dir)
        .args(["push", "--quiet", "--signature-policy"])
        .arg(storage.inner("policy.json"))
        .arg(IMAGE_NAME)
        .arg(format!("oci:{}:latest", storage.inner("image").display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "buildah push: {}",
        super::stderr(&out)
    );
    // Pushed inside the storage directory (which the trixie buildah sees as /storage):
    // moved beside it before the storage goes.
    std::fs::rename(storage.dir.join("image"), &image).unwrap();
    drop(storage);

    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", image.display()))
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .expect("running umoci (apt-get install umoci)");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        super::stderr(&out)
    );
    let config = image_config(&image)["config"].clone();
    Ok(Built {
        rootfs: bundle.join("rootfs"),
        config,
        image,
        log,
        _dir: dir,
    })
}

const IMAGE_NAME: &str = "localhost/hutch-build-case:latest";

/// A private containers-storage (overlay driver, as `fixtures/oracle.sh` uses) and private
/// registries, policy and auth files, so nothing of the host's configuration or images takes
/// part. Dropping it removes the storage, unmounting whatever buildah left mounted there (a
/// failed `bud` leaves its containers' overlays and the driver's own bind mount).
struct Storage {
    dir: PathBuf,
    reference: Reference,
}

/// Which buildah: Debian 12's (1.28), or Debian 13's (1.39) from the trixie tree
/// `fixtures/buildah-trixie.sh` makes, for the cases 1.28 cannot build (a case says so with a
/// `needs-buildah-1.39` file). The newer one runs chrooted into that tree, in a mount
/// namespace of its own, with the storage directory at `/storage` and the case at `/work`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    Bookworm,
    Trixie,
}

impl Reference {
    pub fn for_case(case_dir: &Path) -> Self {
        if case_dir.join("needs-buildah-1.39").exists() {
            Reference::Trixie
        } else {
            Reference::Bookworm
        }
    }
}

/// The trixie tree with buildah 1.39 (made by `make fixtures`).
pub fn trixie_tree() -> PathBuf {
    super::fixtures().join("buildah-trixie")
}

impl Storage {
    /// A path of the storage directory as the buildah in use sees it.
    fn inner(&self, name: &str) -> PathBuf {
        match self.reference {
            Reference::Bookworm => self.dir.join(name),
            Reference::Trixie => Path::new("/storage").join(name),
        }
    }

    fn create(parent: &Path, reference: Reference) -> Storage {
        let dir = parent.join("storage");
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        let inner = |name: &str| match reference {
            Reference::Bookworm => dir.join(name),
            Reference::Trixie => Path::new("/storage").join(name),
        };
        write(
            "storage.conf",
            format!(
                "[storage]\ndriver = \"{}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                // Overlay on overlay is refused inside the tree's namespace: vfs there.
                if reference == Reference::Trixie {
                    "vfs"
                } else {
                    "overlay"
                },
                inner("root").display(),
                inner("run").display()
            ),
        );
        // No search registries: a short name (a misspelt stage) fails at once instead of
        // trying docker.io.
        write(
            "registries.conf",
            "unqualified-search-registries = []\n".into(),
        );
        write(
            "policy.json",
            r#"{"default": [{"type": "insecureAcceptAnything"}]}"#.into(),
        );
        write("auth.json", "{}".into());
        Storage { dir, reference }
    }

    /// `buildah` with this storage (and, for the trixie one, `case_dir` at `/work`).
    fn buildah(&self, case_dir: &Path) -> Command {
        let mut cmd = match self.reference {
            Reference::Bookworm => Command::new("buildah"),
            Reference::Trixie => {
                let tree = trixie_tree();
                assert!(
                    tree.join("usr/bin/buildah").exists(),
                    "{} has no buildah: run `make fixtures`",
                    tree.display()
                );
                let mut cmd = Command::new("unshare");
                cmd.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "set -e; t=\"$1\"; shift; \
                         mount --bind \"$t\" \"$t\"; mount --bind /proc \"$t/proc\"; \
                         mount --rbind /dev \"$t/dev\"; mount --rbind /sys \"$t/sys\"; \
                         mkdir -p \"$t/storage\" \"$t/work\"; \
                         mount --bind \"$1\" \"$t/storage\"; mount --bind \"$2\" \"$t/work\"; \
                         shift 2; exec chroot \"$t\" buildah \"$@\"",
                    )
                    .arg("sh")
                    .arg(&tree)
                    .arg(&self.dir)
                    .arg(case_dir);
                cmd
            }
        };
        cmd.arg("--root")
            .arg(self.inner("root"))
            .arg("--runroot")
            .arg(self.inner("run"))
            .args([
                "--storage-driver",
                if self.reference == Reference::Trixie {
                    "vfs"
                } else {
                    "overlay"
                },
            ])
            .env("CONTAINERS_STORAGE_CONF", self.inner("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.inner("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.inner("auth.json"))
            .env("TMPDIR", self.inner("tmp"));
        cmd
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        // Removes the working containers a failed build left, and unmounts their overlays.
        let dir = self.dir.clone();
        let _ = self
            .buildah(&dir)
            .args(["rm", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Field 5 is the mount point, octal-escaped; these paths have nothing to escape.
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by(|a, b| b.cmp(a));
    for point in points {
        let c_path = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH cannot fail on a busy mount.
        unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The image config (the JSON blob the manifest names) of the one image in an OCI layout.
fn image_config(layout: &Path) -> serde_json::Value {
    let blob = |digest: &serde_json::Value| -> serde_json::Value {
        let digest = digest.as_str().expect("a digest string");
        let (algorithm, hex) = digest.split_once(':').expect("algorithm:hex");
        let path = layout.join("blobs").join(algorithm).join(hex);
        let bytes =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(&index["manifests"][0]["digest"]);
    blob(&manifest["config"]["digest"])
}
