//! `hutch image build` as a user meets it: the step cache (an unchanged rebuild runs nothing,
//! a changed file rebuilds from the step that reads it), live RUN output, the result runs.

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
    let home = Home::with(&["busybox"]);
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox\nRUN awk 'BEGIN { print length(sprintf(\"%300000000s\", \"\")) }'\n",
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
