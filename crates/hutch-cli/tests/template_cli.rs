//! `hutch template`: build base and diff templates locally, list and describe them, run
//! sandboxes from them by name, and refuse to remove a parent that has children.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, stderr, stdout};
use serde_json::Value;

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

#[test]
fn templates_build_list_run_and_keep_their_lineage() {
    let home = Home::private_with(&["busybox"]);
    let base = context(
        "FROM busybox\nENV FOO=bar\nWORKDIR /w\nRUN echo x > /x\nEXPOSE 8080\nCMD [\"cat\", \"/x\"]\n",
    );
    let out = home.run(&[
        "template",
        "build",
        "--name",
        "base1",
        base.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\tbase\t"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(
            "line 5: Dockerfile instruction 'EXPOSE' is applied during the image build but has \
             no effect when running sandboxes from this image"
        ),
        "the reference's warning: {}",
        stderr(&out)
    );

    let child = context("FROM base1\nRUN echo y > /y\n");
    let out = home.run(&[
        "template",
        "build",
        "--name",
        "child1",
        child.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\tdiff\t"), "{}", stdout(&out));

    let out = home.run(&["template", "ls"]);
    let listing = stdout(&out);
    let child_line = listing.lines().find(|l| l.starts_with("child1")).unwrap();
    assert!(
        child_line.contains("diff") && child_line.contains("base1"),
        "{listing}"
    );

    let out = home.run(&["template", "describe", "child1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let described: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(described["rootfsNodeKind"], "diff");
    assert_eq!(described["parentTemplateName"], "base1");
    let own = described["ownBytes"].as_u64().unwrap();
    let total = described["totalBytes"].as_u64().unwrap();
    assert!(own > 0 && own * 20 < total, "{own} of {total}");

    // Sandboxes from a template by name honour its config: CMD, ENV, WORKDIR.
    let out = home.run(&["run", "child1"]);
    assert_eq!(stdout(&out), "x\n", "{}", stderr(&out));
    let out = home.run(&["run", "child1", "--", "sh", "-c", "cat /y; echo $FOO; pwd"]);
    assert_eq!(stdout(&out), "y\nbar\n/w\n", "{}", stderr(&out));

    // COPY --from a template, like from an image.
    let copier = context("FROM busybox\nCOPY --from=base1 /x /from-base\n");
    let out = home.run(&[
        "template",
        "build",
        "--name",
        "copier",
        copier.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = home.run(&["run", "copier", "--", "cat", "/from-base"]);
    assert_eq!(stdout(&out), "x\n", "{}", stderr(&out));
    let out = home.run(&["template", "rm", "copier"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A parent with children stays; the child and then the parent go.
    let out = home.run(&["template", "rm", "base1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("child1"), "{}", stderr(&out));
    let out = home.run(&["template", "rm", "child1", "base1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = home.run(&["template", "describe", "base1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // An image in the store registered as a base template.
    let out = home.run(&["template", "import", "busybox", "--name", "bb"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = home.run(&["run", "bb", "--", "echo", "from-bb"]);
    assert_eq!(stdout(&out), "from-bb\n", "{}", stderr(&out));
    home.assert_clean();
}
