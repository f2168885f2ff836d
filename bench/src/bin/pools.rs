//! `hutch-bench-pools HUTCH_BINARY`: warm pools and idle sandboxes (issue 14).
//!
//! One `hutch serve` (release build, busybox default image, sandboxes without a network),
//! then:
//! 1. **claim → first output** of `echo` through the published Python SDK
//!    (`create_and_connect(pool_id=...)` then `run("echo")`), p50 and p99 over
//!    `HUTCH_BENCH_N` claims (100), each taking a warm sandbox;
//! 2. **`run("echo")`** on a running sandbox through the SDK, beside a kept-alive
//!    `GET /api/v1/health` and a plain-HTTP `POST /api/v1/processes/run` through the same
//!    proxy, and the floor: raw `runsc exec` of `echo` in a raw sandbox;
//! 3. **sustained claims per second** for 20 s, each claimed sandbox deleted in the
//!    background, and how many came warm (bench/python/sdk_latency.py does 1-3);
//! 4. **host memory (PSS) per idle warm sandbox** (every host process naming the sandbox,
//!    and their children, from `/proc/PID/smaps_rollup`) against raw `runsc run --detach`
//!    sandboxes of the same rootfs running `sleep`, `HUTCH_BENCH_IDLE` (8) of each at once;
//! 5. with `HUTCH_BENCH_MAX_IDLE=N`: idle sandboxes created 20 at a time up to N, the API's
//!    p99 (`GET /sandboxes/{id}`, 100 requests) and the host's available memory after each
//!    batch, until the p99 passes 100 ms, a create fails, or less than 1 GiB is left.

#![allow(clippy::unwrap_used)]

#[path = "../cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../host.rs"]
#[allow(dead_code)]
mod host;
#[path = "../setup.rs"]
#[allow(dead_code)]
mod setup;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use stats::{Samples, ms, ratio};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let hutch = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(cli::hutch_binary);
    let setup = setup::Setup::prepare_for(hutch.clone())?;
    let n = cli::iterations(100);
    let idle_n: usize = env_num("HUTCH_BENCH_IDLE").unwrap_or(8);
    let python = setup::workspace().join("target/pyvenv/bin/python");
    if !python.is_file() {
        bail!(
            "{} is missing: run `make pytest` once (it makes the venv)",
            python.display()
        );
    }
    let home = tempfile::Builder::new().prefix("hbp").tempdir_in("/tmp")?;
    let (api_port, proxy_port) = (cli::free_port()?, cli::free_port()?);
    let log = std::fs::File::create(home.path().join("serve.log"))?;
    let _server = Kill(
        Command::new(&hutch)
            .env("HUTCH_HOME", home.path())
            .env("HUTCH_DEFAULT_IMAGE", "hutch/minimal")
            .env_remove("HUTCH_LOG")
            .args(["serve", "--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--proxy-listen", &format!("127.0.0.1:{proxy_port}")])
            .args(["--max-sandboxes", "2000", "--max-queued", "64"])
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting hutch serve")?,
    );
    cli::wait_for_server(api_port, home.path())?;
    let api = format!("http://127.0.0.1:{api_port}");
    // The SDK's transport installs the TLS crypto provider reqwest needs (plain HTTP here).
    drop(tensorlake::http_transport::https_builder());
    let http = reqwest::blocking::Client::new();

    let pool = |warm: usize, max: usize| -> anyhow::Result<String> {
        let created: Value = http
            .post(format!("{api}/sandbox-pools"))
            .json(&json!({
                "image": "hutch/minimal",
                "resources": {"cpus": 1.0, "memory_mb": 256},
                "warm_containers": warm, "max_containers": max,
                "network": {"allow_internet_access": false},
            }))
            .send()?
            .error_for_status()?
            .json()?;
        Ok(created["pool_id"].as_str().unwrap_or_default().to_string())
    };
    let warm_ids = |pool: &str| -> anyhow::Result<Vec<String>> {
        let p: Value = http
            .get(format!("{api}/sandbox-pools/{pool}"))
            .send()?
            .json()?;
        Ok(p["containers"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["state"] == "warm")
                    .filter_map(|c| c["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    };

    // 1-3: through the Python SDK.
    let claims_pool = pool(4, 64)?;
    eprintln!("hutch-bench-pools: SDK figures, {n} iterations");
    let out = Command::new(&python)
        .arg(setup::workspace().join("bench/python/sdk_latency.py"))
        .args([&api, &claims_pool, &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running bench/python/sdk_latency.py")?;
    if !out.status.success() {
        bail!(
            "bench/python/sdk_latency.py failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let sdk: Value = serde_json::from_slice(&out.stdout)?;
    let samples = |key: &str| -> Samples {
        let mut s = Samples::default();
        for v in sdk[key].as_array().into_iter().flatten() {
            s.push(Duration::from_secs_f64(v.as_f64().unwrap_or(0.0) / 1000.0));
        }
        s
    };
    http.delete(format!("{api}/sandbox-pools/{claims_pool}"))
        .send()?;

    // The floor of run("echo"): raw runsc exec into a raw idle sandbox.
    let sleeper = setup.raw_bundle("sleep", &["/bin/sleep", "1000000"])?;
    setup.clean_raw();
    let raw_ids: Vec<String> = (0..idle_n).map(|i| format!("hbp-raw-{i}")).collect();
    for id in &raw_ids {
        let mut run = raw_runsc(&setup);
        run.args([
            "run",
            "--detach",
            &format!("--bundle={}", sleeper.display()),
            id,
        ]);
        let status = run.stdin(Stdio::null()).status()?;
        if !status.success() {
            bail!("raw runsc run --detach {id} failed");
        }
    }
    let mut raw_exec = Samples::default();
    for _ in 0..n.min(50) {
        let mut exec = raw_runsc(&setup);
        exec.args(["exec", &raw_ids[0], "/bin/echo", "hi"]);
        let t = Instant::now();
        let out = exec.stdin(Stdio::null()).output()?;
        raw_exec.push(t.elapsed());
        if !out.status.success() {
            bail!("raw runsc exec failed");
        }
    }

    // 4: PSS of idle warm sandboxes against raw idle sandboxes.
    let idle_pool = pool(idle_n, idle_n)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while warm_ids(&idle_pool)?.len() < idle_n {
        if Instant::now() > deadline {
            bail!("the idle pool never filled");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let ours: Vec<u64> = warm_ids(&idle_pool)?.iter().map(|id| pss_kib(id)).collect();
    let floor: Vec<u64> = raw_ids.iter().map(|id| pss_kib(id)).collect();
    let breakdown = |id: &str| {
        pss_by_process(id)
            .iter()
            .map(|(name, kib)| format!("{name} {:.1} MiB", *kib as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ours_breakdown = breakdown(&warm_ids(&idle_pool)?[0]);
    let floor_breakdown = breakdown(&raw_ids[0]);
    for id in &raw_ids {
        let _ = raw_runsc(&setup)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .output();
    }
    http.delete(format!("{api}/sandbox-pools/{idle_pool}"))
        .send()?;

    let claim = samples("claim_first_output_ms");
    let run_echo = samples("run_echo_ms");
    let health = samples("health_ms");
    let raw_run = samples("raw_run_ms");
    let p99 = |key: &str| {
        let mut v: Vec<f64> = sdk[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        v.sort_by(f64::total_cmp);
        Duration::from_secs_f64(quantile(&v, 0.99) / 1000.0)
    };
    println!(
        "\n## Warm pools and idle sandboxes (runsc {}, platform {})\n",
        setup.runsc_version(),
        setup.platform
    );
    println!("| figure | p50 | p99 | floor | floor p50 | ratio (p50) | goal |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| claim → first output of `echo` (Python SDK, {} claims) | {} | {} | — | — | — | p50 ≤ 50 ms, p99 ≤ 150 ms |",
        sdk["claim_first_output_ms"].as_array().map_or(0, Vec::len),
        ms(claim.median()),
        ms(p99("claim_first_output_ms")),
    );
    println!(
        "| `run(\"echo\")` on a running sandbox (Python SDK) | {} | {} | raw `runsc exec echo` | {} | {:.2}x | p50 ≤ 5 ms |",
        ms(run_echo.median()),
        ms(p99("run_echo_ms")),
        ms(raw_exec.median()),
        ratio(run_echo.median(), raw_exec.median())
    );
    println!(
        "| `POST /api/v1/processes/run` of `echo`, plain HTTP, kept alive | {} | {} | raw `runsc exec echo` | {} | {:.2}x | — |",
        ms(raw_run.median()),
        ms(p99("raw_run_ms")),
        ms(raw_exec.median()),
        ratio(raw_run.median(), raw_exec.median())
    );
    println!(
        "| `GET /api/v1/health` through the proxy (no process) | {} | {} | — | — | — | — |",
        ms(health.median()),
        ms(p99("health_ms")),
    );
    println!(
        "\nSustained claims: {:.1}/s for 20 s ({} claims, {} warm), each deleted in the background.",
        sdk["claims_per_sec"].as_f64().unwrap_or(0.0),
        sdk["claims"],
        sdk["claims_warm"],
    );
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
    println!(
        "\nHost PSS per idle sandbox ({idle_n} of each at once): warm pool sandbox {:.1} MiB, \
         raw `runsc run --detach` {:.1} MiB: +{:.1} MiB (goal ≤ +5 MiB). Per sandbox, ours: {:?} KiB; raw: {:?} KiB.",
        avg(&ours),
        avg(&floor),
        avg(&ours) - avg(&floor),
        ours,
        floor
    );
    println!("\nOne of each, by process: ours: {ours_breakdown}; raw: {floor_breakdown}.");

    if let Some(max) = env_num("HUTCH_BENCH_MAX_IDLE") {
        max_idle(&http, &api, max)?;
    }
    Ok(())
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn env_num(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn raw_runsc(setup: &setup::Setup) -> Command {
    let mut cmd = Command::new(&setup.runsc);
    cmd.arg(format!("--root={}", setup.raw_root.display()))
        .arg(format!("--platform={}", setup.platform))
        .arg("--network=none");
    cmd
}

/// PSS of every host process whose command line names `id`, and of their descendants.
fn pss_kib(id: &str) -> u64 {
    pss_by_process(id).iter().map(|(_, kib)| kib).sum()
}

/// `(process name, PSS KiB)` of every host process whose command line names `id`, and of
/// their descendants.
fn pss_by_process(id: &str) -> Vec<(String, u64)> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let ppid = host::kib_field(&status, "PPid:").unwrap_or(0) as u32;
        let names = String::from_utf8_lossy(&cmdline).contains(id);
        procs.push((pid, ppid, names));
    }
    let mut ours: HashSet<u32> = procs.iter().filter(|p| p.2).map(|p| p.0).collect();
    loop {
        let more: Vec<u32> = procs
            .iter()
            .filter(|p| !ours.contains(&p.0) && ours.contains(&p.1))
            .map(|p| p.0)
            .collect();
        if more.is_empty() {
            break;
        }
        ours.extend(more);
    }
    let mut out: Vec<(String, u64)> = ours
        .iter()
        .map(|pid| {
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (
                name.trim().to_string(),
                host::kib_field(&rollup, "Pss:").unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

/// Idle sandboxes 20 at a time until the API's p99 passes 100 ms, a create fails, memory
/// runs low, or `max` run.
fn max_idle(http: &reqwest::blocking::Client, api: &str, max: usize) -> anyhow::Result<()> {
    println!("\n| idle sandboxes | API p99 (`GET /sandboxes/{{id}}`) | MemAvailable |");
    println!("|---|---|---|");
    let mut ids: Vec<String> = Vec::new();
    let result = (|| -> anyhow::Result<String> {
        while ids.len() < max {
            let batch: Vec<_> = (0..20)
                .map(|_| {
                    let (http, api) = (http.clone(), api.to_string());
                    std::thread::spawn(move || -> anyhow::Result<String> {
                        let r: Value = http
                            .post(format!("{api}/sandboxes"))
                            .json(&json!({"image": "hutch/minimal",
                                "resources": {"cpus": 0.1, "memory_mb": 128},
                                "network": {"allow_internet_access": false}}))
                            .timeout(Duration::from_secs(300))
                            .send()?
                            .json()?;
                        if r["status"] != "running" {
                            bail!("create failed: {r}");
                        }
                        Ok(r["sandbox_id"].as_str().unwrap_or_default().to_string())
                    })
                })
                .collect();
            for t in batch {
                match t.join() {
                    Ok(Ok(id)) => ids.push(id),
                    Ok(Err(e)) => return Ok(format!("a create failed: {e}")),
                    Err(_) => return Ok("a create panicked".into()),
                }
            }
            std::thread::sleep(Duration::from_secs(2));
            let mut lat: Vec<f64> = Vec::new();
            for i in 0..100 {
                let id = &ids[i % ids.len()];
                let t = Instant::now();
                http.get(format!("{api}/sandboxes/{id}"))
                    .send()?
                    .error_for_status()?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat.sort_by(f64::total_cmp);
            let p99 = quantile(&lat, 0.99);
            let avail = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| host::kib_field(&m, "MemAvailable:"))
                .unwrap_or(0);
            println!(
                "| {} | {:.1} ms | {:.1} GiB |",
                ids.len(),
                p99,
                avail as f64 / (1 << 20) as f64
            );
            if p99 > 100.0 {
                return Ok("the API's p99 passed 100 ms".into());
            }
            if avail < 1 << 20 {
                return Ok("less than 1 GiB of memory left".into());
            }
        }
        Ok(format!("reached HUTCH_BENCH_MAX_IDLE={max}"))
    })();
    println!(
        "\nStopped at {} idle sandboxes: {}.",
        ids.len(),
        result.unwrap_or_else(|e| e.to_string())
    );
    let started = Instant::now();
    for chunk in ids.chunks(20) {
        let ts: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (http, url) = (http.clone(), format!("{api}/sandboxes/{id}"));
                std::thread::spawn(move || http.delete(url).send().map(drop))
            })
            .collect();
        for t in ts {
            let _ = t.join();
        }
    }
    eprintln!(
        "hutch-bench-pools: removed {} sandboxes in {:.0?}",
        ids.len(),
        started.elapsed()
    );
    Ok(())
}
