//! `hutch serve` and `hutch key`: argument parsing and wiring; the server is `hutch-server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use hutch_server::{Limits, ServeConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// State directory: database, image store, sandboxes [default: $HUTCH_HOME or /var/lib/hutch]
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Address of the lifecycle API.
    #[arg(long, default_value = "127.0.0.1:8900")]
    listen: SocketAddr,
    /// Address of the sandbox proxy.
    #[arg(long, default_value = "127.0.0.1:9443")]
    proxy_listen: SocketAddr,
    /// Require API keys even on loopback (always required on other addresses).
    #[arg(long)]
    require_keys: bool,
    /// Sandboxes pending or running at once; further creates wait for room.
    #[arg(long, default_value_t = Limits::default().max_sandboxes)]
    max_sandboxes: usize,
    /// Static busybox the built-in default image is made from.
    /// When a create that names an image pulls it: missing, always or never. Registries
    /// reached over plain HTTP are listed in HUTCH_INSECURE_REGISTRIES.
    #[arg(long, default_value_t = hutch_registry::PullPolicy::Missing)]
    pull: hutch_registry::PullPolicy,
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let home = args.state_dir.unwrap_or_else(crate::home);
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating the state directory {}", home.display()))?;
    let backend = crate::run::backend_at(home.clone())?;
    let store = backend.store().clone();
    let config = ServeConfig {
        pull_policy: args.pull,
        home,
        listen: args.listen,
        proxy_listen: args.proxy_listen,
        require_keys: args.require_keys,
        busybox: args.busybox,
        limits: Limits {
            max_sandboxes: args.max_sandboxes.max(1),
            ..Limits::default()
        },
    };
    hutch_server::serve(config, Arc::new(backend), store, shutdown_signal()).await?;
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM. Sandboxes keep running after the server stops.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key; its secret is printed once.
    Create {
        /// A name to recognize the key by.
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List API keys (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an API key by id or name.
    Rm { key: String },
}

pub fn key(cmd: KeyCommand) -> anyhow::Result<u8> {
    let home = crate::home();
    std::fs::create_dir_all(&home)?;
    let db = hutch_server::db::Db::open(&home.join(hutch_server::DB_FILE))?;
    match cmd {
        KeyCommand::Create { name, json } => {
            let (key, secret) = hutch_server::auth::create_key(&db, &name)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": key.id, "name": key.name, "secret": secret})
                );
            } else {
                println!("{secret}");
                eprintln!(
                    "created key {} ({}); the secret is not shown again",
                    key.id, key.name
                );
            }
        }
        KeyCommand::Ls { json } => {
            let keys = db.keys()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!("{:<18} {:<20} {:<14} LAST USED", "ID", "NAME", "CREATED");
                for k in keys {
                    println!(
                        "{:<18} {:<20} {:<14} {}",
                        k.id,
                        k.name,
                        k.created_at / 1000,
                        k.last_used_at
                            .map_or("never".to_string(), |t| (t / 1000).to_string())
                    );
                }
            }
        }
        KeyCommand::Rm { key } => {
            if !db.remove_key(&key)? {
                anyhow::bail!("no API key {key:?}");
            }
        }
    }
    Ok(0)
}
