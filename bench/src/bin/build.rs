//! `hutch-bench-build`: Dockerfile builds beside `buildah bud` from the same run.
//!
//! - Cold build of a Debian + python Dockerfile (base pulled from a local `docker-registry`
//!   into an empty store, four steps with two RUNs), against `buildah bud --isolation chroot
//!   --layers` into an empty storage. Goal: ≤ 1.2×.
//! - The fully cached rebuild, against its goal of 0.5 s (buildah's cached rebuild beside it).
//! - Storage: the bytes the built image adds to the store beside its base (its own layers),
//!   against a full copy of it (all its layers).
//!
//! usage: hutch-bench-build [HUTCH_BINARY]; N from HUTCH_BENCH_N (default 3).

#[path = "../cli.rs"]
mod cli;
#[path = "../registry.rs"]
mod registry;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use registry::Registry;
use stats::{Samples, ms, ratio};

const DOCKERFILE: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/debian:1
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY app.py settings.json ./
RUN python3 -c "import json; json.dump({'rows': list(range(1000))}, open('/app/data.json', 'w'))" && python3 app.py > /app/out.txt
RUN useradd -m runner && chown -R runner /app
USER runner
CMD ["python3", "/app/app.py"]
"#;

fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(start.elapsed())
}

/// A private buildah storage and configuration, removed (and unmounted) on drop.
struct Buildah {
    dir: tempfile::TempDir,
}

impl Buildah {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hbbuildah")
            .tempdir_in("/tmp")?;
        for d in ["root", "run", "tmp"] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.path().join("root").display(),
                dir.path().join("run").display()
            ),
        )?;
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
        )?;
        std::fs::write(dir.path().join("auth.json"), "{}")?;
        Ok(Self { dir })
    }

    fn bud(&self, registry: &str, context: &Path) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "overlay"])
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("TMPDIR", d.join("tmp"))
            .args([
                "bud",
                "--isolation",
                "chroot",
                "--layers",
                "--pull",
                "--tls-verify=false",
                "--no-hosts",
                "--dns=none",
                "--quiet",
            ])
            .arg("--authfile")
            .arg(d.join("auth.json"))
            .arg("--signature-policy")
            .arg(d.join("policy.json"))
            .arg("--build-arg")
            .arg(format!("REGISTRY={registry}"))
            .args(["-t", "bench:1"])
            .arg(context);
        cmd
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root/overlay"))
            .stderr(Stdio::null())
            .status();
    }
}

fn hutch_build(hutch: &Path, home: &Path, registry: &str, context: &Path) -> Command {
    let mut cmd = Command::new(hutch);
    cmd.env("HUTCH_HOME", home)
        .args([
            "image",
            "build",
            "--insecure-registry",
            registry,
            "-t",
            "bench:1",
        ])
        .arg("--build-arg")
        .arg(format!("REGISTRY={registry}"))
        .arg(context);
    cmd
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(path).output().ok();
    out.and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
    })
    .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let hutch = cli::hutch_binary();
    let n = cli::iterations(3);
    let fixtures = cli::fixtures_dir();
    let registry = Registry::start()?;
    let host = format!("127.0.0.1:{}", registry.port);
    registry.push(&fixtures.join("debian"), "debian:1")?;
    let context = tempfile::tempdir()?;
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE)?;
    std::fs::write(
        context.path().join("app.py"),
        "import json\nprint(len(json.load(open('/app/data.json'))['rows']))\n",
    )?;
    std::fs::write(context.path().join("settings.json"), "{\"debug\": false}\n")?;

    eprintln!("hutch-bench-build: {n} cold builds each, alternating");
    let (mut cold, mut cold_floor) = (Samples::default(), Samples::default());
    let (mut cached, mut cached_floor) = (Samples::default(), Samples::default());
    let mut storage = (0u64, 0u64);
    for i in 0..n {
        let home = tempfile::Builder::new()
            .prefix("hbbuild")
            .tempdir_in("/tmp")?;
        cold.push(timed(&mut hutch_build(
            &hutch,
            home.path(),
            &host,
            context.path(),
        ))?);
        cached.push(timed(&mut hutch_build(
            &hutch,
            home.path(),
            &host,
            context.path(),
        ))?);
        if i == 0 {
            // The built image's own layers, against all of its layers.
            let store = hutch_store::Store::open(&home.path().join("store"))?;
            let built = store.image("bench:1")?;
            let base = store.image(&format!("{host}/debian:1"))?;
            let own: u64 = built
                .layers
                .iter()
                .filter(|l| !base.layers.contains(l))
                .map(|l| du(&store.layer_dir(l)))
                .sum();
            let all: u64 = built.layers.iter().map(|l| du(&store.layer_dir(l))).sum();
            storage = (own, all);
        }
        let buildah = Buildah::new()?;
        cold_floor.push(timed(&mut buildah.bud(&host, context.path()))?);
        cached_floor.push(timed(&mut buildah.bud(&host, context.path()))?);
    }

    println!("### Builds (Debian + python Dockerfile, two RUNs)\n");
    println!("| Figure | N | Ours median | Floor median | Ratio | Goal | Met |");
    println!("|---|---|---|---|---|---|---|");
    let r = ratio(cold.median(), cold_floor.median());
    println!(
        "| Cold build (base pulled into an empty store) | {n} | {} | {} | {r:.2} | ≤ 1.2 | {} |",
        ms(cold.median()),
        ms(cold_floor.median()),
        if r <= 1.2 { "yes" } else { "**no**" }
    );
    let c = cached.median();
    println!(
        "| Fully cached rebuild | {n} | {} | {} | {:.2} | ≤ 500 ms | {} |",
        ms(c),
        ms(cached_floor.median()),
        ratio(c, cached_floor.median()),
        if c <= Duration::from_millis(500) {
            "yes"
        } else {
            "**no**"
        }
    );
    println!(
        "\nStorage: the built image adds {:.1} KiB of its own layers beside its base; a full copy of it is {:.1} MiB ({:.3}%).",
        storage.0 as f64 / 1024.0,
        storage.1 as f64 / (1 << 20) as f64,
        100.0 * storage.0 as f64 / storage.1.max(1) as f64
    );
    println!(
        "\nFloor: `buildah bud --isolation chroot --layers --pull` into an empty overlay storage (cold), then again (cached), bases from the same registry."
    );
    Ok(())
}
