//! Tenancy and browser defences of `hutch serve`, against a real server: namespace-scoped
//! keys in the lifecycle API, the platform API and the proxy; names routed only with their
//! namespace; foreign hosts and origins and non-JSON bodies refused on loopback.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::key;

use common::Home;
use common::server::{Server, free_port, http};
use serde_json::{Value, json};

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    body
}

fn ns_url(server: &Server, ns: &str) -> String {
    format!(
        "http://127.0.0.1:{}/v1/namespaces/{ns}/sandboxes",
        server.api_port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_keys_reach_only_their_namespace() {
    let home = Home::new();
    let admin = key(&home, "root", &["--admin"]);
    let alice = key(&home, "alice", &["--namespace", "team-a"]);
    let bob = key(&home, "bob", &["--namespace", "team-b"]);
    let server = home.serve_on(free_port(), free_port(), &["--require-keys"]);
    let http = http();
    let (a, b) = (ns_url(&server, "team-a"), ns_url(&server, "team-b"));
    let small = json!({"resources": {"memory_mb": 128}});

    // Each key creates in its own namespace; bob's sandbox has a name.
    let resp = http
        .post(&a)
        .bearer_auth(&alice)
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let a_id = resp.json::<Value>().await.unwrap()["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();
    let named = json!({"name": "web", "resources": {"memory_mb": 128}});
    let resp = http
        .post(&b)
        .bearer_auth(&bob)
        .json(&named)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let b_id = resp.json::<Value>().await.unwrap()["sandbox_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Alice cannot create, list, get, rename or delete in team-b, by id or by name.
    let resp = http
        .post(&b)
        .bearer_auth(&alice)
        .json(&small)
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "forbidden").await;
    let resp = http.get(&b).bearer_auth(&alice).send().await.unwrap();
    expect_error(resp, 403, "forbidden").await;
    for target in [&b_id, &"web".to_string()] {
        let one = format!("{b}/{target}");
        let resp = http.get(&one).bearer_auth(&alice).send().await.unwrap();
        expect_error(resp, 403, "forbidden").await;
        let resp = http
            .patch(&one)
            .bearer_auth(&alice)
            .json(&json!({"name": "mine"}))
            .send()
            .await
            .unwrap();
        expect_error(resp, 403, "forbidden").await;
        let resp = http.delete(&one).bearer_auth(&alice).send().await.unwrap();
        expect_error(resp, 403, "forbidden").await;
    }
    // Nor through the flat routes, which are namespace `default`.
    let flat = format!("http://127.0.0.1:{}/sandboxes", server.api_port);
    let resp = http.get(&flat).bearer_auth(&alice).send().await.unwrap();
    expect_error(resp, 403, "forbidden").await;
    // Her own namespace lists only her sandbox.
    let mine: Value = http
        .get(&a)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = mine["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sandbox_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a_id.as_str()]);

    // The proxy: bob's sandbox by id (host or header) and by qualified name.
    let health = format!("{}/api/v1/health", server.proxy_url());
    let by_id_host = [("host", format!("{b_id}.local"))];
    let by_id_header = [("x-tensorlake-sandbox-id", b_id.clone())];
    let by_name = [("host", format!("web.team-b.local:{}", server.proxy_port))];
    for route in [&by_id_host, &by_id_header, &by_name] {
        let (name, value) = &route[0];
        let resp = http
            .get(&health)
            .header(*name, value)
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        expect_error(resp, 403, "forbidden").await;
        for owner in [&bob, &admin] {
            let resp = http
                .get(&health)
                .header(*name, value)
                .bearer_auth(owner)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{name}: {value}");
        }
    }
    // A bare name is not a route: `web.local` does not guess its way into any namespace.
    for who in [&bob, &admin] {
        let resp = http
            .get(&health)
            .header("host", "web.local")
            .bearer_auth(who)
            .send()
            .await
            .unwrap();
        expect_error(resp, 404, "SANDBOX_NOT_FOUND").await;
    }
    // Alice reaches her own sandbox through the proxy.
    let resp = http
        .get(&health)
        .header("host", format!("{a_id}.local"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Templates are shared: a namespace key reads them, but only an admin deletes.
    let templates = format!(
        "http://127.0.0.1:{}/platform/v1/sandbox-templates",
        server.api_port
    );
    let resp = http
        .get(&templates)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for path in ["by-name/shared", "tpl_0123456789"] {
        let one = format!("{templates}/{path}");
        let resp = http.delete(&one).bearer_auth(&alice).send().await.unwrap();
        expect_error(resp, 403, "forbidden").await;
        let resp = http.delete(&one).bearer_auth(&admin).send().await.unwrap();
        expect_error(resp, 404, "template_not_found").await;
    }

    // The admin key reaches every namespace: it ends both sandboxes.
    for (url, id) in [(&a, &a_id), (&b, &b_id)] {
        let resp = http
            .delete(format!("{url}/{id}"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    drop(server);
    home.assert_clean();
}

/// `path` with its parameters filled: `{ns}` is `ns`, `{action}` one the router knows, the
/// rest names nothing.
fn fill(path: &str, ns: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("balanced braces") + open;
        out.push_str(&rest[..open]);
        out.push_str(match &rest[open + 1..close] {
            "ns" => ns,
            "action" => "suspend",
            _ => "placeholder",
        });
        rest = &rest[close + 1..];
    }
    out + rest
}

/// Every route the document lists goes through the one auth layer, twins and platform
/// prefixes included: without a key each is refused, and a namespace key is refused outside
/// its namespace (flat routes are `default`) and at every template deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_behind_the_key_check() {
    let home = Home::new();
    let alice = key(&home, "alice", &["--namespace", "team-a"]);
    let server = home.serve_on(free_port(), free_port(), &["--require-keys"]);
    let http = http();
    let api = format!("http://127.0.0.1:{}", server.api_port);
    let spec: Value = http
        .get(format!("{api}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["/healthz", "/openapi.json"].contains(&path.as_str()) {
                continue;
            }
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let url = format!("{api}{}", fill(path, "team-b"));
            // A JSON string no route takes: a route that skipped the check answers 400.
            let request = || {
                http.request(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body("\"placeholder\"")
            };
            let resp = request().send().await.unwrap();
            let what = format!("{method} {url} without a key");
            assert_eq!(resp.status(), 401, "{what}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized", "{what}: {body}");
            let out_of_scope = path.starts_with("/v1/namespaces/")
                || path.starts_with("/sandboxes")
                || (method == reqwest::Method::DELETE && path.contains("/sandbox-templates/"));
            if out_of_scope {
                let resp = request().bearer_auth(&alice).send().await.unwrap();
                let what = format!("{method} {url} with a team-a key");
                assert_eq!(resp.status(), 403, "{what}");
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["code"], "forbidden", "{what}: {body}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations in the document");
    // The proxy too.
    let resp = http
        .get(format!("{}/api/v1/health", server.proxy_url()))
        .header("host", "abc.local")
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    drop(server);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_a_browser_cannot_drive_a_loopback_server() {
    let home = Home::new();
    // The loopback default: no key needed, so the request's shape is the only defence.
    let server = home.serve();
    let http = http();
    let api = server.sandboxes_url();
    let live = || async {
        let list: Value = http.get(&api).send().await.unwrap().json().await.unwrap();
        list["sandboxes"].as_array().unwrap().len()
    };

    // DNS rebinding: a foreign name resolved to 127.0.0.1 brings its own Host.
    for url in [&api, &format!("{}/api/v1/health", server.proxy_url())] {
        let resp = http
            .get(url)
            .header("host", "rebind.attacker.example")
            .send()
            .await
            .unwrap();
        expect_error(resp, 421, "host_not_allowed").await;
    }
    // A form's cross-site POST: text/plain, no preflight.
    let resp = http
        .post(&api)
        .header("content-type", "text/plain")
        .body(r#"{"resources": {"memory_mb": 128}}"#)
        .send()
        .await
        .unwrap();
    expect_error(resp, 415, "unsupported_media_type").await;
    let resp = http
        .post(&api)
        .header("content-type", "text/plain")
        .header("origin", "https://attacker.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "origin_not_allowed").await;
    // Even a JSON request is refused from a foreign origin, on both listeners.
    let resp = http
        .post(&api)
        .header("origin", "https://attacker.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "origin_not_allowed").await;
    let resp = http
        .get(format!("{}/api/v1/health", server.proxy_url()))
        .header("host", "abc.local")
        .header("origin", "null")
        .send()
        .await
        .unwrap();
    expect_error(resp, 403, "origin_not_allowed").await;
    assert_eq!(live().await, 0, "a refused request created a sandbox");
    // What clients send is served: loopback hosts, a loopback origin, body-less POSTs.
    let resp = http
        .get(&api)
        .header("origin", format!("http://localhost:{}", server.api_port))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let intro = format!("{}/platform/v1/keys/introspect", server.api_url());
    let resp = http.post(&intro).send().await.unwrap();
    expect_error(resp, 401, "unauthorized").await;
    drop(server);
    home.assert_clean();
}

#[test]
fn the_cli_works_in_the_namespace_its_key_reaches() {
    let home = Home::with(&["busybox"]);
    let alice = key(&home, "alice", &["--namespace", "team-a"]);
    let server = home.serve_on(free_port(), free_port(), &["--require-keys"]);
    let sbx = |namespace: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(common::hutch_bin());
        cmd.env("HUTCH_HOME", home.path())
            .env("HUTCH_SERVER", server.api_url())
            .env("HUTCH_API_KEY", &alice)
            .env_remove("HUTCH_NAMESPACE")
            .arg("sbx")
            .args(args)
            .stdin(std::process::Stdio::null());
        if let Some(ns) = namespace {
            cmd.env("HUTCH_NAMESPACE", ns);
        }
        cmd.output().unwrap()
    };
    // Without a namespace the CLI asks for `default`, which alice's key does not reach.
    let refused = sbx(None, &["ls"]);
    assert!(!refused.status.success());
    assert!(
        common::stderr(&refused).contains("403") || common::stderr(&refused).contains("forbidden"),
        "{}",
        common::stderr(&refused)
    );
    let created = sbx(Some("team-a"), &["create"]);
    assert!(created.status.success(), "{}", common::stderr(&created));
    let id = common::stdout(&created).trim().to_string();
    let out = sbx(Some("team-a"), &["exec", &id, "--", "echo", "in-team-a"]);
    assert_eq!(
        common::stdout(&out),
        "in-team-a\n",
        "{}",
        common::stderr(&out)
    );
    let listed = sbx(Some("team-a"), &["ls"]);
    assert!(common::stdout(&listed).contains(&id));
    assert!(sbx(Some("team-a"), &["rm", &id]).status.success());
}
