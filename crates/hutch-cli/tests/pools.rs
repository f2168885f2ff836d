//! Warm pools through the published `tensorlake` crate (0.5.160), and the Debian default
//! image: real sandboxes, a real server killed and restarted.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Home;
use serde_json::{Value, json};
use tensorlake::sandboxes::models::{CreateSandboxResources, SandboxPoolRequest};

use common::server::sdk as sandboxes;

fn pool_request(warm: i64, max: i64) -> SandboxPoolRequest {
    SandboxPoolRequest {
        image: Some("hutch/minimal".into()),
        resources: serde_json::from_value::<CreateSandboxResources>(
            json!({"cpus": 0.5, "memory_mb": 256}),
        )
        .unwrap(),
        timeout_secs: 300,
        entrypoint: None,
        max_containers: Some(max),
        warm_containers: Some(warm),
    }
}

async fn get_json(url: String) -> Value {
    common::server::json_of(common::server::http().get(url)).await
}

/// The pool as the server reports it, raw (the Hutch counts are extensions).
async fn pool(server: &common::server::Server, id: &str) -> Value {
    get_json(format!("{}/sandbox-pools/{id}", server.api_url())).await
}

/// Waits until the pool's counts are `warm` warm and nothing booting.
async fn settled(server: &common::server::Server, id: &str, warm: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pool(server, id).await;
        if p["status"]["warm"] == warm
            && p["status"]["booting"] == 0
            && p["status"]["evicting"] == 0
        {
            return p;
        }
        assert!(Instant::now() < deadline, "pool never settled: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn warm_ids(p: &Value) -> Vec<String> {
    let mut ids: Vec<String> = p["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["state"] == "warm")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn claim_raw(server: &common::server::Server, id: &str) -> (u16, Value) {
    let r = common::server::http()
        .post(format!("{}/sandbox-pools/{id}/sandboxes", server.api_url()))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_stay_warm_claim_at_once_respect_max_and_survive_a_restart() {
    let home = Home::new();
    let (api_port, proxy_port) = (common::server::free_port(), common::server::free_port());
    let mut server = home.serve_on(api_port, proxy_port, &[]);
    let api = sandboxes(&server);

    let created = api
        .create_pool(&pool_request(2, 3))
        .await
        .unwrap()
        .into_inner();
    let id = created.pool_id.clone();
    assert_eq!(created.namespace, "default");
    let p = settled(&server, &id, 2).await;
    // Warm sandboxes are the pool's, not anybody's: no listing shows them.
    assert!(api.list().await.unwrap().into_inner().is_empty());
    let before = warm_ids(&p);

    // A claim hands over a booted sandbox at once, says so, and the pool refills.
    let (status, claimed) = claim_raw(&server, &id).await;
    assert_eq!(status, 200, "{claimed}");
    assert_eq!(claimed["warm"], true, "{claimed}");
    assert_eq!(claimed["status"], "running");
    let first = claimed["sandbox_id"].as_str().unwrap().to_string();
    assert!(before.contains(&first), "{first} was not one of {before:?}");
    let info = api.get(&first).await.unwrap().into_inner();
    assert_eq!(info.pool_id.as_deref(), Some(id.as_str()));
    assert_eq!(info.status, "running");
    let p = settled(&server, &id, 2).await;
    assert_eq!(p["status"]["claimed"], 1);

    // The SDK's claim; then max_containers (3) is reached: a claim is refused, typed.
    let second = api.claim(&id).await.unwrap().into_inner();
    assert_eq!(second.status, "running");
    let third = api.claim(&id).await.unwrap().into_inner();
    let (status, refused) = claim_raw(&server, &id).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["code"], "pool_exhausted");
    let p = pool(&server, &id).await;
    assert_eq!(p["containers"].as_array().unwrap().len(), 3, "{p}");

    // A pool with claimed sandboxes running is not deleted.
    let err = api.delete_pool(&id).await.unwrap_err();
    assert!(err.to_string().contains("409"), "{err}");

    // Ending a claimed sandbox frees its place; the pool refills to warm 2 within max 3.
    api.delete(&second.sandbox_id).await.unwrap();
    api.delete(&third.sandbox_id).await.unwrap();
    let p = settled(&server, &id, 2).await;
    let warm_before_restart = warm_ids(&p);
    assert_eq!(warm_before_restart.len(), 2);

    // kill -9 the server: the warm sandboxes are adopted, not leaked, not doubled.
    server.kill9();
    let server = home.serve_on(api_port, proxy_port, &[]);
    let api = sandboxes(&server);
    let p = settled(&server, &id, 2).await;
    assert_eq!(warm_ids(&p), warm_before_restart, "{p}");
    assert_eq!(p["status"]["claimed"], 1);
    let (_, claimed) = claim_raw(&server, &id).await;
    assert_eq!(claimed["warm"], true);
    assert!(warm_before_restart.contains(&claimed["sandbox_id"].as_str().unwrap().to_string()));
    let adopted = claimed["sandbox_id"].as_str().unwrap().to_string();

    // An update evicts the unclaimed sandboxes and refills with the new configuration;
    // claimed ones keep theirs.
    let mut changed = pool_request(1, 4);
    changed.resources.memory_mb = 300;
    let updated = api.update_pool(&id, &changed).await.unwrap().into_inner();
    assert_eq!(updated.resources.memory_mb, 300);
    assert_eq!(updated.warm_containers, Some(1));
    let p = settled(&server, &id, 1).await;
    let fresh = warm_ids(&p);
    assert!(
        fresh.iter().all(|s| !warm_before_restart.contains(s)),
        "{p}"
    );
    assert_eq!(
        api.get(&adopted).await.unwrap().into_inner().status,
        "running"
    );
    assert_eq!(api.list_pools().await.unwrap().into_inner().len(), 1);

    // Deleting drains: the warm sandbox goes with the pool.
    api.delete(&first).await.unwrap();
    api.delete(&adopted).await.unwrap();
    api.delete_pool(&id).await.unwrap();
    let err = api.get_pool(&id).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = std::fs::read_dir(home.path().join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} sandboxes of the pool were not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut server = server;
    server.stop();
    home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_image_has_python_pip_bash_and_git() {
    let home = Home::new();
    let server = home.serve_on(
        common::server::free_port(),
        common::server::free_port(),
        &["--default-image", "hutch/debian:bookworm"],
    );
    let api = sandboxes(&server);
    let created = api
        .create_and_wait(&serde_json::from_value(json!({"timeout_secs": 300})).unwrap())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.status, "running");
    let info = api.get(&created.sandbox_id).await.unwrap().into_inner();
    assert_eq!(info.image.as_deref(), Some("hutch/debian:bookworm"));
    let out = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args(["sbx", "exec", &created.sandbox_id, "--", "bash", "-c"])
        .arg(
            "python3 -c 'print(6*7)' && pip --version && git --version \
             && python3 -m venv /tmp/v && echo venv",
        )
        .output()
        .unwrap();
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}{}", common::stderr(&out));
    assert!(text.starts_with("42\npip "), "{text}");
    assert!(text.contains("git version"), "{text}");
    assert!(text.ends_with("venv\n"), "{text}");
    // The host's resolvers and name did not reach the image (mmdebstrap copies them in for
    // its build): a sandbox without a network sees the image's own files.
    let offline = api
        .create_and_wait(
            &serde_json::from_value(json!({"allow_internet_access": false, "timeout_secs": 60}))
                .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    let seen = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args([
            "sbx",
            "exec",
            &offline.sandbox_id,
            "--",
            "cat",
            "/etc/resolv.conf",
            "/etc/hostname",
        ])
        .output()
        .unwrap();
    let seen = common::stdout(&seen);
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for line in host_resolv.lines().filter(|l| l.starts_with("nameserver")) {
        assert!(
            !seen.contains(line),
            "the host's {line:?} is in the image: {seen}"
        );
    }
    let host_name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(
        host_name.trim().is_empty() || !seen.lines().any(|l| l == host_name.trim()),
        "the host's name is in the image: {seen}"
    );
    // The SDK's managed image name is the default image here.
    let status = get_json(format!("{}/hutch/v1/default-image", server.api_url())).await;
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(status["image"], "hutch/debian:bookworm");
    let managed = api
        .create_and_wait(
            &serde_json::from_value(
                json!({"image": "tensorlake/ubuntu-minimal", "timeout_secs": 60}),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(managed.status, "running");
    server.delete_all();
}

#[test]
fn hutch_pool_creates_lists_claims_and_removes() {
    let home = Home::new();
    let server = home.serve();
    let pool = |args: &[&str]| {
        let out = home
            .hutch()
            .env("HUTCH_SERVER", server.api_url())
            .arg("pool")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            common::stdout(&out),
            common::stderr(&out),
        )
    };
    let (ok, id, err) = pool(&[
        "create",
        "--image",
        "hutch/minimal",
        "--warm",
        "1",
        "--max",
        "2",
    ]);
    assert!(ok, "{err}");
    let id = id.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, listed, _) = pool(&["ls"]);
        let line = listed
            .lines()
            .find(|l| l.starts_with(&id))
            .unwrap_or_default()
            .to_string();
        if line.split_whitespace().nth(2) == Some("1/1") {
            break;
        }
        assert!(Instant::now() < deadline, "never warm: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, claimed, err) = pool(&["claim", &id]);
    assert!(ok, "{err}");
    let (sandbox, how) = claimed.trim().split_once('\t').unwrap();
    assert_eq!(how, "warm");
    let (_, described, _) = pool(&["describe", &id]);
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [sandbox, "claimed"]),
        "{described}"
    );
    let (ok, _, err) = pool(&["rm", &id]);
    assert!(!ok && err.contains("409"), "{err}");
    let out = home
        .hutch()
        .env("HUTCH_SERVER", server.api_url())
        .args(["sbx", "rm", sandbox])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (ok, _, err) = pool(&["rm", &id]);
    assert!(ok, "{err}");
    let (_, listed, _) = pool(&["ls"]);
    assert!(!listed.contains(&id), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_sandboxes_cannot_start_backs_off_and_says_why() {
    let home = Home::new();
    let server = home.serve();
    let created = common::server::json_of(
        common::server::http()
            .post(format!("{}/sandbox-pools", server.api_url()))
            .json(
                &json!({"image": "hutch/minimal", "resources": {"cpus": 0.5, "memory_mb": 128},
                          "entrypoint": ["/no/such/program"],
                          "warm_containers": 2, "max_containers": 4}),
            ),
    )
    .await;
    let id = created["pool_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let p = pool(&server, &id).await;
    assert!(
        p["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/no/such/program"),
        "{p}"
    );
    // Backing off, it tries a pair every 5 s or so; without, it booted in a loop (dozens).
    let attempts = server.log().matches("sandbox failed to start").count();
    assert!(attempts >= 2, "{}", server.log());
    assert!(
        attempts <= 8,
        "{attempts} sandboxes booted in 8 s:\n{}",
        server.log()
    );
    common::server::http()
        .delete(format!("{}/sandbox-pools/{id}", server.api_url()))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_registered_again_evicts_and_refills_its_pools() {
    let home = Home::new();
    let server = home.serve();
    let register = || {
        let out = home
            .hutch()
            .args(["template", "import", "hutch/minimal", "--name", "tplpool"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    };
    register();
    let created = common::server::json_of(
        common::server::http()
            .post(format!("{}/sandbox-pools", server.api_url()))
            .json(
                &json!({"image": "tplpool", "resources": {"cpus": 0.5, "memory_mb": 128},
                          "warm_containers": 1, "max_containers": 2}),
            ),
    )
    .await;
    let id = created["pool_id"].as_str().unwrap().to_string();
    let before = warm_ids(&settled(&server, &id, 1).await);
    register();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = settled(&server, &id, 1).await;
        let now = warm_ids(&p);
        if !now.is_empty() && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old template's sandbox stayed: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.delete_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_sandboxes_of_a_pool_deleted_mid_crash_are_removed_after_a_restart() {
    let home = Home::new();
    let (api_port, proxy_port) = (common::server::free_port(), common::server::free_port());
    let mut server = home.serve_on(api_port, proxy_port, &[]);
    let api = sandboxes(&server);
    let id = api
        .create_pool(&pool_request(2, 2))
        .await
        .unwrap()
        .into_inner()
        .pool_id;
    settled(&server, &id, 2).await;
    // A crash after the pool's row went and before its warm sandboxes did: the row is
    // deleted by hand while the server is down.
    server.kill9();
    let db = home.path().join("hutch.db");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
              c.execute('DELETE FROM pools WHERE id = ?', (sys.argv[2],)); c.commit()",
        )
        .arg(&db)
        .arg(&id)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut server = home.serve_on(api_port, proxy_port, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = std::fs::read_dir(home.path().join("sandboxes"))
            .map(|d| d.count())
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} warm sandboxes of the deleted pool run on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
    home.assert_clean();
}
