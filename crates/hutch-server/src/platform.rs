//! The platform API's template routes, as the `tensorlake` crate 0.5.160 calls them: one
//! router nested under `/platform/v1` (API-key scoped) and
//! `/platform/v1/organizations/{org}/projects/{project}` (scope headers; one local
//! organization and project, so the scope is accepted as given):
//!
//! - `GET    .../sandbox-templates[?pageSize=&next=]` → `{items, pagination: {next}}`
//! - `GET|DELETE .../sandbox-templates/{id}` and `.../sandbox-templates/by-name/{name}`
//! - `POST   .../sandbox-template-builds` (prepare), `GET .../sandbox-template-builds/{id}`,
//!   `POST .../sandbox-template-builds/{id}/complete` (see `hutch_state::builds`).
//! - `GET /images/v4/images`: the CAS image catalog, empty (CAS builds are not served yet).
//!
//! Templates are shared by every namespace, so any valid key may list, read and build
//! them, but deleting one, or a build that would replace one of the same name, takes an
//! admin key: a namespace key must not be able to pull a template from under others.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use hutch_api::{
    CompleteBuildRequest, ImageCatalog, Pagination, PrepareBuildRequest, TemplateList,
    TemplateListQuery,
};
use hutch_state::db::{ApiKey, TemplateRow};
use serde_json::Value;

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::lifecycle::{json_body, reply};

const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;

type Params = Path<HashMap<String, String>>;

pub fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    let templates = Router::new()
        .route("/sandbox-templates", get(list).post(create))
        .route(
            "/sandbox-templates/by-name/{name}",
            get(get_template).delete(delete_template),
        )
        .route(
            "/sandbox-templates/{id}",
            get(get_template).delete(delete_template),
        )
        .route("/sandbox-template-builds", post(prepare))
        .route("/sandbox-template-builds/{id}", get(build_status))
        .route("/sandbox-template-builds/{id}/complete", post(complete));
    router
        // The SDKs list both image families and fail if either catalog fails: the CAS
        // catalog is served, empty, until content-addressed streaming images are built here.
        .route("/images/v4/images", get(cas_catalog))
        .nest("/platform/v1", templates.clone())
        .nest(
            "/platform/v1/organizations/{org}/projects/{project}",
            templates,
        )
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> &'a str {
    params.get(name).map(String::as_str).unwrap_or_default()
}

async fn list(
    State(app): State<Arc<App>>,
    _: Caller,
    uri: Uri,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // Read as a map first, so that a repeated parameter's last value wins, as it always has.
    let query: TemplateListQuery = serde_json::to_value(raw)
        .and_then(serde_json::from_value)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let page = match &query.page_size {
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("pageSize must be 1 to {PAGE_MAX}, not {n:?}"))
            })?,
        None => PAGE_DEFAULT,
    };
    let start = match &query.next {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid page cursor {n:?}")))?,
        None => 0,
    };
    let templates = app.builds.templates();
    let all = templates.list()?;
    let answer = TemplateList {
        items: all
            .iter()
            .skip(start)
            .take(page)
            .map(|t| templates.to_api(t))
            .collect(),
        pagination: Pagination {
            next: (start + page < all.len())
                .then(|| format!("{}?pageSize={page}&next={}", uri.path(), start + page)),
        },
    };
    Ok(reply(StatusCode::OK, &answer))
}

async fn cas_catalog(_: Caller) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, &ImageCatalog::default()))
}

/// Registering a template from a sandbox snapshot needs snapshots, which are not here yet:
/// the backend's reason when it cannot checkpoint, else the server's.
async fn create(State(app): State<Arc<App>>, _: Caller) -> Result<Response, ApiError> {
    let backend = app.sandboxes.backend();
    let why = match backend
        .capabilities()
        .get(hutch_runtime::CapabilityName::SandboxCheckpoint)
    {
        hutch_runtime::Capability::Unsupported { reason } => {
            format!("the {} backend cannot: {reason}", backend.name())
        }
        hutch_runtime::Capability::Supported => "this server does not implement it yet".into(),
    };
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "unsupported_capability",
        format!(
            "registering a template from a sandbox snapshot needs snapshots ({why}); build \
             one with POST .../sandbox-template-builds"
        ),
    ))
}

/// The template a route names: `{name}` on `.../by-name/{name}`, `{id}` otherwise.
fn lookup(app: &App, p: &HashMap<String, String>) -> Result<TemplateRow, ApiError> {
    let templates = app.builds.templates();
    let (row, what) = match p.get("name") {
        Some(name) => (templates.by_name(name)?, name.as_str()),
        None => (templates.by_id(param(p, "id"))?, param(p, "id")),
    };
    Ok(row.ok_or_else(|| hutch_state::templates::template_not_found(what))?)
}

async fn get_template(
    State(app): State<Arc<App>>,
    _: Caller,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let row = lookup(&app, &p)?;
    Ok(reply(StatusCode::OK, &app.builds.templates().to_api(&row)))
}

async fn delete_template(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(p): Params,
) -> Result<Response, ApiError> {
    caller.admin("deleting a template")?;
    let templates = app.builds.templates();
    let removed = templates.remove(&lookup(&app, &p)?.id)?;
    Ok(reply(StatusCode::OK, &templates.to_api(&removed)))
}

async fn prepare(
    State(app): State<Arc<App>>,
    Caller(key): Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let body: Value = json_body(body).await?;
    if let Some(name) = body.get("name").and_then(Value::as_str) {
        refuse_replacing(&app, key.as_ref(), name)?;
    }
    let body: PrepareBuildRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid build request: {e}")))?;
    Ok(reply(StatusCode::OK, &app.builds.prepare(body)?))
}

async fn build_status(
    State(app): State<Arc<App>>,
    _: Caller,
    Path(p): Params,
) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, &app.builds.status(param(&p, "id"))?))
}

async fn complete(
    State(app): State<Arc<App>>,
    Caller(key): Caller,
    Path(p): Params,
    body: Body,
) -> Result<Response, ApiError> {
    let body: Value = json_body(body).await?;
    // Checked again at completion: another build may have registered the name meanwhile.
    if let Some(name) = app.builds.name_of(param(&p, "id"))? {
        refuse_replacing(&app, key.as_ref(), &name)?;
    }
    let body: CompleteBuildRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid completion: {e}")))?;
    let registered = app.builds.complete(param(&p, "id"), body)?;
    Ok(reply(StatusCode::OK, &registered))
}

/// A build registers its template under its name, replacing a template of that name: only
/// an admin key (or no key, where none is required) may do that.
fn refuse_replacing(app: &App, key: Option<&ApiKey>, name: &str) -> Result<(), ApiError> {
    let Some(key) = key.filter(|k| !k.is_admin()) else {
        return Ok(());
    };
    if app.builds.templates().by_name(name)?.is_some() {
        return Err(ApiError::forbidden(format!(
            "template {name:?} exists and replacing it needs an admin key; key {} is scoped \
             to namespace {:?}",
            key.id,
            key.namespace.as_deref().unwrap_or_default()
        )));
    }
    Ok(())
}
