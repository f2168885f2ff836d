//! `hutch image ...`: the local image store. Each subcommand is one function returning the
//! process exit code; errors go back to `main`, which prints them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use hutch_store::{FsckReport, Inspection, Store};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry (every blob verified; layers the store has are not
    /// downloaded again). Progress goes to stderr, or as JSON lines to stdout with --json.
    Pull(crate::pull::PullArgs),
    /// Push an image from the store to a registry.
    Push(crate::pull::PushArgs),
    /// Build an image from a Dockerfile: every RUN in a gVisor sandbox, every step cached.
    Build(crate::build::BuildArgs),
    /// Import an OCI image layout directory, an OCI archive or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Name to give the image (`name[:tag]`, tag defaults to `latest`).
        #[arg(long)]
        name: String,
    },
    /// Build the Debian image creates get by default (`hutch/debian:bookworm`: python3, pip,
    /// venv, bash, git, curl...) with mmdebstrap from Debian's packages, unless the store has
    /// it; the root filesystem is cached machine-wide, so other state directories import it
    /// without downloading. Progress goes to stderr.
    Default,
    /// Import every image an archive names (OCI archive or layout, `docker save` archive),
    /// under the names it gives them; prints each name loaded.
    Load { path: PathBuf },
    /// Write an image as an OCI archive (for `hutch image load`, skopeo, umoci, containerd).
    Save {
        name: String,
        /// The archive to write (replaced atomically), or `-` for stdout.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// List images.
    Ls {
        #[arg(long)]
        json: bool,
        /// Also list the build cache (`hutch-build/step:*`, one image per cached step) and
        /// the images behind templates (`hutch-template:<id>`).
        #[arg(long, short)]
        all: bool,
    },
    /// Show an image: name, ids, layers (diff_id, blob, sizes) and run config.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image; layers no other image or sandbox uses are freed.
    Rm { name: String },
    /// Free the layers and blobs no image and no sandbox uses.
    Prune {
        /// Also drop every `RUN --mount=type=cache` cache that no build is using.
        #[arg(long)]
        build_cache: bool,
    },
    /// Check every blob, layer, image record and pin of the store; exits 1 if problems
    /// remain.
    Fsck {
        /// Delete corrupt blobs, incomplete layers and stale staging data, and unpack missing
        /// layers again from intact blobs. Image records are never deleted: images that stay
        /// broken are listed, to re-import or remove.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn open_store() -> anyhow::Result<Store> {
    open_store_at(&crate::home())
}

pub fn open_store_at(home: &std::path::Path) -> anyhow::Result<Store> {
    let root = home.join("store");
    Store::open(&root).with_context(|| format!("opening the image store at {}", root.display()))
}

/// Runs one `hutch image` subcommand and returns the exit code. Async only so that
/// subcommands that talk to the network can join; the store itself is synchronous.
pub async fn dispatch(cmd: ImageCommand) -> anyhow::Result<u8> {
    let store = open_store()?;
    match cmd {
        ImageCommand::Pull(args) => crate::pull::pull_cmd(&store, args).await,
        ImageCommand::Push(args) => crate::pull::push_cmd(&store, args).await,
        ImageCommand::Build(args) => crate::build::build_cmd(&store, args).await,
        ImageCommand::Import { path, name } => import(&store, &path, &name),
        ImageCommand::Load { path } => load(&store, &path),
        ImageCommand::Default => {
            let image = builtin(&store, hutch_state::debian_image::DEBIAN_IMAGE)?;
            println!("{}\t{}", image.name, image.id);
            Ok(0)
        }
        ImageCommand::Save { name, output } => save(&store, &name, &output),
        ImageCommand::Ls { json, all } => ls(&store, json, all),
        ImageCommand::Inspect { name, json } => inspect(&store, &name, json),
        ImageCommand::Rm { name } => rm(&store, &name),
        ImageCommand::Prune { build_cache } => prune(&store, build_cache),
        ImageCommand::Fsck { repair, json } => fsck(&store, repair, json),
    }
}

/// The built-in image `name` (a store name [`hutch_state::default_image::builtin`] gave),
/// made now if the store lacks it: the busybox ones from `/bin/busybox`, the Debian one with
/// mmdebstrap, its phases on stderr.
pub fn builtin(store: &Store, name: &str) -> anyhow::Result<hutch_store::Image> {
    use hutch_state::{debian_image, default_image};
    if let Ok(image) = store.image(name)
        && (name != debian_image::DEBIAN_IMAGE || debian_image::is_current(store, name))
    {
        return Ok(image);
    }
    let busybox = Path::new("/bin/busybox");
    Ok(match name {
        default_image::MINIMAL_IMAGE => default_image::ensure(store, busybox)?,
        default_image::BUILDER_IMAGE => default_image::ensure_builder(store, busybox)?,
        _ => {
            let started = std::time::Instant::now();
            debian_image::build(store, name, &mut |phase, step, cached| {
                if cached {
                    eprintln!("{name}: root filesystem from the cache");
                } else {
                    eprintln!(
                        "{name}: [{}/{}] {phase} ({:.0?})",
                        step + 1,
                        debian_image::STEPS,
                        started.elapsed()
                    );
                }
            })?
        }
    })
}

fn import(store: &Store, path: &Path, name: &str) -> anyhow::Result<u8> {
    let image = store.import(path, name)?;
    println!("{}\t{}", image.name, image.id);
    Ok(0)
}

fn load(store: &Store, path: &Path) -> anyhow::Result<u8> {
    for image in store.load(path)? {
        println!("{}\t{}", image.name, image.id);
    }
    Ok(0)
}

fn save(store: &Store, name: &str, output: &Path) -> anyhow::Result<u8> {
    if output == Path::new("-") {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            anyhow::bail!(
                "refusing to write an image archive to a terminal; use -o FILE or redirect stdout"
            );
        }
        let mut out = std::io::BufWriter::new(stdout.lock());
        store.save_to(name, &mut out)?;
        out.flush().context("writing the archive to stdout")?;
    } else {
        store.save(name, output)?;
        println!("saved {name} to {}", output.display());
    }
    Ok(0)
}

fn ls(store: &Store, json: bool, all: bool) -> anyhow::Result<u8> {
    let mut images = store.images()?;
    if !all {
        // The build cache, and the images behind templates (`hutch template ls` lists those).
        images.retain(|i| {
            !i.name.starts_with(hutch_build::engine::CACHE_REPO)
                && !i
                    .name
                    .starts_with(&format!("{}:", hutch_state::templates::TEMPLATE_REPO))
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&images)?);
    } else {
        println!("{:<40} {:<20} {:>7} {:>12}", "NAME", "ID", "LAYERS", "SIZE");
        for image in images {
            let id = image.id.hex().chars().take(12).collect::<String>();
            println!(
                "{:<40} {:<20} {:>7} {:>12}",
                image.name,
                id,
                image.layers.len(),
                human_bytes(image.size_bytes)
            );
        }
    }
    Ok(0)
}

fn inspect(store: &Store, name: &str, json: bool) -> anyhow::Result<u8> {
    let inspection = store.inspect(name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        print!("{}", describe(&inspection));
    }
    Ok(0)
}

/// The human-readable form of `hutch image inspect`.
fn describe(inspection: &Inspection) -> String {
    let image = &inspection.image;
    let config = &image.config;
    let list = |value: &Option<Vec<String>>| match value {
        Some(items) => serde_json::to_string(items).unwrap_or_default(),
        None => "-".to_string(),
    };
    let or_dash = |value: Option<&str>| value.unwrap_or("-").to_string();
    let platform = match (&inspection.os, &inspection.architecture) {
        (Some(os), Some(arch)) => format!("{os}/{arch}"),
        _ => "-".to_string(),
    };
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<12}{value}\n"));
    line("Name:", image.name.clone());
    line("ID:", image.id.to_string());
    line("Manifest:", image.manifest_digest.to_string());
    line("Created:", or_dash(inspection.created.as_deref()));
    line("Imported:", rfc3339(image.created_at));
    line("Platform:", platform);
    line("Size:", human_bytes(image.size_bytes));
    line("Entrypoint:", list(&config.entrypoint));
    line("Cmd:", list(&config.cmd));
    line("WorkingDir:", or_dash(config.working_dir.as_deref()));
    line("User:", or_dash(config.user.as_deref()));
    if config.env.is_empty() {
        line("Env:", "-".to_string());
    } else {
        out.push_str("Env:\n");
        for var in &config.env {
            out.push_str(&format!("  {var}\n"));
        }
    }
    out.push_str(&format!(
        "Layers:     {} (bottom first)\n",
        inspection.layer_details.len()
    ));
    let count = inspection.layer_details.len();
    for (i, layer) in inspection.layer_details.iter().enumerate() {
        let blob_size = layer.blob_size.map_or("?".to_string(), human_bytes);
        let unpacked = layer
            .size_bytes
            .map_or("MISSING from the store".to_string(), human_bytes);
        out.push_str(&format!(
            "  {}/{count} {}\n      blob {} ({blob_size}), unpacked {unpacked}\n",
            i + 1,
            layer.diff_id,
            layer.blob
        ));
    }
    out
}

fn rm(store: &Store, name: &str) -> anyhow::Result<u8> {
    let removal = store.remove_image(name)?;
    println!(
        "removed {name}; freed {} layer(s), {}",
        removal.layers_freed,
        human_bytes(removal.bytes_freed)
    );
    Ok(0)
}

fn prune(store: &Store, build_cache: bool) -> anyhow::Result<u8> {
    if build_cache {
        let (caches, bytes) = hutch_build::engine::mounts::prune_caches(store.root(), 0);
        println!("dropped {caches} build cache(s), {}", human_bytes(bytes));
    }
    let removal = store.gc()?;
    println!(
        "freed {} layer(s) and {} blob(s), {}",
        removal.layers_freed,
        removal.blobs_freed,
        human_bytes(removal.bytes_freed)
    );
    Ok(0)
}

fn fsck(store: &Store, repair: bool, json: bool) -> anyhow::Result<u8> {
    let report = store.fsck(repair)?;
    if json {
        let value = serde_json::json!({
            "clean": report.is_clean(),
            "findings": report.findings,
            "broken_images": report.broken_images(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", summarize(&report, repair));
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}

/// The human-readable form of `hutch image fsck`.
fn summarize(report: &FsckReport, repair: bool) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let mark = if finding.repaired { " (repaired)" } else { "" };
        out.push_str(&format!(
            "{:<17} {}: {}{mark}\n",
            finding.kind, finding.subject, finding.detail
        ));
    }
    let remaining = report.remaining().count();
    let repaired = report.findings.len() - remaining;
    if report.findings.is_empty() {
        out.push_str("the store is clean\n");
    } else if remaining == 0 {
        out.push_str(&format!(
            "repaired {repaired} problem(s); the store is clean\n"
        ));
    } else {
        out.push_str(&format!("{remaining} problem(s) remain"));
        if repaired > 0 {
            out.push_str(&format!(", {repaired} repaired"));
        }
        out.push('\n');
        let broken = report.broken_images();
        if !broken.is_empty() {
            out.push_str(&format!(
                "broken images: {}; re-import them (`hutch image import`/`load`) or remove them (`hutch image rm`)\n",
                broken.join(", ")
            ));
        }
        if !repair {
            out.push_str("`hutch image fsck --repair` fixes what the store can fix by itself\n");
        }
    }
    out
}

/// Unix seconds as an RFC 3339 UTC timestamp (days to civil date: Howard Hinnant's
/// algorithm), so the CLI needs no date library for one field.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_seconds_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
