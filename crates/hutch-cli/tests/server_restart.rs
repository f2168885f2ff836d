//! `kill -9` of `hutch serve` while sandboxes run and their output streams: the restarted
//! server adopts them, followers reattach and get every line exactly once, and the database
//! matches the runtime. Also the graceful stop, which leaves sandboxes running.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Home;
use futures_util::StreamExt;
use serde_json::{Value, json};

const SANDBOXES: usize = 20;
const LINES: usize = 80;

async fn create(http: &reqwest::Client, api: &str) -> String {
    let resp = http
        .post(api)
        .json(
            &json!({"resources": {"memory_mb": 256}, "network": {"allow_internet_access": false}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["sandbox_id"].as_str().unwrap().to_string()
}

/// Starts a process printing LINES numbered lines over a few seconds; returns its pid.
async fn start_printer(http: &reqwest::Client, proxy: &str, id: &str) -> i64 {
    let script =
        format!("i=0; while [ $i -lt {LINES} ]; do echo line-$i; i=$((i+1)); sleep 0.05; done");
    let resp = http
        .post(format!("{proxy}/api/v1/processes"))
        .header("host", format!("{id}.local"))
        .json(&json!({"command": "sh", "args": ["-c", script]}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    assert!(status.is_success(), "start: {status} {body}");
    body["pid"].as_i64().unwrap()
}

/// Follows a process's output to its exit, reattaching after any break. Each attach replays
/// from the start, so the answer is the last complete stream; also returns how many
/// attaches it took.
async fn follow(
    http: reqwest::Client,
    proxy: String,
    id: String,
    pid: i64,
) -> Result<(Vec<String>, usize), String> {
    let mut attaches = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "{id}: follow never completed after {attaches} attaches; last: {last}"
            ));
        }
        attaches += 1;
        let resp = http
            .get(format!("{proxy}/api/v1/processes/{pid}/output/follow"))
            .header("host", format!("{id}.local"))
            .send()
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut lines = Vec::new();
        let mut buf = String::new();
        let mut body = resp.bytes_stream();
        // The SDK's follow stream carries lines only and ends when the process has exited
        // and its output is drained; a cut connection ends it with an error instead.
        let mut exited = true;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                exited = false;
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                    let v: Value = serde_json::from_str(data).unwrap();
                    if let Some(line) = v["line"].as_str() {
                        lines.push(line.to_string());
                    }
                }
            }
        }
        if exited {
            return Ok((lines, attaches));
        }
        last = format!("stream ended without exit after {} lines", lines.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn list(http: &reqwest::Client, api: &str) -> Vec<Value> {
    let body: Value = http.get(api).send().await.unwrap().json().await.unwrap();
    body["sandboxes"].as_array().unwrap().clone()
}

fn runsc_running(home: &Home) -> Vec<String> {
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(home.path().join("runsc"))
        .args(["list", "-quiet"])
        .output()
        .unwrap();
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_no_sandbox_and_no_line() {
    let home = Home::new();
    let mut server = home.serve();
    let (api, proxy) = (server.sandboxes_url(), server.proxy_url());
    let http = common::server::http();

    let creates = (0..SANDBOXES).map(|_| {
        let (http, api) = (http.clone(), api.clone());
        tokio::spawn(async move { create(&http, &api).await })
    });
    let mut ids = Vec::new();
    for c in creates {
        ids.push(c.await.unwrap());
    }
    let mut followers = Vec::new();
    for id in &ids {
        let pid = start_printer(&http, &proxy, id).await;
        followers.push(tokio::spawn(follow(
            http.clone(),
            proxy.clone(),
            id.clone(),
            pid,
        )));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    server.kill9();
    // Nothing may die with the server.
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        runsc_running(&home),
        expected,
        "sandboxes died with the server"
    );
    let mut server = home.serve_on(server.api_port, server.proxy_port, &[]);

    for (follower, id) in followers.into_iter().zip(&ids) {
        let (lines, attaches) = match follower.await.unwrap() {
            Ok(r) => r,
            Err(e) => panic!("{e}\nserver log:\n{}", server.log()),
        };
        let want: Vec<String> = (0..LINES).map(|i| format!("line-{i}")).collect();
        assert_eq!(lines, want, "{id}: lines lost or doubled");
        assert!(
            attaches >= 2,
            "{id}: the stream was never broken ({attaches} attaches)"
        );
    }
    let listed = list(&http, &api).await;
    let mut running: Vec<String> = listed
        .iter()
        .filter(|s| s["status"] == "running")
        .map(|s| s["sandbox_id"].as_str().unwrap().to_string())
        .collect();
    running.sort();
    assert_eq!(running, expected, "database and runtime disagree");
    assert_eq!(runsc_running(&home), expected);

    // A graceful stop leaves them running too, and the next start adopts them again.
    assert!(server.stop().success(), "{}", server.log());
    assert_eq!(runsc_running(&home), expected);
    let server = home.serve_on(server.api_port, server.proxy_port, &[]);
    for id in &ids {
        let resp = http
            .post(format!("{proxy}/api/v1/processes/run"))
            .header("host", format!("{id}.local"))
            .json(&json!({"command": "echo", "args": ["still-here"]}))
            .send()
            .await
            .unwrap();
        assert!(
            resp.text().await.unwrap().contains("still-here"),
            "{id} not reachable"
        );
    }
    for id in &ids {
        let resp = http.delete(format!("{api}/{id}")).send().await.unwrap();
        assert!(resp.status().is_success());
    }
    drop(server);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_ends_the_dead_and_removes_orphans() {
    let home = Home::new();
    let mut server = home.serve();
    let (api, proxy) = (server.sandboxes_url(), server.proxy_url());
    let http = common::server::http();
    let dies = create(&http, &api).await;
    let lives = create(&http, &api).await;
    server.kill9();
    // While the server is down: one sandbox dies under it...
    let out = std::process::Command::new("runsc")
        .arg("--root")
        .arg(home.path().join("runsc"))
        .args(["kill", &dies, "KILL"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and its row is lost for the other (as if the database were restored from before it).
    let conn = rusqlite::Connection::open(home.path().join(hutch_state::DB_FILE)).unwrap();
    let removed = conn
        .execute("DELETE FROM sandboxes WHERE id = ?1", [&lives])
        .unwrap();
    assert_eq!(removed, 1);
    drop(conn);

    let server = home.serve_on(server.api_port, server.proxy_port, &[]);
    let info: Value = http
        .get(format!("{api}/{dies}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["status"], "terminated", "{info}");
    assert_eq!(info["termination_reason"], "lost");
    let resp = http
        .get(format!("{proxy}/api/v1/health"))
        .header("host", format!("{dies}.local"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(
        runsc_running(&home).is_empty(),
        "orphan {lives} left running"
    );
    let resp = http.get(format!("{api}/{lives}")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    server.delete_all();
    drop(server);
    for _ in 0..50 {
        if std::fs::read_dir(home.path().join("sandboxes")).map_or(0, |d| d.count()) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    home.assert_clean();
}
