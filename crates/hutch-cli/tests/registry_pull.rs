//! Pulls from a real registry (Debian's `docker-registry` on 127.0.0.1, filled by `skopeo`
//! and by `hutch image push`): the unpacked tree against `umoci unpack` of the same image,
//! layer dedupe counted in bytes, auth, zstd, and every way a registry can fail.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::faulty::{Fault, Faulty};
use common::registry::Registry;
use common::tree::Merged;
use common::{Home, fixtures, stderr, stdout, tree};

fn pull(home: &Home, reference: &str, extra: &[&str]) -> Output {
    home.hutch()
        .args(["image", "pull", "--insecure", reference])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn fsck_clean(home: &Home) {
    let out = home.run(&["image", "fsck"]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

fn umoci_rootfs(layout: &Path, dest: &Path) -> std::path::PathBuf {
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(dest)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci: {}", stderr(&out));
    dest.join("rootfs")
}

#[test]
fn a_pulled_image_equals_umoci_unpack_of_it() {
    let home = Home::private();
    let registry = Registry::start();
    let oracle = fixtures().join("oracle");
    registry.push_oci_layout(&oracle, "latest", "oracle:1");
    let reference = registry.reference("oracle:1");
    let out = pull(&home, &reference, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), reference);

    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    let merged = Merged::mount(&home, &reference, &scratch.path().join("merged"));
    let ours = tree::snapshot(&merged.0);
    let theirs = tree::snapshot(&umoci_rootfs(&oracle, &scratch.path().join("umoci")));
    let differences = tree::diff(&ours, &theirs);
    assert!(
        differences.is_empty(),
        "hutch vs umoci:\n{}",
        differences.join("\n")
    );
    // The fixture's tricky parts are really there (so an empty diff means something).
    assert!(ours.keys().any(|p| p.ends_with("oracle/hard-later")));
    assert!(!ours.keys().any(|p| p.ends_with("oracle/doomed")));
    drop(merged);

    // And a sandbox runs from it.
    let out = home.run(&["run", &reference, "--", "cat", "/oracle/owned/file"]);
    assert!(out.status.success(), "{}", stderr(&out));
    fsck_clean(&home);
}

#[test]
fn pulled_fixture_images_equal_umoci_unpack_of_them() {
    let home = Home::private();
    let registry = Registry::start();
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    for name in ["busybox", "debian"] {
        let layout = fixtures().join(name);
        registry.push_oci_layout(&layout, "latest", &format!("{name}:1"));
        let reference = registry.reference(&format!("{name}:1"));
        let out = pull(&home, &reference, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let merged = Merged::mount(
            &home,
            &reference,
            &scratch.path().join(format!("{name}-merged")),
        );
        let ours = tree::snapshot(&merged.0);
        let theirs = tree::snapshot(&umoci_rootfs(&layout, &scratch.path().join(name)));
        let differences = tree::diff(&ours, &theirs);
        assert!(
            differences.is_empty(),
            "{name}: hutch vs umoci:\n{}",
            differences.join("\n")
        );
        assert!(ours.len() > 100, "{name}: {} entries", ours.len());
    }
}

#[test]
fn a_second_pull_downloads_only_the_layers_it_lacks() {
    let home = Home::private();
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");
    registry.push_oci_layout(&fixtures().join("oracle"), "latest", "oracle:1");
    let blobs = |m: &serde_json::Value| -> Vec<(String, u64)> {
        std::iter::once(&m["config"])
            .chain(m["layers"].as_array().unwrap())
            .map(|d| {
                (
                    d["digest"].as_str().unwrap().to_string(),
                    d["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (busybox, oracle) = (
        blobs(&skopeo_raw(&registry, "busybox:1")),
        blobs(&skopeo_raw(&registry, "oracle:1")),
    );

    let before = registry.blob_bytes_served();
    assert!(
        pull(&home, &registry.reference("busybox:1"), &[])
            .status
            .success()
    );
    let first = registry.blob_bytes_served() - before;
    assert_eq!(first, busybox.iter().map(|(_, s)| s).sum::<u64>());

    let before = registry.blob_bytes_served();
    let out = pull(&home, &registry.reference("oracle:1"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = registry.blob_bytes_served() - before;
    let new: u64 = oracle
        .iter()
        .filter(|(d, _)| !busybox.iter().any(|(b, _)| b == d))
        .map(|(_, s)| s)
        .sum();
    assert!(oracle.len() > busybox.len() && new < oracle.iter().map(|(_, s)| s).sum::<u64>());
    assert_eq!(
        second, new,
        "the second pull transferred more than its new blobs"
    );
    assert!(stderr(&out).contains("already present"), "{}", stderr(&out));

    // Pulling again transfers no layer at all.
    let before = registry.blob_bytes_served();
    assert!(
        pull(&home, &registry.reference("oracle:1"), &[])
            .status
            .success()
    );
    let config = oracle[0].1;
    assert_eq!(registry.blob_bytes_served() - before, config);
    fsck_clean(&home);
}

#[test]
fn zstd_layers_and_docker_v2_manifests_pull() {
    let home = Home::private();
    let registry = Registry::start();
    registry.push_zstd(&fixtures().join("busybox"), "latest", "zstd:1");
    registry.push_with_format(&fixtures().join("busybox"), "latest", "v2s2:1", "v2s2");
    for name in ["zstd:1", "v2s2:1"] {
        let reference = registry.reference(name);
        let out = pull(&home, &reference, &[]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let out = home.run(&["run", &reference, "--", "echo", name]);
        assert_eq!(stdout(&out), format!("{name}\n"), "{}", stderr(&out));
    }
    fsck_clean(&home);
}

#[test]
fn push_then_pull_round_trips_and_digest_pins_hold() {
    let home = Home::with(&["busybox"]);
    let registry = Registry::start();
    let reference = registry.reference("pushed/busybox:v1");
    let out = home
        .hutch()
        .args(["image", "push", "--insecure", "busybox", &reference])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo: {}", stderr(&out));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = inspected["Digest"].as_str().unwrap().to_string();

    // Into an empty store, by digest, and run from it.
    let other = Home::private();
    let pinned = format!("{}@{digest}", registry.reference("pushed/busybox"));
    let out = pull(&other, &pinned, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = other.run(&["run", &pinned, "--", "echo", "pinned"]);
    assert_eq!(stdout(&out), "pinned\n", "{}", stderr(&out));

    // A pin the registry cannot honour is refused by name.
    let wrong = format!(
        "{}@sha256:{}",
        registry.reference("pushed/busybox"),
        "0".repeat(64)
    );
    let out = pull(&other, &wrong, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pushed/busybox"), "{}", stderr(&out));
    fsck_clean(&other);
}

#[test]
fn credentials_from_docker_config_or_the_command_line() {
    let home = Home::private();
    let registry = Registry::start_with_auth("alice", "s3cret");
    let pushed = registry.try_push(
        &fixtures().join("busybox"),
        "latest",
        "private:1",
        &[],
        Some(("alice", "s3cret")),
    );
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let reference = registry.reference("private:1");
    let docker = tempfile::tempdir().unwrap();

    // Anonymous: refused, with advice.
    let out = home
        .hutch()
        .env("DOCKER_CONFIG", docker.path())
        .args(["image", "pull", "--insecure", &reference])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("private") && stderr(&out).contains("docker login"),
        "{}",
        stderr(&out)
    );

    // Explicit credentials.
    let mut child = home
        .hutch()
        .env("DOCKER_CONFIG", docker.path())
        .args([
            "image",
            "pull",
            "--insecure",
            "--username",
            "alice",
            "--password-stdin",
            &reference,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Docker's config.
    let auth = common::registry::base64(b"alice:s3cret");
    let config = serde_json::json!({"auths": {registry.host(): {"auth": auth}}});
    std::fs::write(docker.path().join("config.json"), config.to_string()).unwrap();
    let other = Home::private();
    let out = other
        .hutch()
        .env("DOCKER_CONFIG", docker.path())
        .args(["image", "pull", "--insecure", &reference])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // A credential helper named in Docker's config: a real program on PATH, asked with the
    // registry on stdin, as Docker asks it.
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-hutchtest");
    let asked = bin.path().join("asked");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\ncat > {}\necho '{{\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n",
            asked.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&helper).unwrap().permissions(),
        0o755,
    );
    Command::new("chmod")
        .arg("755")
        .arg(&helper)
        .status()
        .unwrap();
    let config = serde_json::json!({"credHelpers": {registry.host(): "hutchtest"}});
    std::fs::write(docker.path().join("config.json"), config.to_string()).unwrap();
    let third = Home::private();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = third
        .hutch()
        .env("DOCKER_CONFIG", docker.path())
        .env("PATH", path)
        .args(["image", "pull", "--insecure", &reference])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&asked).unwrap(), registry.host());
}

/// A failed pull names the image and the cause, and leaves the store consistent and empty.
fn assert_fails_cleanly(home: &Home, reference: &str, cause: &str) {
    let out = pull(home, reference, &[]);
    assert!(!out.status.success(), "pull of {reference} succeeded");
    let err = stderr(&out);
    assert!(
        err.contains(
            reference
                .split('@')
                .next()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
        ),
        "no image in: {err}"
    );
    assert!(err.contains(cause), "expected {cause:?} in: {err}");
    let ls = home.run(&["image", "ls", "--json"]);
    let images: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap_or_default();
    assert_eq!(images.as_array().map_or(0, Vec::len), 0, "{images}");
    fsck_clean(home);
}

#[test]
fn registry_failures_are_typed_and_leave_the_store_consistent() {
    let home = Home::private();
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");

    // Unknown repository and tag.
    assert_fails_cleanly(&home, &registry.reference("nothing:here"), "not found");
    assert_fails_cleanly(&home, &registry.reference("busybox:nope"), "not found");

    // A 500 on every blob.
    let failing = Faulty::start(registry.port, Fault::ServerError);
    assert_fails_cleanly(&home, &format!("{}/busybox:1", failing.host()), "500");

    // A download cut short every time: resumed, then given up, by name.
    let cut = Faulty::start(
        registry.port,
        Fault::Truncate {
            after: 1000,
            times: 100,
        },
    );
    assert_fails_cleanly(&home, &format!("{}/busybox:1", cut.host()), "busybox");

    // Cut short once: the pull resumes and succeeds.
    let once = Faulty::start(
        registry.port,
        Fault::Truncate {
            after: 1000,
            times: 1,
        },
    );
    let out = pull(&home, &format!("{}/busybox:1", once.host()), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
    assert_eq!(once.broken.load(std::sync::atomic::Ordering::SeqCst), 1);
    let out = home.run(&["image", "rm", &format!("{}/busybox:1", once.host())]);
    assert!(out.status.success(), "{}", stderr(&out));
    home.run(&["image", "prune"]);
    fsck_clean(&home);

    // A corrupt blob on the registry's disk: a digest mismatch, nothing stored.
    let manifest = skopeo_raw(&registry, "busybox:1");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = layer.trim_start_matches("sha256:");
    let data = registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    assert_fails_cleanly(&home, &registry.reference("busybox:1"), "mismatch");
}

fn skopeo_raw(registry: &Registry, name: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}", registry.reference(name)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// PUTs a manifest (or index) by tag with curl.
fn put_manifest(registry: &Registry, name_tag: &str, media_type: &str, body: &serde_json::Value) {
    let (name, tag) = name_tag.split_once(':').unwrap();
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H"])
        .arg(format!("Content-Type: {media_type}"))
        .arg("--data-binary")
        .arg(body.to_string())
        .arg(format!(
            "http://{}/v2/{name}/manifests/{tag}",
            registry.host()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "PUT manifest: {}", stderr(&out));
}

#[test]
fn unknown_media_types_and_foreign_platforms_are_refused_by_name() {
    let home = Home::private();
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");
    let mut manifest = skopeo_raw(&registry, "busybox:1");
    manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    let oci = "application/vnd.oci.image.manifest.v1+json";

    let mut odd = manifest.clone();
    odd["layers"][0]["mediaType"] = "application/x-hutch-unknown".into();
    put_manifest(&registry, "busybox:odd", oci, &odd);
    assert_fails_cleanly(
        &home,
        &registry.reference("busybox:odd"),
        "application/x-hutch-unknown",
    );

    // An index with only an arm64 image.
    let arm = serde_json::to_vec(&manifest).unwrap();
    let arm_digest = format!("sha256:{}", sha256_hex(&arm));
    put_manifest(&registry, &format!("busybox:{}", "arm"), oci, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": oci, "digest": arm_digest, "size": arm.len(),
                       "platform": {"os": "linux", "architecture": "arm64"}}],
    });
    put_manifest(
        &registry,
        "busybox:armonly",
        "application/vnd.oci.image.index.v1+json",
        &index,
    );
    assert_fails_cleanly(&home, &registry.reference("busybox:armonly"), "linux/arm64");
}

/// POSTs `body` as JSON to `url` with curl (no buffering, so streamed answers come whole).
fn post_json(url: &str, body: &serde_json::Value) -> Output {
    Command::new("curl")
        .args([
            "-sN",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
        ])
        .arg(body.to_string())
        .arg(url)
        .output()
        .unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn the_server_pulls_on_create_and_streams_pull_progress() {
    use common::server::free_port;
    let home = Home::private();
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");
    registry.push_oci_layout(&fixtures().join("oracle"), "latest", "oracle:1");
    // A registry on loopback is the server's own network: the operator allows it by name.
    let server = home.serve_with(
        free_port(),
        free_port(),
        &["--allow-registry", &registry.host()],
        &[("HUTCH_INSECURE_REGISTRIES", registry.host().as_str())],
    );
    let api = format!("http://127.0.0.1:{}", server.api_port);

    // The pull endpoint: JSON lines, ending with `done`.
    let out = post_json(
        &format!("{api}/hutch/v1/images/pull"),
        &serde_json::json!({"reference": registry.reference("oracle:1")}),
    );
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"resolved"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    assert!(kinds.contains(&"layer_done"), "{kinds:?}");
    // How the server's requests show in the registry's log (another test looks for them).
    assert!(
        registry
            .log()
            .contains("\"http.request.useragent\":\"hutch/"),
        "{}",
        registry.log()
    );

    // A create that names a missing image pulls it, and `hutch run` through the server works.
    let out = home
        .hutch()
        .env("HUTCH_SERVER", &api)
        .args([
            "run",
            &registry.reference("busybox:1"),
            "--",
            "echo",
            "pulled",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "pulled\n", "{}", stderr(&out));

    // A digest-pinned reference too: the server resolves it to its store name.
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}", registry.reference("busybox:1")))
        .output()
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pinned = format!(
        "{}@{}",
        registry.reference("busybox"),
        inspected["Digest"].as_str().unwrap()
    );
    let out = home
        .hutch()
        .env("HUTCH_SERVER", &api)
        .args(["run", &pinned, "--", "echo", "pinned"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "pinned\n", "{}", stderr(&out));

    // A pull that fails ends the stream with a typed error event.
    let out = post_json(
        &format!("{api}/hutch/v1/images/pull"),
        &serde_json::json!({"reference": registry.reference("nothing:1")}),
    );
    let last: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["code"], "image_not_found");
    assert!(
        last["message"].as_str().unwrap().contains("nothing"),
        "{last}"
    );
    drop(server);
}

#[test]
fn a_server_told_never_to_pull_refuses_a_missing_image_by_name() {
    use common::server::free_port;
    let home = Home::private();
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");
    let server = home.serve_with(
        free_port(),
        free_port(),
        &["--pull", "never"],
        &[("HUTCH_INSECURE_REGISTRIES", registry.host().as_str())],
    );
    let out = post_json(
        &server.sandboxes_url(),
        &serde_json::json!({"image": registry.reference("busybox:1")}),
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["code"], "image_not_found", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("--pull never"),
        "{answer}"
    );
    assert!(
        registry.blob_bytes_served() == 0,
        "the server pulled anyway"
    );
    drop(server);
}

/// POSTs `body` as JSON: the answer's JSON and its status.
fn post_json_status(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", "content-type: application/json", "--data"])
        .arg(body.to_string())
        .arg(url)
        .output()
        .unwrap();
    let text = stdout(&out);
    let (json, status) = text.trim_end().rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}")),
    )
}

#[test]
fn a_server_refuses_pulls_from_its_own_network_with_one_answer_for_open_and_closed_ports() {
    use common::server::free_port;
    let home = Home::private();
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");
    let before = registry.log().len();
    let closed = free_port();
    let insecure = format!("{},127.0.0.1:{closed}", registry.host());
    let server = home.serve_with(
        free_port(),
        free_port(),
        &[],
        &[("HUTCH_INSECURE_REGISTRIES", insecure.as_str())],
    );
    let answer = |port: u16| {
        let reference = format!("127.0.0.1:{port}/busybox:1");
        let (status, body) = post_json_status(
            &server.sandboxes_url(),
            &serde_json::json!({"image": reference}),
        );
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "registry_not_allowed", "{body}");
        body["message"]
            .as_str()
            .unwrap()
            .replace(&port.to_string(), "PORT")
    };
    let open = answer(registry.port);
    assert_eq!(open, answer(closed));
    assert!(open.contains("loopback"), "{open}");
    assert!(
        !open.contains("refused") && !open.contains("connect"),
        "{open}"
    );

    // The pull endpoint too, with the same typed error.
    let out = post_json(
        &format!("http://127.0.0.1:{}/hutch/v1/images/pull", server.api_port),
        &serde_json::json!({"reference": registry.reference("busybox:1")}),
    );
    let last: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(last["code"], "registry_not_allowed", "{last}");
    assert_eq!(registry.blob_bytes_served(), 0, "the server pulled anyway");
    // (The harness's own probes have no user agent; the server's pulls say `hutch/`.)
    let after = registry.log();
    assert!(
        !after[before..].contains("\"http.request.useragent\":\"hutch/"),
        "the server reached the registry:\n{}",
        &after[before..]
    );
    drop(server);
}
