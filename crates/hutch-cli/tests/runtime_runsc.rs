//! The runsc Hutch drives: what `hutch info` reports of it, the flags chosen deliberately,
//! and a failed start that always reaches the user as a message.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, stderr, stdout};

#[test]
fn info_reports_the_runsc_version_platform_and_choices() {
    let home = Home::new();
    let out = home.run(&["info", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("info is JSON");
    let runtime = &info["runtime"];
    assert_eq!(runtime["runtime"], "runsc");
    let version = runtime["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("0.0~20"), "runsc version: {version:?}");
    let platform = runtime["platform"].as_str().unwrap_or_default();
    assert_eq!(platform, info["platform"], "{info}");
    // What runsc offers and a race on this host decide the platform: ptrace for a build
    // without systrap (before 2023); otherwise the faster of the two at fork+exec.
    let flags = std::process::Command::new(runsc())
        .arg("flags")
        .output()
        .expect("runsc flags");
    let has_systrap = String::from_utf8_lossy(&flags.stderr).contains("systrap")
        || String::from_utf8_lossy(&flags.stdout).contains("systrap");
    let notes = runtime["notes"].to_string();
    if has_systrap {
        let race = runtime["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .find(|n| n.contains("fork+execs"))
            .unwrap_or_else(|| panic!("no platform race in the notes: {notes}"));
        assert!(race.starts_with(&format!("{platform} is faster")), "{race}");
        let ms = |name: &str| -> u64 {
            let before = race.split(&format!(" ms on {name}")).next().unwrap();
            before.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let (systrap, ptrace) = (ms("systrap"), ms("ptrace"));
        // The rule: systrap unless ptrace is more than a tenth faster.
        let expected = if ptrace * 11 < systrap * 10 {
            "ptrace"
        } else {
            "systrap"
        };
        assert_eq!(platform, expected, "{race}");
    } else {
        assert_eq!(platform, "ptrace", "{info}");
    }
    if has_systrap {
        // A 2023+ build: root filesystem writes must land in Hutch's upper layer.
        assert!(notes.contains("--overlay2=none"), "{notes}");
        assert!(notes.contains("--directfs="), "{notes}");
    } else {
        assert!(notes.contains("no systrap"), "{notes}");
    }
    assert!(
        info["capabilities"]["sandbox_create"]["status"] == "supported",
        "{info}"
    );
}

/// What runsc's root-filesystem choice means in practice: a file written to `/` by one
/// sandbox's command is in its writable layer on the host, which builds commit.
#[test]
fn root_filesystem_writes_reach_the_host_upper_layer() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&[
        "run",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo layer > /written-by-sandbox && cat /written-by-sandbox",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "layer");
    // The build path is the one that depends on it: a RUN's write becomes a layer.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM busybox\nRUN echo committed > /from-run\n",
    )
    .expect("write Dockerfile");
    let built = home.run(&[
        "image",
        "build",
        "-t",
        "overlay-check",
        dir.path().to_str().expect("utf-8 path"),
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    let read = home.run(&["run", "overlay-check", "--", "cat", "/from-run"]);
    assert_eq!(stdout(&read).trim(), "committed", "{}", stderr(&read));
    home.assert_clean();
}

#[test]
fn a_runsc_that_cannot_start_the_sandbox_says_why() {
    let home = Home::with(&["busybox"]);
    let out = home
        .hutch()
        .env("HUTCH_RUNSC_PLATFORM", "no-such-platform")
        .args(["run", "busybox", "--", "true"])
        .output()
        .expect("running hutch");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("runsc failed before the sandbox started"),
        "no message of the failed start: {err:?}"
    );
    assert!(
        err.contains("no-such-platform"),
        "runsc's own words missing: {err:?}"
    );
    home.assert_clean();
}

/// The run directory (`/run/hutch`) is writable from inside: a command that plants a file
/// where the agent's secret was, a symlink to a host path even, and exits with its own code
/// is reported with that code. The host neither follows the link nor takes the planted file
/// for a runsc that never started the sandbox.
#[test]
fn a_file_planted_where_the_secret_was_does_not_fake_a_failed_start() {
    let home = Home::with(&["busybox"]);
    let out = home.run(&[
        "run",
        "busybox",
        "--",
        "sh",
        "-c",
        "ln -s /etc/hostname /run/hutch/agent.secret && exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).contains("runsc failed"), "{}", stderr(&out));
    let out = home.run(&[
        "run",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo planted > /run/hutch/agent.secret && exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    home.assert_clean();
}

fn runsc() -> std::path::PathBuf {
    std::env::var_os("HUTCH_RUNSC")
        .map(Into::into)
        .unwrap_or_else(|| "runsc".into())
}
