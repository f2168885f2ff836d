//! `hutch-bench-seed`: the SDK's template build flow against `hutch serve`, beside a direct
//! `hutch image build` of the same Dockerfile, from the same run.
//!
//! The flow is `tensorlake::sandbox_images::build_sandbox_image` (crate 0.5.160, `cas: false`)
//! against a fresh `hutch serve`: prepare, a builder sandbox, the context uploaded and untarred
//! in it, `tl-rootfs-build` handing the build to the host engine, complete. The floor is the
//! engine alone (`hutch image build`) into a fresh store. Both cold (the base pulled from a
//! local `docker-registry`), then again with every step cached, which leaves the flow's own
//! cost.
//!
//! usage: hutch-bench-seed [HUTCH_BINARY]; N from HUTCH_BENCH_N (default 3).

#[path = "../cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../python_app.rs"]
mod python_app;
#[path = "../registry.rs"]
mod registry;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use python_app::hutch_build;
use registry::{Registry, timed};
use stats::{Samples, ms, ratio};
use tensorlake::sandbox_images::{CommonBuildOptions, SandboxImageBuildOptions};

struct Serve {
    child: Child,
    api: String,
}

impl Serve {
    fn start(hutch: &Path, home: &Path, registry: &str) -> anyhow::Result<Self> {
        let (api_port, proxy_port) = (cli::free_port()?, cli::free_port()?);
        let log = std::fs::File::create(home.join("serve.log"))?;
        let child = Command::new(hutch)
            .env("HUTCH_HOME", home)
            .env("HUTCH_DEFAULT_IMAGE", "hutch/minimal")
            .env("HUTCH_INSECURE_REGISTRIES", registry)
            .args(["serve", "--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--proxy-listen", &format!("127.0.0.1:{proxy_port}")])
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting hutch serve")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", api_port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "hutch serve did not start; see {}/serve.log",
                    home.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            api: format!("http://localhost:{api_port}"),
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

async fn seed_build(api: &str, name: &str, context: &Path) -> anyhow::Result<Duration> {
    let options = SandboxImageBuildOptions {
        common: CommonBuildOptions {
            api_url: api.to_string(),
            bearer_token: String::new(),
            use_scope_headers: false,
            organization_id: None,
            project_id: None,
            namespace: "default".into(),
            registered_name: Some(name.into()),
            disk_mb: None,
            builder_disk_mb: None,
            cpus: None,
            memory_mb: None,
            is_public: false,
            cas: false,
            user_agent: None,
            docker_compat: false,
        },
        dockerfile_path: context.join("Dockerfile"),
        dockerfile_text: None,
        context_dir: None,
        context_files: Vec::new(),
        build_args: Vec::new(),
    };
    let start = Instant::now();
    tensorlake::sandbox_images::build_sandbox_image(options, Some("{}".into()), |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("the seed flow failed: {e}"))?;
    Ok(start.elapsed())
}

fn main() -> anyhow::Result<()> {
    let hutch = cli::hutch_binary();
    let n = cli::iterations(3);
    let registry = Registry::start()?;
    let host = format!("127.0.0.1:{}", registry.port);
    registry.push(&cli::fixtures_dir().join("debian"), "debian:1")?;
    let context = tempfile::tempdir()?;
    python_app::write_context(context.path(), &host)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    eprintln!("hutch-bench-seed: {n} rounds, alternating");
    let (mut cold, mut cold_floor) = (Samples::default(), Samples::default());
    let (mut cached, mut cached_floor) = (Samples::default(), Samples::default());
    for i in 0..n {
        // Which side goes first alternates, so neither always finds caches warm.
        for side in [i % 2, (i + 1) % 2] {
            if side == 0 {
                let home = tempfile::Builder::new()
                    .prefix("hbseed")
                    .tempdir_in("/tmp")?;
                let serve = Serve::start(&hutch, home.path(), &host)?;
                let name = format!("py-{i}");
                cold.push(rt.block_on(seed_build(&serve.api, &name, context.path()))?);
                cached.push(rt.block_on(seed_build(&serve.api, &name, context.path()))?);
            } else {
                let home = tempfile::Builder::new()
                    .prefix("hbseedf")
                    .tempdir_in("/tmp")?;
                cold_floor.push(timed(&mut hutch_build(
                    &hutch,
                    home.path(),
                    &host,
                    context.path(),
                ))?);
                cached_floor.push(timed(&mut hutch_build(
                    &hutch,
                    home.path(),
                    &host,
                    context.path(),
                ))?);
            }
        }
    }

    println!("### Template builds through the SDK (Debian + python Dockerfile)\n");
    println!(
        "| Figure | N | Seed flow median | `hutch image build` median | Ratio | Flow's own cost |"
    );
    println!("|---|---|---|---|---|---|");
    for (what, ours, floor) in [
        ("Cold (base pulled into an empty store)", &cold, &cold_floor),
        (
            "Every step cached (rebuild of the same name)",
            &cached,
            &cached_floor,
        ),
    ] {
        let (o, f) = (ours.median(), floor.median());
        let cost = if o >= f {
            ms(o - f)
        } else {
            format!("-{}", ms(f - o))
        };
        println!(
            "| {what} | {n} | {} | {} | {:.2} | {cost} |",
            ms(o),
            ms(f),
            ratio(o, f)
        );
    }
    println!(
        "\nThe seed flow: `tensorlake::sandbox_images::build_sandbox_image` (0.5.160, cas: false) against a fresh `hutch serve`: prepare, builder sandbox, context upload and untar, `tl-rootfs-build` over the build channel to the host engine, metadata, complete, builder deleted. Floor: the same engine through `hutch image build` into a fresh store."
    );
    Ok(())
}
