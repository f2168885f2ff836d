//! Bounds a server facing untrusted clients needs (issue 11, findings 8 and 12), against a
//! real `hutch serve`: header and idle timeouts, the connection cap, body limits, admission
//! against the host's capacity and a bounded create queue, the purge of ended sandboxes,
//! `hutch sbx cp` streaming, and `hutch run` trusting only the server it can verify.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{Server, free_port};
use common::{Home, stderr, stdout};
use serde_json::{Value, json};

/// A generous bound for what should take seconds: only a hang fails it.
const PATIENCE: Duration = Duration::from_secs(90);

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn request(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    // The server may answer (and close) before taking all of an oversized body.
    let _ = tcp.write_all(body);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked or not, the JSON object is the part between the outer braces.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => serde_json::from_str(&body[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

/// Whether the server closed `tcp` (EOF or reset) before `PATIENCE` ran out.
fn closed_by_server(tcp: &mut TcpStream) -> bool {
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or similar before the close is fine.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slowloris_connections_are_closed_and_others_still_served() {
    let home = Home::new();
    let server = home.serve_on(free_port(), free_port(), &["--header-timeout", "3"]);
    let mut held = Vec::new();
    for i in 0..200 {
        let port = if i % 4 == 0 {
            server.proxy_port
        } else {
            server.api_port
        };
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Every other one a partial request head, the rest not a byte.
        if i % 2 == 0 {
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
        }
        held.push(tcp);
    }
    // A normal client is served while they hang.
    let (status, health) = request(server.api_port, "GET", "/healthz", b"");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    // And each of them is dropped by the server, long before the test's patience ends.
    let started = Instant::now();
    for (i, tcp) in held.iter_mut().enumerate() {
        assert!(
            closed_by_server(tcp),
            "connection {i} still open after {:?}",
            started.elapsed()
        );
    }
    // An idle keep-alive connection is closed too, after a served request.
    let mut tcp = TcpStream::connect(("127.0.0.1", server.api_port)).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    assert!(closed_by_server(&mut tcp));
}

#[test]
fn connections_over_the_cap_wait_for_room() {
    let home = Home::new();
    let server = home.serve_on(
        free_port(),
        free_port(),
        &["--max-connections", "4", "--header-timeout", "5"],
    );
    let holders: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", server.api_port)).unwrap())
        .collect();
    // The fifth is accepted by the kernel but not served while the cap is full...
    let port = server.api_port;
    let fifth = std::thread::spawn(move || request(port, "GET", "/healthz", b""));
    let deadline = Instant::now() + PATIENCE;
    while !server.log().contains("connection limit reached") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and is once the silent holders are dropped by the header timeout.
    let (status, _) = fifth.join().unwrap();
    assert_eq!(status, 200);
    drop(holders);
}

#[test]
fn oversized_json_bodies_are_refused_with_413() {
    let home = Home::new();
    let server = home.serve();
    let mut body = b"{\"name\": \"".to_vec();
    body.resize(2 << 20, b'a');
    body.extend_from_slice(b"\"}");
    let (status, answer) = request(
        server.api_port,
        "POST",
        "/v1/namespaces/default/sandboxes",
        &body,
    );
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["code"], "body_too_large");
}

#[test]
fn sandboxes_bigger_than_the_host_are_refused() {
    let home = Home::new();
    let server = home.serve();
    let create = |resources: Value| {
        request(
            server.api_port,
            "POST",
            "/v1/namespaces/default/sandboxes",
            json!({ "resources": resources }).to_string().as_bytes(),
        )
    };
    let (status, answer) = create(json!({"memory_mb": 4_194_304}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "exceeds_host_capacity");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("resources.memory_mb") && message.contains("this host has"),
        "{message}"
    );
    let (status, answer) = create(json!({"cpus": 1024.0}));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("resources.cpus"),
        "{answer}"
    );
    // Nothing was recorded for either.
    let (_, list) = request(
        server.api_port,
        "GET",
        "/v1/namespaces/default/sandboxes?include_terminated=true",
        b"",
    );
    assert_eq!(
        list["sandboxes"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
}

#[test]
fn creates_beyond_capacity_and_queue_get_429() {
    let home = Home::new();
    let server = home.serve_on(
        free_port(),
        free_port(),
        &["--max-sandboxes", "1", "--max-queued", "2"],
    );
    let create = || {
        request(
            server.api_port,
            "POST",
            "/v1/namespaces/default/sandboxes",
            br#"{"wait": false}"#,
        )
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, answer) = create();
        assert_eq!(status, 202, "{answer}");
        ids.push(answer["sandbox_id"].as_str().unwrap().to_string());
    }
    for _ in 0..5 {
        let (status, answer) = create();
        assert_eq!(status, 429, "{answer}");
        assert_eq!(answer["code"], "too_many_pending");
    }
    // A deleted create that waited gives its place back.
    let (status, _) = request(
        server.api_port,
        "DELETE",
        &format!("/v1/namespaces/default/sandboxes/{}", ids[2]),
        b"",
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, answer) = create();
        if status == 202 {
            break;
        }
        assert_eq!(status, 429, "{answer}");
        assert!(Instant::now() < deadline, "the place was never given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.delete_all();
    drop(server);
    home.assert_clean();
}

#[test]
fn terminated_sandboxes_are_purged_after_the_retention() {
    let home = Home::new();
    let server = home.serve_with(
        free_port(),
        free_port(),
        &[],
        &[("HUTCH_RETENTION_SECS", "1")],
    );
    let (status, created) = request(
        server.api_port,
        "POST",
        "/v1/namespaces/default/sandboxes",
        br#"{"wait": false}"#,
    );
    assert_eq!(status, 202, "{created}");
    let path = format!(
        "/v1/namespaces/default/sandboxes/{}",
        created["sandbox_id"].as_str().unwrap()
    );
    let (status, _) = request(server.api_port, "DELETE", &path, b"");
    assert_eq!(status, 200);
    let (status, row) = request(server.api_port, "GET", &path, b"");
    assert_eq!((status, row["status"].as_str()), (200, Some("terminated")));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, row) = request(server.api_port, "GET", &path, b"");
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "never purged: {row}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(server.log().contains("purged terminated sandboxes"));
    drop(server);
    home.assert_clean();
}

/// A listener that answers every request like a server over `state_id` would, without the
/// secret; it records the request lines it saw.
fn fake_server(
    listener: TcpListener,
    state_id: String,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 8192];
            let n = tcp.read(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            log.lock()
                .unwrap()
                .push(text.lines().next().unwrap_or_default().to_string());
            let body =
                json!({"status": "ok", "state_id": state_id, "proof": "00".repeat(32)}).to_string();
            let _ = write!(
                tcp,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    seen
}

#[test]
fn run_trusts_only_the_server_that_proves_the_secret() {
    let home = Home::new();
    // The real server publishes itself, owner-only, and `hutch run` finds it without being
    // told where it is.
    let mut server = home.serve();
    let serve_file = home.path().join("serve.json");
    // Written right after the listeners bind, which is when `serve()` returns: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !serve_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&serve_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let run = || {
        home.hutch()
            .env_remove("HUTCH_SERVER")
            .args(["run", "hutch/minimal", "--", "echo", "hi"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(stdout(&out), "hi\n", "{}", stderr(&out));
    let listed = listed(&server);
    assert_eq!(
        listed.len(),
        1,
        "the run did not go through the server: {listed:?}"
    );
    // A graceful stop withdraws the file.
    server.stop();
    assert!(!serve_file.exists());
    drop(server);

    // A server killed hard leaves its file; another user then takes its port and answers
    // /healthz with the right state_id. `hutch run` does not use it: the run is embedded.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state_id = hutch_state::state_id(home.path());
    let seen = fake_server(listener, state_id.clone());
    let stale = json!({"api": format!("http://127.0.0.1:{port}"), "nonce": "ab".repeat(32)});
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&serve_file)
            .unwrap();
        f.write_all(stale.to_string().as_bytes()).unwrap();
    }
    let out = run();
    assert_eq!(stdout(&out), "hi\n", "{}", stderr(&out));
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.iter().all(|r| r.starts_with("GET /healthz")),
        "the fake server was used: {requests:?}"
    );
    std::fs::remove_file(&serve_file).unwrap();

    // The same listener on the default address, with no file at all: not trusted either
    // (when that port is free on this machine).
    if let Ok(listener) = TcpListener::bind("127.0.0.1:8900") {
        let seen = fake_server(listener, state_id);
        let out = run();
        assert_eq!(stdout(&out), "hi\n", "{}", stderr(&out));
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
    }
    home.assert_clean();
}

fn listed(server: &Server) -> Vec<Value> {
    let (_, list) = request(
        server.api_port,
        "GET",
        "/v1/namespaces/default/sandboxes?include_terminated=true",
        b"",
    );
    list["sandboxes"].as_array().cloned().unwrap_or_default()
}

/// Peak resident memory of a finished child, in KiB (waits for it).
fn wait_peak_rss_kib(child: std::process::Child) -> (i32, i64) {
    let mut status = 0;
    // SAFETY: `rusage` is plain data, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child into a status and rusage we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss)
}

#[test]
fn sbx_cp_streams_files_both_ways_in_bounded_memory() {
    const SIZE: usize = 200 << 20;
    let home = Home::new();
    let server = home.serve();
    let (status, created) = request(
        server.api_port,
        "POST",
        "/v1/namespaces/default/sandboxes",
        br#"{"name": "cp", "resources": {"memory_mb": 256}}"#,
    );
    assert_eq!(status, 200, "{created}");
    let local = home.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&local).unwrap());
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        for i in 0..SIZE >> 20 {
            f.write_all(&[i as u8]).unwrap();
            f.write_all(&block[1..]).unwrap();
        }
    }
    let cp = |from: &str, to: &str| {
        let child = home
            .hutch()
            .env(
                "HUTCH_SERVER",
                format!("http://127.0.0.1:{}", server.api_port),
            )
            .args(["sbx", "cp", from, to])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_peak_rss_kib(child)
    };
    let (code, up_kib) = cp(local.to_str().unwrap(), "cp:/big.bin");
    assert_eq!(code, 0);
    let back = home.path().join("back.bin");
    let (code, down_kib) = cp("cp:/big.bin", back.to_str().unwrap());
    assert_eq!(code, 0);
    assert_eq!(std::fs::metadata(&back).unwrap().len(), SIZE as u64);
    let same = Command::new("cmp")
        .arg(&local)
        .arg(&back)
        .status()
        .unwrap()
        .success();
    assert!(same, "the file came back different");
    // Both ways the CLI holds chunks, not the file.
    assert!(up_kib < 100 << 10, "upload peak RSS {up_kib} KiB");
    assert!(down_kib < 100 << 10, "download peak RSS {down_kib} KiB");
    server.delete_all();
    drop(server);
    home.assert_clean();
}
