//! `hutch sbx` against a real `hutch serve`.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, stderr, stdout};

#[test]
fn sbx_commands_drive_a_running_server() {
    let home = Home::new();
    let server = home.serve();
    let sbx = |args: &[&str]| {
        let mut cmd = home.hutch();
        cmd.env(
            "HUTCH_SERVER",
            format!("http://127.0.0.1:{}", server.api_port),
        )
        .arg("sbx")
        .args(args)
        .stdin(std::process::Stdio::null());
        cmd.output().unwrap()
    };
    let out = sbx(&["create", "--name", "cli", "--memory", "256", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(created["status"], "running");
    let id = created["sandbox_id"].as_str().unwrap().to_string();

    let out = sbx(&["ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["sandbox_id"], id.as_str());
    assert_eq!(listed[0]["resources"]["memory_mb"], 256);

    let out = sbx(&[
        "exec",
        "cli",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    let local = home.path().join("in.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let out = sbx(&["cp", local.to_str().unwrap(), "cli:/tmp/in.bin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let back = home.path().join("back.bin");
    let out = sbx(&["cp", "cli:/tmp/in.bin", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&back).unwrap(), data);

    let out = sbx(&["logs", "cli"]);
    assert!(
        stdout(&out).contains("out") && stdout(&out).contains("err"),
        "{}",
        stdout(&out)
    );

    let out = sbx(&["exec", "nope", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    let out = sbx(&["rm", "cli"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sbx(&["get", id.as_str(), "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["status"], "terminated");
    drop(server);
    home.assert_clean();
}

/// The sandboxes a server lists, terminated ones included.
fn listed(server: &common::server::Server) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            &format!("{}?include_terminated=true", server.sandboxes_url()),
        ])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list["sandboxes"].as_array().cloned().unwrap_or_default()
}

#[test]
fn run_uses_the_server_it_finds_and_survives_its_restart() {
    let home = Home::new();
    let mut server = home.serve();
    let (api_port, proxy_port) = (server.api_port, server.proxy_port);
    let url = format!("http://127.0.0.1:{api_port}");

    // The server reports a fingerprint of its state directory, the one `hutch run` compares
    // with its own before using a server it was not told about.
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("{url}/healthz")])
        .output()
        .unwrap();
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        health["state_id"].as_str(),
        Some(hutch_state::state_id(home.path()).as_str())
    );

    let run = |args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut child = home
            .hutch()
            .env("HUTCH_SERVER", &url)
            .arg("run")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child
    };

    // Exit code, stdout and stderr apart, stdin passed through, env and workdir applied.
    let out = run(
        &[
            "-e",
            "GREETING=hello",
            "-w",
            "/tmp",
            "hutch/minimal",
            "--",
            "sh",
            "-c",
            "read line; echo \"$GREETING $line from $(pwd)\"; echo err >&2; exit 5",
        ],
        b"stdin\n",
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello stdin from /tmp\n");
    assert_eq!(stderr(&out), "err\n");
    // It ran on the server: the server made the sandbox and removed it at the user's request.
    let sandboxes = listed(&server);
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    assert_eq!(sandboxes[0]["status"], "terminated");
    assert_eq!(sandboxes[0]["termination_reason"], "user_requested");

    // --local ignores the server.
    let out = home
        .hutch()
        .env("HUTCH_SERVER", &url)
        .args(["run", "--local", "hutch/minimal", "--", "echo", "local"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "local\n", "{}", stderr(&out));
    assert_eq!(listed(&server).len(), 1);

    // An image the server does not have: a clear error naming it.
    let out = run(&["no/such-image", "--", "true"], b"")
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no/such-image"), "{}", stderr(&out));

    // kill -9 the server while a command streams; restart it on the same ports. The run
    // reattaches, loses no line and doubles none, and exits with the command's code.
    let child = run(
        &[
            "hutch/minimal",
            "--",
            "sh",
            "-c",
            "for i in $(seq 1 30); do echo line$i; sleep 0.1; done; exit 3",
        ],
        b"",
    );
    std::thread::sleep(std::time::Duration::from_millis(1200));
    server.kill9();
    let server = home.serve_on(api_port, proxy_port, &[]);
    let out = child.wait_with_output().unwrap();
    let expected: String = (1..=30).map(|i| format!("line{i}\n")).collect();
    assert_eq!(stdout(&out), expected, "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // And with HUTCH_SERVER naming nothing, `hutch run` says so instead of guessing.
    let out = home
        .hutch()
        .env("HUTCH_SERVER", "http://127.0.0.1:1")
        .args(["run", "hutch/minimal", "--", "true"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("HUTCH_SERVER=http://127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
    drop(server);
    home.assert_clean();
}
