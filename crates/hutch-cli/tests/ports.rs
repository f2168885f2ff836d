//! A sandbox's own servers through `hutch serve`'s proxy: exposed ports (HTTP and
//! websockets at `<port>-<id>.localhost`), the typed refusals, keys, and TCP tunnels through
//! the published `tensorlake` crate's `TcpTunnel` and `hutch sbx port-forward`. The
//! sandboxes have no network: ports ride the agent, so they need none.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use common::{Home, key};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tensorlake::sandboxes::models::{CreateSandboxRequest, UpdateSandboxRequest};
use tensorlake::sandboxes::tunnel::{TcpTunnel, TcpTunnelOptions};
use tensorlake::sandboxes::{
    SandboxProxyClient, SandboxesClient, resolve_sandbox_proxy_target,
    sandbox_url_from_ingress_endpoint,
};
use tensorlake::{ClientBuilder, Sdk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Answers every request with what it received: path, headers and body, as JSON.
const ECHO_HTTP: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = json.dumps({"method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": self.rfile.read(n).decode()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("set-cookie", "app=1")
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A websocket echo server in the standard library: replies `echo:<message>`.
const ECHO_WS: &str = r#"
import base64, hashlib, socket, struct, sys, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def frame(op, p):
    n = len(p)
    h = bytes([0x80 | op]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
    return h + p
def serve(c):
    f = c.makefile("rb")
    key = None
    while True:
        line = f.readline().decode().strip()
        if not line: break
        if line.lower().startswith("sec-websocket-key:"): key = line.split(":", 1)[1].strip()
    acc = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + "\r\n\r\n").encode())
    while True:
        h = f.read(2)
        if len(h) < 2: return
        op, n = h[0] & 15, h[1] & 127
        if n == 126: n = struct.unpack(">H", f.read(2))[0]
        elif n == 127: n = struct.unpack(">Q", f.read(8))[0]
        mask = f.read(4)
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            c.sendall(frame(8, b"")); return
        if op in (1, 2): c.sendall(frame(op, b"echo:" + p))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A TCP echo server: every connection gets back what it sends, then the FIN after its own.
const ECHO_TCP: &str = r#"
import socket, sys, threading
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

struct Env {
    home: Home,
    server: common::server::Server,
    api: SandboxesClient,
    key: String,
}

impl Env {
    fn start() -> Self {
        Self::serve(Home::with(&["debian"]), &[], String::new())
    }

    fn serve(home: Home, extra: &[&str], key: String) -> Self {
        let server = home.serve_on(
            common::server::free_port(),
            common::server::free_port(),
            extra,
        );
        let api = Sdk::new(&server.api_url(), &key)
            .unwrap()
            .sandboxes("default", true);
        Self {
            home,
            server,
            api,
            key,
        }
    }

    async fn create(&self, body: Value) -> (String, SandboxProxyClient, String) {
        let request: CreateSandboxRequest = serde_json::from_value(body).unwrap();
        let created = self
            .api
            .create_and_wait(&request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.status, "running", "{created:?}");
        let id = created.sandbox_id.clone();
        let target =
            resolve_sandbox_proxy_target(created.sandbox_url.as_deref().unwrap(), &id).unwrap();
        let mut client = ClientBuilder::new(&target.base_url);
        if !self.key.is_empty() {
            client = client.bearer_token(&self.key);
        }
        let proxy = SandboxProxyClient::new(client.build().unwrap(), target.host_override)
            .with_sandbox_id(target.sandbox_id_header);
        (id, proxy, created.ingress_endpoint.unwrap())
    }

    /// `GET`/`POST` through the proxy with the Host a user port's URL names.
    async fn port_request(
        &self,
        ingress: &str,
        id: &str,
        port: u16,
        headers: &[(&str, &str)],
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let url = sandbox_url_from_ingress_endpoint(ingress, id, Some(port)).unwrap();
        let host = url.trim_start_matches("http://").to_string();
        let mut req = common::server::http()
            .post(format!("{}/echo?x=1", self.server.proxy_url()))
            .header("host", host)
            .body("ping");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.json().await.unwrap_or(Value::Null), headers)
    }

    /// Waits until the server on `port` answers (anything but "nothing listens").
    async fn wait_listening(&self, ingress: &str, id: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body, _) = self.port_request(ingress, id, port, &[]).await;
            if status != 502 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "port {port} never listened: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn start(proxy: &SandboxProxyClient, script: &str, port: u16) {
    proxy
        .start_process(&json!({"command": "python3", "args": ["-c", script, port.to_string()]}))
        .await
        .unwrap();
}

/// Waits for a TCP server in the sandbox by dialling it through a tunnel until it answers.
async fn wait_tcp(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"?").await.unwrap();
        let mut b = [0u8; 1];
        if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
            return;
        }
        assert!(Instant::now() < deadline, "the echo server never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposed_ports_carry_http_and_websockets_and_refuse_the_rest() {
    let home = Home::with(&["debian"]);
    let secret = key(&home, "root", &["--admin"]);
    let env = Env::serve(home, &[], String::new());
    let (id, proxy, ingress) = env
        .create(json!({
            "image": "debian",
            "network": {"allow_internet_access": false},
            "exposed_ports": [8765, 8080, 8080],
        }))
        .await;
    // Reported as the SDK reads them: sorted, deduplicated, with the ingress endpoint.
    let info = env.api.get(&id).await.unwrap().into_inner();
    assert_eq!(info.exposed_ports, Some(vec![8080, 8765]));
    assert_eq!(
        ingress,
        format!("http://localhost:{}", env.server.proxy_port)
    );
    start(&proxy, ECHO_HTTP, 8080).await;
    start(&proxy, ECHO_WS, 8765).await;
    env.wait_listening(&ingress, &id, 8080).await;

    // HTTP, body and query intact; a Hutch key never reaches the sandbox, the app's own
    // credentials and cookies do.
    let (status, echo, headers) = env
        .port_request(
            &ingress,
            &id,
            8080,
            &[
                ("authorization", &format!("Bearer {secret}")),
                ("cookie", "session=s1"),
                ("x-app", "yes"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo?x=1");
    assert_eq!(echo["body"], "ping");
    assert_eq!(echo["headers"]["cookie"], "session=s1");
    assert_eq!(echo["headers"]["x-app"], "yes");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(
        echo["headers"]["host"],
        format!("8080-{id}.localhost:{}", env.server.proxy_port)
    );
    assert_eq!(headers["set-cookie"], "app=1");
    let (_, echo, _) = env
        .port_request(
            &ingress,
            &id,
            8080,
            &[("authorization", "Bearer app-token")],
        )
        .await;
    assert_eq!(echo["headers"]["authorization"], "Bearer app-token");

    // A websocket through the port.
    let url = sandbox_url_from_ingress_endpoint(&ingress, &id, Some(8765)).unwrap();
    let mut request = format!("ws://127.0.0.1:{}/chat", env.server.proxy_port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", url.trim_start_matches("http://").parse().unwrap());
    let socket = tokio::net::TcpStream::connect(("127.0.0.1", env.server.proxy_port))
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(request, socket)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply, Message::Text(format!("echo:hello {i}").into()));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_data().as_ref(), b"echo:\x00\x01\x02\xff");
    ws.close(None).await.unwrap();

    // An unexposed port: a typed 403, whether or not something listens there.
    for port in [8081, 9000] {
        let (status, body, _) = env.port_request(&ingress, &id, port, &[]).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["code"], "PORT_NOT_EXPOSED", "{body}");
    }
    // Exposed with nothing listening: a typed 502 naming the port.
    let update: UpdateSandboxRequest =
        serde_json::from_value(json!({"exposed_ports": [8080, 8765, 9000]})).unwrap();
    let updated = env.api.update(&id, &update).await.unwrap().into_inner();
    assert_eq!(updated.exposed_ports, Some(vec![8080, 8765, 9000]));
    let (status, body, _) = env.port_request(&ingress, &id, 9000, &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "PORT_NOT_LISTENING", "{body}");
    assert!(body["error"].as_str().unwrap().contains("9000"), "{body}");

    // Unexposing applies to the next request.
    let update: UpdateSandboxRequest =
        serde_json::from_value(json!({"exposed_ports": [8765]})).unwrap();
    env.api.update(&id, &update).await.unwrap();
    let (status, body, _) = env.port_request(&ingress, &id, 8080, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("PORT_NOT_EXPOSED"))
    );

    // Bad ports are refused whole, naming the entry; nothing changes.
    for bad in [json!([0]), json!([9501]), json!([70000]), json!(["x"])] {
        let resp = common::server::http()
            .patch(format!("{}/{id}", env.server.sandboxes_url()))
            .json(&json!({"exposed_ports": bad, "name": "renamed"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let info = env.api.get(&id).await.unwrap().into_inner();
    assert_eq!(info.exposed_ports, Some(vec![8765]));
    assert_eq!(info.name, None);
    let resp = common::server::http()
        .post(env.server.sandboxes_url())
        .json(&json!({"image": "debian", "exposed_ports": [9501]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("9501"));

    // An unknown sandbox's port: 404, not a guess.
    let (status, body, _) = env.port_request(&ingress, "0123abcd", 8080, &[]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("SANDBOX_NOT_FOUND"))
    );

    env.server.delete_all();
    env.home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_reach_any_port_through_the_sdk_and_the_cli() {
    let env = Env::start();
    let (id, proxy, _) = env
        .create(json!({"image": "debian", "network": {"allow_internet_access": false}}))
        .await;
    start(&proxy, ECHO_TCP, 7000).await;

    // The SDK's own tunnel client, to a port that is not exposed: tunnels need no exposure.
    let info = env.api.get(&id).await.unwrap().into_inner();
    let target = resolve_sandbox_proxy_target(info.sandbox_url.as_deref().unwrap(), &id).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(host) = &target.host_override {
        headers.insert("host", host.parse().unwrap());
    }
    let tunnel = TcpTunnel::listen(TcpTunnelOptions {
        base_url: target.base_url.clone(),
        headers: headers.clone(),
        remote_port: 7000,
        local_host: "127.0.0.1".into(),
        local_port: 0,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let addr = tunnel.local_addr();
    wait_tcp(addr).await;

    // 8 MiB each way, concurrently on three connections; the FIN goes through both ways.
    let payload: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut rx, mut tx) = stream.into_split();
            let sent = payload.clone();
            let writer = tokio::spawn(async move {
                tx.write_all(&sent).await.unwrap();
                tx.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(120), rx.read_to_end(&mut got))
                .await
                .expect("the echo ends after our FIN")
                .unwrap();
            writer.await.unwrap();
            assert!(
                got == payload,
                "{} bytes back of {}",
                got.len(),
                payload.len()
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // A closed port: the connection fails with the proxy's typed refusal, and the tunnel
    // listener lives on.
    let closed = TcpTunnel::listen(TcpTunnelOptions {
        base_url: target.base_url.clone(),
        headers,
        remote_port: 7001,
        local_host: "127.0.0.1".into(),
        local_port: 0,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let mut errors = closed.errors();
    let mut s = tokio::net::TcpStream::connect(closed.local_addr())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    let error = tokio::time::timeout(Duration::from_secs(20), errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(error.message.contains("502"), "{}", error.message);
    closed.close().await;
    tunnel.close().await;

    // A raw upgrade without a port, or with text messages, is refused.
    let resp = common::server::http()
        .get(format!("{}/api/v1/tunnels/tcp", env.server.proxy_url()))
        .header("host", format!("{id}.local"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // `hutch sbx port-forward` over the same endpoint.
    let local = common::server::free_port();
    let mut child = env
        .home
        .hutch()
        .env(
            "HUTCH_SERVER",
            format!("http://127.0.0.1:{}", env.server.api_port),
        )
        .args(["sbx", "port-forward", &id, &format!("{local}:7000")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&format!("127.0.0.1:{local}")), "{line}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    s.write_all(b"through the cli").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "through the cli");
    let _ = child.kill();
    let _ = child.wait();

    env.server.delete_all();
    env.home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_ports_unless_the_sandbox_allows_unauthenticated_access() {
    let home = Home::with(&["debian"]);
    let admin = key(&home, "root", &["--admin"]);
    let other = key(&home, "other", &["--namespace", "team-b"]);
    let env = Env::serve(home, &["--require-keys"], admin.clone());
    let (id, proxy, ingress) = env
        .create(json!({
            "image": "debian",
            "network": {"allow_internet_access": false},
            "exposed_ports": [8080],
        }))
        .await;
    start(&proxy, ECHO_HTTP, 8080).await;
    let bearer = format!("Bearer {admin}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, _) = env
            .port_request(&ingress, &id, 8080, &[("authorization", &bearer)])
            .await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "port 8080 never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A key is needed; the admin's works and is not passed on; another namespace's is refused.
    let (status, body, _) = env.port_request(&ingress, &id, 8080, &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, echo, _) = env
        .port_request(&ingress, &id, 8080, &[("authorization", &bearer)])
        .await;
    assert_eq!(status, 200);
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    let (status, _, _) = env
        .port_request(
            &ingress,
            &id,
            8080,
            &[("authorization", &format!("Bearer {other}"))],
        )
        .await;
    assert_eq!(status, 403);

    // Public: no key needed, and the app's own bearer goes through.
    let update: UpdateSandboxRequest =
        serde_json::from_value(json!({"allow_unauthenticated_access": true})).unwrap();
    let info = env.api.update(&id, &update).await.unwrap().into_inner();
    assert!(info.allow_unauthenticated_access);
    let (status, _, _) = env.port_request(&ingress, &id, 8080, &[]).await;
    assert_eq!(status, 200);
    let (status, echo, _) = env
        .port_request(
            &ingress,
            &id,
            8080,
            &[("authorization", "Bearer app-token")],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["authorization"], "Bearer app-token");
    // Public ports only: an unexposed port still needs a key, and the management API too.
    let (status, _, _) = env.port_request(&ingress, &id, 8081, &[]).await;
    assert_eq!(status, 401);
    let resp = common::server::http()
        .get(format!("{}/api/v1/processes", env.server.proxy_url()))
        .header("host", format!("{id}.local"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A tunnel is the management API's: it needs the key whatever the sandbox allows.
    let resp = common::server::http()
        .get(format!(
            "{}/api/v1/tunnels/tcp?port=8080",
            env.server.proxy_url()
        ))
        .header("host", format!("{id}.local"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    env.api.delete(&id).await.unwrap();
    env.home.assert_clean();
}
