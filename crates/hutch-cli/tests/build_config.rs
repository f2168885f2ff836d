//! The image config instructions buildah 1.28 drops in OCI images (`SHELL`, `HEALTHCHECK`,
//! `ONBUILD`) and MAINTAINER, written as BuildKit writes them, and what they do in later
//! steps and builds: SHELL runs later shell forms, ONBUILD triggers run when a build starts
//! `FROM` the image. The shapes are Docker's (`Healthcheck.Test` `["CMD-SHELL", ...]`,
//! durations in nanoseconds); buildah writes the same in Docker format.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, stderr, stdout};
use serde_json::{Value, json};

fn build(home: &Home, dockerfile: &str, tag: &str) -> (std::process::Output, tempfile::TempDir) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(ctx.path().join("child.txt"), "from the child's context\n").unwrap();
    let out = home.run(&[
        "image",
        "build",
        "--network",
        "none",
        "-t",
        tag,
        ctx.path().to_str().unwrap(),
    ]);
    (out, ctx)
}

/// The whole stored image config of `name`.
fn image_config(home: &Home, name: &str) -> Value {
    let store = hutch_store::Store::open(&home.path().join("store")).unwrap();
    let image = store.image(name).unwrap();
    serde_json::from_slice(&std::fs::read(store.blob_file(&image.id)).unwrap()).unwrap()
}

#[test]
fn shell_healthcheck_onbuild_and_maintainer_are_written_and_honoured() {
    let home = Home::private_with(&["busybox"]);
    let (out, _ctx) = build(
        &home,
        "FROM busybox\n\
         MAINTAINER Hutch Tests <tests@example.invalid>\n\
         SHELL [\"/bin/sh\", \"-e\", \"-c\"]\n\
         RUN echo \"$0 $-\" > /shell-of-run\n\
         HEALTHCHECK --interval=30s --timeout=5s --start-period=1m --retries=3 CMD wget -q -O - http://localhost/ || exit 1\n\
         ONBUILD COPY child.txt /from-child/\n\
         ONBUILD RUN echo triggered > /triggered\n\
         CMD echo shell-form\n",
        "cfg-base:1",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let image = image_config(&home, "cfg-base:1");
    let config = &image["config"];
    assert_eq!(image["author"], "Hutch Tests <tests@example.invalid>");
    assert_eq!(config["Shell"], json!(["/bin/sh", "-e", "-c"]));
    assert_eq!(
        config["Healthcheck"],
        json!({
            "Test": ["CMD-SHELL", "wget -q -O - http://localhost/ || exit 1"],
            "Interval": 30_000_000_000i64,
            "Timeout": 5_000_000_000i64,
            "StartPeriod": 60_000_000_000i64,
            "Retries": 3,
        })
    );
    assert_eq!(
        config["OnBuild"],
        json!([
            "COPY child.txt /from-child/",
            "RUN echo triggered > /triggered"
        ])
    );
    // SHELL ran the RUN after it and makes the shell-form CMD.
    assert_eq!(
        config["Cmd"],
        json!(["/bin/sh", "-e", "-c", "echo shell-form"])
    );
    let ran = home.run(&["run", "cfg-base:1", "--", "cat", "/shell-of-run"]);
    let seen = stdout(&ran);
    let (shell, flags) = seen.trim().split_once(' ').unwrap();
    assert_eq!(shell, "/bin/sh");
    assert!(flags.contains('e'), "SHELL's -e is in force in RUN: {seen}");
    // The triggers did not run in the image that declares them.
    let ls = home.run(&["run", "cfg-base:1", "--", "ls", "/triggered"]);
    assert!(!ls.status.success());

    // A build FROM it runs the triggers first (with its own context), and the result does
    // not inherit them; HEALTHCHECK NONE turns the inherited check off.
    let (out, _ctx) = build(
        &home,
        "FROM cfg-base:1\nHEALTHCHECK NONE\nRUN cat /triggered /from-child/child.txt > /seen\n",
        "cfg-child:1",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ran = home.run(&["run", "cfg-child:1", "--", "cat", "/seen"]);
    assert_eq!(
        stdout(&ran),
        "triggered\nfrom the child's context\n",
        "{}",
        stderr(&ran)
    );
    let child = image_config(&home, "cfg-child:1");
    assert!(child["config"]["OnBuild"].is_null(), "{}", child["config"]);
    assert_eq!(child["config"]["Healthcheck"], json!({"Test": ["NONE"]}));
    assert_eq!(child["config"]["Shell"], json!(["/bin/sh", "-e", "-c"]));
}

#[test]
fn bad_config_values_name_their_line() {
    let home = Home::private_with(&["busybox"]);
    for (dockerfile, want) in [
        (
            "FROM busybox\nARG P=99999\nEXPOSE $P\n",
            "Dockerfile:3: EXPOSE 99999",
        ),
        (
            "FROM busybox\nSTOPSIGNAL SIGNOPE\n",
            "Dockerfile:2: STOPSIGNAL SIGNOPE",
        ),
        (
            "FROM busybox\nARG E\nVOLUME $E\n",
            "Dockerfile:3: VOLUME specified can not be an empty string",
        ),
        (
            "FROM busybox\nONBUILD RUN --bogus x\n",
            "Dockerfile:2: unknown flag for RUN: --bogus",
        ),
    ] {
        let (out, _ctx) = build(&home, dockerfile, "cfg-bad:1");
        assert!(!out.status.success(), "{dockerfile}");
        assert!(
            stderr(&out).contains(want),
            "{dockerfile}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn copy_flags_parents_exclude_link_and_symbolic_chmod() {
    let home = Home::private_with(&["busybox"]);
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    for (path, body) in [
        ("app/src/main.py", "main\n"),
        ("app/src/util.py", "util\n"),
        ("app/src/notes.txt", "notes\n"),
        ("app/tests/test_main.py", "test\n"),
        ("app/build/out.o", "obj\n"),
        ("lib/pkg/mod.py", "mod\n"),
        ("tool.sh", "#!/bin/sh\n"),
    ] {
        std::fs::create_dir_all(c.join(path).parent().unwrap()).unwrap();
        std::fs::write(c.join(path), body).unwrap();
    }
    std::fs::write(
        c.join("Dockerfile"),
        "FROM busybox\n\
         COPY --parents app/src/*.py lib/./pkg/mod.py /dst/\n\
         COPY --exclude=**/*.txt --exclude=build app /excl/\n\
         COPY --link --chmod=u=rwx,go=rX tool.sh /bin-tool\n\
         COPY --chmod=a-w app/src /ro/\n",
    )
    .unwrap();
    let out = home.run(&[
        "image",
        "build",
        "--network",
        "none",
        "-t",
        "flags:1",
        c.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let find = home.run(&[
        "run",
        "flags:1",
        "--",
        "sh",
        "-c",
        "find /dst /excl -type f | sort; stat -c '%a %n' /bin-tool /ro/main.py /ro",
    ]);
    assert_eq!(
        stdout(&find),
        "/dst/app/src/main.py\n/dst/app/src/util.py\n/dst/pkg/mod.py\n\
         /excl/src/main.py\n/excl/src/util.py\n/excl/tests/test_main.py\n\
         755 /bin-tool\n444 /ro/main.py\n755 /ro\n",
        "{}",
        stderr(&find)
    );
}
