//! `hutch run` end to end, in real gVisor sandboxes.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{Home, stderr, stdout};

#[test]
fn exit_codes_propagate_including_signals() {
    let home = Home::with(&["busybox"]);
    assert_eq!(
        home.run(&["run", "busybox", "--", "true"]).status.code(),
        Some(0)
    );
    assert_eq!(
        home.run(&["run", "busybox", "--", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
    let killed = home.run(&["run", "busybox", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.status.code(), Some(137), "{}", stderr(&killed));
    home.assert_clean();
}

#[test]
fn stdout_and_stderr_stay_separate_and_complete_for_10_mib() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&[
        "run",
        "busybox",
        "--",
        "sh",
        "-c",
        "yes 0123456789abcdef | head -c 10485760; yes problem | head -c 1048576 >&2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), 10 << 20);
    assert!(
        out.stdout
            .chunks(17)
            .all(|c| c == &b"0123456789abcdef\n"[..c.len()])
    );
    assert_eq!(out.stderr.len(), 1 << 20);
    assert!(out.stderr.chunks(8).all(|c| c == &b"problem\n"[..c.len()]));
    home.assert_clean();
}

#[test]
fn stdin_piped_into_hutch_run_reaches_the_process() {
    let home = Home::with(&["busybox"]);
    let mut child = home
        .hutch()
        .args(["run", "busybox", "--", "sh", "-c", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut stdin = child.stdin.take().unwrap();
    let expected = input.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(&out.stdout[..expected.len()], &expected[..]);
    assert_eq!(&out.stdout[expected.len()..], b"end\n");
}

#[test]
fn entrypoint_and_command_follow_docker_semantics() {
    let home = Home::with(&["busybox"]);
    // The image's CMD is `sh`, which exits at once on closed stdin.
    assert_eq!(home.run(&["run", "busybox"]).status.code(), Some(0));
    let out = home.run(&[
        "run",
        "--entrypoint",
        "echo",
        "busybox",
        "--",
        "from",
        "entrypoint",
    ]);
    assert_eq!(stdout(&out), "from entrypoint\n");
    let out = home.run(&[
        "run",
        "--entrypoint",
        "",
        "busybox",
        "--",
        "echo",
        "cleared",
    ]);
    assert_eq!(stdout(&out), "cleared\n");
}

#[test]
fn env_workdir_and_user_apply() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&[
        "run",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "-u",
        "app",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo \"$GREETING\"; pwd; id -u; id -g; echo $HOME",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi there\n/tmp\n1000\n1000\n/home/app\n");
    let out = home.run(&[
        "run",
        "-u",
        "4242:4343",
        "busybox",
        "--",
        "sh",
        "-c",
        "id -u; id -g",
    ]);
    assert_eq!(stdout(&out), "4242\n4343\n");
}

#[test]
fn a_missing_command_exits_127_with_a_clear_message() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&["run", "busybox", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("command not found: no-such-command"),
        "{}",
        stderr(&out)
    );
    home.assert_clean();
}

#[test]
fn an_unknown_user_is_refused_by_name() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&["run", "-u", "nosuchuser", "busybox", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("unknown user \"nosuchuser\""),
        "{}",
        stderr(&out)
    );
    home.assert_clean();
}

#[test]
fn an_unknown_image_is_a_clear_error() {
    let home = Home::new();
    let out = home.run(&["run", "no-such-image", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("no-such-image"), "{}", stderr(&out));
    home.assert_clean();
}

#[test]
fn python_runs_in_the_debian_image() {
    let home = Home::with(&["debian"]);
    let out = home.run(&["run", "debian", "--", "python3", "-c", "print(6 * 7)"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "42\n");
}

#[test]
fn output_redirected_into_one_file_keeps_its_order() {
    // gVisor writes a host file at offsets of its own; `hutch run` must not overwrite what
    // the file already holds, nor let stdout and stderr overwrite each other.
    let home = Home::with(&["busybox"]);
    let file = home.path().join("out.txt");
    let script = format!(
        "(echo first; {} run busybox -- sh -c 'echo second; sleep 0.2; echo err >&2; sleep 0.2; echo fourth'; echo fifth) > {} 2>&1",
        common::hutch_bin(),
        file.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("HUTCH_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "first\nsecond\nerr\nfourth\nfifth\n"
    );
    home.assert_clean();
}

#[test]
fn an_interrupt_reaches_the_command() {
    let home = Home::with(&["busybox"]);
    let mut child = home
        .hutch()
        .args([
            "run",
            "busybox",
            "--",
            "sh",
            "-c",
            "trap 'echo got INT; exit 9' INT; echo ready; while :; do sleep 0.1; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout_pipe = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout_pipe, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout_pipe, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "got INT\n");
    assert_eq!(status.code(), Some(9));
    home.assert_clean();
}

#[test]
fn a_command_over_its_memory_limit_is_reported_out_of_memory() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&[
        "run",
        "--memory",
        "32",
        "busybox",
        "--",
        "sh",
        "-c",
        // The 100 MiB buffer is held for 300 copies (seconds, unless killed): the agent
        // samples memory every 20-100 ms (100 ms while under half the limit), and a spike
        // shorter than that can end before it is seen (the host cgroup limit above the
        // user's is the backstop for those). 30 copies once ended unseen on a loaded host.
        "echo start; exec dd if=/dev/zero of=/dev/null bs=100M count=300",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(stdout(&out), "start\n");
    assert!(stderr(&out).contains("out of memory"), "{}", stderr(&out));
    home.assert_clean();
}
