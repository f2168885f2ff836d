//! `hutch-bench-net`: sandbox networking and ports, each beside its floor from the same run.
//!
//! The sandbox runs the Debian fixture; the servers and clients are the same Python scripts
//! on both sides (busybox's nc moves 1 KiB per syscall, which under gVisor's ptrace platform
//! measures syscall cost, not the network: 2-3 MiB/s).
//!
//! 1. A request to an exposed port through the proxy (`<port>-<id>.localhost`) against the
//!    same server on the host's loopback.
//! 2. 64 MiB read through a TCP tunnel (the SDK's `TcpTunnel`) against the same read from
//!    the same sender on the host's loopback.
//! 3. A 64 MiB HTTP download from a test host (a network namespace on TEST-NET-3 this
//!    binary makes) inside a networked sandbox against the host's root namespace.
//!
//! usage: hutch-bench-net [HUTCH_BINARY]   (default target/release/hutch); N from
//! HUTCH_BENCH_N (default 200 requests; the 64 MiB figures take N/40, at least 3).
//! Run as root: it makes a network namespace and a veth, and removes them at the end.

#[path = "../cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../stats.rs"]
#[allow(dead_code)]
mod stats;
#[path = "../testnet.rs"]
mod testnet;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hutch_runtime::agent::{full, http_client};
use hyper::Request;
use stats::{Samples, ms, ratio};
use testnet::{Kill, NS, TEST_HOST, TestNet};
use tokio::io::AsyncReadExt;

const IMAGE: &str = "debian";

/// `python3 -c HTTP PORT`: a threading HTTP/1.1 server answering `hello`.
const HTTP: &str = r#"
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write: a head and a body in two would meet Nagle and delayed ACKs on the host
    # (40 ms), which gVisor's netstack does not have, and flatter the proxy.
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    def server_bind(self): socketserver.TCPServer.server_bind(self)
S(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// `python3 -c SEND PORT`: sends 64 MiB to the first connection, in 1 MiB writes.
const SEND: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1)
c, _ = s.accept()
b = bytes(1 << 20)
for _ in range(64): c.sendall(b)
c.close()
"#;

/// `python3 -c FETCH HOST PORT`: an HTTP/1.0 GET of /blob, read in 1 MiB reads; prints
/// the bytes read.
const FETCH: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET /blob HTTP/1.0\r\n\r\n")
n = 0
while True:
    d = s.recv(1 << 20)
    if not d: break
    n += len(d)
print(n)
"#;
const BIG: usize = 64 << 20;

async fn get(port: u16, host: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let req = Request::builder()
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(full(Bytes::new()))?;
    let resp = http_client().request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

async fn post(port: u16, host: &str, path: &str, body: &str) -> anyhow::Result<(u16, Bytes)> {
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(full(Bytes::from(body.to_string())))?;
    let resp = http_client().request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// Reads a connection to the end; returns the bytes read.
async fn drain(addr: std::net::SocketAddr) -> anyhow::Result<usize> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

fn main() -> anyhow::Result<()> {
    let hutch = cli::hutch_binary();
    let n = cli::iterations(200);
    let big_n = (n / 40).max(3);
    let home = tempfile::Builder::new().prefix("hbn").tempdir_in("/tmp")?;
    let (api_port, proxy_port) = (cli::free_port()?, cli::free_port()?);
    let log = std::fs::File::create(home.path().join("serve.log"))?;
    let import = Command::new(&hutch)
        .env("HUTCH_HOME", home.path())
        .env("HUTCH_DEFAULT_IMAGE", "hutch/minimal")
        .args(["image", "import"])
        .arg(cli::fixtures_dir().join("debian"))
        .args(["--name", IMAGE])
        .output()?;
    if !import.status.success() {
        bail!(
            "importing the debian fixture (make fixtures): {}",
            String::from_utf8_lossy(&import.stderr)
        );
    }
    let _net = TestNet::make()?;
    let _server = Kill(
        Command::new(&hutch)
            .env("HUTCH_HOME", home.path())
            .env("HUTCH_DEFAULT_IMAGE", "hutch/minimal")
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{api_port}"),
                "--proxy-listen",
                &format!("127.0.0.1:{proxy_port}"),
                // No DNS leaves this machine: nothing here resolves a name.
                "--sandbox-dns",
                "127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting hutch serve")?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure(home.path(), api_port, proxy_port, n, big_n))
}

async fn measure(
    home: &std::path::Path,
    api_port: u16,
    proxy_port: u16,
    n: usize,
    big_n: usize,
) -> anyhow::Result<()> {
    cli::wait_for_server(proxy_port, home)?;
    let api_host = format!("127.0.0.1:{api_port}");
    let create = format!(r#"{{"image":"{IMAGE}","exposed_ports":[8080]}}"#);
    let (status, body) = post(
        api_port,
        &api_host,
        "/v1/namespaces/default/sandboxes",
        &create,
    )
    .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    if status != 200 {
        bail!("create answered {status}: {v}");
    }
    let id = v["sandbox_id"]
        .as_str()
        .context("no sandbox id")?
        .to_string();
    let result = figures(home, proxy_port, &id, n, big_n).await;
    let _ = Command::new("curl")
        .args([
            "-sf",
            "-XDELETE",
            &format!("http://{api_host}/v1/namespaces/default/sandboxes/{id}"),
        ])
        .output();
    result
}

/// `python3 -c args...` in the sandbox: in the background, or run to its end (its output).
async fn python(
    proxy_port: u16,
    id: &str,
    args: &[&str],
    background: bool,
) -> anyhow::Result<String> {
    let mut argv = vec!["-c"];
    argv.extend_from_slice(args);
    let body = serde_json::json!({"command": "python3", "args": argv}).to_string();
    let path = if background {
        "/api/v1/processes"
    } else {
        "/api/v1/processes/run"
    };
    let (status, out) = post(proxy_port, &format!("{id}.local"), path, &body).await?;
    if status != 200 {
        bail!(
            "python3 in the sandbox: {status} {}",
            String::from_utf8_lossy(&out)
        );
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The largest decimal number in `text` (what `wc -c` printed, inside an SSE stream).
fn largest_number(text: &str) -> u64 {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

async fn figures(
    home: &std::path::Path,
    proxy_port: u16,
    id: &str,
    n: usize,
    big_n: usize,
) -> anyhow::Result<()> {
    // 1. One small page, through the proxy and from the host.
    let host_port = cli::free_port()?;
    let _host_httpd = Kill(
        Command::new("python3")
            .args(["-c", HTTP, &host_port.to_string()])
            .spawn()?,
    );
    python(proxy_port, id, &[HTTP, "8080"], true).await?;
    let port_host = format!("8080-{id}.localhost:{proxy_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(proxy_port, &port_host, "/").await?.0 != 200 {
        if Instant::now() > deadline {
            bail!("the sandbox's httpd never answered through the proxy");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while get(host_port, "localhost", "/").await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut proxied, mut direct) = (Samples::default(), Samples::default());
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = get(proxy_port, &port_host, "/").await?;
        proxied.push(t.elapsed());
        if status != 200 || body.as_ref() != b"hello\n" {
            bail!("proxied request: {status}");
        }
        let t = Instant::now();
        let (status, _) = get(host_port, "localhost", "/").await?;
        direct.push(t.elapsed());
        if status != 200 {
            bail!("host request: {status}");
        }
    }

    // 2. 64 MiB through a tunnel, and from nc on the host's loopback.
    let mut headers = hyper::HeaderMap::new();
    headers.insert("host", format!("{id}.local").parse()?);
    let tunnel = tensorlake::sandboxes::tunnel::TcpTunnel::listen(
        tensorlake::sandboxes::tunnel::TcpTunnelOptions {
            base_url: format!("http://127.0.0.1:{proxy_port}"),
            headers,
            remote_port: 7000,
            local_host: "127.0.0.1".into(),
            local_port: 0,
            connect_timeout: Duration::from_secs(10),
        },
    )
    .await?;
    let (mut via_tunnel, mut via_loopback) = (Samples::default(), Samples::default());
    for _ in 0..big_n {
        python(proxy_port, id, &[SEND, "7000"], true).await?;
        // Until nc listens, the tunnel's connection is refused and ends at once, empty.
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            let t = Instant::now();
            let got = drain(tunnel.local_addr()).await.unwrap_or(0);
            if got > 0 {
                via_tunnel.push(t.elapsed());
                break got;
            }
            if Instant::now() > deadline {
                bail!("nothing came through the tunnel");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if got != BIG {
            bail!("the tunnel carried {got} bytes of {BIG}");
        }
        let port = cli::free_port()?;
        let _sender = Kill(
            Command::new("python3")
                .args(["-c", SEND, &port.to_string()])
                .spawn()?,
        );
        // The sender takes one connection: give it time to listen rather than probing it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let t = Instant::now();
        let got = drain(addr).await?;
        via_loopback.push(t.elapsed());
        if got != BIG {
            bail!("host loopback carried {got} bytes of {BIG}");
        }
    }
    tunnel.close().await;

    // 3. 64 MiB over HTTP from the test host: inside the sandbox and from the host.
    let big = home.join("big");
    std::fs::create_dir_all(&big)?;
    std::fs::write(big.join("blob"), vec![0u8; BIG])?;
    let _test_httpd = Kill(
        Command::new("ip")
            .args(["netns", "exec", NS, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{TEST_HOST}:8080"))
            .arg("-h")
            .arg(&big)
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let (mut inside, mut outside, mut exec_floor) =
        (Samples::default(), Samples::default(), Samples::default());
    for _ in 0..big_n {
        let t = Instant::now();
        let out = python(proxy_port, id, &[FETCH, TEST_HOST, "8080"], false).await?;
        inside.push(t.elapsed());
        if largest_number(&out) < BIG as u64 {
            bail!("the sandbox's download: {out}");
        }
        let t = Instant::now();
        python(proxy_port, id, &["pass"], false).await?;
        exec_floor.push(t.elapsed());
        let t = Instant::now();
        let out = Command::new("python3")
            .args(["-c", FETCH, TEST_HOST, "8080"])
            .output()?;
        outside.push(t.elapsed());
        let bytes: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        if bytes < BIG as u64 {
            bail!("the host's download got {bytes} bytes");
        }
    }

    let mibps = |d: Duration| (BIG as f64 / (1 << 20) as f64) / d.as_secs_f64();
    println!("sandbox network figures (requests n={n}; 64 MiB n={big_n})");
    println!("| figure | hutch p50 | p95 | floor | floor p50 | p95 | ratio (p50) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| GET to an exposed port through the proxy | {} | {} | same httpd on host loopback | {} | {} | +{} |",
        ms(proxied.median()),
        ms(proxied.p95()),
        ms(direct.median()),
        ms(direct.p95()),
        ms(proxied.median().saturating_sub(direct.median())),
    );
    println!(
        "| 64 MiB read through a TCP tunnel | {} ({:.0} MiB/s) | {} | same sender, host loopback | {} ({:.0} MiB/s) | {} | {:.2}x |",
        ms(via_tunnel.median()),
        mibps(via_tunnel.median()),
        ms(via_tunnel.p95()),
        ms(via_loopback.median()),
        mibps(via_loopback.median()),
        ms(via_loopback.p95()),
        ratio(via_tunnel.median(), via_loopback.median()),
    );
    let inside_net = inside.median().saturating_sub(exec_floor.median());
    println!(
        "| 64 MiB HTTP download from a test host, in the sandbox (exec of `python3 -c pass`, {}, taken off) | {} ({:.0} MiB/s) | {} | same, host root namespace | {} ({:.0} MiB/s) | {} | {:.2}x throughput |",
        ms(exec_floor.median()),
        ms(inside_net),
        mibps(inside_net),
        ms(inside.p95()),
        ms(outside.median()),
        mibps(outside.median()),
        ms(outside.p95()),
        mibps(inside_net) / mibps(outside.median()),
    );
    Ok(())
}
