//! Attacks from inside a sandbox or an image on the host (issue 11, findings 1-4 and 9):
//! a RUN step whose `/tmp` is a symlink to a host path, code dialing the agent socket to take
//! over the link, other host users reaching setuid files through sandbox directories, and
//! process floods. Each fails without its fix.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{Home, stderr};
use hutch_runtime::agent::ExecEvent;
use hutch_runtime::{Backend, SandboxSpec};
use hutch_wire::{ProcessUser, StartProcess};

async fn exec_as(
    sandbox: &hutch_runtime::Sandbox,
    user: Option<&str>,
    command: &str,
    args: &[&str],
) -> (String, hutch_wire::ExitInfo) {
    let mut stream = sandbox
        .agent
        .exec(&StartProcess {
            command: command.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            user: user.map(|u| ProcessUser::Spec(u.into())),
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
            Some(ExecEvent::Exit(exit)) => return (String::from_utf8_lossy(&output).into(), exit),
            Some(_) => {}
            None => panic!("stream ended without exit"),
        }
    }
}

async fn sh(sandbox: &hutch_runtime::Sandbox, script: &str) -> (String, hutch_wire::ExitInfo) {
    exec_as(sandbox, None, "sh", &["-c", script]).await
}

/// A host directory holding a root-only secret, as an attacker's target.
fn host_target() -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("hutch-target")
        .tempdir_in("/var/tmp")
        .unwrap();
    let secret = format!("host-secret-{}", std::process::id());
    let file = dir.path().join("secret");
    std::fs::write(&file, &secret).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (dir, secret)
}

#[test]
fn a_run_step_never_reaches_the_host_through_a_symlinked_tmp() {
    let home = Home::with(&["busybox"]);
    let (target, secret) = host_target();
    let t = target.path().display().to_string();
    // `/tmp` as a symlink: absolute, relative with `..` past the root, and through a
    // symlinked parent at depth.
    let variants = [
        format!("ln -s {t} /r/tmp"),
        format!("ln -s ../../../../../../../..{t} /r/tmp"),
        format!("mkdir -p /r/a && ln -s {t} /r/a/b && ln -s /a/b/. /r/tmp"),
    ];
    for (i, link) in variants.iter().enumerate() {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(
            context.path().join("Dockerfile"),
            format!(
                "FROM busybox AS one\nRUN mkdir -p /r && {link}\n\
                 FROM scratch\nCOPY --from=one /bin /bin\nCOPY --from=one /r/ /\n\
                 RUN cat /tmp/secret; echo pwned > /tmp/written; echo step-ran\n"
            ),
        )
        .unwrap();
        let tag = format!("tmp-escape:{i}");
        let out = home.run(&[
            "image",
            "build",
            "-t",
            &tag,
            context.path().to_str().unwrap(),
        ]);
        let log = stderr(&out) + &common::stdout(&out);
        assert!(
            !log.contains(&secret),
            "variant {i} read the host file:\n{log}"
        );
        assert!(
            !target.path().join("written").exists(),
            "variant {i} wrote on the host:\n{log}"
        );
        assert_eq!(
            std::fs::read_to_string(target.path().join("secret")).unwrap(),
            secret
        );
    }
    home.assert_clean();
}

#[tokio::test]
async fn the_agent_link_cannot_be_taken_over_from_inside() {
    let home = Home::with(&["debian"]);
    let backend = home.backend();
    let sandbox = backend
        .create(SandboxSpec {
            image: "debian".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The secret the agent proves itself with is gone before any process runs.
    let (out, _) = sh(&sandbox, "ls -a /run/hutch").await;
    assert!(!out.contains("agent.secret"), "{out}");

    // An impostor: dials the agent socket, unlinks it, and serves HTTP/2 (a SETTINGS
    // frame, then it records whatever arrives), as the agent would, with a guessed preface
    // and without. On f2fc56a its connection replaced the agent's and the next proxied
    // request failed with "http2 error" (seen with `hutch serve` and the same script).
    let impostor = r#"
import os, socket, sys, time, threading
captured = open('/captured', 'wb')
def serve(preface):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect('/run/hutch/agent.sock')
    try:
        # As the probe did: the real agent could not dial again after a drop.
        os.unlink('/run/hutch/agent.sock')
    except OSError:
        pass
    if preface:
        s.sendall(b'HUTCH-AGENT-1 ' + b'0' * 64 + b'\n')
    s.sendall(b'\x00\x00\x00\x04\x00\x00\x00\x00\x00')
    s.settimeout(8)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            captured.write(data); captured.flush()
            s.sendall(b'\x00\x00\x00\x04\x01\x00\x00\x00\x00')
    except Exception:
        pass
threads = [threading.Thread(target=serve, args=(p,)) for p in (False, True)]
[t.start() for t in threads]
print('dialed', flush=True)
[t.join() for t in threads]
"#;
    let started = sandbox
        .agent
        .start(&StartProcess {
            command: "python3".into(),
            args: vec!["-c".into(), impostor.into()],
            ..StartProcess::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let generation = sandbox.agent.link().unwrap().generation();
    // Requests still reach the real agent, and the impostor saw none of them.
    for _ in 0..5 {
        let (out, exit) = tokio::time::timeout(
            Duration::from_secs(20),
            sh(&sandbox, "echo still-the-agent"),
        )
        .await
        .expect("the link was taken over: requests hang");
        assert_eq!(exit.exit_code, Some(0));
        assert_eq!(out, "still-the-agent\n");
    }
    assert_eq!(sandbox.agent.link().unwrap().generation(), generation);
    let (captured, _) = sh(&sandbox, "wc -c < /captured").await;
    assert_eq!(captured.trim(), "0", "the impostor received requests");
    let _ = sandbox.agent.kill_process(started.pid).await;

    // A process that is not root cannot even reach the socket's directory.
    let (out, exit) = exec_as(&sandbox, Some("nobody"), "ls", &["/run/hutch"]).await;
    assert_ne!(exit.exit_code, Some(0), "nobody listed /run/hutch: {out}");
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn other_host_users_reach_nothing_in_sandbox_directories() {
    let home = Home::with(&["busybox"]);
    // An image holding a setuid-root copy of the host's own `id` (it runs on the host, and
    // unlike busybox does not drop a setuid euid): on f2fc56a `nobody` ran it from the
    // sandbox's rootfs and got euid 0.
    let context = tempfile::tempdir().unwrap();
    std::fs::copy("/usr/bin/id", context.path().join("id")).unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox\nCOPY id /x/id\nRUN chmod 4755 /x/id\n",
    )
    .unwrap();
    let out = home.run(&[
        "image",
        "build",
        "-t",
        "suid-host:1",
        context.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backend = home.backend();
    let sandbox = backend
        .create(SandboxSpec {
            image: "suid-host:1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // One made inside, too, lands in the sandbox's upper directory.
    let (_, exit) = sh(&sandbox, "cp /x/id /y && chmod 4755 /y").await;
    assert_eq!(exit.exit_code, Some(0));
    let dir = home.path().join("sandboxes").join(&sandbox.info.id);
    for private in [
        home.path().to_path_buf(),
        home.path().join("sandboxes"),
        dir.clone(),
        dir.join("run"),
    ] {
        let mode = std::fs::metadata(&private).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", private.display());
    }
    // The overlay itself means nothing setuid or device-like on the host.
    let rootfs = dir.join("rootfs").display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(rootfs.as_str()))
        .expect("rootfs mounted");
    let options = line.split(' ').nth(5).unwrap();
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{line}"
    );
    // `nobody` on the host tries the setuid binaries by their host paths.
    for path in [
        dir.join("rootfs/x/id"),
        dir.join("rootfs/y"),
        dir.join("upper/y"),
    ] {
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&path)
            .arg("-u")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() && said.trim().is_empty(),
            "{}: {said} {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn a_server_keeps_its_database_private_and_limits_every_sandboxs_processes() {
    let home = Home::with(&["busybox"]);
    let mut server = home.serve_on(
        common::server::free_port(),
        common::server::free_port(),
        &["--pids-limit", "64"],
    );
    let db = home.path().join("hutch.db");
    assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o777, 0o600);
    let http = common::server::http();
    let resp = http
        .post(server.sandboxes_url())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let id = body["sandbox_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let max = loop {
        if let Some(max) = cgroup_pids_max(&id) {
            break max;
        }
        assert!(std::time::Instant::now() < deadline, "no cgroup for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(max, (64 * 16 + 2048).to_string());
    server.delete_all();
    server.stop();
}

fn cgroup_pids_max(id: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/pids/hutch/{id}/pids.max"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::test]
async fn a_process_flood_ends_inside_and_the_sandbox_lives() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend
        .create(SandboxSpec {
            image: "busybox".into(),
            pids_limit: Some(64),
            ..Default::default()
        })
        .await
        .unwrap();
    // Every sandbox has a host backstop, even without memory or cpu limits.
    assert_eq!(cgroup_pids_max(&sandbox.info.id).as_deref(), Some("3072"));
    // 200 sleepers in a session of their own: past 64 the agent ends that session. (200
    // guest processes cost the host ~2,000 tasks, under the backstop of 3,072: only the
    // agent can have stopped them.)
    let (out, _) = sh(
        &sandbox,
        "setsid sh -c 'i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; wait' & \
         sleep 5; ls /proc | grep -c '^[0-9]'",
    )
    .await;
    let left: u32 = out.trim().lines().last().unwrap().parse().unwrap();
    assert!(left < 64, "{left} processes left after the flood");
    let (out, exit) = sh(&sandbox, "echo alive").await;
    assert_eq!((out.as_str(), exit.exit_code), ("alive\n", Some(0)));
    backend.delete(&sandbox.info.id).await.unwrap();

    // Out of range limits are refused.
    let err = backend
        .create(SandboxSpec {
            image: "busybox".into(),
            pids_limit: Some(1 << 30),
            ..Default::default()
        })
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("pids_limit"), "{err}");
    home.assert_clean();
}

#[test]
fn one_shot_runs_get_a_pids_limit_too() {
    let home = Home::with(&["busybox"]);
    // `hutch run` without --memory or --cpus: its sandbox's host cgroup is read while the
    // command runs.
    let child = std::process::Command::new(common::hutch_bin())
        .env("HUTCH_HOME", home.path())
        .args(["run", "busybox", "--", "sleep", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let found = loop {
        let ids: Vec<String> = std::fs::read_dir(home.path().join("sandboxes"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(max) = ids.iter().find_map(|id| cgroup_pids_max(id)) {
            break Some(max);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let expected = (hutch_runtime::DEFAULT_PIDS_LIMIT as i64 * 16 + 2048).to_string();
    assert_eq!(found.as_deref(), Some(expected.as_str()));
    home.assert_clean();
}

#[tokio::test]
async fn build_sandboxes_of_a_dead_process_are_swept() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    // A RUN sandbox whose owner is gone (a pid that cannot be alive with that start time),
    // and one of a live owner (this test process), which must stay.
    let dead = backend
        .create(SandboxSpec {
            image: "busybox".into(),
            labels: [
                ("hutch.build".to_string(), "run".to_string()),
                (
                    hutch_build::engine::OWNER_LABEL.to_string(),
                    "1:0".to_string(),
                ),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let me = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let started = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let live = backend
        .create(SandboxSpec {
            image: "busybox".into(),
            labels: [
                ("hutch.build".to_string(), "run".to_string()),
                (
                    hutch_build::engine::OWNER_LABEL.to_string(),
                    format!("{me}:{started}"),
                ),
            ]
            .into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hutch_build::engine::sweep_orphans(&backend).await, 1);

    // A sandbox whose remover was killed midway: stopped, its record gone, its directory,
    // overlay mount and pin left.
    let half = backend
        .create(SandboxSpec {
            image: "busybox".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    backend.stop(&half.info.id, Duration::ZERO).await.unwrap();
    let half_dir = home.path().join("sandboxes").join(&half.info.id);
    std::fs::remove_file(half_dir.join("sandbox.json")).unwrap();
    let pin = home
        .path()
        .join("store/pins")
        .join(format!("{}.json", half.info.id));
    assert!(pin.exists());
    // Too young to be judged left behind: a create elsewhere may be writing it.
    assert_eq!(backend.sweep_incomplete(Duration::from_secs(3600)), 0);
    assert_eq!(backend.sweep_incomplete(Duration::ZERO), 1);
    assert!(!half_dir.exists() && !pin.exists());
    let left: Vec<String> = backend
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![live.info.id.clone()]);
    assert!(!Path::new(&home.path().join("sandboxes").join(&dead.info.id)).exists());
    backend.delete(&live.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn device_nodes_made_inside_reach_no_host_device() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend
        .create(SandboxSpec {
            image: "busybox".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The host's first disk and its memory, as device numbers: CAP_MKNOD is in the default
    // set, so the node may be made, but it must lead nowhere.
    let (out, _) = sh(
        &sandbox,
        "mknod /disk b 8 0; mknod /mem c 1 1; \
         head -c 16 /disk | wc -c; head -c 16 /mem | wc -c",
    )
    .await;
    let counts: Vec<&str> = out
        .lines()
        .filter(|l| l.trim().parse::<u32>().is_ok())
        .collect();
    assert!(
        counts.iter().all(|c| c.trim() == "0"),
        "a device node made inside read something: {out}"
    );
    // Nor does a real device node appear on the host in the sandbox's writable layer.
    let upper = home
        .path()
        .join("sandboxes")
        .join(&sandbox.info.id)
        .join("upper");
    for name in ["disk", "mem"] {
        if let Ok(meta) = std::fs::symlink_metadata(upper.join(name)) {
            use std::os::unix::fs::FileTypeExt;
            let ft = meta.file_type();
            assert!(
                !(ft.is_block_device() || ft.is_char_device()) || meta.rdev() == 0,
                "{name} is a device node on the host"
            );
        }
    }
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}
