//! The sandbox is gVisor, sees nothing of the host, has no network, and enforces memory
//! limits per process without dying.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, stderr, stdout};
use hutch_runtime::Backend;
use hutch_runtime::agent::ExecEvent;
use hutch_wire::StartProcess;

#[test]
fn the_kernel_is_gvisor() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&["run", "busybox", "--", "dmesg"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("gVisor"), "{}", stdout(&out));
}

#[test]
fn host_files_are_invisible() {
    let home = Home::with(&["busybox"]);
    let marker = format!("/hutch-host-marker-{}", std::process::id());
    std::fs::write(&marker, "host secret").unwrap();
    let read = home.run(&["run", "busybox", "--", "cat", &marker]);
    let list = home.run(&["run", "busybox", "--", "ls", "-a", "/"]);
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(read.status.code(), Some(1), "{}", stderr(&read));
    assert!(!stdout(&read).contains("host secret"));
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains("bin"));
    assert!(!stdout(&list).contains("hutch-host-marker"));
}

#[test]
fn only_loopback_exists() {
    let home = Home::with(&["busybox"]);
    // The kernel's own list of interfaces (runsc 2024 has no `/sys/class/net` without a
    // network stack, 2022 lists `lo` there).
    let out = home.run(&["run", "busybox", "--", "cat", "/proc/net/dev"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let interfaces: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect();
    assert_eq!(interfaces, vec!["lo"], "{}", stdout(&out));
}

async fn exec(sandbox: &hutch_runtime::Sandbox, script: &str) -> (Vec<u8>, hutch_wire::ExitInfo) {
    let mut stream = sandbox
        .agent
        .exec(&StartProcess {
            command: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..StartProcess::default()
        })
        .await
        .unwrap();
    let mut output = Vec::new();
    loop {
        match stream.next().await.unwrap() {
            Some(ExecEvent::Stdout { data, .. }) | Some(ExecEvent::Stderr { data, .. }) => {
                output.extend(data)
            }
            Some(ExecEvent::Exit(exit)) => return (output, exit),
            Some(_) => {}
            None => panic!("stream ended without exit"),
        }
    }
}

#[tokio::test]
async fn a_process_over_the_memory_limit_is_oom_killed_and_the_sandbox_lives() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend
        .create(hutch_runtime::SandboxSpec {
            image: "busybox".into(),
            memory_mb: Some(64),
            ..Default::default()
        })
        .await
        .unwrap();
    // `sort` holds its whole input line in memory: 400 MB against a 64 MiB limit.
    let (_, exit) = exec(&sandbox, "head -c 400000000 /dev/zero | sort > /dev/null").await;
    assert!(exit.oom_killed, "{exit:?}");
    let (out, exit) = exec(&sandbox, "echo still alive").await;
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(out, b"still alive\n");
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}
