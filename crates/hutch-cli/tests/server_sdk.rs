//! `hutch serve` driven by the published `tensorlake` crate (0.5.160): the lifecycle API and
//! the sandbox proxy, with real sandboxes behind them.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Home;
use serde_json::{Value, json};
use tensorlake::sandboxes::models::{CreateSandboxRequest, RunProcessEvent};
use tensorlake::sandboxes::{SandboxProxyClient, SandboxesClient, resolve_sandbox_proxy_target};
use tensorlake::{ClientBuilder, Sdk};

fn sandboxes(server: &common::server::Server) -> SandboxesClient {
    Sdk::new(&server.api_url(), "")
        .unwrap()
        .sandboxes("default", true)
}

fn request(body: Value) -> CreateSandboxRequest {
    serde_json::from_value(body).unwrap()
}

/// A proxy client built the way the SDK builds one from a sandbox's `sandbox_url`.
fn proxy(sandbox_url: &str, id: &str) -> SandboxProxyClient {
    let target = resolve_sandbox_proxy_target(sandbox_url, id).unwrap();
    assert_eq!(
        target.host_override.as_deref(),
        Some(&*format!("{id}.local"))
    );
    let client = ClientBuilder::new(&target.base_url).build().unwrap();
    SandboxProxyClient::new(client, target.host_override).with_sandbox_id(target.sandbox_id_header)
}

fn status_of(err: &tensorlake::error::SdkError) -> Option<u16> {
    match err {
        tensorlake::error::SdkError::ServerError { status, .. } => Some(status.as_u16()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensorlake_crate_runs_the_lifecycle_processes_and_files() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);

    // Blocking create with a name; the default image (no image named).
    let created = api
        .create_and_wait(&request(
            json!({"name": "conformance", "timeout_secs": 600}),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.status, "running");
    let id = created.sandbox_id.clone();
    let url = created.sandbox_url.clone().expect("sandbox_url");
    let info = api.get("conformance").await.unwrap().into_inner();
    assert_eq!(info.sandbox_id, id, "get by name resolves to the id");
    assert_eq!(info.status, "running");
    assert_eq!(info.resources.memory_mb, 1024);
    assert!(api.list().await.unwrap().iter().any(|s| s.sandbox_id == id));
    let duplicate = api
        .create(&request(json!({"name": "conformance"})))
        .await
        .unwrap_err();
    assert_eq!(status_of(&duplicate), Some(409), "{duplicate}");

    let sbx = proxy(&url, &id);
    assert!(sbx.health().await.unwrap().healthy);

    // run: exit code, stdout and stderr kept apart.
    let events = sbx
        .run_process(&json!({"command": "sh", "args": ["-c", "echo out; echo err >&2; exit 3"]}))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let mut exit = None;
    for event in &events {
        match event {
            RunProcessEvent::Output(o) => out.push((o.stream.clone(), o.line.clone())),
            RunProcessEvent::Exited { exit_code, .. } => exit = *exit_code,
            _ => {}
        }
    }
    assert_eq!(exit, Some(3), "{events:?}");
    assert!(
        out.contains(&(Some("stdout".into()), "out".into())),
        "{out:?}"
    );
    assert!(
        out.contains(&(Some("stderr".into()), "err".into())),
        "{out:?}"
    );

    // A background process: stdin in, stdin closed, output followed to the end.
    let cat = sbx
        .start_process(&json!({"command": "cat", "stdin_mode": "pipe"}))
        .await
        .unwrap()
        .into_inner();
    sbx.write_stdin(cat.pid, b"first\nsecond\n".to_vec())
        .await
        .unwrap();
    sbx.close_stdin(cat.pid).await.unwrap();
    let followed = sbx.follow_output(cat.pid).await.unwrap().into_inner();
    let lines: Vec<&str> = followed.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(lines, ["first", "second"]);
    let done = sbx.get_process(cat.pid).await.unwrap().into_inner();
    assert_eq!(done.exit_code, Some(0));

    // Signals.
    let sleeper = sbx
        .start_process(&json!({"command": "sleep", "args": ["1000"]}))
        .await
        .unwrap()
        .into_inner();
    sbx.send_signal(sleeper.pid, 15).await.unwrap();
    let mut ended = None;
    for _ in 0..100 {
        let p = sbx.get_process(sleeper.pid).await.unwrap().into_inner();
        if p.status != "running" {
            ended = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ended.expect("sleep ended").signal, Some(15));

    // Files, one of 20 MiB, byte-exact.
    let big: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    sbx.write_file("/tmp/big.bin", big.clone()).await.unwrap();
    let back = sbx.read_file("/tmp/big.bin").await.unwrap().into_inner();
    assert!(
        back == big,
        "20 MiB file came back different ({} bytes)",
        back.len()
    );
    let listing = sbx.list_directory("/tmp").await.unwrap().into_inner();
    let entry = listing
        .entries
        .iter()
        .find(|e| e.name == "big.bin")
        .expect("listed");
    assert_eq!(entry.size, Some(20 << 20));
    sbx.delete_file("/tmp/big.bin").await.unwrap();
    let gone = sbx.read_file("/tmp/big.bin").await.unwrap_err();
    assert_eq!(status_of(&gone), Some(404), "{gone}");

    // Delete; get reports it terminated; the proxy no longer routes to it.
    api.delete(&id).await.unwrap();
    let after = api.get(&id).await.unwrap().into_inner();
    assert_eq!(after.status, "terminated");
    assert_eq!(after.termination_reason.as_deref(), Some("user_requested"));
    let routed = sbx.health().await.unwrap_err();
    assert_eq!(status_of(&routed), Some(404), "{routed}");
    let unknown = api.get("no-such-sandbox").await.unwrap_err();
    assert_eq!(status_of(&unknown), Some(404));

    drop(server);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_create_settles_and_timeouts_terminate() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let accepted = api
        // Long enough that a loaded machine still sees it running before it times out.
        .create_no_wait(&request(json!({"timeout_secs": 6})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(accepted.state, "pending");
    let settled = api
        .wait_until_settled(
            &accepted.sandbox_id,
            Duration::from_secs(30),
            Duration::from_millis(50),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(settled.status, "running");
    assert_eq!(settled.timeout_secs, Some(6));

    let missing = api
        .create(&request(json!({"image": "no/such-image:1"})))
        .await
        .unwrap_err();
    assert_eq!(status_of(&missing), Some(404), "{missing}");

    // timeout_secs ends it, with the reason.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let info = api.get(&accepted.sandbox_id).await.unwrap().into_inner();
            if info.status == "terminated" {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("timed-out sandbox terminated");
    assert_eq!(ended.termination_reason.as_deref(), Some("timeout"));
    // The runtime side goes too.
    for _ in 0..100 {
        if std::fs::read_dir(home.path().join("sandboxes")).map_or(0, |d| d.count()) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
    home.assert_clean();
}
