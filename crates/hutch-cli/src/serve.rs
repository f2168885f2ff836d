//! `hutch serve` and `hutch key`: argument parsing and wiring; the server is `hutch-server`,
//! keys are `hutch_state::keys`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use hutch_server::{HttpBounds, Limits, ServeConfig};
use hutch_state::keys::{ApiKey, Keys};

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
    /// Require API keys even on loopback (always required on other addresses). Right on a
    /// shared host: without it, every local user and process can use the API.
    #[arg(long)]
    require_keys: bool,
    /// The URL clients reach this server at from elsewhere (http://host[:port]). Only
    /// loopback, localhost, *.localhost and *.local Host headers are served otherwise (a
    /// defence against DNS rebinding); this adds the URL's host.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Sandboxes pending or running at once; further creates wait for room.
    #[arg(long, default_value_t = Limits::default().max_sandboxes)]
    max_sandboxes: usize,
    /// Creates that may wait for room beyond --max-sandboxes; more are answered 429.
    #[arg(long, default_value_t = Limits::default().max_queued)]
    max_queued: usize,
    /// The most processes and threads each sandbox may hold (16-32768); a flood past it
    /// ends inside the sandbox.
    #[arg(long, default_value_t = Limits::default().pids_limit,
          value_parser = clap::value_parser!(u32).range(16..=hutch_runtime::MAX_PIDS_LIMIT as i64))]
    pids_limit: u32,
    /// Open connections per listener (API and proxy each); more wait until one closes.
    #[arg(long, default_value_t = HttpBounds::default().max_connections)]
    max_connections: usize,
    /// Seconds a client may take to send a request head, and a keep-alive connection may
    /// sit idle.
    #[arg(long, value_name = "SECS", default_value_t = HttpBounds::default().header_timeout.as_secs())]
    header_timeout: u64,
    /// Seconds the records of ended sandboxes are kept before they are purged.
    #[arg(
        long,
        value_name = "SECS",
        env = "HUTCH_RETENTION_SECS",
        default_value_t = Limits::default().retention.as_secs()
    )]
    retention: u64,
    /// When a create that names an image pulls it: missing, always or never. Registries
    /// reached over plain HTTP are listed in HUTCH_INSECURE_REGISTRIES.
    #[arg(long, default_value_t = hutch_registry::PullPolicy::Missing)]
    pull: hutch_registry::PullPolicy,
    /// The only registry (HOST or HOST:PORT) image references may name; repeatable. Without
    /// it any registry on a public address may be. A listed host may be on a private
    /// address, and the server's Docker login (~/.docker/config.json) is used for it.
    #[arg(long = "allow-registry", value_name = "HOST[:PORT]")]
    allow_registry: Vec<String>,
    /// Let pulls reach registries (and their token services and blob redirects) on
    /// loopback, private (RFC 1918), unique-local and carrier-grade NAT addresses. Refused
    /// by default: API clients name the images, and would otherwise reach the server's own
    /// network. Link-local addresses (cloud metadata) need --allow-registry.
    #[arg(long)]
    allow_private_registries: bool,
    /// Use the server's Docker login for every registry a pull names, not only those listed
    /// with --allow-registry (every API client then pulls as the server's user).
    #[arg(long)]
    registry_credentials: bool,
    /// Where sandboxes' addresses come from: a /30 per sandbox with a network (/8 to /24)
    /// [default: $HUTCH_SANDBOX_CIDR or 10.213.0.0/16]
    #[arg(long, value_name = "CIDR")]
    sandbox_cidr: Option<String>,
    /// The upstream resolver sandboxes' DNS goes to; repeatable (the first serves)
    /// [default: $HUTCH_SANDBOX_DNS or the host's non-loopback nameservers]
    #[arg(long = "sandbox-dns", value_name = "IPV4")]
    sandbox_dns: Vec<String>,
    /// A range no sandbox reaches whatever its policy, besides the host, other sandboxes,
    /// link-local (cloud metadata) and multicast, which never are; repeatable
    /// [default: $HUTCH_DENY_CIDR]
    #[arg(long = "deny-cidr", value_name = "CIDR")]
    deny_cidr: Vec<String>,
    /// Static busybox the built-in `hutch/minimal` and builder images are made from.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// The image creates that name none get (and `hutch/default`, `tensorlake/ubuntu-minimal`
    /// name): the built-in Debian image (made with mmdebstrap on first need, cached
    /// machine-wide), `hutch/minimal` (busybox), or any image the store has or can pull.
    #[arg(long, env = "HUTCH_DEFAULT_IMAGE", value_name = "NAME",
          default_value = hutch_state::debian_image::DEBIAN_IMAGE)]
    default_image: String,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let home = args.state_dir.unwrap_or_else(crate::home);
    std::fs::create_dir_all(&home)
        .with_context(|| format!("creating the state directory {}", home.display()))?;
    let mut backend = crate::run::backend_at(home.clone())?;
    backend.configure_network(hutch_runtime::net::NetSettings::resolve(
        args.sandbox_cidr.as_deref(),
        &args.sandbox_dns,
        &args.deny_cidr,
    )?);
    backend.enable_egress_audit();
    let store = backend.store().clone();
    let config = ServeConfig {
        pull_policy: args.pull,
        registry_egress: hutch_registry::EgressPolicy {
            allowed: args.allow_registry,
            allow_private: args.allow_private_registries,
            registry_credentials: args.registry_credentials,
        },
        home,
        listen: args.listen,
        proxy_listen: args.proxy_listen,
        require_keys: args.require_keys,
        public_url: args.public_url,
        busybox: args.busybox,
        default_image: args.default_image,
        limits: Limits {
            max_sandboxes: args.max_sandboxes.max(1),
            max_queued: args.max_queued,
            retention: std::time::Duration::from_secs(args.retention),
            pids_limit: args.pids_limit,
            ..Limits::default()
        },
        http: HttpBounds {
            max_connections: args.max_connections.max(1),
            header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
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
    /// Create an API key; its secret is printed once. Say what it reaches: one namespace
    /// (`--namespace`), or everything (`--admin`).
    #[command(group(clap::ArgGroup::new("scope").required(true).args(["namespace", "admin"])))]
    Create {
        /// A name to recognize the key by.
        #[arg(value_name = "NAME", required_unless_present = "name_flag")]
        name: Option<String>,
        /// The same as NAME.
        #[arg(long = "name", conflicts_with = "name", hide = true)]
        name_flag: Option<String>,
        /// The one namespace the key reaches (its sandboxes, through the API and the
        /// proxy); it may read and build templates but not delete or replace them.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// Every namespace, and deleting or replacing templates.
        #[arg(long)]
        admin: bool,
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
    let db = hutch_state::db::Db::open(&home.join(hutch_state::DB_FILE))?;
    let keys = Keys::new(Arc::new(db));
    match cmd {
        KeyCommand::Create {
            name,
            name_flag,
            namespace,
            admin: _,
            json,
        } => {
            // clap guarantees one of the two, and a namespace unless --admin.
            let name = name.or(name_flag).unwrap_or_default();
            let (key, secret) = keys.create(&name, namespace.as_deref())?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "id": key.id,
                        "name": key.name,
                        "namespace": key.namespace,
                        "admin": key.is_admin(),
                        "secret": secret,
                    })
                );
            } else {
                println!("{secret}");
                eprintln!(
                    "created key {} ({}, {}); the secret is not shown again",
                    key.id,
                    key.name,
                    scope(&key)
                );
            }
        }
        KeyCommand::Ls { json } => {
            let keys = keys.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!(
                    "{:<18} {:<20} {:<24} {:<14} LAST USED",
                    "ID", "NAME", "SCOPE", "CREATED"
                );
                for k in keys {
                    println!(
                        "{:<18} {:<20} {:<24} {:<14} {}",
                        k.id,
                        k.name,
                        scope(&k),
                        k.created_at / 1000,
                        k.last_used_at
                            .map_or("never".to_string(), |t| (t / 1000).to_string())
                    );
                }
            }
        }
        KeyCommand::Rm { key } => {
            if !keys.remove(&key)? {
                anyhow::bail!("no API key {key:?}");
            }
        }
    }
    Ok(0)
}

/// A key's scope as `hutch key` shows it.
fn scope(key: &ApiKey) -> String {
    match &key.namespace {
        Some(ns) => format!("namespace {ns}"),
        None => "admin".to_string(),
    }
}
