//! `hutch serve` under bad input and under load: every bad request is a 4xx with a JSON
//! body carrying a code, never a 500; concurrency leaves nothing behind.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::Home;
use serde_json::{Value, json};

async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.expect("error bodies are JSON");
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().or(body["error"].as_str());
    assert!(message.is_some_and(|m| !m.is_empty()), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_4xx_errors() {
    let home = Home::new();
    let server = home.serve();
    let (api, proxy) = (server.sandboxes_url(), server.proxy_url());
    let http = common::server::http();
    let post = |body: &'static str| {
        http.post(&api)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_error(post("{\"image\": ").await.unwrap(), 400, "invalid_json").await;
    let unknown = expect_error(
        post("{\"imagee\": \"x\"}").await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    assert!(
        unknown["message"].as_str().unwrap().contains("imagee"),
        "{unknown}"
    );
    expect_error(
        post("{\"timeout_secs\": \"soon\"}").await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    expect_error(post("[1, 2]").await.unwrap(), 400, "invalid_json").await;
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(2 << 20));
    let resp = http
        .post(&api)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    expect_error(resp, 413, "body_too_large").await;
    expect_error(
        post("{\"name\": \"Bad Name!\"}").await.unwrap(),
        400,
        "invalid_name",
    )
    .await;
    expect_error(
        post("{\"name\": \"-x\"}").await.unwrap(),
        400,
        "invalid_name",
    )
    .await;
    expect_error(
        post("{\"image\": \"no/such:image\"}").await.unwrap(),
        404,
        "image_not_found",
    )
    .await;
    expect_error(
        post("{\"network\": {\"allow_out\": [\"10.1.2.3/8\"]}}")
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    expect_error(
        post("{\"resources\": {\"memory_mb\": 1}}").await.unwrap(),
        400,
        "invalid_request",
    )
    .await;
    expect_error(
        http.get(format!("{api}/nope")).send().await.unwrap(),
        404,
        "sandbox_not_found",
    )
    .await;
    expect_error(
        http.delete(format!("{api}/nope")).send().await.unwrap(),
        404,
        "sandbox_not_found",
    )
    .await;
    expect_error(
        http.get(format!("{api}?cursor=garbage"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_request",
    )
    .await;
    let bad_ns = api.replace("/default/", "/Bad%20NS/");
    expect_error(
        http.get(bad_ns).send().await.unwrap(),
        400,
        "invalid_namespace",
    )
    .await;

    // The proxy: no target, unknown target, then a live sandbox's bad paths and ids.
    let resp = http
        .get(format!("{proxy}/api/v1/health"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "MISSING_SANDBOX_ID").await;
    let resp = http
        .get(format!("{proxy}/api/v1/health"))
        .header("host", "nope.local")
        .send()
        .await
        .unwrap();
    expect_error(resp, 404, "SANDBOX_NOT_FOUND").await;
    // A client timeout past what the clock can represent waits as long as it takes: the
    // create answers normally (it once overflowed the deadline and dropped the connection).
    let resp = http
        .post(&api)
        .header("x-tensorlake-request-timeout-ms", u64::MAX.to_string())
        .json(&json!({"name": "edges"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["status"], "running", "{created}");
    let id = created["sandbox_id"].as_str().unwrap().to_string();
    let get = |path: String| {
        http.get(format!("{proxy}{path}"))
            // A name routes only with its namespace.
            .header("x-tensorlake-sandbox-id", "edges.default")
            .send()
    };
    expect_error(
        get("/api/v1/files?path=/tmp/../etc/passwd".into())
            .await
            .unwrap(),
        400,
        "invalid_path",
    )
    .await;
    expect_error(
        get("/api/v1/files?path=/tmp/a%01b".into()).await.unwrap(),
        400,
        "invalid_path",
    )
    .await;
    expect_error(
        get("/api/v1/processes/99999".into()).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let resp = http
        .post(format!("{proxy}/api/v1/processes"))
        .header("host", format!("{id}.local"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The sandbox still works after all of that.
    let ok = get("/api/v1/health".into()).await.unwrap();
    assert_eq!(ok.status(), 200);
    let resp = http
        .patch(format!("{api}/{id}"))
        .json(&json!({"name": "Not Valid"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "invalid_name").await;
    let resp = http
        .patch(format!("{api}/{id}"))
        .json(&json!({"resources": {"disk_mb": 4096}}))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "unsupported_capability").await;
    let resp = http
        .post(format!("{api}/{id}/suspend"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 501, "unsupported_capability").await;

    // Keys: introspection needs one.
    let intro = format!(
        "http://127.0.0.1:{}/platform/v1/keys/introspect",
        server.api_port
    );
    expect_error(http.post(&intro).send().await.unwrap(), 401, "unauthorized").await;
    let resp = http
        .post(&intro)
        .bearer_auth("hutch_forged")
        .send()
        .await
        .unwrap();
    expect_error(resp, 401, "unauthorized").await;
    // Another service's key on loopback (keys not required): the one local scope, which
    // SDK build flows that introspect need.
    let scope: Value = http
        .post(&intro)
        .bearer_auth("tl_apiKey_elsewhere")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(scope["organizationId"], "local", "{scope}");
    assert_eq!(scope["projectId"], "default", "{scope}");
    let spec: Value = http
        .get(format!("http://127.0.0.1:{}/openapi.json", server.api_port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");

    http.delete(format!("{api}/{id}")).send().await.unwrap();
    drop(server);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_when_asked_and_introspect() {
    let home = Home::new();
    let out = home.run(&["key", "create", "ci", "--admin", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = key["secret"].as_str().unwrap().to_string();
    let server = home.serve_on(
        common::server::free_port(),
        common::server::free_port(),
        &["--require-keys"],
    );
    let http = common::server::http();
    let api = server.sandboxes_url();
    let resp = http.get(&api).send().await.unwrap();
    expect_error(resp, 401, "unauthorized").await;
    let resp = http.get(&api).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let proxy = http
        .get(format!("{}/api/v1/health", server.proxy_url()))
        .header("host", "x.local")
        .send()
        .await
        .unwrap();
    expect_error(proxy, 401, "unauthorized").await;
    let intro: Value = http
        .post(format!(
            "http://127.0.0.1:{}/platform/v1/keys/introspect",
            server.api_port
        ))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intro["id"], key["id"]);
    assert!(
        intro["organizationId"].is_string() && intro["projectId"].is_string(),
        "{intro}"
    );
    // Removing the key revokes it at once.
    let out = home.run(&["key", "rm", "ci"]);
    assert!(out.status.success());
    let resp = http.get(&api).bearer_auth(&secret).send().await.unwrap();
    expect_error(resp, 401, "unauthorized").await;
    drop(server);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_creates_and_five_hundred_execs_at_once() {
    let home = Home::new();
    let server = home.serve();
    let (api, proxy) = (server.sandboxes_url(), server.proxy_url());
    let http = common::server::http();
    let creates: Vec<_> = (0..50)
        .map(|_| {
            let (http, api) = (http.clone(), api.clone());
            tokio::spawn(async move {
                let resp = http
                    .post(&api)
                    .json(&json!({"resources": {"memory_mb": 128}, "network": {"allow_internet_access": false}}))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let body: Value = resp.json().await.unwrap();
                assert_eq!(status, 200, "{body}");
                body["sandbox_id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let mut ids = Vec::new();
    for c in creates {
        ids.push(c.await.unwrap());
    }
    let execs: Vec<_> = (0..500)
        .map(|i| {
            let (http, proxy, id) = (http.clone(), proxy.clone(), ids[i % ids.len()].clone());
            tokio::spawn(async move {
                let resp = http
                    .post(format!("{proxy}/api/v1/processes/run"))
                    .header("host", format!("{id}.local"))
                    .json(&json!({"command": "echo", "args": [format!("exec-{i}")]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                let text = resp.text().await.unwrap();
                assert!(text.contains(&format!("\"line\":\"exec-{i}\"")), "{text}");
                assert!(text.contains("\"exit_code\":0"), "{text}");
            })
        })
        .collect();
    for e in execs {
        e.await.unwrap();
    }
    let deletes: Vec<_> = ids
        .iter()
        .map(|id| {
            let (http, url) = (http.clone(), format!("{api}/{id}"));
            tokio::spawn(async move { http.delete(url).send().await.unwrap().status() })
        })
        .collect();
    for d in deletes {
        assert!(d.await.unwrap().is_success());
    }
    drop(server);
    home.assert_clean();
}
