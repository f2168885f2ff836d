//! `hutch-bench-build`: Dockerfile builds beside `buildah bud` from the same run.
//!
//! - Cold build of a Debian + python Dockerfile (base pulled from a local `docker-registry`
//!   into an empty store, four steps with two RUNs), against `buildah bud --isolation chroot
//!   --layers` into an empty storage. Goal: ≤ 1.2×.
//! - The fully cached rebuild, against its goal of 0.5 s (buildah's cached rebuild beside it).
//! - Storage: the bytes the built image adds to the store beside its base (its own layers),
//!   against a full copy of it (all its layers).
//! - Templates: the built image registered as a base template, then a diff template built
//!   `FROM` it; the bytes the diff template adds to the store (its own layer directories and
//!   blobs), against a full copy of its root filesystem.
//!
//! usage: hutch-bench-build [HUTCH_BINARY]; N from HUTCH_BENCH_N (default 3).

#[path = "../buildah.rs"]
mod buildah;
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
use std::process::Command;
use std::time::Duration;

use buildah::Buildah;
use python_app::hutch_build;
use registry::{Registry, timed};
use stats::{Samples, ms, ratio};

const DIFF_DOCKERFILE: &str = r#"FROM py-base
COPY extra.json /app/
RUN python3 -c "import json; print(len(json.load(open('/app/extra.json'))))" > /app/extra.txt
"#;

fn hutch_template(hutch: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(hutch);
    cmd.env("HUTCH_HOME", home).arg("template").args(args);
    cmd
}

/// Bytes a template adds to the store (its own layers, unpacked, and their blobs), and the
/// bytes of a full copy of its root filesystem (every layer, unpacked).
fn template_storage(home: &Path, name: &str) -> anyhow::Result<(u64, u64)> {
    let out = Command::new(cli::hutch_binary())
        .env("HUTCH_HOME", home)
        .args(["template", "describe", name, "--json"])
        .output()?;
    let described: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let store = hutch_store::Store::open(&home.join("store"))?;
    let image = store.image(described["image"].as_str().unwrap_or_default())?;
    let parent_layers = match described["parentTemplateId"].as_str() {
        Some(parent) => {
            let out = Command::new(cli::hutch_binary())
                .env("HUTCH_HOME", home)
                .args(["template", "describe", parent, "--json"])
                .output()?;
            let parent: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            store
                .image(parent["image"].as_str().unwrap_or_default())?
                .layers
        }
        None => Vec::new(),
    };
    let mut own = 0;
    for layer in image.layers.iter().filter(|l| !parent_layers.contains(l)) {
        own += du(&store.layer_dir(layer)) + store.layer_sizes(layer)?.1;
    }
    let full: u64 = image.layers.iter().map(|l| du(&store.layer_dir(l))).sum();
    Ok((own, full))
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
    python_app::write_context(context.path(), &host)?;

    eprintln!("hutch-bench-build: {n} cold builds each, alternating");
    let (mut cold, mut cold_floor) = (Samples::default(), Samples::default());
    let (mut cached, mut cached_floor) = (Samples::default(), Samples::default());
    let mut storage = (0u64, 0u64);
    let mut diff_storage = (0u64, 0u64);
    let mut diff_build = Duration::ZERO;
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

            // The same build as a base template, and a diff template over it.
            timed(
                hutch_template(
                    &hutch,
                    home.path(),
                    &["build", "--name", "py-base", "--insecure-registry", &host],
                )
                .arg(context.path()),
            )?;
            let diff = tempfile::tempdir()?;
            std::fs::write(diff.path().join("Dockerfile"), DIFF_DOCKERFILE)?;
            std::fs::write(diff.path().join("extra.json"), "[1, 2, 3]\n")?;
            diff_build = timed(
                hutch_template(&hutch, home.path(), &["build", "--name", "py-diff"])
                    .arg(diff.path()),
            )?;
            diff_storage = template_storage(home.path(), "py-diff")?;
        }
        let buildah = Buildah::new()?;
        cold_floor.push(timed(&mut buildah.bud(context.path()))?);
        cached_floor.push(timed(&mut buildah.bud(context.path()))?);
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
        "\nDiff template (`FROM py-base`, one COPY and one RUN; built in {}): it adds {:.1} KiB to the store (its own layers unpacked, plus their blobs); a full copy of its root filesystem is {:.1} MiB ({:.3}%).",
        ms(diff_build),
        diff_storage.0 as f64 / 1024.0,
        diff_storage.1 as f64 / (1 << 20) as f64,
        100.0 * diff_storage.0 as f64 / diff_storage.1.max(1) as f64
    );
    println!(
        "\nFloor: `buildah bud --isolation chroot --layers --pull` into an empty overlay storage (cold), then again (cached), bases from the same registry."
    );
    Ok(())
}
