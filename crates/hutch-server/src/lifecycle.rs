//! The lifecycle API (:8900), in the shapes the Tensorlake SDKs send and parse: one router
//! of sandbox routes, nested under `/v1/namespaces/{ns}` and served flat (`/sandboxes…`,
//! namespace `default`), plus `POST /platform/v1/keys/introspect` and `GET /openapi.json`.
//! Every sandbox route takes [`Scoped`]: the namespace checked against the caller's key once.
//!
//! The bodies are `hutch_api`'s types. They are read and parsed here rather than by
//! extractors so that every malformed, oversized or mistyped request gets a JSON error the SDK
//! can parse, never a plain-text one; answers go out through [`reply`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hutch_api::{
    ArchivedSandboxInfo, ContainerResources, CreateOutcome, CreateSandboxRequest,
    CreateSandboxResponse, ErrorDetails, Health, KeyIntrospection, ListArchivedSandboxesQuery,
    ListArchivedSandboxesResponse, ListSandboxesQuery, ListSandboxesResponse, NetworkConfig,
    PageDirection, SandboxAccepted, SandboxAction, SandboxInfo, SandboxStatus, StopSandboxRequest,
    TerminationReason, UpdateSandboxRequest,
};
use hutch_runtime::NetworkMode;
use hutch_runtime::net::NetworkPolicy;
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde_json::{Value, json};

use hutch_state::CreateParams;
use hutch_state::db::{SandboxRow, Status};

use crate::App;
use crate::auth::{Caller, Scoped};
use crate::error::ApiError;
use crate::ingress::Endpoint;

/// Largest lifecycle request body.
const BODY_LIMIT: usize = 1 << 20;
/// How much of an oversized body is read and dropped before answering.
const DRAIN_LIMIT: usize = 64 << 20;
/// How long a blocking create waits when the client states no timeout.
const DEFAULT_CREATE_WAIT: Duration = Duration::from_secs(300);
const DEFAULT_CPUS: f64 = 1.0;
const DEFAULT_MEMORY_MB: u64 = 1024;

/// The cpus and memory a create (or a pool's sandboxes) asks for, the SDK's `-1` and
/// absence both meaning the default.
pub(crate) fn cpus_and_memory(r: &hutch_api::CreateSandboxResources) -> (f64, u64) {
    let cpus = r.cpus.filter(|c| *c != -1.0).unwrap_or(DEFAULT_CPUS);
    let memory_mb = r
        .memory_mb
        .filter(|m| *m != -1)
        .map_or(DEFAULT_MEMORY_MB, |m| m as u64);
    (cpus, memory_mb)
}
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;
/// Why a pending sandbox is pending: it waits for the runtime (or for room) to start it.
const SCHEDULING: &str = "scheduling";

pub fn router(app: Arc<App>) -> Router {
    let sandboxes = Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).patch(update).delete(delete))
        .route("/sandboxes/{id}/{action}", post(lifecycle_action))
        .route("/sandboxes/{id}/egress", get(egress_log))
        .route("/archived-sandboxes", get(list_archived))
        .route("/archived-sandboxes/{id}", get(get_archived));
    let router = Router::new()
        .nest("/v1/namespaces/{ns}", sandboxes.clone())
        .merge(sandboxes)
        .route("/platform/v1/keys/introspect", post(introspect))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/healthz", get(healthz))
        .route("/hutch/v1/sandboxes/{id}/egress", get(egress_log))
        .route("/hutch/v1/default-image", get(default_image))
        .route("/hutch/v1/images/pull", post(crate::images::pull))
        .route("/hutch/v1/images/{*name}", get(image));
    crate::platform::routes(router)
        .merge(crate::pools::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::csrf::api,
        ))
        .with_state(app)
}

/// Liveness, the state directory's fingerprint, and, when the client sends a challenge, the
/// proof that this is the server over that directory (see `discovery`).
async fn healthz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let challenge = headers
        .get(hutch_state::discovery::CHALLENGE_HEADER)
        .and_then(|v| v.to_str().ok());
    let proof = match (challenge, app.published.get()) {
        (Some(challenge), Some(published)) => published.proof(challenge),
        _ => None,
    };
    let health = Health {
        status: "ok".into(),
        state_id: app.state_id.clone(),
        proof,
    };
    reply(StatusCode::OK, &health)
}

/// The sandbox a route names (`{id}`: an id or a name), whatever prefix it is under.
#[derive(Deserialize)]
struct SandboxPath {
    id: String,
}

#[derive(Deserialize)]
struct ActionPath {
    id: String,
    action: String,
}

/// Reads a JSON body under the limit; every failure is a typed 4xx.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::bad_request("the request body was cut short"));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= BODY_LIMIT {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    // Oversized bodies are read to the end (up to a bound) so the client sees the answer
    // instead of a connection reset mid-upload.
    if seen > BODY_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over the {BODY_LIMIT}-byte limit"),
        ));
    }
    let bytes = Bytes::from(buf);
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("invalid request body: {e}"),
        )
    })
}

/// A JSON answer. It goes through a `serde_json::Value`, so its keys come out sorted, as
/// they did when the answers were built with `json!`: the typed shapes changed no byte a
/// client sees.
pub(crate) fn reply<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_value(body) {
        Ok(value) => (status, axum::Json(value)).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("could not encode the answer: {e}"),
        )
        .into_response(),
    }
}

/// The variant of a `hutch_api` enum that `name` is on the wire, if any.
fn variant<T: serde::de::DeserializeOwned>(name: &str) -> Option<T> {
    T::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(name)).ok()
}

// ---- create ------------------------------------------------------------------------------

pub(crate) fn unsupported(feature: &str, hint: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unsupported_capability",
        format!("{feature} is not supported by this server yet: {hint}"),
    )
}

/// The network a create asks for, and the policy it runs under.
///
/// The SDK sends no `network` block by default, which means internet access; a backend
/// without networks (an old runsc, no root) then creates an offline sandbox and says so in
/// its `network_policy`. An explicit policy that needs a network there is refused, typed.
fn network_request(
    app: &App,
    network: Option<&NetworkConfig>,
) -> Result<(NetworkMode, NetworkPolicy), ApiError> {
    let policy = network.map_or_else(NetworkPolicy::default, egress);
    policy
        .parse()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if policy.is_offline() {
        return Ok((NetworkMode::None, policy));
    }
    use hutch_runtime::{Capability, CapabilityName as C};
    match app.sandboxes.backend().capabilities().get(C::NetworkEgress) {
        Capability::Supported => Ok((NetworkMode::Egress, policy)),
        Capability::Unsupported { .. } if network.is_none() => Ok((
            NetworkMode::None,
            NetworkPolicy {
                allow_internet_access: false,
                ..NetworkPolicy::default()
            },
        )),
        Capability::Unsupported { reason } => Err(unsupported(
            "network egress",
            &format!("{reason}; send {{\"allow_internet_access\": false}} for loopback only"),
        )),
    }
}

/// The most ports one sandbox exposes.
pub const MAX_EXPOSED_PORTS: usize = 64;

/// `exposed_ports` checked, sorted and deduplicated; a bad entry is named.
fn exposed_ports(ports: &[u16]) -> Result<Vec<u16>, ApiError> {
    let mut out = Vec::with_capacity(ports.len());
    for &port in ports {
        match port {
            0 => return Err(ApiError::bad_request("exposed_ports: invalid port 0")),
            crate::ingress::MANAGEMENT_PORT => {
                return Err(ApiError::bad_request(
                    "exposed_ports: port 9501 is reserved for sandbox management",
                ));
            }
            p => out.push(p),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.len() > MAX_EXPOSED_PORTS {
        return Err(ApiError::bad_request(format!(
            "exposed_ports: at most {MAX_EXPOSED_PORTS} ports, got {}",
            out.len()
        )));
    }
    Ok(out)
}

/// The exposed ports a row's spec holds.
pub fn port_list(spec: &Value) -> Vec<u16> {
    serde_json::from_value(spec["exposed_ports"].clone()).unwrap_or_default()
}

/// The endpoint a request's client reaches sandboxes at (see [`crate::ingress`]).
pub struct Reach(pub Endpoint);

impl axum::extract::FromRequestParts<Arc<App>> for Reach {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
            parts
                .headers
                .get(axum::http::header::HOST)
                .and_then(|v| v.to_str().ok())
        });
        Ok(Self(app.ingress.endpoint(host)))
    }
}

fn egress(n: &NetworkConfig) -> NetworkPolicy {
    NetworkPolicy {
        allow_internet_access: n.allow_internet_access,
        allow_out: n.allow_out.clone(),
        deny_out: n.deny_out.clone(),
    }
}

fn validate_create(body: &CreateSandboxRequest) -> Result<(), ApiError> {
    if body.snapshot_id.is_some() {
        return Err(unsupported(
            "snapshot restore",
            "create from an image instead",
        ));
    }
    if !body.file_systems.is_empty() {
        return Err(unsupported(
            "file system mounts",
            "copy files in through the proxy",
        ));
    }
    if let Some(ports) = &body.exposed_ports {
        exposed_ports(ports)?;
    }
    if body.auto_resume == Some(false) && body.name.is_none() {
        return Err(ApiError::bad_request(
            "auto_resume: false requires a named sandbox",
        ));
    }
    if let Some(r) = &body.resources {
        if r.gpus.as_ref().is_some_and(|g| !g.is_empty()) {
            return Err(unsupported("GPUs", "this host has none to give"));
        }
        if let Some(cpus) = r.cpus
            && cpus != -1.0
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(ApiError::bad_request(format!(
                "resources.cpus must be between 0 and 1024, got {cpus}"
            )));
        }
        if let Some(mb) = r.memory_mb
            && mb != -1
            && !(16..=(1 << 22)).contains(&mb)
        {
            return Err(ApiError::bad_request(format!(
                "resources.memory_mb must be between 16 and 4194304, got {mb}"
            )));
        }
    }
    if body.timeout_secs.is_some_and(|t| t < 0) {
        return Err(ApiError::bad_request("timeout_secs must not be negative"));
    }
    if body
        .entrypoint
        .as_ref()
        .is_some_and(|e| e.iter().any(|a| a.contains('\0')))
    {
        return Err(ApiError::bad_request(
            "entrypoint arguments must not contain NUL",
        ));
    }
    Ok(())
}

/// How long a blocking create may hold the request: the client's timeout less its grace.
pub(crate) fn create_wait(headers: &HeaderMap) -> Duration {
    let ms = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match ms("x-tensorlake-request-timeout-ms") {
        Some(timeout) => {
            let grace = ms("x-tensorlake-request-timeout-grace-ms")
                .unwrap_or_else(|| (timeout / 4).min(5000));
            Duration::from_millis(timeout.saturating_sub(grace).max(100))
        }
        None => DEFAULT_CREATE_WAIT,
    }
}

async fn create(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    req: Request,
) -> Result<Response, ApiError> {
    let wait_for = create_wait(req.headers());
    let body: CreateSandboxRequest = json_body(req.into_body()).await?;
    let wait = body.wait;
    let params = create_params(&app, ns, body).await?;
    let row = app.sandboxes.create(params)?;
    if wait == Some(false) {
        let accepted = SandboxAccepted {
            sandbox_id: row.id,
            state: SandboxStatus::Pending,
            pending_reason: Some(SCHEDULING.into()),
            name: row.name,
        };
        return Ok(reply(StatusCode::ACCEPTED, &accepted));
    }
    let row = app.sandboxes.settle(&row.id, wait_for).await?;
    let (status, answer) = create_answer(&row, &reach);
    Ok(reply(status, &answer))
}

/// The answer to a create (or a claim) that waited: running, still pending (timeout) or
/// failed, in the SDK's `CreateSandboxResponse` shape.
pub(crate) fn create_answer(
    row: &SandboxRow,
    reach: &Endpoint,
) -> (StatusCode, CreateSandboxResponse) {
    let mut answer = CreateSandboxResponse {
        sandbox_id: row.id.clone(),
        status: CreateOutcome::Running,
        name: row.name.clone(),
        sandbox_url: None,
        ingress_endpoint: None,
        reason: None,
        termination_reason: None,
        error_details: None,
    };
    let status = match row.status {
        Status::Running => {
            answer.sandbox_url = Some(reach.sandbox_url(&row.id));
            answer.ingress_endpoint = Some(reach.ingress_endpoint.clone());
            StatusCode::OK
        }
        Status::Pending => {
            answer.status = CreateOutcome::Timeout;
            StatusCode::GATEWAY_TIMEOUT
        }
        Status::Terminated => {
            answer.status = CreateOutcome::Failed;
            answer.reason = termination_reason(row);
            answer.termination_reason = answer.reason;
            answer.error_details = Some(ErrorDetails {
                message: row.error.clone(),
            });
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    (status, answer)
}

/// A create body made into the state's create parameters: validated, its network policy
/// parsed, its image resolved (a template, the store, a registry pull, or the default).
/// Pools make their sandboxes through here too.
pub(crate) async fn create_params(
    app: &App,
    ns: String,
    body: CreateSandboxRequest,
) -> Result<CreateParams, ApiError> {
    validate_create(&body)?;
    let (network, policy) = network_request(app, body.network.as_ref())?;
    let resources = body.resources.unwrap_or_default();
    let (cpus, memory_mb) = cpus_and_memory(&resources);
    let mut spec = json!({
        "cpus": cpus,
        "memory_mb": memory_mb,
        "disk_mb": resources.disk_mb,
        "entrypoint": body.entrypoint,
        "allow_internet_access": policy.allow_internet_access,
        "allow_out": policy.allow_out,
        "deny_out": policy.deny_out,
        "network": network,
        "auto_resume": body.auto_resume.unwrap_or(true),
        "allow_unauthenticated_access": body.allow_unauthenticated_access.unwrap_or(false),
        "exposed_ports": body.exposed_ports.as_deref().map(exposed_ports).transpose()?.unwrap_or_default(),
        "idle_timeout_secs": body.idle_timeout_secs.unwrap_or(0),
    });
    // A registered template (by name or id) first, then an image in the store or a registry.
    let template = match &body.image {
        Some(reference) => app.builds.templates().find(reference)?,
        None => None,
    };
    if let Some(t) = &template {
        spec["template"] = json!({"id": t.id, "name": t.name});
    }
    // The disk asked for, else the template's (the SDK's build `disk_mb`).
    let disk_mb = resources.disk_mb.or_else(|| {
        template
            .as_ref()
            .map(|t| t.rootfs_disk_bytes.div_ceil(1 << 20))
            .filter(|mb| *mb > 0)
    });
    if let Some(mb) = disk_mb {
        use hutch_runtime::gvisor::rootfs::{MAX_DISK_MB, MIN_DISK_MB};
        if !(MIN_DISK_MB..=MAX_DISK_MB).contains(&mb) {
            return Err(ApiError::bad_request(format!(
                "resources.disk_mb must be {MIN_DISK_MB} to {MAX_DISK_MB}, got {mb}"
            )));
        }
        spec["disk_mb"] = mb.into();
    }
    let image = match (&template, &body.image) {
        (Some(t), _) => Some(t.image.clone()),
        (None, Some(reference)) => Some(crate::images::ensure(app, reference).await?),
        // The default image: built here, or pulled if `--default-image` names a registry's.
        (None, None) => Some(crate::images::ensure(app, app.sandboxes.default_image()).await?),
    };
    // A sandbox from a template starts its ENTRYPOINT and CMD unless told otherwise.
    let entrypoint = match (&body.entrypoint, &template) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(t)) => {
            let image = app.sandboxes.image(Some(&t.image))?;
            let argv: Vec<String> = image
                .config
                .entrypoint
                .unwrap_or_default()
                .into_iter()
                .chain(image.config.cmd.unwrap_or_default())
                .collect();
            (!argv.is_empty()).then_some(argv)
        }
        (None, None) => None,
    };
    Ok(CreateParams {
        namespace: ns,
        name: body.name,
        image,
        cpus: Some(cpus),
        memory_mb: Some(memory_mb),
        disk_mb,
        timeout_secs: body.timeout_secs,
        entrypoint,
        network,
        network_policy: policy,
        max_pending_secs: body.max_pending_secs,
        env: body
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        spec,
        pool: None,
    })
}

// ---- get / list --------------------------------------------------------------------------

/// A row in the SDK's `SandboxInfo` shape. The create request as accepted (the row's
/// `spec`) holds what the row's columns do not.
pub fn sandbox_info(row: &SandboxRow, reach: &Endpoint) -> SandboxInfo {
    let spec = &row.spec;
    let strings = |v: &Value| serde_json::from_value::<Vec<String>>(v.clone()).ok();
    let mut info = SandboxInfo {
        sandbox_id: row.id.clone(),
        namespace: row.namespace.clone(),
        status: sandbox_status(row.status),
        name: row.name.clone(),
        // A sandbox from a template shows the template's name, as it was asked for.
        image: spec["template"]["name"]
            .as_str()
            .unwrap_or(&row.image)
            .to_string(),
        runtime: "gvisor".into(),
        resources: ContainerResources {
            cpus: spec["cpus"].as_f64().unwrap_or(DEFAULT_CPUS),
            memory_mb: spec["memory_mb"]
                .as_i64()
                .unwrap_or(DEFAULT_MEMORY_MB as i64),
            disk_mb: spec["disk_mb"].as_i64().unwrap_or(0),
        },
        timeout_secs: row.timeout_secs,
        entrypoint: spec.get("entrypoint").and_then(strings),
        network_policy: NetworkConfig {
            allow_internet_access: spec["allow_internet_access"].as_bool().unwrap_or(false),
            allow_out: spec.get("allow_out").and_then(strings).unwrap_or_default(),
            deny_out: spec.get("deny_out").and_then(strings).unwrap_or_default(),
        },
        auto_resume: spec["auto_resume"].as_bool().unwrap_or(true),
        allow_unauthenticated_access: spec["allow_unauthenticated_access"]
            .as_bool()
            .unwrap_or(false),
        exposed_ports: port_list(spec),
        file_systems: Vec::new(),
        created_at: row.created_at,
        sandbox_url: None,
        ingress_endpoint: None,
        pending_reason: None,
        termination_reason: None,
        outcome: None,
        terminated_at: None,
        error_details: None,
        template_id: spec["template"]["id"].as_str().map(str::to_string),
        pool_id: spec["pool_id"].as_str().map(str::to_string),
        resource_resize: serde_json::from_value(spec["resource_resize"].clone()).ok(),
        idle_timeout_secs: spec["idle_timeout_secs"].as_u64().filter(|s| *s > 0),
    };
    match row.status {
        Status::Running => {
            info.sandbox_url = Some(reach.sandbox_url(&row.id));
            info.ingress_endpoint = Some(reach.ingress_endpoint.clone());
        }
        Status::Pending => info.pending_reason = Some(SCHEDULING.into()),
        Status::Terminated => {
            info.termination_reason = termination_reason(row);
            info.outcome = info.termination_reason;
            info.terminated_at = row.terminated_at;
            info.error_details = row.error.clone().map(|error| ErrorDetails {
                message: Some(error),
            });
        }
    }
    info
}

fn sandbox_status(status: Status) -> SandboxStatus {
    match status {
        Status::Pending => SandboxStatus::Pending,
        Status::Running => SandboxStatus::Running,
        Status::Terminated => SandboxStatus::Terminated,
    }
}

/// Why an ended sandbox ended. The state records one of [`TerminationReason`]'s names with
/// every end (`Db::mark_terminated`), so only a row written by something else lacks one.
fn termination_reason(row: &SandboxRow) -> Option<TerminationReason> {
    let recorded = row.reason.as_deref()?;
    let reason = variant(recorded);
    if reason.is_none() {
        tracing::warn!(sandbox = %row.id, reason = recorded, "unknown termination reason");
    }
    reason
}

/// The default image and where its build stands.
async fn default_image(State(app): State<Arc<App>>, _: Caller) -> Response {
    axum::Json(app.sandboxes.default_images().status()).into_response()
}

/// The image record a client needs to run the image's own ENTRYPOINT and CMD.
async fn image(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    _: Caller,
) -> Result<Response, ApiError> {
    // As a create resolves it: a template, else the image's store name.
    let name = match app.builds.templates().find(&name)? {
        Some(t) => t.image,
        None => hutch_registry::store_name(&name),
    };
    let name = app.sandboxes.image_name(Some(&name));
    // The default image may still be building: its record comes when it is built.
    let images = app.sandboxes.default_images();
    if images.builds(&name) {
        images.ready().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "default_image_failed",
                format!("the default image could not be built: {e}"),
            )
        })?;
    }
    let image = app.sandboxes.image(Some(&name))?;
    Ok(axum::Json(image).into_response())
}

async fn get_one(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    Path(SandboxPath { id }): Path<SandboxPath>,
) -> Result<Response, ApiError> {
    let row = app.sandboxes.get(&ns, &id)?;
    if row.status == Status::Running {
        app.sandboxes.touch(&row.id);
    }
    Ok(reply(StatusCode::OK, &sandbox_info(&row, &reach)))
}

async fn list(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    query: Result<Query<ListSandboxesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (limit, after) = page(q.limit, q.cursor.as_deref())?;
    let rows = app.sandboxes.list(
        &ns,
        after.as_ref().map(|(t, id)| (*t, id.as_str())),
        limit + 1,
        q.include_terminated,
    )?;
    let more = rows.len() > limit;
    let page = &rows[..rows.len().min(limit)];
    let answer = ListSandboxesResponse {
        sandboxes: page.iter().map(|r| sandbox_info(r, &reach)).collect(),
        cursor: page
            .last()
            .filter(|_| more)
            .map(|last| format!("{}.{}", last.created_at, last.id)),
    };
    Ok(reply(StatusCode::OK, &answer))
}

/// `archived-sandboxes`: the namespace's ended sandboxes, newest first, a page at a time
/// either way from a cursor.
async fn list_archived(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    query: Result<Query<ListArchivedSandboxesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (limit, cursor) = page(q.limit, q.cursor.as_deref())?;
    let older = q.direction.unwrap_or_default() == PageDirection::Forward;
    let (rows, more) = app.sandboxes.archived(
        &ns,
        cursor.as_ref().map(|(t, id)| (*t, id.as_str())),
        older,
        limit,
    )?;
    let key = |r: &SandboxRow| format!("{}.{}", r.terminated_at.unwrap_or(0), r.id);
    // Newer pages exist when this one went older from a cursor, or went newer and found
    // more; older ones likewise.
    let (newer, older_exist) = if older {
        (cursor.is_some(), more)
    } else {
        (more, cursor.is_some())
    };
    let answer = ListArchivedSandboxesResponse {
        prev_cursor: rows.first().filter(|_| newer).map(key),
        next_cursor: rows.last().filter(|_| older_exist).map(key),
        sandboxes: rows.iter().map(|r| archived_info(r, &reach)).collect(),
    };
    Ok(reply(StatusCode::OK, &answer))
}

fn archived_info(row: &SandboxRow, reach: &Endpoint) -> ArchivedSandboxInfo {
    ArchivedSandboxInfo {
        sandbox: sandbox_info(row, reach),
        archived_at: row.terminated_at.unwrap_or(0).max(0) as u64,
    }
}

/// One ended sandbox by id or name; a live one is not archived (404).
async fn get_archived(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    Path(SandboxPath { id }): Path<SandboxPath>,
) -> Result<Response, ApiError> {
    let row = app.sandboxes.get(&ns, &id)?;
    if row.status != Status::Terminated {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            format!("sandbox {id} is {} and not archived", row.status.as_str()),
        ));
    }
    Ok(reply(StatusCode::OK, &archived_info(&row, &reach)))
}

/// A page's size (clamped) and where it starts (`<ms>.<id>`; empty or absent: the start).
fn page(
    limit: Option<usize>,
    cursor: Option<&str>,
) -> Result<(usize, Option<(i64, String)>), ApiError> {
    let limit = limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let cursor = cursor
        .filter(|c| !c.is_empty())
        .map(decode_cursor)
        .transpose()?;
    Ok((limit, cursor))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    cursor
        .split_once('.')
        .and_then(|(t, id)| Some((t.parse().ok()?, id.to_string())))
        .ok_or_else(|| ApiError::bad_request(format!("invalid cursor {cursor:?}")))
}

// ---- update / delete / actions -------------------------------------------------------------

async fn update(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    Path(SandboxPath { id }): Path<SandboxPath>,
    req: Request,
) -> Result<Response, ApiError> {
    let body: UpdateSandboxRequest = json_body(req.into_body()).await?;
    if let Some(resources) = &body.resources {
        let row = resize(&app, &ns, &id, &body, resources).await?;
        return Ok(reply(StatusCode::OK, &sandbox_info(&row, &reach)));
    }
    let ports = body
        .exposed_ports
        .as_deref()
        .map(exposed_ports)
        .transpose()?;
    // `null` (the SDK's CLEAR_NETWORK_POLICY) is unrestricted egress. Checked before
    // anything changes: nothing is half-applied.
    let policy = match &body.network {
        None => None,
        Some(None) => Some(NetworkPolicy::default()),
        Some(Some(n)) => Some(egress(n)),
    };
    if let Some(p) = &policy {
        p.parse()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    // Accepted for the SDK's sake; nothing depends on it until suspend exists.
    let _ = body.auto_resume;
    // The network first: it is what can still fail (a sandbox without a network).
    if let Some(policy) = &policy {
        app.sandboxes.set_network(&ns, &id, policy).await?;
    }
    app.sandboxes.set_port_access(
        &ns,
        &id,
        ports.as_deref(),
        body.allow_unauthenticated_access,
    )?;
    if let Some(idle) = body.idle_timeout_secs {
        app.sandboxes.set_idle_timeout(&ns, &id, idle)?;
    }
    let row = app
        .sandboxes
        .update(&ns, &id, body.name.as_deref(), body.timeout_secs)?;
    app.sandboxes.touch(&row.id);
    Ok(reply(StatusCode::OK, &sandbox_info(&row, &reach)))
}

/// A live resize: cpus and memory, alone in its PATCH (as the SDK sends it).
async fn resize(
    app: &App,
    ns: &str,
    id: &str,
    body: &UpdateSandboxRequest,
    resources: &hutch_api::CreateSandboxResources,
) -> Result<SandboxRow, ApiError> {
    let alone = UpdateSandboxRequest {
        resources: body.resources.clone(),
        ..UpdateSandboxRequest::default()
    };
    if *body != alone {
        return Err(ApiError::bad_request(
            "resources cannot be combined with other fields in one update",
        ));
    }
    if resources.gpus.as_ref().is_some_and(|g| !g.is_empty()) {
        return Err(unsupported("GPUs", "this host has none to give"));
    }
    let current = app.sandboxes.get(ns, id)?;
    if let Some(disk) = resources.disk_mb
        && Some(disk) != current.spec["disk_mb"].as_u64()
    {
        return Err(unsupported(
            "resizing the disk of a running sandbox",
            "create a new sandbox with the disk_mb you need",
        ));
    }
    let memory_mb = match resources.memory_mb {
        Some(m) if m <= 0 => {
            return Err(ApiError::bad_request(format!(
                "resources.memory_mb must be positive, got {m}"
            )));
        }
        m => m.map(|m| m as u64),
    };
    if resources.cpus.is_none() && memory_mb.is_none() {
        return Err(ApiError::bad_request(
            "resources must name cpus or memory_mb",
        ));
    }
    app.sandboxes.touch(&current.id);
    Ok(app
        .sandboxes
        .resize(ns, id, resources.cpus, memory_mb)
        .await?)
}

#[derive(Deserialize)]
struct EgressQuery {
    #[serde(default)]
    after: u64,
}

/// The sandbox's connection attempts (the egress audit log), after `?after=`.
async fn egress_log(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Path(SandboxPath { id }): Path<SandboxPath>,
    query: Result<Query<EgressQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let entries: Vec<hutch_api::EgressEntry> = app
        .sandboxes
        .egress(&ns, &id, q.after)
        .await?
        .into_iter()
        .map(|e| hutch_api::EgressEntry {
            seq: e.seq,
            time_ms: e.time_ms,
            protocol: e.protocol,
            ip: e.ip.to_string(),
            port: e.port,
            hostname: e.hostname,
            verdict: match e.verdict {
                hutch_runtime::net::audit::Verdict::Allowed => hutch_api::EgressVerdict::Allowed,
                hutch_runtime::net::audit::Verdict::Denied => hutch_api::EgressVerdict::Denied,
            },
            bytes: e.bytes,
        })
        .collect();
    let last_seq = entries.last().map_or(q.after, |e| e.seq);
    Ok(reply(
        StatusCode::OK,
        &hutch_api::EgressLog { entries, last_seq },
    ))
}

async fn delete(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    Path(SandboxPath { id }): Path<SandboxPath>,
) -> Result<Response, ApiError> {
    let row = app.sandboxes.delete(&ns, &id).await?;
    Ok(reply(StatusCode::OK, &sandbox_info(&row, &reach)))
}

/// The longest grace period a stop may ask for, and the one it gets by default.
const MAX_STOP_GRACE_SECS: u64 = 300;
const DEFAULT_STOP_GRACE_SECS: u64 = 10;

/// Stop and keepalive; the lifecycle actions this server does not offer yet get a typed
/// refusal after the sandbox is found (so an unknown sandbox is still a 404 the SDK maps to
/// not-found).
async fn lifecycle_action(
    State(app): State<Arc<App>>,
    Scoped { ns }: Scoped,
    Reach(reach): Reach,
    Path(ActionPath { id, action }): Path<ActionPath>,
    req: Request,
) -> Result<Response, ApiError> {
    use hutch_runtime::{Capability, CapabilityName as C};
    let Some(known) = variant::<SandboxAction>(&action) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no action {action:?}"),
        ));
    };
    // Stop and keepalive are served here; the others need a backend capability each (file
    // system mounts need the server first).
    let (feature, capability) = match known {
        SandboxAction::Stop => {
            let body: StopSandboxRequest = json_body(req.into_body()).await?;
            let grace = body.grace_secs.unwrap_or(DEFAULT_STOP_GRACE_SECS);
            if grace > MAX_STOP_GRACE_SECS {
                return Err(ApiError::bad_request(format!(
                    "grace_secs must be at most {MAX_STOP_GRACE_SECS}, got {grace}"
                )));
            }
            let row = app
                .sandboxes
                .stop(&ns, &id, Duration::from_secs(grace))
                .await?;
            return Ok(reply(StatusCode::OK, &sandbox_info(&row, &reach)));
        }
        SandboxAction::Keepalive => {
            let row = app.sandboxes.get(&ns, &id)?;
            app.sandboxes.touch(&row.id);
            return Ok(reply(StatusCode::OK, &sandbox_info(&row, &reach)));
        }
        SandboxAction::Suspend | SandboxAction::Resume => {
            ("suspend and resume", Some(C::SandboxSuspend))
        }
        SandboxAction::Snapshot | SandboxAction::Snapshots => {
            ("snapshots", Some(C::SandboxCheckpoint))
        }
        SandboxAction::Copy => ("sandbox copy", Some(C::SandboxRestore)),
        SandboxAction::FileSystems => ("file system mounts", None),
    };
    app.sandboxes.get(&ns, &id)?;
    // The backend's own reason when it lacks the capability; none of these has a route
    // yet, so a backend that has it still gets a 501, saying the server is what lacks.
    let backend = app.sandboxes.backend();
    let why = match capability.map(|c| backend.capabilities().get(c)) {
        Some(Capability::Unsupported { reason }) => {
            format!("the {} backend cannot: {reason}", backend.name())
        }
        _ => "this server does not implement it yet".to_string(),
    };
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "unsupported_capability",
        format!("{feature} is not supported: {why}"),
    ))
}

// ---- keys --------------------------------------------------------------------------------

async fn introspect(Caller(key): Caller, headers: HeaderMap) -> Result<Response, ApiError> {
    match key {
        Some(key) => Ok(reply(
            StatusCode::OK,
            &KeyIntrospection::local(Some(key.id), Some(key.name)),
        )),
        None if !headers.contains_key(axum::http::header::AUTHORIZATION) => Err(
            ApiError::unauthorized("no API key presented: send Authorization: Bearer <key>"),
        ),
        // Another service's key, on a server that does not require keys (loopback): the
        // one local scope, as SDK build flows that introspect expect.
        None => Ok(reply(StatusCode::OK, &KeyIntrospection::local(None, None))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_create_answers_before_the_client_gives_up() {
        let mut h = HeaderMap::new();
        assert_eq!(create_wait(&h), DEFAULT_CREATE_WAIT);
        h.insert("x-tensorlake-request-timeout-ms", "8000".parse().unwrap());
        assert_eq!(create_wait(&h), Duration::from_millis(6000));
        h.insert(
            "x-tensorlake-request-timeout-grace-ms",
            "5000".parse().unwrap(),
        );
        assert_eq!(create_wait(&h), Duration::from_millis(3000));
    }

    #[tokio::test]
    async fn an_ended_sandbox_answers_byte_for_byte_as_before_the_types() {
        // What `json!` wrote before the answers were typed: keys sorted, no absent fields.
        let row = SandboxRow {
            id: "sbx1".into(),
            namespace: "default".into(),
            name: Some("web".into()),
            image: "hutch-template:tpl_1".into(),
            spec: json!({
                "cpus": 0.5, "memory_mb": 256, "disk_mb": null, "entrypoint": ["sleep", "1"],
                "allow_internet_access": false, "deny_out": ["10.0.0.0/8"], "auto_resume": true,
                "allow_unauthenticated_access": false, "template": {"id": "tpl_1", "name": "py"},
            }),
            status: Status::Terminated,
            reason: Some("timeout".into()),
            error: Some("boom".into()),
            created_at: 5,
            started_at: Some(6),
            terminated_at: Some(9),
            timeout_secs: 60,
        };
        let reach = crate::ingress::Ingress::new(None, "127.0.0.1:9443".parse().unwrap())
            .unwrap()
            .endpoint(None);
        let answer = reply(StatusCode::OK, &sandbox_info(&row, &reach));
        let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"allow_unauthenticated_access":false,"auto_resume":true,"created_at":5,"#
                .to_owned()
                + r#""entrypoint":["sleep","1"],"error_details":{"message":"boom"},"#
                + r#""exposed_ports":[],"#
                + r#""file_systems":[],"image":"py","name":"web","namespace":"default","#
                + r#""network_policy":{"allow_internet_access":false,"allow_out":[],"#
                + r#""deny_out":["10.0.0.0/8"]},"outcome":"timeout","#
                + r#""resources":{"cpus":0.5,"disk_mb":0,"memory_mb":256},"runtime":"gvisor","#
                + r#""sandbox_id":"sbx1","status":"terminated","template_id":"tpl_1","#
                + r#""terminated_at":9,"termination_reason":"timeout","timeout_secs":60}"#
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor("17.abc").unwrap(), (17, "abc".to_string()));
        assert!(decode_cursor("nope").is_err());
    }
}
