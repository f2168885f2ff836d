//! `hutch image pull` / `push`, and the implicit pull of `hutch run`: the registry client
//! wired to the local store, with progress on stderr (bars on a terminal, lines otherwise)
//! or as JSON events on stdout.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use clap::Args;
use hutch_registry::{Client, ClientConfig, Credentials, Event, Reference, Renderer};
use hutch_store::{Image, Store};

#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Reach the image's registry over plain HTTP (or list registries in
    /// HUTCH_INSECURE_REGISTRIES=host:port,...).
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name; the password is read from stdin (--password-stdin). Without
    /// it, credentials come from ~/.docker/config.json (auths, credential helpers).
    #[arg(long, requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from stdin.
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// Image reference: `name[:tag]`, `host[:port]/name[:tag]`, optionally `@sha256:...`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print progress as JSON events on stdout, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PushArgs {
    /// The image in the local store.
    pub image: String,
    /// Where to push it [default: the image's own name].
    pub reference: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[arg(long)]
    pub json: bool,
}

pub use hutch_registry::PullPolicy;

fn client(r: &Reference, args: &RegistryArgs) -> anyhow::Result<Client> {
    let extra = if args.insecure {
        vec![r.registry.clone()]
    } else {
        Vec::new()
    };
    let mut config = ClientConfig::from_env(&extra);
    if let Some(username) = &args.username {
        let mut password = String::new();
        std::io::stdin()
            .read_to_string(&mut password)
            .context("reading the password from stdin")?;
        config.credentials = Some(Credentials {
            username: username.clone(),
            password: password.trim_end_matches(['\n', '\r']).to_string(),
        });
    }
    Ok(Client::new(config)?)
}

/// Events as JSON lines on stdout, or drawn on stderr.
fn sink(json: bool) -> impl Fn(Event) + Send + Sync {
    let renderer = Renderer::new(std::io::stderr().is_terminal());
    move |event| {
        if json {
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
        } else {
            renderer.handle(event);
        }
    }
}

/// The name `reference` has in the store (a digest reference gets a `sha256-...` tag).
use hutch_registry::store_name;

pub async fn pull_into(
    store: &Store,
    reference: &str,
    args: &RegistryArgs,
    json: bool,
) -> anyhow::Result<Image> {
    let r = Reference::parse(reference)?;
    let client = client(&r, args)?;
    let events = sink(json);
    Ok(hutch_registry::pull(&client, store, &r, &events).await?)
}

/// The image `reference` names, pulled first as `policy` says.
pub async fn resolve(
    store: &Store,
    reference: &str,
    policy: PullPolicy,
    args: &RegistryArgs,
) -> anyhow::Result<Image> {
    // Built-in images (and `hutch/default`, the Debian one here) are made, never pulled.
    if let Some(name) =
        hutch_state::default_image::builtin(reference, hutch_state::debian_image::DEBIAN_IMAGE)
    {
        return crate::image::builtin(store, &name);
    }
    let name = store_name(reference);
    match (policy, store.image(&name)) {
        (PullPolicy::Never, found) => Ok(found?),
        (PullPolicy::Missing, Ok(image)) => Ok(image),
        (PullPolicy::Missing, Err(e)) if !e.is_not_found() => Err(e.into()),
        _ => pull_into(store, reference, args, false).await,
    }
}

pub async fn pull_cmd(store: &Store, args: PullArgs) -> anyhow::Result<u8> {
    let image = pull_into(store, &args.reference, &args.registry, args.json).await?;
    if !args.json {
        println!("{}", image.name);
    }
    Ok(0)
}

pub async fn push_cmd(store: &Store, args: PushArgs) -> anyhow::Result<u8> {
    let image = store.image(&store_name(&args.image))?;
    let target = args.reference.clone().unwrap_or_else(|| image.name.clone());
    let r = Reference::parse(&target)?;
    let client = client(&r, &args.registry)?;
    let events = sink(args.json);
    hutch_registry::push(&client, store, &image.name, &r, &events).await?;
    if !args.json {
        println!("{target}");
    }
    Ok(0)
}
