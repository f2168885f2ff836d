//! `hutch-bench-server`: the figures of `hutch serve`, each beside its floor from the same
//! run: create → running (lifecycle API vs the embedded runtime library), exec of `true`
//! (through the proxy vs a direct call to the agent), 64 MiB up and down through the proxy
//! (vs a local disk write and read).
//!
//! usage: hutch-bench-server [HUTCH_BINARY]   (default target/release/hutch); N from
//! HUTCH_BENCH_N (default 20).

#[path = "../cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hutch_runtime::agent::{full, http_client};
use hutch_runtime::gvisor::{GvisorBackend, GvisorConfig};
use hutch_runtime::{Backend, SandboxSpec};
use hutch_wire::StartProcess;
use hyper::Request;
use stats::{Samples, ms, ratio};

const IMAGE: &str = "hutch/minimal:latest";

/// One of the server's listeners (its port), reached on the pooled, kept-alive client the
/// CLI uses.
struct Endpoint(u16);

impl Endpoint {
    /// One request; returns the status and the whole body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        host: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.0))
            .header("host", host)
            .header("content-type", "application/json")
            .body(full(body))?;
        let resp = http_client().request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

fn main() -> anyhow::Result<()> {
    let hutch = cli::hutch_binary();
    let n = cli::iterations(20);
    let home = tempfile::Builder::new().prefix("hb").tempdir_in("/tmp")?;
    let (api_port, proxy_port) = (cli::free_port()?, cli::free_port()?);
    let log = std::fs::File::create(home.path().join("serve.log"))?;
    let mut server = Command::new(&hutch)
        .env("HUTCH_HOME", home.path())
        .env("HUTCH_DEFAULT_IMAGE", "hutch/minimal")
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--proxy-listen",
            &format!("127.0.0.1:{proxy_port}"),
        ])
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting hutch serve")?;
    let result = (|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(measure(&hutch, home.path(), api_port, proxy_port, n))
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    result
}

async fn measure(
    hutch: &std::path::Path,
    home: &std::path::Path,
    api_port: u16,
    proxy_port: u16,
    n: usize,
) -> anyhow::Result<()> {
    cli::wait_for_server(api_port, home)?;
    let api_host = format!("127.0.0.1:{api_port}");
    let api = Endpoint(api_port);
    let sandboxes = "/v1/namespaces/default/sandboxes";

    // 1. create → running through the API, and the library's create of the same image.
    let mut via_api = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = api
            .call("POST", sandboxes, &api_host, Bytes::from_static(b"{}"))
            .await?;
        via_api.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if status != 200 {
            bail!("create answered {status}: {v}");
        }
        let id = v["sandbox_id"].as_str().unwrap_or_default();
        api.call(
            "DELETE",
            &format!("{sandboxes}/{id}"),
            &api_host,
            Bytes::new(),
        )
        .await?;
    }
    let agent_path = Command::new(hutch)
        .env("HUTCH_HOME", home)
        .arg("agent-path")
        .output()?;
    let agent_binary = PathBuf::from(String::from_utf8(agent_path.stdout)?.trim());
    let lib_home = home.join("lib");
    std::fs::create_dir_all(&lib_home)?;
    std::os::unix::fs::symlink(home.join("store"), lib_home.join("store"))?;
    let backend = GvisorBackend::new(
        GvisorConfig {
            home: lib_home.clone(),
            agent_binary,
        },
        hutch_store::Store::open(&lib_home.join("store"))?,
    )?;
    let spec = || SandboxSpec {
        image: IMAGE.into(),
        cpus: Some(1.0),
        memory_mb: Some(1024),
        ..Default::default()
    };
    let mut via_lib = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        let sandbox = backend.create(spec()).await?;
        via_lib.push(t.elapsed());
        backend.delete(&sandbox.info.id).await?;
    }

    // 2. exec of `true`: proxy (kept-alive HTTP/1.1, SSE run) vs the agent client directly.
    let (_, body) = api
        .call("POST", sandboxes, &api_host, Bytes::from_static(b"{}"))
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let id = v["sandbox_id"]
        .as_str()
        .context("no sandbox id")?
        .to_string();
    let host = format!("{id}.local");
    let proxy = Endpoint(proxy_port);
    let run = Bytes::from_static(br#"{"command":"true"}"#);
    let mut via_proxy = Samples::default();
    for _ in 0..n * 5 {
        let t = Instant::now();
        let (status, body) = proxy
            .call("POST", "/api/v1/processes/run", &host, run.clone())
            .await?;
        via_proxy.push(t.elapsed());
        if status != 200 || !String::from_utf8_lossy(&body).contains("\"exit_code\":0") {
            bail!("run through the proxy failed: {status}");
        }
    }
    let direct_sandbox = backend.create(spec()).await?;
    let mut direct = Samples::default();
    let truth = StartProcess {
        command: "true".into(),
        ..Default::default()
    };
    for _ in 0..n * 5 {
        let t = Instant::now();
        let mut stream = direct_sandbox.agent.exec(&truth).await?;
        while stream.next().await?.is_some() {}
        direct.push(t.elapsed());
    }
    backend.delete(&direct_sandbox.info.id).await?;

    // 3. 64 MiB up and down through the proxy vs a local disk write and read.
    let payload = Bytes::from(
        (0..64u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect::<Vec<u8>>(),
    );
    let (mut up, mut down, mut disk_w, mut disk_r) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let local = home.join("copy.bin");
    for _ in 0..n.min(10) {
        let t = Instant::now();
        let (status, _) = proxy
            .call(
                "PUT",
                "/api/v1/files?path=/tmp/big.bin",
                &host,
                payload.clone(),
            )
            .await?;
        up.push(t.elapsed());
        if status / 100 != 2 {
            bail!("upload answered {status}");
        }
        let t = Instant::now();
        let (_, body) = proxy
            .call(
                "GET",
                "/api/v1/files?path=/tmp/big.bin",
                &host,
                Bytes::new(),
            )
            .await?;
        down.push(t.elapsed());
        if body.len() != payload.len() {
            bail!("download returned {} bytes", body.len());
        }
        let t = Instant::now();
        std::fs::write(&local, &payload)?;
        disk_w.push(t.elapsed());
        let t = Instant::now();
        let back = std::fs::read(&local)?;
        disk_r.push(t.elapsed());
        assert_eq!(back.len(), payload.len());
    }
    api.call(
        "DELETE",
        &format!("{sandboxes}/{id}"),
        &api_host,
        Bytes::new(),
    )
    .await?;

    println!(
        "hutch serve figures (n={n}; exec n={}; 64 MiB n={})",
        n * 5,
        n.min(10)
    );
    println!("| figure | hutch p50 | p95 | floor | floor p50 | p95 | ratio (p50) |");
    println!("|---|---|---|---|---|---|---|");
    let line = |name: &str, ours: &Samples, floor_name: &str, floor: &Samples| {
        println!(
            "| {name} | {} | {} | {floor_name} | {} | {} | {:.2}x |",
            ms(ours.median()),
            ms(ours.p95()),
            ms(floor.median()),
            ms(floor.p95()),
            ratio(ours.median(), floor.median())
        );
    };
    line(
        "create → running (API, blocking)",
        &via_api,
        "runtime library create",
        &via_lib,
    );
    line(
        "exec `true` through the proxy",
        &via_proxy,
        "agent client, direct",
        &direct,
    );
    line(
        "64 MiB upload through the proxy",
        &up,
        "local disk write",
        &disk_w,
    );
    line(
        "64 MiB download through the proxy",
        &down,
        "local disk read",
        &disk_r,
    );
    Ok(())
}
