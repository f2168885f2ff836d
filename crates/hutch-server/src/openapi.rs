//! `GET /openapi.json`: the native API described for generators and humans. Written by hand
//! next to the handlers it describes; a test checks every route the router serves is in it.

use axum::Json;
use serde_json::{Value, json};

pub async fn document() -> Json<Value> {
    Json(spec())
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

pub fn spec() -> Value {
    let ns = json!({"name": "ns", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,63}$"}});
    let id = json!({"name": "id", "in": "path", "required": true, "description": "sandbox id or name", "schema": {"type": "string"}});
    let action = json!({"name": "action", "in": "path", "required": true, "schema": {"type": "string", "enum": ["suspend", "resume", "snapshot", "copy"]}});
    let create = json!({
        "summary": "Create a sandbox (blocking unless wait=false)",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateSandbox"}}}},
        "responses": {
            "200": {"description": "running", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateSandboxResponse"}}}},
            "202": {"description": "accepted (wait=false)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SandboxAccepted"}}}},
            "400": error_response("invalid request or unsupported feature"),
            "404": error_response("image not found"),
            "409": error_response("name taken"),
            "413": error_response("body over 1 MiB"),
            "422": {"description": "failed to start", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateSandboxResponse"}}}},
            "504": {"description": "still pending when the client's timeout ran out", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateSandboxResponse"}}}},
        }
    });
    let list = json!({
        "summary": "List sandboxes, oldest first",
        "parameters": [
            {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "include_terminated", "in": "query", "schema": {"type": "boolean"}},
        ],
        "responses": {"200": {"description": "a page", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SandboxList"}}}}}
    });
    let info = json!({"200": {"description": "the sandbox", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SandboxInfo"}}}}, "404": error_response("unknown sandbox")});
    let one = json!({
        "get": {"summary": "Get a sandbox by id or name", "responses": info},
        "patch": {"summary": "Rename, or change the timeout", "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/UpdateSandbox"}}}}, "responses": info},
        "delete": {"summary": "Terminate and remove a sandbox", "responses": info},
    });
    let actions = json!({"post": {"summary": "Lifecycle actions (not yet supported: 501)", "responses": {"501": error_response("unsupported capability"), "404": error_response("unknown sandbox")}}});
    let mut paths = serde_json::Map::new();
    for (prefix, params) in [("/v1/namespaces/{ns}", vec![ns.clone()]), ("", vec![])] {
        let mut with_id = params.clone();
        with_id.push(id.clone());
        let mut with_action = with_id.clone();
        with_action.push(action.clone());
        let mut collection = json!({"post": create.clone(), "get": list.clone()});
        collection["parameters"] = json!(params);
        let mut item = one.clone();
        item["parameters"] = json!(with_id);
        let mut act = actions.clone();
        act["parameters"] = json!(with_action);
        paths.insert(format!("{prefix}/sandboxes"), collection);
        paths.insert(format!("{prefix}/sandboxes/{{id}}"), item);
        paths.insert(format!("{prefix}/sandboxes/{{id}}/{{action}}"), act);
    }
    paths.insert(
        "/platform/v1/keys/introspect".into(),
        json!({"post": {"summary": "Describe the presented API key", "responses": {
            "200": {"description": "the key", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "organizationId": {"type": "string"}, "projectId": {"type": "string"}}}}}},
            "401": error_response("missing or invalid key")}}}),
    );
    paths.insert("/openapi.json".into(), json!({"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}));
    paths.insert(
        "/healthz".into(),
        json!({"get": {"summary": "Liveness, and which state directory this server serves (state_id: a fingerprint the CLI compares with its own)", "responses": {"200": {"description": "{status: ok, state_id}"}}}}),
    );
    paths.insert(
        "/hutch/v1/images/pull".into(),
        json!({"post": {"summary": "Pull an image into the server's store; streams progress events, one JSON object per line (resolved, layer_skipped, layer_started, layer_progress, layer_done, layer_retry, done, or error with code and message)",
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["reference"], "properties": {"reference": {"type": "string"}}}}}},
                        "responses": {"200": {"description": "application/x-ndjson event stream"}, "400": error_response("invalid reference")}}}),
    );
    paths.insert(
        "/hutch/v1/images/{name}".into(),
        json!({"get": {"summary": "An image in the server's store: its layers and config (entrypoint, cmd, env, working_dir, user)",
                       "parameters": [{"name": "name", "in": "path", "required": true, "description": "image reference; may contain '/' and ':'", "schema": {"type": "string"}}],
                       "responses": {"200": {"description": "the image record"}, "404": error_response("no such image")}}}),
    );
    template_paths(&mut paths);
    paths.insert(
        "/images/v4/images".into(),
        json!({"get": {"summary": "The CAS image catalog the SDKs list beside templates; empty, since content-addressed streaming images are not built here yet",
                       "responses": {"200": {"description": "{items: [], pagination: {next: null}}"}}}}),
    );

    json!({
        "openapi": "3.1.0",
        "info": {"title": "Hutch lifecycle API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Tensorlake-compatible sandbox lifecycle. The sandbox proxy (default :9443) forwards /api/v1/* to each sandbox's agent, routed by Host: <id>.local, Host: <name>.<namespace>.local or X-Tensorlake-Sandbox-Id. Every route may answer 401 (no or invalid key), 403 `forbidden` (the key's namespace scope does not cover the request; deleting or replacing templates takes an admin key) or `origin_not_allowed` (a foreign Origin), 415 (a POST/PUT/PATCH body that is not application/json) and 421 (a Host other than loopback, localhost, *.localhost, *.local or the server's --public-url)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "error": {"type": "string"}}},
                "Resources": {"type": "object", "properties": {
                    "cpus": {"type": "number"}, "memory_mb": {"type": "integer"}, "disk_mb": {"type": "integer"}}},
                "Network": {"type": "object", "properties": {
                    "allow_internet_access": {"type": "boolean"}, "allow_out": {"type": "array", "items": {"type": "string"}},
                    "deny_out": {"type": "array", "items": {"type": "string"}}}},
                "CreateSandbox": {"type": "object", "additionalProperties": false, "properties": {
                    "image": {"type": "string", "description": "store image name; the default template when absent"},
                    "resources": {"$ref": "#/components/schemas/Resources"},
                    "timeout_secs": {"type": "integer", "minimum": 0},
                    "entrypoint": {"type": "array", "items": {"type": "string"}},
                    "network": {"$ref": "#/components/schemas/Network"},
                    "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
                    "wait": {"type": "boolean"},
                    "max_pending_secs": {"type": "integer", "minimum": 0},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "auto_resume": {"type": "boolean"},
                    "allow_unauthenticated_access": {"type": "boolean"},
                    "exposed_ports": {"type": "array", "items": {"type": "integer"}},
                    "file_systems": {"type": "array"},
                    "snapshot_id": {"type": "string"}}},
                "CreateSandboxResponse": {"type": "object", "required": ["sandbox_id", "status"], "properties": {
                    "sandbox_id": {"type": "string"}, "status": {"type": "string", "enum": ["running", "timeout", "failed"]},
                    "sandbox_url": {"type": "string"}, "name": {"type": "string"}, "reason": {"type": "string"},
                    "termination_reason": {"type": "string"}, "error_details": {}}},
                "SandboxAccepted": {"type": "object", "required": ["sandbox_id", "state"], "properties": {
                    "sandbox_id": {"type": "string"}, "state": {"type": "string"}, "pending_reason": {"type": "string"}, "name": {"type": "string"}}},
                "SandboxInfo": {"type": "object", "required": ["sandbox_id", "namespace", "status", "resources"], "properties": {
                    "sandbox_id": {"type": "string"}, "namespace": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending", "running", "terminated"]},
                    "name": {"type": "string"}, "image": {"type": "string"},
                    "resources": {"$ref": "#/components/schemas/Resources"},
                    "timeout_secs": {"type": "integer"}, "entrypoint": {"type": "array", "items": {"type": "string"}},
                    "network_policy": {"$ref": "#/components/schemas/Network"},
                    "sandbox_url": {"type": "string"}, "pending_reason": {"type": "string"},
                    "termination_reason": {"type": "string", "enum": ["user_requested", "cancelled", "timeout", "startup_failed", "no_capacity", "lost"]},
                    "created_at": {"type": "integer", "description": "ms since the epoch"},
                    "terminated_at": {"type": "integer"}}},
                "SandboxList": {"type": "object", "required": ["sandboxes"], "properties": {
                    "sandboxes": {"type": "array", "items": {"$ref": "#/components/schemas/SandboxInfo"}},
                    "cursor": {"type": "string", "description": "absent on the last page"}}},
                "Template": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "snapshotId": {"type": "string"},
                    "snapshotUri": {"type": "string"}, "snapshotFormatVersion": {"type": "string"},
                    "snapshotSizeBytes": {"type": "integer", "description": "stored bytes of the layers it adds"},
                    "rootfsDiskBytes": {"type": "integer"}, "rootfsNodeKind": {"type": "string", "enum": ["base", "diff"]},
                    "public": {"type": "boolean"}, "dockerfile": {"type": "string"},
                    "createdAt": {"type": "integer"}, "updatedAt": {"type": "integer"},
                    "parentTemplateId": {"type": "string"}, "parentTemplateName": {"type": "string"},
                    "image": {"type": "string"}, "imageId": {"type": "string"},
                    "ownBytes": {"type": "integer"}, "totalBytes": {"type": "integer"}, "buildId": {"type": "string"}}},
                "UpdateSandbox": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string"}, "timeout_secs": {"type": "integer", "minimum": 0},
                    "network": {"$ref": "#/components/schemas/Network"}}},
            }
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    })
}

/// The platform API's template routes, under both scopes (see `platform.rs`).
fn template_paths(paths: &mut serde_json::Map<String, Value>) {
    let template = json!({"description": "a template", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Template"}}}});
    let scope = json!([
        {"name": "org", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "project", "in": "path", "required": true, "schema": {"type": "string"}},
    ]);
    let param = |name: &str, what: &str| json!({"name": name, "in": "path", "required": true, "description": what, "schema": {"type": "string"}});
    for (prefix, scoped) in [
        ("/platform/v1", false),
        ("/platform/v1/organizations/{org}/projects/{project}", true),
    ] {
        let with = |extra: Vec<Value>| {
            let mut all: Vec<Value> = if scoped {
                scope.as_array().cloned().unwrap_or_default()
            } else {
                vec![]
            };
            all.extend(extra);
            json!(all)
        };
        paths.insert(format!("{prefix}/sandbox-templates"), json!({
            "parameters": with(vec![]),
            "get": {"summary": "List templates, by name", "parameters": [
                {"name": "pageSize", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "next", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{items: [Template], pagination: {next}}"}}},
            "post": {"summary": "Register a template from a sandbox snapshot (not supported yet: 501)",
                     "responses": {"501": error_response("unsupported capability")}}}));
        let one = json!({
            "get": {"summary": "A template", "responses": {"200": template, "404": error_response("no such template")}},
            "delete": {"summary": "Remove a template and release its image", "responses": {"200": template,
                "404": error_response("no such template"), "409": error_response("templates are built on it")}}});
        let mut by_id = one.clone();
        by_id["parameters"] = with(vec![param("id", "template id")]);
        paths.insert(format!("{prefix}/sandbox-templates/{{id}}"), by_id);
        let mut by_name = one;
        by_name["parameters"] = with(vec![param("name", "template name")]);
        paths.insert(
            format!("{prefix}/sandbox-templates/by-name/{{name}}"),
            by_name,
        );
        paths.insert(format!("{prefix}/sandbox-template-builds"), json!({
            "parameters": with(vec![]),
            "post": {"summary": "Prepare a build: the builder sandbox to create and the spec to hand tl-rootfs-build",
                     "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name", "dockerfile"], "properties": {
                        "name": {"type": "string"}, "dockerfile": {"type": "string"}, "baseImage": {"type": "string"}, "public": {"type": "boolean"},
                        "rootfsNodeKind": {"type": "string", "enum": ["base", "diff"]}, "parentTemplate": {"type": "object"}, "additionalLocalImages": {"type": "array"}}}}}},
                     "responses": {"200": {"description": "{buildId, buildToken, snapshotId, snapshotUri, rootfsNodeKind, builder, parent}"},
                        "400": error_response("invalid request or Dockerfile (the line is named)"), "404": error_response("unknown parent template"),
                        "409": error_response("the name belongs to a template others are built on")}}}));
        paths.insert(format!("{prefix}/sandbox-template-builds/{{id}}"), json!({
            "parameters": with(vec![param("id", "build id")]),
            "get": {"summary": "A build's state: prepared, building, built, failed or completed", "responses": {"200": {"description": "the build"}, "404": error_response("no such build")}}}));
        paths.insert(format!("{prefix}/sandbox-template-builds/{{id}}/complete"), json!({
            "parameters": with(vec![param("id", "build id")]),
            "post": {"summary": "Register the template the build made (one transaction)", "responses": {"200": template,
                "404": error_response("no such build"), "409": error_response("not built yet, or the report does not match what was built")}}}));
    }
}

#[cfg(test)]
mod tests {
    const PATHS: &[&str] = &[
        "/v1/namespaces/{ns}/sandboxes",
        "/v1/namespaces/{ns}/sandboxes/{id}",
        "/v1/namespaces/{ns}/sandboxes/{id}/{action}",
        "/sandboxes",
        "/sandboxes/{id}",
        "/sandboxes/{id}/{action}",
        "/platform/v1/keys/introspect",
        "/openapi.json",
        "/healthz",
        "/hutch/v1/images/{name}",
        "/hutch/v1/images/pull",
        "/images/v4/images",
        "/platform/v1/sandbox-templates",
        "/platform/v1/sandbox-templates/{id}",
        "/platform/v1/sandbox-templates/by-name/{name}",
        "/platform/v1/sandbox-template-builds",
        "/platform/v1/sandbox-template-builds/{id}",
        "/platform/v1/sandbox-template-builds/{id}/complete",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates/{id}",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates/by-name/{name}",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds/{id}",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds/{id}/complete",
    ];

    #[test]
    fn every_route_is_documented() {
        let spec = super::spec();
        for path in PATHS {
            assert!(
                spec["paths"].get(*path).is_some(),
                "{path} missing from openapi.json"
            );
        }
        assert_eq!(spec["paths"].as_object().unwrap().len(), PATHS.len());
    }
}
