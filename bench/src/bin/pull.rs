//! `hutch-bench-pull`: pulling from a registry, beside its floor from the same run.
//!
//! - Pull and unpack of the Debian fixture from a local `docker-registry` into an empty
//!   store (`hutch image pull`), against `skopeo copy` to an OCI layout followed by
//!   `umoci unpack` of it. Goal: ≤ 1.0×.
//! - A second pull of an image that shares layers (the oracle fixture after busybox): the
//!   layer bytes transferred, from the pull's own events.
//!
//! usage: hutch-bench-pull [HUTCH_BINARY]   (default target/release/hutch); N from
//! HUTCH_BENCH_N (default 5). Fixtures from HUTCH_FIXTURES (default ~/.cache/hutch/fixtures).

#[path = "../cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../registry.rs"]
mod registry;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::ensure;
use registry::{Registry, run, timed};
use stats::{Samples, ms, ratio};

/// A fresh empty state directory for one pull.
fn fresh(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?)
}

/// Layer bytes a `hutch image pull --json` transferred, and the image's total.
fn pulled_bytes(hutch: &Path, home: &Path, reference: &str) -> anyhow::Result<(u64, u64)> {
    let out = Command::new(hutch)
        .env("HUTCH_HOME", home)
        .args(["image", "pull", "--insecure", "--json", reference])
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "pull of {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut transferred, mut total) = (0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let event: serde_json::Value = serde_json::from_str(line)?;
        match event["event"].as_str() {
            Some("resolved") => total = event["total_bytes"].as_u64().unwrap_or(0),
            Some("layer_done") => transferred += event["size"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Ok((transferred, total))
}

fn main() -> anyhow::Result<()> {
    let hutch = cli::hutch_binary();
    let n = cli::iterations(5);
    let fixtures = cli::fixtures_dir();
    let registry = Registry::start()?;
    for name in ["debian", "busybox", "oracle"] {
        registry.push(&fixtures.join(name), &format!("{name}:1"))?;
    }
    let debian = registry.reference("debian:1");

    eprintln!(
        "hutch-bench-pull: {n} pulls of {debian}, alternating with skopeo copy + umoci unpack"
    );
    let (mut ours, mut floor) = (Samples::default(), Samples::default());
    for i in 0..=n {
        let home = fresh("hbpull")?;
        let o = timed(Command::new(&hutch).env("HUTCH_HOME", home.path()).args([
            "image",
            "pull",
            "--insecure",
            &debian,
        ]))?;
        drop(home);
        let scratch = fresh("hbskopeo")?;
        let layout = scratch.path().join("layout");
        let bundle = scratch.path().join("bundle");
        let start = Instant::now();
        run(Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{debian}"))
            .arg(format!("oci:{}:latest", layout.display())))?;
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle))?;
        let f = start.elapsed();
        drop(scratch);
        if i > 0 {
            ours.push(o);
            floor.push(f);
        }
    }

    let home = fresh("hbdedupe")?;
    let (first, first_total) = pulled_bytes(&hutch, home.path(), &registry.reference("busybox:1"))?;
    let (second, second_total) =
        pulled_bytes(&hutch, home.path(), &registry.reference("oracle:1"))?;

    println!("### Pulls from a local registry\n");
    println!(
        "| Figure | N | Ours median | Ours p95 | Floor median | Floor p95 | Ratio median | Goal | Met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let r = ratio(ours.median(), floor.median());
    println!(
        "| Pull + unpack of the Debian fixture (65 MiB compressed, 153 MiB unpacked) | {n} | {} | {} | {} | {} | {r:.2} | ≤ 1.00 | {} |",
        ms(ours.median()),
        ms(ours.p95()),
        ms(floor.median()),
        ms(floor.p95()),
        if r <= 1.0 { "yes" } else { "**no**" }
    );
    println!(
        "\nOurs: `hutch image pull --insecure` into an empty store (layers verified and unpacked as they stream in). \
         Floor: `skopeo copy docker://… oci:…` then `umoci unpack` of the layout, fresh directories each time; \
         the two alternate, iteration by iteration, from the same `docker-registry` on 127.0.0.1.\n"
    );
    println!("| Second pull | Layer bytes transferred | Image layers in all |");
    println!("|---|---|---|");
    println!("| busybox into an empty store | {first} | {first_total} |");
    println!("| then the oracle image (shares busybox's two layers) | {second} | {second_total} |");
    Ok(())
}
