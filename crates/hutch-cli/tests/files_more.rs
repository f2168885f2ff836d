//! Hutch's file API beyond the SDKs' read/write/list/delete: watches over SSE (create,
//! modify, delete, recursive), exists, copy, and mode and owner on write. Through the
//! sandbox proxy, against real sandboxes.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Home;
use common::server::{http, json_of};
use futures_util::StreamExt;
use serde_json::{Value, json};

struct Sandbox {
    proxy: String,
    id: String,
}

impl Sandbox {
    async fn create(server: &common::server::Server) -> Self {
        let created = json_of(
            http()
                .post(format!("{}/sandboxes", server.api_url()))
                .json(&json!({"image": "hutch/minimal"})),
        )
        .await;
        Self {
            proxy: server.proxy_url(),
            id: created["sandbox_id"].as_str().unwrap().to_string(),
        }
    }

    fn at(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, format!("{}{path}", self.proxy))
            .header("X-Tensorlake-Sandbox-Id", &self.id)
    }

    async fn sh(&self, script: &str) {
        let r = self
            .at(reqwest::Method::POST, "/api/v1/processes")
            .json(&json!({"command": "sh", "args": ["-c", script]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
}

/// Reads SSE `data:` events from `response` until `want` events came or 10 s passed.
async fn events(response: reqwest::Response, want: usize) -> Vec<Value> {
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < want {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(Ok(chunk))) = next else { break };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.strip_prefix("data: ") {
                out.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_stream_creates_modifies_and_deletes_recursively() {
    let home = Home::new();
    let server = home.serve();
    let sbx = Sandbox::create(&server).await;
    let r = sbx
        .at(reqwest::Method::POST, "/hutch/v1/files/mkdir?path=/data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let watch = sbx
        .at(
            reqwest::Method::GET,
            "/hutch/v1/files/watch?path=/data&recursive=true",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    assert!(
        watch.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    sbx.sh(
        "echo one > /data/f; sleep 0.2; echo two >> /data/f; sleep 0.2; rm /data/f; \
            sleep 0.2; mkdir /data/sub; sleep 0.5; echo deep > /data/sub/g",
    )
    .await;
    let seen = events(watch, 7).await;
    let brief: Vec<(String, String)> = seen
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |kind: &str, path: &str| brief.iter().any(|(k, p)| k == kind && p == path);
    assert!(has("created", "/data/f"), "{brief:?}");
    assert!(has("modified", "/data/f"), "{brief:?}");
    assert!(has("deleted", "/data/f"), "{brief:?}");
    assert!(has("created", "/data/sub"), "{brief:?}");
    assert!(
        has("created", "/data/sub/g"),
        "a new directory is watched too: {brief:?}"
    );
    let dir = seen.iter().find(|e| e["path"] == "/data/sub").unwrap();
    assert_eq!(dir["is_dir"], true);
    assert!(dir["timestamp"].as_i64().unwrap() > 0);

    // A path that does not exist cannot be watched: a typed 404.
    let r = sbx
        .at(reqwest::Method::GET, "/hutch/v1/files/watch?path=/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    server.delete_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exists_copy_and_mode_and_owner_on_write() {
    let home = Home::new();
    let server = home.serve();
    let sbx = Sandbox::create(&server).await;
    use reqwest::Method;
    // Mode and owner on write, parents made.
    let r = sbx
        .at(
            Method::PUT,
            "/api/v1/files?path=/srv/app/run.sh&mode=0750&owner=1000:1000",
        )
        .body("#!/bin/sh\necho hi\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let stat = json_of(sbx.at(Method::GET, "/hutch/v1/files/stat?path=/srv/app/run.sh")).await;
    assert_eq!(stat["mode"].as_u64().unwrap() & 0o7777, 0o750, "{stat}");
    assert_eq!(
        (stat["uid"].as_u64(), stat["gid"].as_u64()),
        (Some(1000), Some(1000)),
        "{stat}"
    );
    for (bad, why) in [("mode=9999", "octal"), ("owner=nobody-here", "user")] {
        let r = sbx
            .at(Method::PUT, &format!("/api/v1/files?path=/srv/x&{bad}"))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{why}");
    }
    let exists =
        |path: &str| json_of(sbx.at(Method::GET, &format!("/hutch/v1/files/exists?path={path}")));
    assert_eq!(exists("/srv/app").await["is_dir"], true);
    assert_eq!(
        exists("/srv/x").await["exists"],
        false,
        "a refused write leaves nothing"
    );
    assert_eq!(exists("/srv/none").await["exists"], false);

    // Copy a tree: content, modes, owners, symlinks as links.
    sbx.sh("ln -s run.sh /srv/app/link").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copy = |body: Value| {
        sbx.at(Method::POST, "/hutch/v1/files/copy")
            .json(&body)
            .send()
    };
    let r = copy(json!({"from": "/srv/app", "to": "/srv/app2"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let stat = json_of(sbx.at(Method::GET, "/hutch/v1/files/stat?path=/srv/app2/run.sh")).await;
    assert_eq!(stat["mode"].as_u64().unwrap() & 0o7777, 0o750, "{stat}");
    assert_eq!(stat["uid"].as_u64(), Some(1000));
    assert_eq!(exists("/srv/app2/link").await["is_symlink"], true);
    let body = sbx
        .at(Method::GET, "/api/v1/files?path=/srv/app2/run.sh")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "#!/bin/sh\necho hi\n");
    // No silent replace, no copy into itself.
    let r = copy(json!({"from": "/srv/app", "to": "/srv/app2"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r = copy(json!({"from": "/srv/app", "to": "/srv/app2", "overwrite": true}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = copy(json!({"from": "/srv", "to": "/srv/inner"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Recursive delete.
    let r = sbx
        .at(Method::DELETE, "/api/v1/files?path=/srv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(exists("/srv").await["exists"], false);
    server.delete_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hutch_sbx_watch_prints_a_line_per_event() {
    use std::io::BufRead;
    let home = Home::new();
    let server = home.serve();
    let sbx = Sandbox::create(&server).await;
    sbx.sh("mkdir -p /data").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut watch = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args(["sbx", "watch", &sbx.id, "/data", "--recursive"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A new directory is watched once its creation is seen: what lives and dies inside it
    // before then (microseconds, in one shell line) is invisible to any inotify watcher.
    // The pause lets the watch take the new directory first.
    sbx.sh("mkdir /data/d; sleep 0.5; echo x > /data/d/f; rm /data/d/f")
        .await;
    // Until the delete shows (a file made in a new directory as the watch takes it may be
    // reported created twice: by the scan of the new directory and by its own event).
    let mut lines: Vec<String> = Vec::new();
    while !lines.iter().any(|l| l == "deleted /data/d/f") {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(lines.contains(&"created /data/d/".to_string()), "{lines:?}");
    assert!(
        lines.contains(&"created /data/d/f".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"deleted /data/d/f".to_string()),
        "{lines:?}"
    );
    server.delete_all();
}
