//! The rest of the lifecycle, through the published `tensorlake` crate (0.5.160) where it has
//! the call and raw HTTP where only Hutch does: archived sandboxes, graceful stop, idle
//! timeout and keepalive, live resize.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Home;
use common::server::{http, json_of, sdk as sandboxes, sdk_proxy as proxy};
use serde_json::{Value, json};
use tensorlake::sandboxes::SandboxesClient;
use tensorlake::sandboxes::models::{
    ArchivedSandboxesPaginationDirection as Direction, ListArchivedSandboxesParams,
    ListArchivedSandboxesResponse, ResizeSandboxResources, UpdateSandboxRequest,
};

/// Creates a busybox sandbox through the API, raw (Hutch fields allowed); returns its id and
/// sandbox_url.
async fn create(server: &common::server::Server, body: Value) -> (String, String) {
    let answer = json_of(
        http()
            .post(format!("{}/sandboxes", server.api_url()))
            .json(&body),
    )
    .await;
    assert_eq!(answer["status"], "running", "{answer}");
    (
        answer["sandbox_id"].as_str().unwrap().to_string(),
        answer["sandbox_url"].as_str().unwrap().to_string(),
    )
}

/// The sandbox as a listing shows it (a listing is not traffic for the idle timeout).
async fn listed(server: &common::server::Server, id: &str) -> Value {
    let url = format!("{}/sandboxes?include_terminated=true", server.api_url());
    let page = json_of(http().get(url)).await;
    page["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sandbox_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn archived(
    api: &SandboxesClient,
    limit: usize,
    cursor: Option<String>,
    direction: Option<Direction>,
) -> ListArchivedSandboxesResponse {
    let params = ListArchivedSandboxesParams {
        limit: Some(limit),
        cursor,
        direction,
    };
    api.list_archived(&params).await.unwrap().into_inner()
}

fn ids(page: &ListArchivedSandboxesResponse) -> Vec<&str> {
    page.sandboxes
        .iter()
        .map(|s| s.sandbox.sandbox_id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_sandboxes_page_both_ways_newest_first() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let mut ended = Vec::new();
    for _ in 0..3 {
        let (id, _) = create(&server, json!({"image": "hutch/minimal"})).await;
        api.delete(&id).await.unwrap();
        ended.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (live, _) = create(&server, json!({"image": "hutch/minimal"})).await;

    let first = archived(&api, 2, None, None).await;
    assert_eq!(
        ids(&first),
        [ended[2].as_str(), ended[1].as_str()],
        "newest first"
    );
    assert!(first.prev_cursor.is_none());
    assert!(first.sandboxes[0].archived_at >= first.sandboxes[1].archived_at);
    assert_eq!(first.sandboxes[0].sandbox.status, "terminated");
    let older = archived(&api, 2, first.next_cursor.clone(), Some(Direction::Forward)).await;
    assert_eq!(ids(&older), [ended[0].as_str()]);
    assert!(older.next_cursor.is_none());
    let back = archived(
        &api,
        5,
        older.prev_cursor.clone(),
        Some(Direction::Backward),
    )
    .await;
    assert_eq!(ids(&back), [ended[2].as_str(), ended[1].as_str()]);

    let one = api.get_archived(&ended[0]).await.unwrap().into_inner();
    assert_eq!(one.sandbox.sandbox_id, ended[0]);
    assert!(one.archived_at > 0);
    let err = api.get_archived(&live).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let bad = http()
        .get(format!(
            "{}/archived-sandboxes?cursor=nonsense",
            server.api_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    server.delete_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_sigterm_handlers_finish_and_records_why() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let (id, _) = create(&server, json!({"image": "hutch/minimal"})).await;
    // A process that answers SIGTERM, and one that ignores it (killed after the grace).
    let exec = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args(["sbx", "exec", &id, "--", "sh", "-c"])
        .arg("trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stubborn = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args([
            "sbx",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 600",
        ])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let out = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args(["sbx", "stop", &id, "--grace", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    // The stubborn one held the stop for its grace period, no more.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let streamed = exec.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&streamed.stdout);
    assert_eq!(
        text, "ready\ngot-term\n",
        "the handler's output reached the client"
    );
    assert_eq!(streamed.status.code(), Some(7));
    drop(stubborn);
    let info = api.get(&id).await.unwrap().into_inner();
    assert_eq!(info.status, "terminated");
    assert_eq!(info.termination_reason.as_deref(), Some("stopped"));
    server.delete_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sandboxes_end_and_traffic_keeps_them() {
    let home = Home::new();
    let server = home.serve();
    let (idle, _) = create(
        &server,
        json!({"image": "hutch/minimal", "idle_timeout_secs": 2}),
    )
    .await;
    let (kept, kept_url) = create(
        &server,
        json!({"image": "hutch/minimal", "idle_timeout_secs": 2}),
    )
    .await;
    let kept_proxy = proxy(&kept_url, &kept);
    assert_eq!(listed(&server, &idle).await["idle_timeout_secs"], 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut keepalives = 0;
    while Instant::now() < deadline {
        // Proxy traffic on one, and the keepalive action, every half second.
        kept_proxy.list_processes().await.unwrap();
        if keepalives % 2 == 0 {
            let r = http()
                .post(format!("{}/sandboxes/{kept}/keepalive", server.api_url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        keepalives += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let gone = listed(&server, &idle).await;
    assert_eq!(gone["status"], "terminated", "{gone}");
    assert_eq!(gone["termination_reason"], "idle_timeout", "{gone}");
    assert_eq!(listed(&server, &kept).await["status"], "running");
    // A PATCH turns it off.
    let r = http()
        .patch(format!("{}/sandboxes/{kept}", server.api_url()))
        .json(&json!({"idle_timeout_secs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(listed(&server, &kept).await["status"], "running");
    server.delete_all();
}

fn cgroup(id: &str, controller: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/hutch/{id}/{file}"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_resize_changes_cgroup_and_agent_limits_without_a_restart() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let (id, url) = create(
        &server,
        json!({"image": "hutch/minimal", "resources": {"cpus": 1.0, "memory_mb": 1024}}),
    )
    .await;
    let sbx = proxy(&url, &id);
    let bystander = sbx
        .start_process(&json!({"command": "sleep", "args": ["600"]}))
        .await
        .unwrap()
        .into_inner();
    // ~300 MB held by the process itself (an awk string), which then waits.
    let hog = sbx
        .start_process(&json!({"command": "awk", "args": [
            "BEGIN { s = sprintf(\"%300000000s\", \"\"); print \"held\"; fflush(); \
             system(\"sleep 600 </dev/null >/dev/null 2>&1\") }"]}))
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(
        &serde_json::to_vec(&sbx.get_output(hog.pid).await.unwrap().into_inner()).unwrap(),
    )
    .contains("held")
    {
        assert!(Instant::now() < deadline, "the hog never held its memory");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();

    // Up: 2 cpus, 2048 MiB.
    let up = api
        .update(
            &id,
            &UpdateSandboxRequest {
                resources: Some(ResizeSandboxResources {
                    cpus: Some(2.0),
                    memory_mb: Some(2048),
                    disk_mb: None,
                }),
                auto_resume: None,
                name: None,
                allow_unauthenticated_access: None,
                exposed_ports: None,
                network: Default::default(),
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.resources.cpus, up.resources.memory_mb), (2.0, 2048));
    let resize = up.resource_resize.clone().unwrap();
    assert_eq!(
        (resize.generation, resize.status.as_str()),
        (1, "succeeded")
    );
    if !unified {
        assert_eq!(cgroup(&id, "cpu", "cpu.cfs_quota_us"), "200000");
        assert_eq!(
            cgroup(&id, "memory", "memory.limit_in_bytes"),
            ((2048u64 << 20) * 3 / 2).to_string()
        );
    }
    assert_eq!(
        sbx.get_process(hog.pid).await.unwrap().into_inner().status,
        "running"
    );

    // Down to 256 MiB: the hog is over it and is OOM-killed alone.
    let down = api
        .update(
            &id,
            &serde_json::from_value(json!({"resources": {"memory_mb": 256}})).unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(down.resources.memory_mb, 256);
    assert_eq!(down.resource_resize.unwrap().generation, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = sbx.get_process(hog.pid).await.unwrap().into_inner();
        if p.status != "running" {
            assert!(p.oom_killed, "{p:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the hog was not killed: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alive = sbx.get_process(bystander.pid).await.unwrap().into_inner();
    assert_eq!(alive.status, "running");
    assert_eq!(api.get(&id).await.unwrap().into_inner().status, "running");
    if !unified {
        assert_eq!(
            cgroup(&id, "memory", "memory.limit_in_bytes"),
            ((256u64 << 20) + (256 << 20)).to_string()
        );
    }
    // Under the new limit, a new process has room: 60 MB is fine.
    let small = sbx
        .start_process(&json!({"command": "awk", "args": [
            "BEGIN { s = sprintf(\"%60000000s\", \"\"); print length(s) }"]}))
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = sbx.get_process(small.pid).await.unwrap().into_inner();
        if p.status != "running" {
            assert!(!p.oom_killed, "{p:?}");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Bad resizes are refused, typed, and change nothing.
    let r = http()
        .patch(format!("{}/sandboxes/{id}", server.api_url()))
        .json(&json!({"resources": {"memory_mb": 256}, "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = http()
        .patch(format!("{}/sandboxes/{id}", server.api_url()))
        .json(&json!({"resources": {"cpus": 10000.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(api.get(&id).await.unwrap().into_inner().resources.cpus, 2.0);
    server.delete_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_cannot_write_past_its_disk_mb() {
    let home = Home::new();
    let server = home.serve();
    let api = sandboxes(&server);
    let (id, url) = create(
        &server,
        json!({"image": "hutch/minimal", "resources": {"disk_mb": 256}}),
    )
    .await;
    assert_eq!(
        api.get(&id).await.unwrap().into_inner().resources.disk_mb,
        256
    );
    let sbx = proxy(&url, &id);
    // 1 GiB into a 256 MiB disk: ENOSPC inside, after about 256 MiB.
    let text = run(
        &sbx,
        "dd if=/dev/zero of=/root/big bs=1M count=1024 2>&1; echo exit=$?; \
         ls -l /root/big | awk '{print $5}'; df -k / | tail -1",
    )
    .await;
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("exit=1"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let written: u64 = lines[lines.len() - 2].trim().parse().unwrap();
    assert!(written < 256 << 20 && written > 200 << 20, "{written}");
    // df shows the sandbox's disk, not the host's.
    let df: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    let total_kb: u64 = df[1].parse().unwrap();
    assert!(total_kb <= 256 << 10 && total_kb > 200 << 10, "{text}");
    // The sandbox lives on and can free what it wrote; the host lost at most the disk.
    let after = run(
        &sbx,
        "rm /root/big && echo ok > /root/small && cat /root/small",
    )
    .await;
    assert_eq!(after.trim(), "ok");
    assert_eq!(api.get(&id).await.unwrap().into_inner().status, "running");
    // What the sandbox's writes cost the host: the blocks its disk image holds (measured on
    // the image itself, not the host's free space, which parallel tests share).
    use std::os::unix::fs::MetadataExt;
    let image = home.path().join("sandboxes").join(&id).join("disk.img");
    let held = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(
        held <= (256 << 20) + (8 << 20),
        "the host holds {held} bytes for it"
    );
    // Out-of-range sizes are refused up front.
    let r = http()
        .post(format!("{}/sandboxes", server.api_url()))
        .json(&json!({"image": "hutch/minimal", "resources": {"disk_mb": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    server.delete_all();
    let mut server = server;
    server.stop();
    home.assert_clean();
}

/// The stdout and stderr lines of `sh -c script`, in order.
async fn run(sbx: &tensorlake::sandboxes::SandboxProxyClient, script: &str) -> String {
    let events = sbx
        .run_process(&json!({"command": "sh", "args": ["-c", script]}))
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    for event in events {
        if let tensorlake::sandboxes::models::RunProcessEvent::Output(o) = event {
            text.push_str(&o.line);
            text.push('\n');
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_processes_restart_after_kill_9_and_on_failed_health_checks() {
    use tensorlake::sandboxes::ProcessRef;
    use tensorlake::sandboxes::models::{SupervisedProcessHealthStatus, SupervisedProcessStatus};
    let home = Home::new();
    let server = home.serve();
    let (id, url) = create(&server, json!({"image": "hutch/minimal"})).await;
    let sbx = proxy(&url, &id);
    let name = |n: &str| ProcessRef::Name(n.to_string());
    let wait_for = |what: &'static str| {
        let sbx = sbx.clone();
        move |n: &'static str,
              done: Box<dyn Fn(&tensorlake::sandboxes::models::ProcessInfo) -> bool>| {
            let sbx = sbx.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let p = sbx
                        .get_process(ProcessRef::Name(n.into()))
                        .await
                        .unwrap()
                        .into_inner();
                    if done(&p) {
                        return p;
                    }
                    assert!(Instant::now() < deadline, "{what}: {p:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };

    // A web server with a health check and `always`: healthy, then killed with -9 and back.
    let web = sbx
        .start_process(&json!({
            "command": "sh", "name": "web",
            "args": ["-c", "mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 127.0.0.1:8081 -h /w"],
            "restart": {"policy": "always", "initial_backoff_ms": 100, "max_backoff_ms": 1000},
            "health_check": {"type": "http", "port": 8081, "path": "/index.html",
                             "initial_delay_ms": 200, "interval_ms": 200, "timeout_ms": 500,
                             "failure_threshold": 3}
        }))
        .await
        .unwrap()
        .into_inner();
    let managed = web.managed.clone().unwrap();
    assert_eq!(managed.id, "web");
    assert_eq!(managed.status, SupervisedProcessStatus::Running);
    let healthy = wait_for("never healthy")(
        "web",
        Box::new(|p| {
            p.managed.as_ref().unwrap().health_status == SupervisedProcessHealthStatus::Healthy
        }),
    )
    .await;
    assert_eq!(healthy.pid, web.pid);
    sbx.send_signal(web.pid, 9).await.unwrap();
    let back = wait_for("not restarted after kill -9")(
        "web",
        Box::new(move |p| p.pid != web.pid && p.status == "running"),
    )
    .await;
    let m = back.managed.clone().unwrap();
    assert_eq!(m.restart_count, 1);
    assert_eq!(m.last_exit.unwrap().signal, Some(9));
    let old = sbx.get_process(web.pid).await.unwrap().into_inner();
    assert_eq!(old.status, "signaled");

    // The SDK's restart_process: a new run at once.
    let restarted = sbx.restart_process(name("web")).await.unwrap().into_inner();
    assert_ne!(restarted.pid, back.pid);
    assert_eq!(restarted.managed.unwrap().restart_count, 2);

    // A health check that never passes: acted on after 3 failures (killed and restarted),
    // and `max_restarts` ends it.
    sbx.start_process(&json!({
        "command": "sleep", "args": ["600"], "name": "deaf",
        "restart": {"policy": "on_failure", "max_restarts": 2, "initial_backoff_ms": 100},
        "health_check": {"type": "tcp", "port": 7777, "initial_delay_ms": 100,
                         "interval_ms": 100, "timeout_ms": 100, "failure_threshold": 3}
    }))
    .await
    .unwrap();
    let gave_up = wait_for("the failing health check was not acted on")(
        "deaf",
        Box::new(|p| p.managed.as_ref().unwrap().status == SupervisedProcessStatus::Stopped),
    )
    .await;
    let m = gave_up.managed.unwrap();
    assert_eq!(m.restart_count, 2);
    assert_eq!(m.health_status, SupervisedProcessHealthStatus::Unhealthy);
    assert!(m.last_error.unwrap().contains("gave up"));

    // DELETE ends supervision: killed, and no run follows.
    sbx.kill_process(name("web")).await.unwrap();
    let stopped = wait_for("web did not stop")("web", Box::new(|p| p.status != "running")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = sbx.get_process(name("web")).await.unwrap().into_inner();
    assert_eq!(after.pid, stopped.pid);
    assert_eq!(
        after.managed.unwrap().status,
        SupervisedProcessStatus::Stopped
    );
    server.delete_all();
}
