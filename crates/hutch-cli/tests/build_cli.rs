//! `hutch image build` as a user meets it: the step cache (an unchanged rebuild runs nothing,
//! a changed file rebuilds from the step that reads it), live RUN output, the result runs.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, stderr, stdout};

fn build(home: &Home, context: &std::path::Path) -> std::process::Output {
    home.run(&[
        "image",
        "build",
        "-t",
        "cached:1",
        context.to_str().unwrap(),
    ])
}

/// The RUN lines of a build's log, each with whether it was cached.
fn runs(log: &str) -> Vec<(String, bool)> {
    log.lines()
        .filter(|l| l.contains(": RUN "))
        .map(|l| {
            (
                l.split(": RUN ").nth(1).unwrap().replace(" (cached)", ""),
                l.ends_with("(cached)"),
            )
        })
        .collect()
}

#[test]
fn the_step_cache_rebuilds_from_the_changed_step_only() {
    // A store of its own: the shared one keeps the step cache of earlier runs.
    let home = Home::private_with(&["busybox"]);
    let printed = |log: &str| log.lines().any(|l| l == "built-now");
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox\nRUN echo first > /first\nCOPY input.txt /input.txt\nRUN cat /input.txt > /second && echo built-now\nCMD [\"cat\", \"/second\"]\n",
    )
    .unwrap();
    std::fs::write(context.path().join("input.txt"), "one\n").unwrap();

    let out = build(&home, context.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        printed(&stderr(&out)),
        "RUN output is streamed: {}",
        stderr(&out)
    );
    assert!(runs(&stderr(&out)).iter().all(|(_, cached)| !cached));
    let ran = home.run(&["run", "cached:1"]);
    assert_eq!(stdout(&ran), "one\n", "{}", stderr(&ran));

    // Unchanged: nothing runs.
    let out = build(&home, context.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        runs(&stderr(&out)).iter().all(|(_, cached)| *cached),
        "{}",
        stderr(&out)
    );
    assert!(!printed(&stderr(&out)));

    // A changed input: the first RUN stays cached, the COPY and what follows run again.
    std::fs::write(context.path().join("input.txt"), "two\n").unwrap();
    let out = build(&home, context.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let steps = runs(&stderr(&out));
    assert_eq!(steps.len(), 2, "{}", stderr(&out));
    assert!(steps[0].1 && !steps[1].1, "{steps:?}");
    let ran = home.run(&["run", "cached:1"]);
    assert_eq!(stdout(&ran), "two\n", "{}", stderr(&ran));

    // The cache is images in the store, hidden from `image ls` unless asked for.
    let ls = home.run(&["image", "ls"]);
    assert!(!stdout(&ls).contains("hutch-build/step"), "{}", stdout(&ls));
    let ls = home.run(&["image", "ls", "--all"]);
    assert!(stdout(&ls).contains("hutch-build/step"), "{}", stdout(&ls));
    home.assert_clean();
}

#[test]
fn a_run_past_the_build_memory_is_reported_out_of_memory() {
    // A store of its own: the step must not be cached already.
    let home = Home::private_with(&["busybox"]);
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox\nRUN awk 'BEGIN { s = sprintf(\"%300000000s\", \"\"); system(\"sleep 1\"); print length(s) }'\n",
    )
    .unwrap();
    let out = home.run(&[
        "image",
        "build",
        "--memory",
        "128",
        context.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("out of memory"), "{err}");
    // Without the limit the same RUN succeeds.
    let out = home.run(&["image", "build", context.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn built_layers_are_zstd_blobs_that_push_pull_and_save() {
    let home = Home::private_with(&["busybox"]);
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox\nRUN seq 1 20000 > /numbers\nCMD [\"wc\", \"-l\", \"/numbers\"]\n",
    )
    .unwrap();
    let out = home.run(&[
        "image",
        "build",
        "-t",
        "numbers:1",
        context.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = home.run(&["image", "inspect", "numbers:1", "--json"]);
    let inspected: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let text = inspected.to_string();
    assert!(text.contains("tar+zstd"), "the built layer is zstd: {text}");

    // Pushed to a registry and pulled into another store, it runs.
    let registry = common::registry::Registry::start();
    let reference = registry.reference("built/numbers:1");
    let out = home.run(&["image", "push", "--insecure", "numbers:1", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other = Home::private();
    let out = other.run(&["image", "pull", "--insecure", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = other.run(&["run", &reference]);
    assert_eq!(stdout(&out).trim(), "20000 /numbers", "{}", stderr(&out));

    // Saved and loaded back, too.
    let archive = home.path().join("numbers.tar");
    let out = home.run(&[
        "image",
        "save",
        "numbers:1",
        "-o",
        archive.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let third = Home::private();
    let out = third.run(&["image", "load", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = third.run(&["run", "numbers:1"]);
    assert_eq!(stdout(&out).trim(), "20000 /numbers", "{}", stderr(&out));
}
