//! `/sandbox-pools`: warm pools over HTTP, in the SDKs' shapes (`create_pool`, `get_pool`,
//! `list_pools`, `update_pool`, `delete_pool`, `claim`), flat and under
//! `/v1/namespaces/{ns}`. The pools themselves are `hutch_state::pools`; this module makes a
//! pool's configuration into a sandbox the way a create does ([`Factory`]).

use std::sync::{Arc, Weak};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hutch_api::{
    ClaimSandboxRequest, ClaimSandboxResponse, ContainerResources, CreateSandboxPoolResponse,
    CreateSandboxRequest, ListSandboxPoolsResponse, NetworkConfig, PoolContainerInfo, PoolCounts,
    SandboxPoolInfo, SandboxPoolRequest,
};
use hutch_state::CreateParams;
use hutch_state::db::PoolRow;
use hutch_state::pools::PoolSandboxes;
use serde::Deserialize;
use serde_json::Value;

use crate::App;
use crate::auth::Scoped;
use crate::error::ApiError;
use crate::lifecycle::{Reach, create_answer, create_params, create_wait, json_body, reply};

pub fn routes() -> Router<Arc<App>> {
    let pools = Router::new()
        .route("/sandbox-pools", post(create).get(list))
        .route(
            "/sandbox-pools/{id}",
            get(get_one).put(update).delete(delete),
        )
        .route("/sandbox-pools/{id}/sandboxes", post(claim));
    Router::new()
        .nest("/v1/namespaces/{ns}", pools.clone())
        .merge(pools)
}

#[derive(Deserialize)]
struct PoolPath {
    id: String,
}

/// Makes pool sandboxes for the state's replenisher, through the create path.
pub struct Factory(pub Weak<App>);

impl PoolSandboxes for Factory {
    fn params<'a>(
        &'a self,
        namespace: &'a str,
        config: &'a Value,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<CreateParams, String>> + Send + 'a>> {
        Box::pin(async move {
            let app = self.0.upgrade().ok_or("the server is stopping")?;
            let body = sandbox_body(config).map_err(|e| e.to_string())?;
            create_params(&app, namespace.to_string(), body)
                .await
                .map_err(|e| e.message.to_string())
        })
    }

    fn image(&self, config: &Value) -> Option<String> {
        Self::resolve(&*self.0.upgrade()?, config)
    }
}

impl Factory {
    /// As a create resolves `image` (a template, a built-in or alias, a store name), without
    /// a pull.
    fn resolve(app: &App, config: &Value) -> Option<String> {
        let default = app.sandboxes.default_image();
        let Some(reference) = config.get("image").and_then(Value::as_str) else {
            return Some(default.to_string());
        };
        if let Some(t) = app.builds.templates().find(reference).ok().flatten() {
            return Some(t.image);
        }
        Some(
            hutch_state::default_image::builtin(reference, default)
                .unwrap_or_else(|| hutch_registry::store_name(reference)),
        )
    }
}

/// The create body of one sandbox of a pool. No timeout: a warm sandbox waits without one,
/// and a claim sets the pool's from the claim on.
fn sandbox_body(config: &Value) -> Result<CreateSandboxRequest, serde_json::Error> {
    let pool: SandboxPoolRequest = serde_json::from_value(config.clone())?;
    Ok(CreateSandboxRequest {
        image: pool.image,
        resources: pool.resources,
        entrypoint: pool.entrypoint,
        network: pool.network.flatten(),
        env: pool.env,
        ..CreateSandboxRequest::default()
    })
}

/// Checks a pool configuration the way a create checks its body, without creating anything
/// (the image must resolve: a pool of a missing image would fail forever).
async fn check(app: &App, ns: &str, config: &SandboxPoolRequest) -> Result<Value, ApiError> {
    let value = serde_json::to_value(config)
        .map_err(|e| ApiError::bad_request(format!("invalid pool: {e}")))?;
    hutch_state::pools::validate(&value)?;
    if config.timeout_secs < 0 {
        return Err(ApiError::bad_request("timeout_secs must not be negative"));
    }
    let body = sandbox_body(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    create_params(app, ns.to_string(), body).await?;
    Ok(value)
}

async fn create(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    req: Request,
) -> Result<Response, ApiError> {
    let body: SandboxPoolRequest = json_body(req.into_body()).await?;
    let config = check(&app, &ns, &body).await?;
    let row = app.pools.create(&ns, config)?;
    Ok(reply(
        StatusCode::OK,
        &CreateSandboxPoolResponse {
            pool_id: row.id,
            namespace: row.namespace,
        },
    ))
}

async fn list(State(app): State<Arc<App>>, Scoped { ns }: Scoped) -> Result<Response, ApiError> {
    let pools = app
        .pools
        .list(&ns)?
        .iter()
        .map(|row| pool_info(&app, row))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(reply(StatusCode::OK, &ListSandboxPoolsResponse { pools }))
}

async fn get_one(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Path(PoolPath { id }): Path<PoolPath>,
) -> Result<Response, ApiError> {
    let row = app.pools.get(&ns, &id)?;
    Ok(reply(StatusCode::OK, &pool_info(&app, &row)?))
}

async fn update(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Path(PoolPath { id }): Path<PoolPath>,
    req: Request,
) -> Result<Response, ApiError> {
    let mut body: SandboxPoolRequest = json_body(req.into_body()).await?;
    let current = app.pools.get(&ns, &id)?;
    // `network` absent keeps the pool's policy; `null` clears it; an object replaces it.
    if body.network.is_none() {
        body.network = Some(
            current
                .config
                .get("network")
                .and_then(|n| serde_json::from_value::<Option<NetworkConfig>>(n.clone()).ok())
                .flatten(),
        );
    }
    let config = check(&app, &ns, &body).await?;
    let row = app.pools.update(&ns, &id, config)?;
    Ok(reply(StatusCode::OK, &pool_info(&app, &row)?))
}

async fn delete(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Path(PoolPath { id }): Path<PoolPath>,
) -> Result<Response, ApiError> {
    app.pools.delete(&ns, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn claim(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    Path(PoolPath { id }): Path<PoolPath>,
    req: Request,
) -> Result<Response, ApiError> {
    let wait = create_wait(req.headers());
    let body: ClaimSandboxRequest = json_body(req.into_body()).await?;
    app.pools.get(&ns, &id)?;
    if !body.file_systems.is_empty() {
        return Err(crate::lifecycle::unsupported(
            "file system mounts",
            "copy files in through the proxy",
        ));
    }
    let claimed = app.pools.claim(&ns, &id, wait).await?;
    let (status, sandbox) = create_answer(&claimed.row, &reach);
    Ok(reply(
        status,
        &ClaimSandboxResponse {
            sandbox,
            pool_id: id,
            warm: claimed.warm,
            claim_configuration_applied: true,
        },
    ))
}

/// A pool in the SDK's `SandboxPoolInfo` shape, with its sandboxes.
fn pool_info(app: &App, row: &PoolRow) -> Result<SandboxPoolInfo, ApiError> {
    let config: SandboxPoolRequest = serde_json::from_value(row.config.clone())
        .map_err(|e| ApiError::bad_request(format!("stored pool {}: {e}", row.id)))?;
    let (members, counts) = app.pools.members(row)?;
    let resources = config.resources.clone().unwrap_or_default();
    let (cpus, memory_mb) = crate::lifecycle::cpus_and_memory(&resources);
    Ok(SandboxPoolInfo {
        pool_id: row.id.clone(),
        namespace: row.namespace.clone(),
        image: config
            .image
            .clone()
            .unwrap_or_else(|| app.sandboxes.default_image().to_string()),
        resources: ContainerResources {
            cpus,
            memory_mb: memory_mb as i64,
            disk_mb: resources.disk_mb.map_or(0, |d| d as i64),
        },
        timeout_secs: config.timeout_secs,
        entrypoint: config.entrypoint.clone(),
        max_containers: config.max_containers,
        warm_containers: config.warm_containers,
        network_policy: config.network.clone().flatten(),
        containers: members
            .iter()
            .map(|m| PoolContainerInfo {
                id: m.sandbox_id.clone(),
                state: match (m.claimed, m.generation == row.generation, m.running) {
                    (true, _, _) => "claimed",
                    (false, false, _) => "evicting",
                    (false, true, true) => "warm",
                    (false, true, false) => "booting",
                }
                .into(),
                sandbox_id: m.claimed.then(|| m.sandbox_id.clone()),
                executor_id: "local".into(),
            })
            .collect(),
        status: PoolCounts {
            warm: counts.warm,
            booting: counts.booting,
            claimed: counts.claimed,
            evicting: counts.stale,
        },
        error: app.pools.failure(&row.id),
        generation: row.generation,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
