//! `RUN --mount` in `hutch image build`: cache mounts kept across builds (and dropped by
//! `hutch image prune --build-cache`), bind mounts from the context and from a stage, tmpfs,
//! and secrets; none of them ever lands in a layer. With the attack tests: a secret is in no
//! layer, config, step key or output; a bind mount cannot write into the context; a cache
//! mount cannot reach outside its directory on the host.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Home, stderr, stdout};

fn build_in(
    home: &Home,
    ctx: &Path,
    tag: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = home.hutch();
    cmd.args(["image", "build", "--network", "none", "-t", tag])
        .args(extra)
        .arg(ctx)
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn sh(home: &Home, image: &str, script: &str) -> (bool, String) {
    let out = home.run(&["run", image, "--", "sh", "-c", script]);
    (out.status.success(), stdout(&out))
}

#[test]
fn cache_mounts_persist_across_builds_until_pruned_and_stay_out_of_the_image() {
    let home = Home::private_with(&["busybox"]);
    let step = |n: u32| {
        format!(
            "FROM busybox\nRUN --mount=type=cache,target=/var/cache/app,id=app,mode=0700,uid=1000,gid=1000 \
             echo build-{n} >> /var/cache/app/log && cat /var/cache/app/log > /seen && \
             stat -c '%a %u %g' /var/cache/app > /cache-root\n"
        )
    };
    let ctx = context(&step(1));
    let out = build_in(&home, ctx.path(), "cache:1", &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sh(&home, "cache:1", "cat /seen").1, "build-1\n");
    assert_eq!(sh(&home, "cache:1", "cat /cache-root").1, "700 1000 1000\n");
    // The mount point (and /var/cache, which busybox lacks) is not in the image.
    let (exists, _) = sh(&home, "cache:1", "test -e /var/cache");
    assert!(!exists, "the cache mount's stub landed in the layer");

    // Another build with the same id sees what the first left.
    let ctx = context(&step(2));
    let out = build_in(&home, ctx.path(), "cache:2", &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sh(&home, "cache:2", "cat /seen").1, "build-1\nbuild-2\n");

    // Pruned: the next build starts empty.
    let prune = home.run(&["image", "prune", "--build-cache"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert!(
        stdout(&prune).contains("dropped 1 build cache(s)"),
        "{}",
        stdout(&prune)
    );
    let ctx = context(&step(3));
    let out = build_in(&home, ctx.path(), "cache:3", &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sh(&home, "cache:3", "cat /seen").1, "build-3\n");
}

#[test]
fn a_cache_mount_cannot_reach_outside_its_directory_on_the_host() {
    let home = Home::private_with(&["busybox"]);
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    let v = victim.display();
    // The step plants links to a host path (and to the host's root) in the cache and writes
    // through them: inside the sandbox they lead to the sandbox's own files.
    let ctx = context(&format!(
        "FROM busybox\nRUN --mount=type=cache,target=/c mkdir -p $(dirname {v}) && \
         ln -sf {v} /c/link && ln -sfn / /c/root && echo pwned > /c/link && \
         echo pwned > /c/root/hutch-escape && cd /c/.. && pwd > /where\n"
    ));
    let out = build_in(&home, ctx.path(), "escape:1", &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert!(!Path::new("/hutch-escape").exists());
    assert_eq!(sh(&home, "escape:1", "cat /where").1, "/\n");
    // A later build reading through the links, and the prune, follow nothing on the host.
    let ctx = context("FROM busybox\nRUN --mount=type=cache,target=/c cat /c/link > /read\n");
    let out = build_in(&home, ctx.path(), "escape:2", &[], &[]);
    assert!(!out.status.success() || sh(&home, "escape:2", "cat /read").1 != "untouched\n");
    let prune = home.run(&["image", "prune", "--build-cache"]);
    assert!(prune.status.success(), "{}", stderr(&prune));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
}

#[test]
fn bind_mounts_read_the_context_or_a_stage_and_never_write_back() {
    let home = Home::private_with(&["busybox"]);
    let ctx = context(
        "FROM busybox AS build\nRUN mkdir /out && echo from-stage > /out/artifact\n\
         FROM busybox\n\
         RUN --mount=type=bind,source=src,target=/src cat /src/input.txt > /got-context && \
             if touch /src/new 2>/dev/null; then exit 1; fi\n\
         RUN --mount=type=bind,from=build,source=/out,target=/in cat /in/artifact > /got-stage\n\
         RUN --mount=type=bind,source=src,target=/src,rw echo changed > /src/input.txt && \
             touch /src/made && cat /src/input.txt > /got-rw\n\
         RUN --mount=type=bind,source=src/input.txt,target=/etc/one-file cat /etc/one-file > /got-file\n\
         RUN --mount=type=tmpfs,target=/scratch,size=16m echo tmp > /scratch/x && \
             df -k /scratch | tail -1 | awk '{print $2}' > /tmpfs-kb\n\
         RUN --mount=type=bind,target=/ctx ls -A /ctx /ctx/src > /ctx-listing\n",
    );
    std::fs::create_dir(ctx.path().join("src")).unwrap();
    std::fs::write(ctx.path().join("src/input.txt"), "from-context\n").unwrap();
    // What .dockerignore leaves out is not in the context a bind mount shows (as BuildKit,
    // whose client never sends it; buildah 1.39 shows it).
    std::fs::write(ctx.path().join("src/key.secret"), "hidden\n").unwrap();
    std::fs::write(ctx.path().join(".dockerignore"), "**/*.secret\n").unwrap();
    let out = build_in(&home, ctx.path(), "bind:1", &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sh(&home, "bind:1", "cat /got-context").1, "from-context\n");
    assert_eq!(sh(&home, "bind:1", "cat /got-stage").1, "from-stage\n");
    assert_eq!(sh(&home, "bind:1", "cat /got-rw").1, "changed\n");
    assert_eq!(sh(&home, "bind:1", "cat /got-file").1, "from-context\n");
    assert_eq!(sh(&home, "bind:1", "cat /tmpfs-kb").1, "16384\n");
    let listing = sh(&home, "bind:1", "cat /ctx-listing").1;
    assert!(
        listing.contains("input.txt") && listing.contains("Dockerfile"),
        "{listing}"
    );
    assert!(!listing.contains("key.secret"), "{listing}");
    // The context is as it was; nothing of the mounts is in the image.
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("src/input.txt")).unwrap(),
        "from-context\n"
    );
    assert!(!ctx.path().join("src/made").exists());
    let (any, listing) = sh(
        &home,
        "bind:1",
        "ls -d /src /in /scratch /etc/one-file /ctx 2>/dev/null",
    );
    assert!(
        !any && listing.is_empty(),
        "mount stubs in the image: {listing}"
    );

    // The bind mount's content keys the step: a changed input reruns it.
    std::fs::write(ctx.path().join("src/input.txt"), "edited\n").unwrap();
    let out = build_in(&home, ctx.path(), "bind:2", &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sh(&home, "bind:2", "cat /got-context").1, "edited\n");
}

/// Every file below `dir` whose bytes contain `needle`, symlinks not followed.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                // zstd blobs are searched decompressed.
                let bytes = if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    std::process::Command::new("zstd")
                        .args(["-dc"])
                        .arg(&path)
                        .output()
                        .map(|o| o.stdout)
                        .unwrap_or_default()
                } else {
                    bytes
                };
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn secrets_reach_the_step_and_nothing_else() {
    let home = Home::private_with(&["busybox"]);
    let secret = "s3cr3t-v4lue-0f-the-test";
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), secret).unwrap();
    let dockerfile = "FROM busybox\n\
         RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = \"$EXPECT\" && \
             stat -c '%a %u' /run/secrets/token > /secret-mode && echo used-file\n\
         RUN --mount=type=secret,id=token,env=TOKEN,target=/etc/tok,mode=0440,uid=5 \
             test \"$TOKEN\" = \"$EXPECT\" && test \"$(cat /etc/tok)\" = \"$EXPECT\" && \
             stat -c '%a %u' /etc/tok > /secret-mode-2 && echo used-env\n\
         RUN --mount=type=secret,id=absent ls /run/secrets > /absent-listing 2>&1 || true\n";
    let ctx = context(&dockerfile.replace("$EXPECT", secret));
    let src = format!("id=token,src={}", secret_file.path().display());
    let out = build_in(&home, ctx.path(), "secret:1", &["--secret", &src], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("used-file") && stderr(&out).contains("used-env"));
    assert_eq!(sh(&home, "secret:1", "cat /secret-mode").1, "400 0\n");
    assert_eq!(sh(&home, "secret:1", "cat /secret-mode-2").1, "440 5\n");
    let (exists, _) = sh(
        &home,
        "secret:1",
        "test -e /run/secrets || test -e /etc/tok",
    );
    assert!(!exists, "a secret's mount point landed in the image");

    // The value is in no layer, config or history (nothing in the store) and not in the
    // output, for a Dockerfile that names only the secret's id (the one above names the
    // value in its own RUN text, so it is built in a store of its own).
    let ctx2 = context(
        "FROM busybox\nRUN --mount=type=secret,id=token cp /run/secrets/token /dev/null && echo ok\n",
    );
    let out = build_in(&home, ctx2.path(), "secret:2", &["--secret", &src], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains(secret) && !stderr(&out).contains(secret));
    let home2 = Home::private_with(&["busybox"]);
    let out = build_in(&home2, ctx2.path(), "secret:3", &["--secret", &src], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        files_containing(&home2.path().join("store"), secret.as_bytes()),
        Vec::<String>::new(),
        "the secret's value is in the store"
    );

    // The value is not in the step's key: another value reuses the step.
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), "another-value").unwrap();
    let out = build_in(
        &home2,
        ctx2.path(),
        "secret:4",
        &[
            "--secret",
            &format!("id=token,src={}", other.path().display()),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("(cached)"), "{}", stderr(&out));

    // From the environment, and required when asked.
    let ctx3 = context(
        "FROM busybox\nRUN --mount=type=secret,id=api,required test \"$(cat /run/secrets/api)\" = from-env\n",
    );
    let out = build_in(
        &home2,
        ctx3.path(),
        "secret:5",
        &["--secret", "id=api,env=HUTCH_TEST_API"],
        &[("HUTCH_TEST_API", "from-env")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = build_in(&home2, ctx3.path(), "secret:6", &[], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Dockerfile:2: RUN --mount: the secret \"api\" is required"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ssh_mounts_and_bad_mounts_are_refused_clearly() {
    let home = Home::private_with(&["busybox"]);
    for (line, want) in [
        ("RUN --mount=type=ssh true", "type=ssh is not supported"),
        (
            "RUN --mount=type=bind,source=../..,target=/x true",
            "outside the build context",
        ),
        ("RUN --mount=type=bind,source=nope,target=/x true", "nope"),
        (
            "RUN --mount=type=tmpfs,target=/proc/x true",
            "cannot mount at \"/proc/x\"",
        ),
    ] {
        let ctx = context(&format!("FROM busybox\n{line}\n"));
        let out = build_in(&home, ctx.path(), "bad-mount:1", &[], &[]);
        assert!(!out.status.success(), "{line}");
        assert!(stderr(&out).contains(want), "{line}: {}", stderr(&out));
    }
}
