//! `hutch serve`: the HTTP edge over `hutch_state`.
//!
//! - `lifecycle`: the Tensorlake-compatible lifecycle API (one sandbox router under
//!   `/v1/namespaces/{ns}` and flat), key introspection, `/healthz`, and `openapi`'s
//!   document, on the API listener (:8900); `platform`: the template routes; `images`: pulls.
//! - `proxy` and `pty`: the sandbox proxy (:9443), forwarding to each sandbox's agent.
//! - `auth`: the one auth layer (the `Caller` and `Scoped` extractors); `csrf`: the Host,
//!   Origin and body-type checks both listeners make; `listen`: the listeners' bounds.
//! - `error`: `ApiError`, and the one mapping of `hutch_state::StateError` to HTTP.
//!
//! The state (SQLite, sandboxes, templates, builds, keys) is `hutch_state`'s; this crate is
//! the only one that knows HTTP routes served to users. Sandboxes outlive the server:
//! stopping it (gracefully or by `kill -9`) leaves them running, and the next start adopts
//! them.

mod auth;
mod csrf;
mod error;
mod images;
mod ingress;
mod lifecycle;
mod listen;
mod openapi;
mod platform;
mod pools;
mod ports;
mod proxy;
mod pty;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use hutch_runtime::Backend;
use hutch_state::builds::Builds;
use hutch_state::{Sandboxes, State, discovery, state_id};
use hutch_store::Store;

pub use hutch_state::Limits;
pub use listen::HttpBounds;

#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The state directory (`$HUTCH_HOME`): database, store, sandboxes.
    pub home: PathBuf,
    pub listen: SocketAddr,
    pub proxy_listen: SocketAddr,
    /// Require API keys even on loopback.
    pub require_keys: bool,
    /// Where clients reach the server from elsewhere: its host is served besides loopback
    /// and `*.localhost`/`*.local` names (DNS-rebinding defence, see `csrf`).
    pub public_url: Option<String>,
    /// The static busybox the `hutch/minimal` and builder images are made from.
    pub busybox: PathBuf,
    /// The image creates that name none get (see `hutch serve --default-image`).
    pub default_image: String,
    pub limits: Limits,
    /// When a create that names an image pulls it.
    pub pull_policy: hutch_registry::PullPolicy,
    /// Which registries and addresses the server's pulls (creates, `/hutch/v1/images/pull`,
    /// template builds' `FROM`) may reach, and where its Docker login is used.
    pub registry_egress: hutch_registry::EgressPolicy,
    /// Connection cap and header/idle timeout of each listener.
    pub http: listen::HttpBounds,
}

/// Everything the handlers share.
struct App {
    sandboxes: Arc<Sandboxes>,
    pools: Arc<hutch_state::pools::Pools>,
    auth: auth::Auth,
    /// What `sandbox_url` and `ingress_endpoint` say, and the names the proxy routes.
    ingress: ingress::Ingress,
    /// Kept-alive connections to sandboxes' exposed ports.
    ports: ports::PortClient,
    /// [`state_id`] of the state directory, reported by `/healthz`.
    state_id: String,
    /// The secret `/healthz` proves it knows to `hutch run` (see [`discovery`]).
    published: std::sync::OnceLock<discovery::Published>,
    /// Pulls missing images.
    registry: hutch_registry::Client,
    pull_policy: hutch_registry::PullPolicy,
    /// Templates and their builds.
    builds: Arc<Builds>,
    /// The hosts and origins served (see [`csrf`]).
    browser_policy: csrf::Policy,
}

/// Opens the state, reconciles, and serves until `shutdown` resolves. Sandboxes keep running
/// after it returns.
pub async fn serve(
    config: ServeConfig,
    backend: Arc<dyn Backend>,
    store: Store,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let registry = images::client(&config.registry_egress)?;
    let State {
        sandboxes,
        pools,
        builds,
        keys,
    } = State::start(
        &config.home,
        &config.busybox,
        &config.default_image,
        config.limits.clone(),
        backend,
        store,
        registry.clone(),
    )
    .await
    .context("starting the state (database, built-in images, reconcile with the runtime)")?;
    let loopback = config.listen.ip().is_loopback() && config.proxy_listen.ip().is_loopback();
    let auth = auth::Auth::new(keys, config.require_keys || !loopback);
    let ports = ports::PortClient::new(Arc::clone(&sandboxes));
    let app = Arc::new(App {
        sandboxes,
        pools,
        auth,
        ingress: ingress::Ingress::new(config.public_url.as_deref(), config.proxy_listen)?,
        ports,
        state_id: state_id(&config.home),
        published: std::sync::OnceLock::new(),
        registry,
        pull_policy: config.pull_policy,
        builds,
        browser_policy: csrf::Policy::new(config.public_url.as_deref(), !loopback)?,
    });

    // Pools make their sandboxes the way creates do; their replenisher starts now.
    let factory: Arc<dyn hutch_state::pools::PoolSandboxes> =
        Arc::new(pools::Factory(Arc::downgrade(&app)));
    app.pools.start(Arc::downgrade(&factory));

    let api = bind(config.listen).await?;
    let proxy = bind(config.proxy_listen).await?;
    tracing::info!(api = %config.listen, proxy = %config.proxy_listen, keys_required = app.auth.required(), "serving");
    // Written once the API listens: `hutch run` over this home finds it by this file.
    let api_addr = api.first().and_then(|l| l.local_addr().ok());
    if let Some(addr) = api_addr {
        let published = discovery::publish(&config.home, addr)
            .context("writing the server's discovery file")?;
        let _ = app.published.set(published);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (listeners, router) in [
        (api, lifecycle::router(Arc::clone(&app))),
        (proxy, proxy::router(Arc::clone(&app))),
    ] {
        tasks.spawn(listen::serve(
            listeners,
            router,
            config.http,
            stop_rx.clone(),
        ));
    }
    while let Some(result) = tasks.join_next().await {
        result.context("server task")?;
    }
    if let Some(published) = app.published.get() {
        discovery::withdraw(&config.home, published);
    }
    tracing::info!("stopped; sandboxes keep running");
    Ok(())
}

/// Binds `addr`; a loopback `localhost`-style address also gets its IPv6 twin, because
/// clients resolve `localhost` themselves and may try `::1` first.
async fn bind(addr: SocketAddr) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let first = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let mut listeners = vec![first];
    if addr.ip() == std::net::Ipv4Addr::LOCALHOST {
        let twin = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr.port());
        match tokio::net::TcpListener::bind(twin).await {
            Ok(l) => listeners.push(l),
            Err(e) => tracing::debug!(%twin, error = %e, "no IPv6 loopback listener"),
        }
    }
    Ok(listeners)
}
