//! The runtime library against real sandboxes: files, reconnection with replay, lifecycle
//! leaks, and a sandbox killed while a request is in flight.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Home;
use http_body_util::BodyExt;
use hutch_runtime::agent::{ExecEvent, channel_body};
use hutch_runtime::{Backend, RuntimeError, SandboxSpec};
use hutch_wire::{FileKind, StartProcess};
use sha2::{Digest, Sha256};

fn busybox() -> SandboxSpec {
    SandboxSpec {
        image: "busybox".into(),
        ..Default::default()
    }
}

fn sh(script: &str) -> StartProcess {
    StartProcess {
        command: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..StartProcess::default()
    }
}

#[tokio::test]
async fn files_stream_50_mib_both_ways_and_list_stat_and_404() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let agent = &sandbox.agent;

    let (tx, body) = channel_body(4);
    let producer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        for i in 0..50u32 {
            let chunk: Vec<u8> = (0..(1u32 << 20))
                .map(|j| ((i * 7 + j) % 253) as u8)
                .collect();
            hash.update(&chunk);
            tx.send(Bytes::from(chunk)).await.unwrap();
        }
        hash
    });
    agent.write_file("/data/big.bin", body).await.unwrap();
    let sent = producer.await.unwrap().finalize();

    let mut stream = agent.read_file("/data/big.bin").await.unwrap();
    let mut received = Sha256::new();
    let mut len = 0usize;
    while let Some(frame) = stream.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len();
            received.update(&data);
        }
    }
    assert_eq!(len, 50 << 20);
    assert_eq!(sent, received.finalize(), "content differs");

    // procfs files report size 0 but have content.
    let mut status = agent.read_file("/proc/1/status").await.unwrap();
    let mut text = Vec::new();
    while let Some(frame) = status.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            text.extend_from_slice(&data);
        }
    }
    assert!(String::from_utf8_lossy(&text).contains("VmRSS"), "{text:?}");

    let root = agent.list_dir("/").await.unwrap();
    let names: Vec<&str> = root.entries.iter().map(|e| e.name.as_str()).collect();
    for expected in ["bin", "data", "etc"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert_eq!(agent.stat("/").await.unwrap().kind, FileKind::Dir);
    let sh_stat = agent.stat("/bin/sh").await.unwrap();
    assert_eq!(sh_stat.kind, FileKind::Symlink);
    assert_eq!(agent.stat("/data/big.bin").await.unwrap().size, 50 << 20);

    match agent.read_file("/no/such/file").await {
        Err(RuntimeError::FilesystemFailure { code, .. }) => assert_eq!(code, "not_found"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a missing file was readable"),
    }
    match agent.stat("/etc/../etc/passwd").await {
        Err(RuntimeError::FilesystemFailure { code, .. }) => assert_eq!(code, "invalid_path"),
        other => panic!("`..` accepted: {:?}", other.map(|s| s.path)),
    }
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn a_cut_connection_heals_and_output_is_replayed_exactly_once() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let agent = &sandbox.agent;
    let generation = agent.link().expect("a dial-home link").generation();
    let mut stream = agent
        .exec(&sh(
            "i=1; while [ $i -le 300 ]; do echo line $i; i=$((i+1)); sleep 0.005; done",
        ))
        .await
        .unwrap();
    let (mut pid, mut next, mut out, mut cut) = (0, 0u64, Vec::new(), false);
    let exit = loop {
        match stream.next().await {
            Ok(Some(ExecEvent::Started { pid: p })) => pid = p,
            Ok(Some(ExecEvent::Stdout { seq, data })) => {
                assert_eq!(seq, next, "sequence gap or repeat");
                next = seq + 1;
                out.extend(data);
                if !cut && out.len() > 200 {
                    cut = true;
                    agent.link().expect("a dial-home link").disconnect();
                }
            }
            Ok(Some(ExecEvent::Exit(exit))) => break exit,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(RuntimeError::AgentUnavailable { .. }) => {
                stream = loop {
                    match agent.attach(pid, next).await {
                        Ok(s) => break s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                };
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(cut, "the connection was never cut");
    assert!(
        agent.link().expect("a dial-home link").generation() > generation,
        "the agent did not reconnect"
    );
    assert_eq!(exit.exit_code, Some(0));
    let expected: String = (1..=300).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn fifty_create_delete_cycles_leave_nothing_behind() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    for i in 0..50 {
        let sandbox = backend.create(busybox()).await.unwrap();
        match i % 3 {
            0 => {
                let mut s = sandbox.agent.exec(&sh("exit 1")).await.unwrap();
                while let Some(ev) = s.next().await.unwrap() {
                    if let ExecEvent::Exit(exit) = ev {
                        assert_eq!(exit.exit_code, Some(1));
                    }
                }
            }
            1 => {
                // Deleted while a process runs.
                sandbox.agent.start(&sh("sleep 100")).await.unwrap();
            }
            _ => {
                let info = sandbox.agent.start(&sh("sleep 100")).await.unwrap();
                sandbox.agent.kill_process(info.pid).await.unwrap();
            }
        }
        backend.delete(&sandbox.info.id).await.unwrap();
    }
    home.assert_clean();
    assert!(backend.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_sandbox_killed_mid_request_fails_the_request_and_cleans_up() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let id = sandbox.info.id.clone();
    let mut stream = sandbox
        .agent
        .exec(&sh("echo started; sleep 60"))
        .await
        .unwrap();
    // Kill the gVisor sandbox process itself from the host, as the OOM killer would.
    let victims: Vec<i32> = common::processes_mentioning(&id)
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("runsc-sandbox"))
        .map(|(pid, _)| pid)
        .collect();
    assert!(!victims.is_empty(), "no sandbox process found");
    for pid in victims {
        // SAFETY: kill(2) on a pid; one gone since fails harmlessly.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let outcome = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.next().await {
                Ok(Some(ExecEvent::Exit(_))) | Ok(None) => return Ok(()),
                Ok(Some(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the request hung after the sandbox died");
    assert!(
        matches!(outcome, Err(RuntimeError::AgentUnavailable { .. })),
        "{outcome:?}"
    );
    backend.delete(&id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn capabilities_and_typed_errors() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let caps = backend.capabilities();
    assert!(caps.is_supported(hutch_runtime::CapabilityName::ProcessReattach));
    // A policy entry that is not an address or network is refused before anything is made.
    assert!(caps.is_supported(hutch_runtime::CapabilityName::NetworkEgress));
    let err = backend
        .create(SandboxSpec {
            network: hutch_runtime::NetworkMode::Egress,
            network_policy: hutch_runtime::net::NetworkPolicy {
                allow_out: vec!["10.0.0.0/40".into()],
                ..Default::default()
            },
            ..busybox()
        })
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RuntimeError::InvalidSpec { .. }), "{err}");
    assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
    assert_eq!(err.retry_class(), hutch_runtime::RetryClass::NotRetryable);
    let err = backend.inspect("nope").await.err().unwrap();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    let err = backend
        .create(SandboxSpec {
            image: "missing".into(),
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "image_not_found");
    home.assert_clean();
}

#[tokio::test]
async fn stop_is_graceful_then_forceful() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let id = sandbox.info.id.clone();
    // One process leaves a note on SIGTERM; the other ignores SIGTERM and must be killed.
    sandbox
        .agent
        .start(&sh(
            "trap 'echo bye > /root/bye; exit 0' TERM; while true; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    sandbox
        .agent
        .start(&sh("trap '' TERM; while true; do sleep 0.05; done"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    backend.stop(&id, Duration::from_secs(2)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the grace period was skipped ({took:?})"
    );
    assert!(took < Duration::from_secs(15), "stop hung ({took:?})");
    assert_eq!(
        backend.inspect(&id).await.unwrap().state,
        hutch_runtime::SandboxState::Stopped
    );
    // The sandbox's writes stay in its upper directory until it is deleted.
    let note = home
        .path()
        .join("sandboxes")
        .join(&id)
        .join("upper/root/bye");
    assert_eq!(std::fs::read_to_string(note).unwrap(), "bye\n");
    backend.delete(&id).await.unwrap();
    home.assert_clean();
}

/// A network whose sandbox directory is gone (its process killed between removing the
/// directory and the network) is removed by the next network made on the host.
#[tokio::test]
async fn a_network_left_by_a_crash_is_swept_by_the_next_one() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    // A slot no test uses (the sandbox CIDR's slots are taken round robin from the low end).
    let stale = 16_001u32;
    std::fs::create_dir_all("/run/hutch/net").unwrap();
    std::fs::write(
        format!("/run/hutch/net/slot-{stale}"),
        home.path()
            .join("sandboxes/gone-before-its-network")
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &format!("hutch-{stale}")])
        .status()
        .unwrap();
    assert!(made.success());
    assert!(!hutch_runtime::net::host::leftovers(stale).is_empty());

    let sandbox = backend
        .create(SandboxSpec {
            network: hutch_runtime::NetworkMode::Egress,
            ..busybox()
        })
        .await
        .unwrap();
    let left = hutch_runtime::net::host::leftovers(stale);
    assert!(left.is_empty(), "{left:?}");
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}
