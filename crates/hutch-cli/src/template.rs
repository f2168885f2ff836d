//! `hutch template ...`: the registry of named templates sandboxes start from (see
//! `hutch_state::templates`). It works on the state directory directly, so it needs no
//! server, and sees what a running server registers.

use anyhow::Context;
use clap::{Args, Subcommand};
use hutch_state::db::{NodeKind, TemplateRow};
use hutch_state::templates::{Registration, Templates};

use crate::build::BuildArgs;
use crate::image::human_bytes as human;

#[derive(Subcommand)]
pub enum TemplateCommand {
    /// List templates: kind (base, or diff over a parent), and the bytes each one adds.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a template (by name or id): lineage, sizes, snapshot and the Dockerfile.
    Describe {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove templates; refused for a template others are built on.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Build a Dockerfile into a template (a diff template when its FROM is one).
    Build {
        /// The template's name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Register an image (from the store, or pulled) as a base template.
    Import(ImportArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The image: a store name or a registry reference.
    pub image: String,
    /// The template's name.
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub public: bool,
    #[command(flatten)]
    pub registry: crate::pull::RegistryArgs,
}

pub async fn dispatch(cmd: TemplateCommand) -> anyhow::Result<u8> {
    let store = hutch_store::Store::open(&crate::home().join("store"))?;
    let templates = Templates::open(&crate::home(), store.clone())?;
    match cmd {
        TemplateCommand::Ls { json } => {
            let rows = templates.list()?;
            if json {
                // As a `Value`, so keys print sorted, as they always have.
                let all = serde_json::to_value(
                    rows.iter().map(|t| templates.to_api(t)).collect::<Vec<_>>(),
                )?;
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            println!(
                "{:<24} {:<24} {:<5} {:<24} {:>10} {:>10}",
                "NAME", "ID", "KIND", "PARENT", "OWN", "TOTAL"
            );
            for t in &rows {
                let parent = t
                    .parent_id
                    .as_deref()
                    .and_then(|p| rows.iter().find(|r| r.id == p))
                    .map_or("-", |p| p.name.as_str());
                println!(
                    "{:<24} {:<24} {:<5} {:<24} {:>10} {:>10}",
                    t.name,
                    t.id,
                    t.node_kind.as_str(),
                    parent,
                    human(t.own_bytes),
                    human(t.total_bytes)
                );
            }
            Ok(0)
        }
        TemplateCommand::Describe { name, json } => {
            let t = templates.get(&name)?;
            if json {
                let shown = serde_json::to_value(templates.to_api(&t))?;
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                describe(&templates, &t);
            }
            Ok(0)
        }
        TemplateCommand::Rm { names } => {
            let mut failed = false;
            for name in names {
                match templates.remove(&name) {
                    Ok(t) => println!("removed {} ({})", t.name, t.id),
                    Err(e) => {
                        eprintln!("hutch: {e}");
                        failed = true;
                    }
                }
            }
            Ok(u8::from(failed))
        }
        TemplateCommand::Build {
            name,
            public,
            build,
        } => {
            hutch_state::templates::validate_name(&name)?;
            let (image, dockerfile) = crate::build::build_image(&store, &build).await?;
            // As the SDK decides: a diff when the last FROM names a template.
            let last_from = hutch_build::dockerfile::parse(&dockerfile)
                .ok()
                .and_then(|d| {
                    let last = d.stages.last()?;
                    let is_stage = d
                        .stages
                        .iter()
                        .any(|s| s.name.as_deref() == Some(&last.base));
                    (!is_stage).then(|| last.base.clone())
                });
            let parent = match last_from {
                Some(base) => templates.db().template_by_name(&base)?,
                None => None,
            };
            let row = templates.register(Registration {
                name: &name,
                image: &image,
                parent: parent.as_ref(),
                dockerfile: &dockerfile,
                public,
                rootfs_disk_bytes: None,
            })?;
            // The build's own name for the result is not needed beside the template's.
            if build.tag.is_none() {
                let _ = store.remove_image(&image.name);
            }
            print_registered(&row);
            Ok(0)
        }
        TemplateCommand::Import(args) => {
            hutch_state::templates::validate_name(&args.name)?;
            let image = crate::pull::resolve(
                &store,
                &args.image,
                hutch_registry::PullPolicy::Missing,
                &args.registry,
            )
            .await
            .with_context(|| format!("getting {}", args.image))?;
            let row = templates.register(Registration {
                name: &args.name,
                image: &image,
                parent: None,
                dockerfile: &format!("FROM {}\n", args.image),
                public: args.public,
                rootfs_disk_bytes: None,
            })?;
            print_registered(&row);
            Ok(0)
        }
    }
}

fn print_registered(t: &TemplateRow) {
    println!(
        "{}\t{}\t{}\t{} own of {}",
        t.name,
        t.id,
        t.node_kind.as_str(),
        human(t.own_bytes),
        human(t.total_bytes)
    );
}

fn describe(templates: &Templates, t: &TemplateRow) {
    println!("Name:        {}", t.name);
    println!("Id:          {}", t.id);
    match (t.node_kind, &t.parent_id) {
        (NodeKind::Diff, Some(parent)) => {
            let name = templates
                .db()
                .template(parent)
                .ok()
                .flatten()
                .map(|p| p.name)
                .unwrap_or_default();
            println!("Lineage:     diff over {name} ({parent})");
        }
        _ => println!("Lineage:     base"),
    }
    println!("Public:      {}", t.public);
    println!("Image:       {} ({})", t.image, t.image_id);
    println!(
        "Size:        {} own, {} in all",
        human(t.own_bytes),
        human(t.total_bytes)
    );
    println!(
        "Snapshot:    {} {} ({} stored)",
        t.snapshot_format,
        t.snapshot_uri,
        human(t.snapshot_size_bytes)
    );
    println!("Rootfs disk: {}", human(t.rootfs_disk_bytes));
    let children = templates.db().template_children(&t.id).unwrap_or_default();
    if !children.is_empty() {
        println!("Children:    {}", children.join(", "));
    }
    println!("Dockerfile:");
    for line in t.dockerfile.lines() {
        println!("  {line}");
    }
}
