//! `hutch sbx` against a real `hutch serve`.

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
