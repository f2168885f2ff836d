//! A process's output and memory cannot take its sandbox down (issue 11, finding 10): a flood
//! of output through the SDK's `run` leaves the sandbox running, and what the sandbox's tmpfs
//! holds counts against its memory limit, so the agent acts before the host backstop would
//! end the whole sandbox. Real `hutch serve`, real gVisor sandboxes, the published
//! `tensorlake` crate as the client.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::Home;
use serde_json::{Value, json};
use tensorlake::Sdk;
use tensorlake::sandboxes::models::{CreateSandboxRequest, RunProcessEvent};
use tensorlake::sandboxes::{SandboxProxyClient, SandboxesClient, resolve_sandbox_proxy_target};

/// The agent's cap on one line (a longer one is served in pieces of this size).
const MAX_LINE: usize = 64 << 10;

fn sandboxes(server: &common::server::Server) -> SandboxesClient {
    Sdk::new(&server.api_url(), "")
        .unwrap()
        .sandboxes("default", true)
}

fn proxy(sandbox_url: &str, id: &str) -> SandboxProxyClient {
    let target = resolve_sandbox_proxy_target(sandbox_url, id).unwrap();
    let client = tensorlake::ClientBuilder::new(&target.base_url)
        .build()
        .unwrap();
    SandboxProxyClient::new(client, target.host_override).with_sandbox_id(target.sandbox_id_header)
}

async fn create(api: &SandboxesClient, memory_mb: i64) -> (String, SandboxProxyClient) {
    let request: CreateSandboxRequest =
        serde_json::from_value(json!({"resources": {"memory_mb": memory_mb}, "timeout_secs": 900}))
            .unwrap();
    let created = api.create_and_wait(&request).await.unwrap().into_inner();
    assert_eq!(created.status, "running");
    let url = created.sandbox_url.clone().expect("sandbox_url");
    let sbx = proxy(&url, &created.sandbox_id);
    (created.sandbox_id, sbx)
}

/// What `run` reported: output bytes and lines, the longest line, and the exit event.
#[derive(Debug, Default)]
struct Ran {
    bytes: usize,
    lines: Vec<String>,
    longest: usize,
    exit: Option<(Option<i64>, Option<i64>, bool)>,
}

async fn run(sbx: &SandboxProxyClient, spec: Value, keep_lines: bool) -> Ran {
    let mut ran = Ran::default();
    sbx.run_process_streaming(&spec, |event| match event {
        RunProcessEvent::Output(out) => {
            ran.bytes += out.line.len();
            ran.longest = ran.longest.max(out.line.len());
            if keep_lines {
                ran.lines.push(out.line);
            }
        }
        RunProcessEvent::Exited {
            exit_code,
            signal,
            oom_killed,
            ..
        } => ran.exit = Some((exit_code, signal, oom_killed)),
        RunProcessEvent::Started { .. } => {}
    })
    .await
    .unwrap();
    ran
}

async fn assert_alive(api: &SandboxesClient, sbx: &SandboxProxyClient, id: &str) {
    let info = api.get(id).await.unwrap().into_inner();
    assert_eq!(info.status, "running", "{info:?}");
    let echo = run(
        sbx,
        json!({"command": "sh", "args": ["-c", "echo still alive"]}),
        true,
    )
    .await;
    assert_eq!(echo.lines, ["still alive"], "{echo:?}");
    assert_eq!(echo.exit, Some((Some(0), None, false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_nuls_through_run_leaves_a_small_sandbox_running() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let (id, sbx) = create(&api, 256).await;

    // The case: 100 MiB of NULs, one line with no end, in a 256 MiB sandbox. Six
    // times that in SSE JSON, or that much held as one partial line, ended the sandbox.
    let flood = run(
        &sbx,
        json!({"command": "head", "args": ["-c", "104857600", "/dev/zero"]}),
        false,
    )
    .await;
    let (exit_code, _, oom_killed) = flood.exit.expect("an exit event");
    assert!(
        exit_code == Some(0) || oom_killed,
        "the flood exits, or is killed alone for memory: {flood:?}"
    );
    assert!(flood.longest <= MAX_LINE, "{}", flood.longest);
    assert!(flood.bytes <= 100 << 20, "{}", flood.bytes);
    assert_alive(&api, &sbx, &id).await;

    // The whole retained output as one JSON document: bounded by the per-process ring.
    let procs = sbx.list_processes().await.unwrap().into_inner();
    let head = procs
        .iter()
        .find(|p| p.command == "head")
        .expect("the flood is listed");
    let stdout = sbx.get_stdout(head.pid).await.unwrap().into_inner();
    let retained: usize = stdout.lines.iter().map(String::len).sum();
    assert!(retained <= 8 << 20, "{retained}");
    assert!(stdout.lines.iter().all(|l| l.len() <= MAX_LINE));
    assert_eq!(stdout.line_count as usize, stdout.lines.len());

    api.delete(&id).await.unwrap();
    drop(server);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_counts_against_the_memory_limit() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let (id, sbx) = create(&api, 128).await;

    // 200 MiB in runsc's tmpfs `/tmp` (kept in the sandbox's memory), then a long sleep: the
    // processes themselves are tiny. Over the 128 MiB limit, the agent kills them and says
    // so; not counting tmpfs, the sleep would run out and exit 0, until enough tmpfs took the
    // whole sandbox past the host's backstop.
    let filled = run(
        &sbx,
        json!({"command": "sh", "args": ["-c",
            "dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>/dev/null; exec sleep 120"]}),
        true,
    )
    .await;
    let (_, _, oom_killed) = filled.exit.expect("an exit event");
    assert!(oom_killed, "{filled:?}");

    // Freed through the files API (the agent, not a process), the sandbox works again.
    sbx.delete_file("/tmp/fill").await.unwrap();
    assert_alive(&api, &sbx, &id).await;

    api.delete(&id).await.unwrap();
    drop(server);
    home.assert_clean();
}
