//! `hutch image ...`: the local image store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use hutch_store::Store;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout directory, an OCI archive or a `docker save` archive.
    Import {
        path: PathBuf,
        /// Name to give the image (`name[:tag]`, tag defaults to `latest`).
        #[arg(long)]
        name: String,
    },
    /// List images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image; layers no other image or sandbox uses are freed.
    Rm { name: String },
}

pub fn open_store() -> anyhow::Result<Store> {
    open_store_at(&crate::home())
}

pub fn open_store_at(home: &std::path::Path) -> anyhow::Result<Store> {
    let root = home.join("store");
    Store::open(&root).with_context(|| format!("opening the image store at {}", root.display()))
}

pub fn dispatch(cmd: ImageCommand) -> anyhow::Result<()> {
    let store = open_store()?;
    match cmd {
        ImageCommand::Import { path, name } => {
            let image = store.import(&path, &name)?;
            println!("{}\t{}", image.name, image.id);
        }
        ImageCommand::Ls { json } => {
            let images = store.images()?;
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
        }
        ImageCommand::Rm { name } => {
            let removal = store.remove_image(&name)?;
            println!(
                "removed {name}; freed {} layer(s), {}",
                removal.layers_freed,
                human_bytes(removal.bytes_freed)
            );
        }
    }
    Ok(())
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
