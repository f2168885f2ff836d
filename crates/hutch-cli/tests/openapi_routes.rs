//! `/openapi.json` against the router of a real `hutch serve`, both ways: every operation the
//! document describes is answered by a handler (not by the router's own 404
//! `route_not_found`, nor a 405), and every route the server serves is documented.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::Home;
use common::server::free_port;
use serde_json::Value;

/// Every route of the API listener.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/namespaces/{ns}/sandboxes"),
    ("GET", "/v1/namespaces/{ns}/sandboxes"),
    ("GET", "/v1/namespaces/{ns}/sandboxes/{id}"),
    ("PATCH", "/v1/namespaces/{ns}/sandboxes/{id}"),
    ("DELETE", "/v1/namespaces/{ns}/sandboxes/{id}"),
    ("POST", "/v1/namespaces/{ns}/sandboxes/{id}/{action}"),
    ("GET", "/v1/namespaces/{ns}/sandboxes/{id}/egress"),
    ("POST", "/sandboxes"),
    ("GET", "/sandboxes"),
    ("GET", "/sandboxes/{id}"),
    ("PATCH", "/sandboxes/{id}"),
    ("DELETE", "/sandboxes/{id}"),
    ("POST", "/sandboxes/{id}/{action}"),
    ("GET", "/sandboxes/{id}/egress"),
    ("GET", "/hutch/v1/sandboxes/{id}/egress"),
    ("GET", "/hutch/v1/default-image"),
    ("GET", "/v1/namespaces/{ns}/archived-sandboxes"),
    ("GET", "/v1/namespaces/{ns}/archived-sandboxes/{id}"),
    ("GET", "/archived-sandboxes"),
    ("GET", "/archived-sandboxes/{id}"),
    ("POST", "/v1/namespaces/{ns}/sandbox-pools"),
    ("GET", "/v1/namespaces/{ns}/sandbox-pools"),
    ("GET", "/v1/namespaces/{ns}/sandbox-pools/{id}"),
    ("PUT", "/v1/namespaces/{ns}/sandbox-pools/{id}"),
    ("DELETE", "/v1/namespaces/{ns}/sandbox-pools/{id}"),
    ("POST", "/v1/namespaces/{ns}/sandbox-pools/{id}/sandboxes"),
    ("POST", "/sandbox-pools"),
    ("GET", "/sandbox-pools"),
    ("GET", "/sandbox-pools/{id}"),
    ("PUT", "/sandbox-pools/{id}"),
    ("DELETE", "/sandbox-pools/{id}"),
    ("POST", "/sandbox-pools/{id}/sandboxes"),
    ("POST", "/platform/v1/keys/introspect"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("POST", "/hutch/v1/images/pull"),
    ("GET", "/hutch/v1/images/{name}"),
    ("GET", "/images/v4/images"),
    ("GET", "/platform/v1/sandbox-templates"),
    ("POST", "/platform/v1/sandbox-templates"),
    ("GET", "/platform/v1/sandbox-templates/{id}"),
    ("DELETE", "/platform/v1/sandbox-templates/{id}"),
    ("GET", "/platform/v1/sandbox-templates/by-name/{name}"),
    ("DELETE", "/platform/v1/sandbox-templates/by-name/{name}"),
    ("POST", "/platform/v1/sandbox-template-builds"),
    ("GET", "/platform/v1/sandbox-template-builds/{id}"),
    ("POST", "/platform/v1/sandbox-template-builds/{id}/complete"),
    (
        "GET",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates",
    ),
    (
        "POST",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates",
    ),
    (
        "GET",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates/{id}",
    ),
    (
        "DELETE",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates/{id}",
    ),
    (
        "GET",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates/by-name/{name}",
    ),
    (
        "DELETE",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-templates/by-name/{name}",
    ),
    (
        "POST",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds",
    ),
    (
        "GET",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds/{id}",
    ),
    (
        "POST",
        "/platform/v1/organizations/{org}/projects/{project}/sandbox-template-builds/{id}/complete",
    ),
];

const METHODS: &[&str] = &["get", "put", "post", "patch", "delete"];

/// The value a path parameter gets: the first of its enum (an unknown action is the
/// router's 404 too), else a name nothing is called.
fn placeholder(spec: &Value, operation: &Value, name: &str) -> String {
    let param = operation["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("path parameter {name} is not declared"));
    let mut schema = &param["schema"];
    if let Some(target) = schema["$ref"].as_str() {
        let component = target.trim_start_matches("#/components/schemas/");
        schema = &spec["components"]["schemas"][component];
    }
    match schema["enum"].get(0).and_then(Value::as_str) {
        Some(first) => first.to_string(),
        None => "placeholder".to_string(),
    }
}

fn fill(spec: &Value, operation: &Value, path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("balanced braces") + open;
        out.push_str(&rest[..open]);
        out.push_str(&placeholder(spec, operation, &rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Sends `method url`; a body, where there is one, is a JSON string, which no route takes
/// (each wants an object), so nothing is created.
async fn answer(http: &reqwest::Client, method: &str, url: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method.clone(), url);
    if [
        reqwest::Method::POST,
        reqwest::Method::PATCH,
        reqwest::Method::PUT,
    ]
    .contains(&method)
    {
        request = request
            .header("content-type", "application/json")
            .body("\"placeholder\"");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn routed(status: u16, body: &Value) -> bool {
    status != 405 && !(status == 404 && body["code"] == "route_not_found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_router_agree() {
    let home = Home::new();
    let server = home.serve_on(free_port(), free_port(), &["--pull", "never"]);
    let http = common::server::http();
    let base = format!("http://127.0.0.1:{}", server.api_port);
    let spec: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(*method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );

    // The checks below can fail: the router's own answers look like this.
    let (status, body) = answer(&http, "GET", &format!("{base}/no/such/route")).await;
    assert!(!routed(status, &body), "{status} {body}");
    let (status, body) = answer(&http, "PUT", &format!("{base}/healthz")).await;
    assert!(!routed(status, &body), "{status} {body}");

    let mut unrouted = Vec::new();
    for (method, path) in &documented {
        let operation = &spec["paths"][path][method.to_lowercase()];
        let url = format!("{base}{}", fill(&spec, operation, path));
        let (status, body) = answer(&http, method, &url).await;
        if !routed(status, &body) {
            unrouted.push(format!("{method} {path}: {status} {body}"));
        }
        // Every error a handler gives is the one error body.
        if status >= 400 {
            assert!(
                body["code"].is_string() && body["error"].is_string(),
                "{method} {path}: {status} {body}"
            );
        }
    }
    assert!(
        unrouted.is_empty(),
        "documented but not routed:\n{}",
        unrouted.join("\n")
    );
    assert_eq!(documented.len(), served.len(), "documented: {documented:?}");
    drop(server);
    home.assert_clean();
}
