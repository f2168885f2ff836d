//! Soak tests behind `make soak` (ignored by `make test`): heavy, long, and random by design.
//!
//! - Crash rounds (issue 11's standing suite): `kill -9` of `hutch serve`, and of a
//!   `hutch image build` in the same home, at a random point of concurrent creates and
//!   deletes; after every restart the state must be whole (every listed sandbox running and
//!   answering, nothing of any other sandbox left: directory, pin, runsc container, mount),
//!   and after the last round, once everything is deleted and the server stopped, nothing at
//!   all. The rounds are `HUTCH_SOAK_ROUNDS` (default 50); the seed, printed, is
//!   `HUTCH_SOAK_SEED` or the clock.
//! - A header flood: hundreds of connections sending oversized request heads; the server
//!   keeps answering and its memory stays bounded.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Home;
use common::server::{Server, free_port, http};
use serde_json::{Value, json};

/// How long the state may take to settle after a restart before a difference is a leak.
const SETTLE: Duration = Duration::from_secs(120);

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seed() -> u64 {
    let seed = env_u64("HUTCH_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    // Zero is xorshift's one fixed point.
    seed.max(1)
}

/// Ids of what the runtime's runsc still knows in this home.
fn runsc_containers(home: &Path) -> BTreeSet<String> {
    let out = Command::new("runsc")
        .arg("--root")
        .arg(home.join("runsc"))
        .args(["list", "-quiet"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn dir_names(dir: &Path, strip: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(strip).unwrap_or(&name).to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points under `home`.
fn mounts_under(home: &Path) -> Vec<String> {
    let home = home.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m == &home || m.starts_with(&format!("{home}/")))
        .collect()
}

/// The sandboxes the API lists (not terminated), by id, with their status.
async fn listed(http: &reqwest::Client, server: &Server) -> Vec<(String, String)> {
    // The client's pool may still hold a connection to the server killed a moment ago (same
    // port): a reset on that one is the old server's, so the request goes again.
    let mut tries = 0;
    let answer = loop {
        match http.get(server.sandboxes_url()).send().await {
            Ok(answer) => break answer,
            Err(e) if e.is_request() && tries < 3 => tries += 1,
            Err(e) => panic!("listing sandboxes: {e}"),
        }
    };
    let body: Value = answer.json().await.unwrap();
    body["sandboxes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["sandbox_id"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// What differs between the sandboxes running and everything on the host that belongs to a
/// sandbox; empty when the state is whole.
fn differences(home: &Home, running: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let dirs = dir_names(&home.path().join("sandboxes"), "");
    if &dirs != running {
        found.push(format!("sandbox dirs {dirs:?} != running {running:?}"));
    }
    let pins = dir_names(&home.path().join("store/pins"), ".json");
    if &pins != running {
        found.push(format!("store pins {pins:?} != running {running:?}"));
    }
    let runsc = runsc_containers(home.path());
    if &runsc != running {
        found.push(format!("runsc containers {runsc:?} != running {running:?}"));
    }
    let sandboxes = home.path().join("sandboxes");
    for mount in mounts_under(home.path()) {
        let owner = Path::new(&mount)
            .strip_prefix(&sandboxes)
            .ok()
            .and_then(|rest| rest.iter().next())
            .map(|id| id.to_string_lossy().into_owned());
        if !owner.is_some_and(|id| running.contains(&id)) {
            found.push(format!("mount {mount} belongs to no running sandbox"));
        }
    }
    // A loop device backs only a running sandbox's disk image.
    let home_dir = home.path().to_string_lossy().into_owned();
    for device in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(file) = std::fs::read_to_string(device.path().join("loop/backing_file")) else {
            continue;
        };
        let owner = file
            .trim()
            .strip_prefix(&format!("{home_dir}/sandboxes/"))
            .and_then(|rest| rest.split('/').next());
        if owner.is_some_and(|id| !running.contains(id)) {
            found.push(format!(
                "loop device {file:?} belongs to no running sandbox"
            ));
        }
    }
    found
}

/// Waits until nothing is pending and the host matches the running sandboxes, then checks
/// each answers an exec. Returns the running ids.
async fn settled(
    http: &reqwest::Client,
    home: &Home,
    server: &Server,
    context: &str,
) -> BTreeSet<String> {
    let deadline = Instant::now() + SETTLE;
    let running = loop {
        let list = listed(http, server).await;
        let pending: Vec<_> = list.iter().filter(|(_, s)| s != "running").collect();
        let running: BTreeSet<String> = list
            .iter()
            .filter(|(_, s)| s == "running")
            .map(|(id, _)| id.clone())
            .collect();
        let diff = differences(home, &running);
        if pending.is_empty() && diff.is_empty() {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: state did not settle within {SETTLE:?}: not running {pending:?}; {diff:#?}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for id in &running {
        let resp = http
            .post(format!("{}/api/v1/processes/run", server.proxy_url()))
            .header("host", format!("{id}.local"))
            .json(&json!({"command": "echo", "args": ["alive"]}))
            .send()
            .await;
        let text = match resp {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        assert!(
            text.contains("alive"),
            "{context}: {id} is listed running but does not answer an exec: {text}\nserver log:\n{}",
            server.log()
        );
    }
    running
}

/// A create, then (when `delete`) its delete; results do not matter, the kill cuts them.
async fn create(http: reqwest::Client, url: String, delete: bool, disk: bool) {
    let Ok(resp) = http
        .post(&url)
        // Half of them with a disk of their own (an ext4 image on a loop device), so kills
        // land between its making, mounting and removal too.
        .json(&if disk {
            json!({"image": "busybox", "resources": {"memory_mb": 128, "disk_mb": 64}})
        } else {
            json!({"image": "busybox", "resources": {"memory_mb": 128}})
        })
        .send()
        .await
    else {
        return;
    };
    let Ok(body) = resp.json::<Value>().await else {
        return;
    };
    if let (true, Some(id)) = (delete, body["sandbox_id"].as_str()) {
        let _ = http.delete(format!("{url}/{id}")).send().await;
    }
}

/// `hutch image build` of a one-RUN Dockerfile, unique per round so no step is cached.
fn start_build(home: &Home, round: usize, seed: u64) -> Child {
    let context = home.path().join(format!("ctx-{round}"));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM busybox\nRUN echo soak-{seed}-{round} > /round && sleep 2\n"),
    )
    .unwrap();
    home.hutch()
        .args(["image", "build", "-t"])
        .arg(format!("soak:{round}"))
        .arg(&context)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whatever a failed round leaves running or mounted under a home goes with the test: a
/// leaked supervisor would otherwise run on after its home is deleted.
struct Reaper<'a>(&'a Home);

impl Drop for Reaper<'_> {
    fn drop(&mut self) {
        for (pid, _) in common::processes_mentioning(&self.0.path().to_string_lossy()) {
            // SAFETY: signalling a process that serves only this test's home.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut mounts = mounts_under(self.0.path());
        mounts.reverse();
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", &mount]).status();
        }
    }
}

fn serve(home: &Home, api: u16, proxy: u16) -> Server {
    tokio::task::block_in_place(|| home.serve_on(api, proxy, &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes of real sandboxes; run with `make soak`"]
async fn kill_9_of_server_and_build_at_random_points_leaks_nothing() {
    let rounds = env_u64("HUTCH_SOAK_ROUNDS").unwrap_or(50) as usize;
    let seed = seed();
    eprintln!("soak: {rounds} rounds, seed {seed} (HUTCH_SOAK_SEED={seed} repeats them)");
    let mut rng = Rng(seed);
    let home = Home::private_with(&["busybox"]);
    let _reaper = Reaper(&home);
    let (api_port, proxy_port) = (free_port(), free_port());
    let http = http();
    let started = Instant::now();
    let (mut builds, mut kills_in_build) = (0, 0);

    for round in 0..rounds {
        let mut server = serve(&home, api_port, proxy_port);
        let context = format!("round {round} (seed {seed})");
        let running = settled(&http, &home, &server, &context).await;
        let survivors = running.len();
        let url = server.sandboxes_url();

        let mut build = (rng.below(3) == 0).then(|| start_build(&home, round, seed));
        let mut work = tokio::task::JoinSet::new();
        for _ in 0..2 + rng.below(3) {
            let (delete, disk) = (rng.below(2) == 0, rng.below(2) == 0);
            work.spawn(create(http.clone(), url.clone(), delete, disk));
        }
        // Those left from earlier rounds go now, racing the creates and the kill.
        for id in running {
            let (http, url) = (http.clone(), url.clone());
            work.spawn(async move {
                let _ = http.delete(format!("{url}/{id}")).send().await;
            });
        }
        let kill_after = Duration::from_millis(rng.below(1500));
        tokio::time::sleep(kill_after).await;
        server.kill9();
        if let Some(child) = build.as_mut() {
            builds += 1;
            if child.try_wait().unwrap().is_none() {
                kills_in_build += 1;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        work.abort_all();
        while work.join_next().await.is_some() {}
        eprintln!(
            "round {round}: {survivors} running at the start, killed after {kill_after:?}{}",
            if build.is_some() {
                " (with a build)"
            } else {
                ""
            }
        );
    }

    // After the last crash: the state is whole, then everything goes through the API.
    let mut server = serve(&home, api_port, proxy_port);
    let running = settled(&http, &home, &server, "after the last round").await;
    for id in &running {
        let resp = http
            .delete(format!("{}/{id}", server.sandboxes_url()))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "delete {id}: {}", resp.status());
    }
    let left = listed(&http, &server).await;
    assert!(left.is_empty(), "live rows after deleting all: {left:?}");
    assert!(server.stop().success(), "{}", server.log());

    let deadline = Instant::now() + SETTLE;
    loop {
        let mut leaks = differences(&home, &BTreeSet::new());
        let procs = common::processes_mentioning(&home.path().to_string_lossy());
        leaks.extend(
            procs
                .iter()
                .map(|(pid, cmd)| format!("process {pid}: {cmd}")),
        );
        if leaks.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaks after the soak (seed {seed}): {leaks:#?}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    home.assert_clean();
    eprintln!(
        "soak: {rounds} rounds ({builds} with a build, {kills_in_build} killed mid-build) in {:?}, seed {seed}",
        started.elapsed()
    );
}

/// Resident and peak resident memory of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One connection sending a request head far past any sane size: `lines` headers of
/// `line_len` bytes each. Stops when the server answers or closes; returns what it answered.
fn flood(port: u16, lines: usize, line_len: usize) -> String {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else {
        return "connect failed".into();
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(120)));
    let mut head = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n").into_bytes();
    for i in 0..lines {
        let name = format!("X-Flood-{i}: ");
        head.extend_from_slice(name.as_bytes());
        head.extend(std::iter::repeat_n(
            b'a',
            line_len.saturating_sub(name.len()),
        ));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    // The server may refuse (and close) long before the head ends.
    let _ = tcp.write_all(&head);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("closed without an answer")
        .to_string()
}

fn healthz(port: u16) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    tcp.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer
}

#[test]
#[ignore = "soak: hundreds of megabytes of request heads; run with `make soak`"]
fn header_floods_leave_the_server_answering_in_bounded_memory() {
    const CONNECTIONS: usize = 200;
    const WAVES: usize = 3;
    let home = Home::new();
    let server = home.serve();
    let pid = server.child.id();
    assert!(healthz(server.api_port).contains(" 200 "));
    let (baseline, _) = memory_kib(pid);
    let mut sent_mib = 0;
    for wave in 0..WAVES {
        // Half of them 10,000 small headers, half one 1 MiB header line.
        let floods: Vec<_> = (0..CONNECTIONS)
            .map(|i| {
                let port = server.api_port;
                std::thread::spawn(move || {
                    if i % 2 == 0 {
                        flood(port, 10_000, 24)
                    } else {
                        flood(port, 1, 1 << 20)
                    }
                })
            })
            .collect();
        // Served while they flood.
        let health = healthz(server.api_port);
        assert!(
            health.contains(" 200 "),
            "wave {wave}: {health}\n{}",
            server.log()
        );
        let answers: BTreeSet<String> = floods.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            answers.iter().all(|a| !a.contains(" 200 ")),
            "an oversized head was served: {answers:?}"
        );
        sent_mib += (CONNECTIONS / 2 * (10_000 * 24 + (1 << 20))) >> 20;
        eprintln!("wave {wave}: answers {answers:?}");
    }
    assert!(healthz(server.api_port).contains(" 200 "));
    let (rss, peak) = memory_kib(pid);
    eprintln!(
        "header flood: {sent_mib} MiB sent; server RSS {baseline} KiB before, {rss} KiB after, peak {peak} KiB"
    );
    // A server that kept what it was sent would have grown by all of it; one that bounds a
    // request head holds at most a head's worth per connection at once.
    let sent_kib = (sent_mib as u64) << 10;
    assert!(
        peak.saturating_sub(baseline) < sent_kib / 3,
        "peak RSS grew by {} KiB for {sent_kib} KiB sent",
        peak - baseline
    );
    assert!(
        rss.saturating_sub(baseline) < sent_kib / 6,
        "RSS stayed {} KiB above its start",
        rss - baseline
    );
}
