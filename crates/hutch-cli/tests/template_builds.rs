//! The seed build flow as the published `tensorlake` crate (0.5.160) drives it against
//! `hutch serve`: prepare, a builder sandbox running `tl-rootfs-build`, complete; a diff
//! template `FROM` a registered one; a registry import; sandboxes from the templates; and the
//! failures that must leave no template behind.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::Home;
use common::registry::Registry;
use common::server::Server;
use serde_json::{Value, json};
use tensorlake::ClientBuilder;
use tensorlake::sandbox_images::{
    CommonBuildOptions, SandboxImageBuildEvent, SandboxImageBuildOptions,
    SandboxImageImportOptions, build_sandbox_image, import_sandbox_image,
};
use tensorlake::sandbox_templates::SandboxTemplatesClient;
use tensorlake::sandboxes::models::{CreateSandboxRequest, RunProcessEvent};
use tensorlake::sandboxes::{SandboxProxyClient, resolve_sandbox_proxy_target};

fn common_options(server: &Server, name: &str) -> CommonBuildOptions {
    CommonBuildOptions {
        api_url: server.api_url(),
        bearer_token: String::new(),
        use_scope_headers: false,
        organization_id: None,
        project_id: None,
        namespace: "default".into(),
        registered_name: Some(name.into()),
        disk_mb: None,
        builder_disk_mb: None,
        cpus: None,
        memory_mb: None,
        is_public: false,
        cas: false,
        user_agent: None,
        docker_compat: false,
    }
}

type Events = Arc<Mutex<Vec<SandboxImageBuildEvent>>>;
type Built = (
    Result<Value, tensorlake::sandbox_images::SandboxImageBuildError>,
    Events,
);

async fn build(server: &Server, name: &str, context: &Path) -> Built {
    build_with(server, name, context, None).await
}

/// [`build`] with the SDK's `memory_mb` option (the builder's memory, and every RUN's).
async fn build_with(server: &Server, name: &str, context: &Path, memory_mb: Option<i64>) -> Built {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let mut common = common_options(server, name);
    common.memory_mb = memory_mb;
    let options = SandboxImageBuildOptions {
        common,
        dockerfile_path: context.join("Dockerfile"),
        dockerfile_text: None,
        context_dir: None,
        context_files: Vec::new(),
        build_args: Vec::new(),
    };
    let result = build_sandbox_image(options, Some("{}".into()), move |e| {
        sink.lock().unwrap().push(e)
    })
    .await;
    (result, events)
}

fn logs(events: &Events) -> String {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|e| match e {
            SandboxImageBuildEvent::Status(s) => format!("status: {s}\n"),
            SandboxImageBuildEvent::Warning(s) => format!("warning: {s}\n"),
            SandboxImageBuildEvent::BuildLog { stream, message } => {
                format!("{stream}: {message}\n")
            }
            other => format!("{other:?}\n"),
        })
        .collect()
}

fn templates_client(server: &Server) -> SandboxTemplatesClient {
    let client = ClientBuilder::new(&server.api_url()).build().unwrap();
    SandboxTemplatesClient::new_api_key_scoped(client)
}

fn context(dockerfile: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

struct Sbx {
    api: tensorlake::sandboxes::SandboxesClient,
    id: String,
    proxy: SandboxProxyClient,
}

/// A running sandbox from `image` (a template name, or an image).
async fn sandbox(server: &Server, image: &str) -> Sbx {
    let api = tensorlake::Sdk::new(&server.api_url(), "")
        .unwrap()
        .sandboxes("default", true);
    let request: CreateSandboxRequest =
        serde_json::from_value(json!({"image": image, "timeout_secs": 120})).unwrap();
    let created = api.create_and_wait(&request).await.unwrap().into_inner();
    assert_eq!(created.status, "running", "{created:?}");
    let info = api.get(&created.sandbox_id).await.unwrap().into_inner();
    let shown = info.image.unwrap_or_default();
    assert!(shown.starts_with(image), "shown as asked for: {shown}");
    let target =
        resolve_sandbox_proxy_target(created.sandbox_url.as_deref().unwrap(), &created.sandbox_id)
            .unwrap();
    let proxy = SandboxProxyClient::new(
        ClientBuilder::new(&target.base_url).build().unwrap(),
        target.host_override,
    );
    Sbx {
        api,
        id: created.sandbox_id,
        proxy,
    }
}

impl Sbx {
    /// Runs `script` with `sh -c`: stdout, stderr, exit code.
    async fn sh(&self, script: &str) -> (String, String, Option<i64>) {
        let events = self
            .proxy
            .run_process(&json!({"command": "sh", "args": ["-c", script]}))
            .await
            .unwrap()
            .into_inner();
        let (mut out, mut err, mut code) = (String::new(), String::new(), None);
        for event in events {
            match event {
                RunProcessEvent::Output(o) if o.stream.as_deref() == Some("stderr") => {
                    err.push_str(&o.line);
                    err.push('\n');
                }
                RunProcessEvent::Output(o) => {
                    out.push_str(&o.line);
                    out.push('\n');
                }
                RunProcessEvent::Exited { exit_code, .. } => code = exit_code,
                _ => {}
            }
        }
        (out, err, code)
    }

    async fn delete(self) {
        self.api.delete(&self.id).await.unwrap();
    }
}

/// Creates a sandbox from `image`, runs `script` in it, deletes it; stdout, and the
/// processes the sandbox ran.
async fn run_in(server: &Server, image: &str, script: &str) -> (String, Value) {
    let sbx = sandbox(server, image).await;
    let (out, _, _) = sbx.sh(script).await;
    let processes = sbx.proxy.list_processes().await.unwrap().into_inner();
    let processes = serde_json::to_value(processes).unwrap();
    sbx.delete().await;
    (out, processes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_builds_base_and_diff_templates_and_imports_from_a_registry() {
    let home = Home::private_with(&["busybox"]);
    let busybox = common::fixtures().join("busybox");
    let registry = Registry::start();
    registry.push_oci_layout(&busybox, "latest", "tools/busybox:1");
    let server = home.serve_with(
        common::server::free_port(),
        common::server::free_port(),
        &["--allow-registry", &registry.host()],
        &[("HUTCH_INSECURE_REGISTRIES", registry.host().as_str())],
    );

    // A base template from a Dockerfile, with config the sandboxes must honour.
    let base_ctx = context(
        "FROM busybox\n\
         ENV GREETING=hello-from-template\n\
         WORKDIR /app\n\
         COPY hello.txt /app/hello.txt\n\
         RUN echo built-in-rootfs > /app/built.txt && echo step-output\n\
         EXPOSE 8080\n\
         CMD [\"sh\", \"-c\", \"echo $GREETING > /app/cmd-ran; sleep 600\"]\n",
        &[("hello.txt", "hello from the context\n")],
    );
    let (base, events) = build(&server, "base-tpl", base_ctx.path()).await;
    let base = base.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    let log = logs(&events);
    assert_eq!(base["name"], "base-tpl");
    assert_eq!(base["rootfsNodeKind"], "base", "{base}");
    assert!(base["id"].as_str().unwrap().starts_with("tpl_"));
    assert!(log.contains("Build mode: RootfsBase"), "{log}");
    assert!(
        log.contains("stdout: step-output"),
        "RUN output streams: {log}"
    );
    assert!(
        log.contains("'EXPOSE' is applied during the image build"),
        "the reference's warning for instructions that only warn: {log}"
    );

    // A diff template FROM the registered one.
    let diff_ctx = context("FROM base-tpl\nRUN echo diff-layer > /app/diff.txt\n", &[]);
    let (diff, events) = build(&server, "diff-tpl", diff_ctx.path()).await;
    let diff = diff.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    assert!(
        logs(&events).contains("Build mode: RootfsDiff"),
        "{}",
        logs(&events)
    );
    assert_eq!(diff["rootfsNodeKind"], "diff", "{diff}");
    assert_eq!(diff["parentTemplateId"], base["id"]);
    assert_eq!(diff["parentTemplateName"], "base-tpl");
    let own = diff["ownBytes"].as_u64().unwrap();
    let total = diff["totalBytes"].as_u64().unwrap();
    assert!(
        own > 0 && own * 20 < total,
        "a diff stores only its own layers: {own} of {total}"
    );

    // A registry import, no Dockerfile.
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let imported = import_sandbox_image(
        SandboxImageImportOptions {
            common: common_options(&server, "imported-busybox"),
            image_reference: format!("{}/tools/busybox:1", registry.host()),
        },
        Some("{}".into()),
        move |e| sink.lock().unwrap().push(e),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    assert_eq!(imported["rootfsNodeKind"], "base");

    // The registry as the SDK sees it.
    let templates = templates_client(&server);
    let listed = templates.list().await.unwrap().into_inner();
    let mut names: Vec<_> = listed.iter().filter_map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["base-tpl", "diff-tpl", "imported-busybox"]);
    let found = templates
        .find_by_name("diff-tpl")
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(found.id.as_deref(), diff["id"].as_str());
    assert_eq!(found.rootfs_node_kind.as_deref(), Some("diff"));
    assert!(templates.find_by_name("nope").await.unwrap().is_none());

    // Sandboxes from the templates, by name: built files, env, workdir, CMD.
    let (out, processes) = run_in(
        &server,
        "diff-tpl",
        "cat /app/hello.txt /app/built.txt /app/diff.txt; echo $GREETING; pwd; \
         for i in $(seq 50); do [ -s /app/cmd-ran ] && break; sleep 0.1; done; cat /app/cmd-ran",
    )
    .await;
    assert_eq!(
        out,
        "hello from the context\nbuilt-in-rootfs\ndiff-layer\nhello-from-template\n/app\nhello-from-template\n",
        "processes: {processes}"
    );
    let (out, _) = run_in(&server, "imported-busybox", "ls /bin/busybox && echo ok").await;
    assert!(out.ends_with("ok\n"), "{out}");

    // `hutch run` through the server, by template name.
    let out = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args(["run", "diff-tpl", "--", "cat", "/app/diff.txt"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        common::stdout(&out),
        "diff-layer\n",
        "{}",
        common::stderr(&out)
    );

    // A parent with children cannot go; the child, then the parent, can.
    let refused = templates.delete_by_name("base-tpl").await.unwrap_err();
    assert!(
        refused.to_string().contains("template_has_children"),
        "{refused}"
    );
    assert!(templates.delete_by_name("diff-tpl").await.unwrap());
    assert!(templates.delete_by_name("base-tpl").await.unwrap());
    assert!(!templates.delete_by_name("base-tpl").await.unwrap());
    let left = templates.list().await.unwrap().into_inner();
    assert_eq!(left.len(), 1);
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_builds_name_the_line_and_register_nothing() {
    let home = Home::private_with(&["busybox"]);
    let server = home.serve();

    // A failing RUN: the step's line and exit code reach the SDK's error.
    let ctx = context("FROM busybox\nRUN echo about-to-fail && exit 7\n", &[]);
    let (result, events) = build(&server, "broken", ctx.path()).await;
    let err = result.unwrap_err().to_string();
    let log = logs(&events);
    assert!(err.contains("tl-rootfs-build"), "{err}");
    assert!(log.contains("about-to-fail"), "{log}");
    assert!(log.contains("Dockerfile:2"), "the line is named: {log}");
    assert!(
        log.contains("exit code 7") || log.contains("exited with 7"),
        "{log}"
    );

    // A RUN past the build's memory (the SDK's memory_mb) is reported out of memory,
    // naming its line, with the SDK's remedy.
    let ctx = context(
        "FROM busybox\nRUN true\nRUN awk 'BEGIN { s = sprintf(\"%300000000s\", \"\"); system(\"sleep 1\"); print length(s) }'\n",
        &[],
    );
    let (result, events) = build_with(&server, "hungry", ctx.path(), Some(128)).await;
    assert!(result.is_err());
    let log = logs(&events);
    assert!(log.contains("Dockerfile:3"), "{log}");
    assert!(log.contains("out of memory"), "{log}");
    assert!(log.contains("larger `memory_mb` (now 128 MiB)"), "{log}");

    // A syntax error is refused at prepare, naming the line, before any builder starts.
    let ctx = context("FROM busybox\nFROBNICATE now\n", &[]);
    let (result, _) = build(&server, "bad-syntax", ctx.path()).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");

    // A missing context file fails the build.
    let ctx = context("FROM busybox\nCOPY missing.txt /x\n", &[]);
    let (result, events) = build(&server, "missing-file", ctx.path()).await;
    assert!(result.is_err());
    assert!(logs(&events).contains("missing.txt"), "{}", logs(&events));

    // Complete without a finished build, and with a forged snapshot: refused.
    let http = reqwest::Client::new();
    let prepared: Value = http
        .post(format!(
            "{}/platform/v1/sandbox-template-builds",
            server.api_url()
        ))
        .json(&json!({"name": "never-built", "dockerfile": "FROM busybox\n"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = prepared["buildId"].as_str().unwrap();
    let complete = |body: Value| {
        http.post(format!(
            "{}/platform/v1/sandbox-template-builds/{id}/complete",
            server.api_url()
        ))
        .json(&body)
        .send()
    };
    let response = complete(json!({
        "snapshotId": prepared["snapshotId"], "snapshotUri": prepared["snapshotUri"],
        "snapshotFormatVersion": "hutch_oci_layers_v1", "snapshotSizeBytes": 1,
        "rootfsDiskBytes": 1, "rootfsNodeKind": "base"
    }))
    .await
    .unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "build_not_built", "{body}");
    let response = complete(json!({"snapshotId": "snap_forged", "snapshotUri": "x"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // A malformed prepare is a typed 400.
    let response = http
        .post(format!(
            "{}/platform/v1/sandbox-template-builds",
            server.api_url()
        ))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // The build channel wants the token prepare handed out: a forged one claims nothing.
    let builder = sandbox(&server, "hutch/rootfs-builder").await;
    let forged = json!({"buildId": id, "buildToken": "forged", "contextDir": "/tmp"});
    builder
        .proxy
        .write_file("/tmp/spec.json", forged.to_string().into_bytes())
        .await
        .unwrap();
    let (_, err, code) = builder
        .sh("tl-rootfs-build --spec /tmp/spec.json --metadata-out /tmp/m.json")
        .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("token does not match"), "{err}");
    builder.delete().await;
    let status: Value = http
        .get(format!(
            "{}/platform/v1/sandbox-template-builds/{id}",
            server.api_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "prepared", "not claimed: {status}");

    // Other sandboxes have no build channel at all.
    let plain = sandbox(&server, "busybox").await;
    let (_, err, code) = plain
        .sh("ln -s /run/hutch-agent /tmp/tl-rootfs-build && echo '{\"contextDir\": \"/tmp\"}' > /tmp/s.json && \
             /tmp/tl-rootfs-build --spec /tmp/s.json --metadata-out /tmp/m.json")
        .await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot reach the host's build engine"),
        "{err}"
    );
    plain.delete().await;

    let listed = templates_client(&server).list().await.unwrap().into_inner();
    assert!(listed.is_empty(), "nothing half-registered: {listed:?}");
    home.assert_clean();
}

/// Issue 12: the host keeps a build's context in the store's `tmp/`, where every
/// `Store::open` (any `hutch image` command) and `fsck --repair` remove what has no live
/// lock. A context must survive both for as long as its build runs, and go when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_build_context_survives_image_ls_and_fsck_repair() {
    let home = Home::private_with(&["busybox"]);
    let server = home.serve();
    let tmp = home.path().join("store/tmp");
    let contexts = move || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&tmp)
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.path().join("work"))
                    .filter(|p| p.join("Dockerfile").is_file())
                    .collect()
            })
            .unwrap_or_default()
    };
    // The last COPY reads the context after the cleanups below ran.
    let ctx = context(
        "FROM busybox\nRUN echo running-step && sleep 6\nCOPY late.txt /late.txt\n",
        &[("late.txt", "read after the cleanup\n")],
    );
    let events: Events = Arc::default();
    let build = {
        let (common, path, sink) = (
            common_options(&server, "late-ctx"),
            ctx.path().to_path_buf(),
            Arc::clone(&events),
        );
        tokio::spawn(async move {
            let options = SandboxImageBuildOptions {
                common,
                dockerfile_path: path.join("Dockerfile"),
                dockerfile_text: None,
                context_dir: None,
                context_files: Vec::new(),
                build_args: Vec::new(),
            };
            build_sandbox_image(options, Some("{}".into()), move |e| {
                sink.lock().unwrap().push(e)
            })
            .await
        })
    };

    // Wait for the RUN step: the context is on disk and the build is busy for seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !logs(&events).contains("running-step") {
        assert!(
            !build.is_finished(),
            "the build ended early:\n{}",
            logs(&events)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no RUN step:\n{}",
            logs(&events)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let live = contexts();
    assert_eq!(live.len(), 1, "one context in the store's tmp/: {live:?}");
    let context_dir = live[0].clone();

    let h = home.path().to_path_buf();
    let (ls, fsck) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            std::process::Command::new(common::hutch_bin())
                .env("HUTCH_HOME", &h)
                .env_remove("HUTCH_LOG")
                .args(args)
                .output()
                .unwrap()
        };
        (run(&["image", "ls"]), run(&["image", "fsck", "--repair"]))
    })
    .await
    .unwrap();
    assert!(ls.status.success(), "{}", common::stderr(&ls));
    assert!(
        common::stdout(&ls).contains("busybox"),
        "{}",
        common::stdout(&ls)
    );
    assert!(fsck.status.success(), "{}", common::stderr(&fsck));
    assert!(
        !common::stdout(&fsck).contains("tmp/"),
        "fsck saw the live context as stale: {}",
        common::stdout(&fsck)
    );
    assert!(
        context_dir.join("late.txt").is_file(),
        "the live context was removed from under the build"
    );

    let built = build.await.unwrap();
    let built = built.unwrap_or_else(|e| panic!("{e}\n{}", logs(&events)));
    assert_eq!(built["name"], "late-ctx");
    assert!(
        !context_dir.exists() && contexts().is_empty(),
        "the context goes with its build"
    );
    let (out, _) = run_in(&server, "late-ctx", "cat /late.txt").await;
    assert_eq!(out, "read after the cleanup\n");
    home.assert_clean();
}
