//! `GET /openapi.json`: the API listener's routes, described for generators and humans.
//!
//! The schemas are generated from the `hutch-api` types the routes read and answer (and the
//! store's image record), so a body shape cannot drift from its description. The paths are
//! declared here, once per route: the flat lifecycle twins (`/sandboxes...`, namespace
//! `default`) and the organization/project-scoped platform twins are derived from the
//! namespaced and API-key-scoped forms. `crates/hutch-cli/tests/openapi_routes.rs` checks the
//! document against a running server's router both ways.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document is the same for the server's whole life: made once, on the first request.
pub async fn document() -> impl IntoResponse {
    static DOCUMENT: LazyLock<Vec<u8>> =
        LazyLock::new(|| serde_json::to_vec(&spec()).unwrap_or_default());
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_slice())
}

/// Every route may also answer these; the document says so once, in its description.
const DESCRIPTION: &str = "Tensorlake-compatible sandbox lifecycle. The sandbox proxy (default \
:9443) forwards /api/v1/* to each sandbox's agent, routed by Host: <id>.local, Host: \
<name>.<namespace>.local or X-Tensorlake-Sandbox-Id. Every route may answer 401 (no or invalid \
key), 403 `forbidden` (the key's namespace scope does not cover the request; deleting or \
replacing templates takes an admin key) or `origin_not_allowed` (a foreign Origin), 415 (a \
POST/PUT/PATCH body that is not application/json) and 421 (a Host other than loopback, \
localhost, *.localhost, *.local or the server's --public-url).";

#[derive(OpenApi)]
#[openapi(
    info(title = "Hutch lifecycle API"),
    paths(
        routes::create_sandbox,
        routes::list_sandboxes,
        routes::get_sandbox,
        routes::update_sandbox,
        routes::delete_sandbox,
        routes::sandbox_action,
        routes::sandbox_egress,
        routes::hutch_sandbox_egress,
        routes::default_image,
        routes::list_archived,
        routes::get_archived,
        routes::create_pool,
        routes::list_pools,
        routes::get_pool,
        routes::update_pool,
        routes::delete_pool,
        routes::claim_pool,
        routes::introspect_key,
        routes::openapi_document,
        routes::healthz,
        routes::pull_image,
        routes::get_image,
        routes::cas_catalog,
        routes::list_templates,
        routes::create_template,
        routes::get_template,
        routes::delete_template,
        routes::get_template_by_name,
        routes::delete_template_by_name,
        routes::prepare_build,
        routes::get_build,
        routes::complete_build,
    ),
    // Path parameters' schemas are not collected from the paths as bodies' are.
    components(schemas(hutch_api::SandboxAction, hutch_api::PageDirection)),
    modifiers(&Bearer),
    security((), ("bearer" = [])),
)]
struct Document;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

const NAMESPACED: &str = "/v1/namespaces/{ns}";
const PLATFORM: &str = "/platform/v1";
const SCOPED: &str = "/platform/v1/organizations/{org}/projects/{project}";

/// The whole document, twins included.
pub fn spec() -> Value {
    let mut openapi = Document::openapi();
    openapi.info.version = env!("CARGO_PKG_VERSION").into();
    openapi.info.description = Some(DESCRIPTION.into());
    let mut doc = serde_json::to_value(&openapi).unwrap_or_default();
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    let mut twins = Vec::new();
    for (path, item) in paths.iter() {
        if let Some(rest) = path.strip_prefix(NAMESPACED) {
            twins.push((
                rest.to_string(),
                twin(item, "flat", &|params| params.retain(|p| p["name"] != "ns")),
            ));
        } else if let Some(rest) = path.strip_prefix(PLATFORM)
            && rest.starts_with("/sandbox-template")
        {
            twins.push((
                format!("{SCOPED}{rest}"),
                twin(item, "scoped", &|params| {
                    params.splice(0..0, [path_param("org"), path_param("project")]);
                }),
            ));
        }
    }
    paths.extend(twins);
    doc
}

/// A copy of `item` whose operations have their parameters edited by `edit` and their
/// operation ids suffixed (ids are unique in a document).
fn twin(item: &Value, suffix: &str, edit: &dyn Fn(&mut Vec<Value>)) -> Value {
    let mut item = item.clone();
    if let Some(operations) = item.as_object_mut() {
        for operation in operations.values_mut() {
            if let Some(id) = operation["operationId"].as_str() {
                operation["operationId"] = Value::String(format!("{id}_{suffix}"));
            }
            let mut params = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            edit(&mut params);
            operation["parameters"] = Value::Array(params);
        }
    }
    item
}

fn path_param(name: &str) -> Value {
    serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

/// The routes, described; the handlers that serve them are in the router. These functions
/// only carry `utoipa::path` attributes and are never called.
#[allow(dead_code)]
mod routes {
    use hutch_api::{
        CompleteBuildRequest, CreateSandboxRequest, CreateSandboxResponse, ErrorBody, Health,
        ImageCatalog, KeyIntrospection, ListSandboxesQuery, ListSandboxesResponse,
        PrepareBuildRequest, PrepareBuildResponse, PullImageRequest, SandboxAccepted,
        SandboxAction, SandboxInfo, Template, TemplateBuild, TemplateList, TemplateListQuery,
        UpdateSandboxRequest,
    };

    #[utoipa::path(
        post,
        path = "/v1/namespaces/{ns}/sandboxes",
        tag = "lifecycle",
        summary = "Create a sandbox (blocking unless wait=false)",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$")),
        request_body = CreateSandboxRequest,
        responses(
            (status = 200, description = "running", body = CreateSandboxResponse),
            (status = 202, description = "accepted (wait=false)", body = SandboxAccepted),
            (status = 400, description = "invalid request or unsupported feature", body = ErrorBody),
            (status = 404, description = "image not found", body = ErrorBody),
            (status = 409, description = "name taken", body = ErrorBody),
            (status = 413, description = "body over 1 MiB", body = ErrorBody),
            (status = 422, description = "failed to start", body = CreateSandboxResponse),
            (status = 429, description = "at capacity with the queue full", body = ErrorBody),
            (status = 504, description = "still pending when the client's timeout ran out", body = CreateSandboxResponse),
        )
    )]
    fn create_sandbox() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/sandboxes",
        tag = "lifecycle",
        summary = "List sandboxes, oldest first",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"), ListSandboxesQuery),
        responses(
            (status = 200, description = "a page", body = ListSandboxesResponse),
            (status = 400, description = "invalid namespace or query", body = ErrorBody),
        )
    )]
    fn list_sandboxes() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/sandboxes/{id}",
        tag = "lifecycle",
        summary = "Get a sandbox by id or name",
        params(
            ("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"),
            ("id" = String, Path, description = "sandbox id or name"),
        ),
        responses(
            (status = 200, description = "the sandbox", body = SandboxInfo),
            (status = 404, description = "unknown sandbox", body = ErrorBody),
        )
    )]
    fn get_sandbox() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/sandboxes/{id}/egress",
        tag = "hutch",
        summary = "The sandbox's connection attempts (egress audit log): time, destination, \
                   host name when its resolver answered it, verdict, bytes once ended",
        params(
            ("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"),
            ("id" = String, Path, description = "sandbox id or name"),
            ("after" = Option<u64>, Query, description = "only entries after this sequence number"),
        ),
        responses(
            (status = 200, description = "the entries, oldest first", body = hutch_api::EgressLog),
            (status = 404, description = "unknown sandbox", body = ErrorBody),
            (status = 501, description = "this server does not read the audit log", body = ErrorBody),
        )
    )]
    fn sandbox_egress() {}

    #[utoipa::path(
        get,
        path = "/hutch/v1/sandboxes/{id}/egress",
        tag = "hutch",
        summary = "The egress audit log of a sandbox of namespace `default`",
        params(
            ("id" = String, Path, description = "sandbox id or name"),
            ("after" = Option<u64>, Query, description = "only entries after this sequence number"),
        ),
        responses(
            (status = 200, description = "the entries, oldest first", body = hutch_api::EgressLog),
            (status = 404, description = "unknown sandbox", body = ErrorBody),
        )
    )]
    fn hutch_sandbox_egress() {}

    #[utoipa::path(
        get,
        path = "/hutch/v1/default-image",
        tag = "hutch",
        summary = "The image creates that name none get, and its build (phase by phase while \
                   it runs; creates that need it wait, pending)",
        responses(
            (status = 200, description = "its state", body = hutch_api::DefaultImageStatus),
        )
    )]
    fn default_image() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/archived-sandboxes",
        tag = "lifecycle",
        summary = "Ended sandboxes, newest first (kept for the retention, at most 10 000)",
        params(
            ("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"),
            hutch_api::ListArchivedSandboxesQuery,
        ),
        responses(
            (status = 200, description = "a page", body = hutch_api::ListArchivedSandboxesResponse),
            (status = 400, description = "invalid cursor or limit", body = ErrorBody),
        )
    )]
    fn list_archived() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/archived-sandboxes/{id}",
        tag = "lifecycle",
        summary = "One ended sandbox",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"), ("id" = String, Path)),
        responses(
            (status = 200, description = "the sandbox", body = hutch_api::ArchivedSandboxInfo),
            (status = 404, description = "unknown, or not ended", body = ErrorBody),
        )
    )]
    fn get_archived() {}

    #[utoipa::path(
        post,
        path = "/v1/namespaces/{ns}/sandbox-pools",
        tag = "pools",
        summary = "Create a warm pool: `warm_containers` sandboxes kept booted, at most \
                   `max_containers` in all",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$")),
        request_body = hutch_api::SandboxPoolRequest,
        responses(
            (status = 200, description = "created", body = hutch_api::CreateSandboxPoolResponse),
            (status = 400, description = "invalid configuration (bounds, image, network)", body = ErrorBody),
        )
    )]
    fn create_pool() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/sandbox-pools",
        tag = "pools",
        summary = "The namespace's pools, with their sandboxes and counts",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$")),
        responses((status = 200, description = "the pools", body = hutch_api::ListSandboxPoolsResponse))
    )]
    fn list_pools() {}

    #[utoipa::path(
        get,
        path = "/v1/namespaces/{ns}/sandbox-pools/{id}",
        tag = "pools",
        summary = "A pool: configuration, sandboxes (warm, booting, claimed, evicting), counts",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"), ("id" = String, Path)),
        responses(
            (status = 200, description = "the pool", body = hutch_api::SandboxPoolInfo),
            (status = 404, description = "unknown pool", body = ErrorBody),
        )
    )]
    fn get_pool() {}

    #[utoipa::path(
        put,
        path = "/v1/namespaces/{ns}/sandbox-pools/{id}",
        tag = "pools",
        summary = "Replace a pool's configuration: unclaimed sandboxes are evicted and \
                   refilled, claimed ones keep theirs",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"), ("id" = String, Path)),
        request_body = hutch_api::SandboxPoolRequest,
        responses(
            (status = 200, description = "the pool", body = hutch_api::SandboxPoolInfo),
            (status = 404, description = "unknown pool", body = ErrorBody),
        )
    )]
    fn update_pool() {}

    #[utoipa::path(
        delete,
        path = "/v1/namespaces/{ns}/sandbox-pools/{id}",
        tag = "pools",
        summary = "Delete a pool and its warm sandboxes",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"), ("id" = String, Path)),
        responses(
            (status = 204, description = "deleted, its warm sandboxes removed"),
            (status = 404, description = "unknown pool", body = ErrorBody),
            (status = 409, description = "`pool_in_use`: claimed sandboxes still run", body = ErrorBody),
        )
    )]
    fn delete_pool() {}

    #[utoipa::path(
        post,
        path = "/v1/namespaces/{ns}/sandbox-pools/{id}/sandboxes",
        tag = "pools",
        summary = "Claim a sandbox: a warm one at once (`warm: true`), else a new one within \
                   `max_containers`",
        params(("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"), ("id" = String, Path)),
        request_body(content = Option<hutch_api::ClaimSandboxRequest>),
        responses(
            (status = 200, description = "the sandbox runs", body = hutch_api::ClaimSandboxResponse),
            (status = 404, description = "unknown pool", body = ErrorBody),
            (status = 422, description = "the new sandbox failed to start", body = hutch_api::ClaimSandboxResponse),
            (status = 429, description = "`pool_exhausted`: none warm and max_containers reached", body = ErrorBody),
            (status = 504, description = "the new sandbox still boots", body = hutch_api::ClaimSandboxResponse),
        )
    )]
    fn claim_pool() {}

    #[utoipa::path(
        patch,
        path = "/v1/namespaces/{ns}/sandboxes/{id}",
        tag = "lifecycle",
        summary = "Rename, or change the timeout",
        params(
            ("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"),
            ("id" = String, Path, description = "sandbox id or name"),
        ),
        request_body = UpdateSandboxRequest,
        responses(
            (status = 200, description = "the sandbox", body = SandboxInfo),
            (status = 400, description = "invalid request or unsupported feature", body = ErrorBody),
            (status = 404, description = "unknown sandbox", body = ErrorBody),
            (status = 409, description = "name taken, or the sandbox ended", body = ErrorBody),
        )
    )]
    fn update_sandbox() {}

    #[utoipa::path(
        delete,
        path = "/v1/namespaces/{ns}/sandboxes/{id}",
        tag = "lifecycle",
        summary = "Terminate and remove a sandbox",
        params(
            ("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"),
            ("id" = String, Path, description = "sandbox id or name"),
        ),
        responses(
            (status = 200, description = "the sandbox, terminated", body = SandboxInfo),
            (status = 404, description = "unknown sandbox", body = ErrorBody),
        )
    )]
    fn delete_sandbox() {}

    #[utoipa::path(
        post,
        path = "/v1/namespaces/{ns}/sandboxes/{id}/{action}",
        tag = "lifecycle",
        summary = "Lifecycle actions (not yet supported: 501)",
        params(
            ("ns" = String, Path, pattern = "^[a-z0-9_-]{1,63}$"),
            ("id" = String, Path, description = "sandbox id or name"),
            ("action" = SandboxAction, Path),
        ),
        responses(
            (status = 404, description = "unknown sandbox", body = ErrorBody),
            (status = 501, description = "unsupported capability", body = ErrorBody),
        )
    )]
    fn sandbox_action() {}

    #[utoipa::path(
        post,
        path = "/platform/v1/keys/introspect",
        tag = "platform",
        summary = "Describe the presented API key",
        responses(
            (status = 200, description = "the key", body = KeyIntrospection),
            (status = 401, description = "missing or invalid key", body = ErrorBody),
        )
    )]
    fn introspect_key() {}

    #[utoipa::path(
        get,
        path = "/openapi.json",
        tag = "hutch",
        summary = "This document",
        responses((status = 200, description = "OpenAPI 3.1", body = Object))
    )]
    fn openapi_document() {}

    #[utoipa::path(
        get,
        path = "/healthz",
        tag = "hutch",
        summary = "Liveness, and which state directory this server serves (state_id: a \
                   fingerprint the CLI compares with its own); with an x-hutch-challenge header, \
                   also the proof that this server published serve.json",
        responses((status = 200, description = "alive", body = Health))
    )]
    fn healthz() {}

    #[utoipa::path(
        post,
        path = "/hutch/v1/images/pull",
        tag = "hutch",
        summary = "Pull an image into the server's store; streams progress events, one JSON \
                   object per line (resolved, layer_skipped, layer_started, layer_progress, \
                   layer_done, layer_retry, done, or error with code and message)",
        request_body = PullImageRequest,
        responses(
            (status = 200, description = "the event stream", content_type = "application/x-ndjson", body = String),
            (status = 400, description = "invalid reference", body = ErrorBody),
        )
    )]
    fn pull_image() {}

    #[utoipa::path(
        get,
        path = "/hutch/v1/images/{name}",
        tag = "hutch",
        summary = "An image in the server's store (a template's, by template name or id): its \
                   layers and config (entrypoint, cmd, env, working_dir, user)",
        params(("name" = String, Path, description = "image reference or template; may contain '/' and ':'")),
        responses(
            (status = 200, description = "the image record", body = hutch_store::Image),
            (status = 404, description = "no such image", body = ErrorBody),
        )
    )]
    fn get_image() {}

    #[utoipa::path(
        get,
        path = "/images/v4/images",
        tag = "platform",
        summary = "The CAS image catalog the SDKs list beside templates; empty, since \
                   content-addressed streaming images are not built here yet",
        responses((status = 200, description = "an empty page", body = ImageCatalog))
    )]
    fn cas_catalog() {}

    #[utoipa::path(
        get,
        path = "/platform/v1/sandbox-templates",
        tag = "platform",
        summary = "List templates, by name",
        params(TemplateListQuery),
        responses(
            (status = 200, description = "a page", body = TemplateList),
            (status = 400, description = "invalid page size or cursor", body = ErrorBody),
        )
    )]
    fn list_templates() {}

    #[utoipa::path(
        post,
        path = "/platform/v1/sandbox-templates",
        tag = "platform",
        summary = "Register a template from a sandbox snapshot (not supported yet: 501)",
        responses((status = 501, description = "unsupported capability", body = ErrorBody))
    )]
    fn create_template() {}

    #[utoipa::path(
        get,
        path = "/platform/v1/sandbox-templates/{id}",
        tag = "platform",
        summary = "A template",
        params(("id" = String, Path, description = "template id")),
        responses(
            (status = 200, description = "a template", body = Template),
            (status = 404, description = "no such template", body = ErrorBody),
        )
    )]
    fn get_template() {}

    #[utoipa::path(
        delete,
        path = "/platform/v1/sandbox-templates/{id}",
        tag = "platform",
        summary = "Remove a template and release its image",
        params(("id" = String, Path, description = "template id")),
        responses(
            (status = 200, description = "the template removed", body = Template),
            (status = 404, description = "no such template", body = ErrorBody),
            (status = 409, description = "templates are built on it", body = ErrorBody),
        )
    )]
    fn delete_template() {}

    #[utoipa::path(
        get,
        path = "/platform/v1/sandbox-templates/by-name/{name}",
        tag = "platform",
        summary = "A template, by name",
        params(("name" = String, Path, description = "template name")),
        responses(
            (status = 200, description = "a template", body = Template),
            (status = 404, description = "no such template", body = ErrorBody),
        )
    )]
    fn get_template_by_name() {}

    #[utoipa::path(
        delete,
        path = "/platform/v1/sandbox-templates/by-name/{name}",
        tag = "platform",
        summary = "Remove a template, by name, and release its image",
        params(("name" = String, Path, description = "template name")),
        responses(
            (status = 200, description = "the template removed", body = Template),
            (status = 404, description = "no such template", body = ErrorBody),
            (status = 409, description = "templates are built on it", body = ErrorBody),
        )
    )]
    fn delete_template_by_name() {}

    #[utoipa::path(
        post,
        path = "/platform/v1/sandbox-template-builds",
        tag = "platform",
        summary = "Prepare a build: the builder sandbox to create and the spec to hand tl-rootfs-build",
        request_body = PrepareBuildRequest,
        responses(
            (status = 200, description = "the build, prepared", body = PrepareBuildResponse),
            (status = 400, description = "invalid request or Dockerfile (the line is named)", body = ErrorBody),
            (status = 404, description = "unknown parent template", body = ErrorBody),
            (status = 409, description = "the name belongs to a template others are built on", body = ErrorBody),
        )
    )]
    fn prepare_build() {}

    #[utoipa::path(
        get,
        path = "/platform/v1/sandbox-template-builds/{id}",
        tag = "platform",
        summary = "A build's state: prepared, building, built, failed or completed",
        params(("id" = String, Path, description = "build id")),
        responses(
            (status = 200, description = "the build", body = TemplateBuild),
            (status = 404, description = "no such build", body = ErrorBody),
        )
    )]
    fn get_build() {}

    #[utoipa::path(
        post,
        path = "/platform/v1/sandbox-template-builds/{id}/complete",
        tag = "platform",
        summary = "Register the template the build made (one transaction)",
        params(("id" = String, Path, description = "build id")),
        request_body = CompleteBuildRequest,
        responses(
            (status = 200, description = "the template registered", body = Template),
            (status = 400, description = "invalid request", body = ErrorBody),
            (status = 404, description = "no such build", body = ErrorBody),
            (status = 409, description = "not built yet, or the report does not match what was built", body = ErrorBody),
        )
    )]
    fn complete_build() {}
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn schema<'a>(spec: &'a Value, name: &str) -> &'a Value {
        &spec["components"]["schemas"][name]
    }

    #[test]
    #[ignore = "prints the document: cargo nextest run -p hutch-server print_document --run-ignored only"]
    fn print_document() {
        println!("{}", serde_json::to_string_pretty(&super::spec()).unwrap());
    }

    #[test]
    fn twins_drop_or_add_their_scope_parameters() {
        let spec = super::spec();
        let flat = &spec["paths"]["/sandboxes/{id}"]["get"];
        let names: Vec<&str> = flat["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id"]);
        assert_eq!(flat["operationId"], "get_sandbox_flat");
        let scoped = &spec["paths"]["/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds/{id}"]
            ["get"];
        let names: Vec<&str> = scoped["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["org", "project", "id"]);
    }

    #[test]
    fn schemas_come_from_the_api_types() {
        let spec = super::spec();
        assert_eq!(spec["openapi"], "3.1.0");
        let error = schema(&spec, "Error");
        assert!(
            error["required"]
                .as_array()
                .unwrap()
                .contains(&"code".into())
        );
        assert_eq!(
            schema(&spec, "CreateSandboxRequest")["additionalProperties"],
            false
        );
        let template = schema(&spec, "Template");
        assert!(template["properties"]["snapshotSizeBytes"].is_object());
        assert!(schema(&spec, "SandboxInfo")["properties"]["sandbox_id"].is_object());
        // Every $ref resolves.
        let text = spec.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schema(&spec, name).is_object(), "dangling $ref {name}");
        }
    }
}
