//! Sandbox networks through `hutch serve` and the published `tensorlake` crate: the SDK's
//! egress policy, the fence around the host and other sandboxes, live updates, teardown.
//! "The internet" is a test host in a namespace the test creates (TEST-NET-3); nothing
//! here sends traffic anywhere else.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Home;
use common::testnet::TestHost;
use serde_json::{Value, json};
use tensorlake::sandboxes::models::{CreateSandboxRequest, RunProcessEvent};
use tensorlake::sandboxes::{SandboxProxyClient, SandboxesClient, resolve_sandbox_proxy_target};
use tensorlake::{ClientBuilder, Sdk};

const GREETING: &[u8] = b"hello from the test net\n";

struct Net {
    home: Home,
    server: common::server::Server,
    host: TestHost,
    api: SandboxesClient,
}

impl Net {
    fn start() -> Self {
        let host = TestHost::start(&[("hello.txt", GREETING)]);
        let home = Home::new();
        // The sandboxes' upstream resolver is the test host: nothing else is ever asked.
        let server = Self::serve(&home, &host);
        let api = Sdk::new(&server.api_url(), "")
            .unwrap()
            .sandboxes("default", true);
        Self {
            home,
            server,
            host,
            api,
        }
    }

    fn serve(home: &Home, host: &TestHost) -> common::server::Server {
        let dns = host.addr.to_string();
        home.serve_with(
            common::server::free_port(),
            common::server::free_port(),
            &["--sandbox-dns", &dns],
            &[],
        )
    }

    /// A `kill -9` of the server, then a new one over the same home.
    fn restart_after_kill9(&mut self) {
        self.server.kill9();
        self.server = Self::serve(&self.home, &self.host);
        self.api = Sdk::new(&self.server.api_url(), "")
            .unwrap()
            .sandboxes("default", true);
    }

    /// A proxy client for a sandbox, from what the server says of it now.
    async fn proxy(&self, id: &str) -> SandboxProxyClient {
        let info = self.api.get(id).await.unwrap().into_inner();
        let target =
            resolve_sandbox_proxy_target(info.sandbox_url.as_deref().unwrap(), id).unwrap();
        let client = ClientBuilder::new(&target.base_url).build().unwrap();
        SandboxProxyClient::new(client, target.host_override)
            .with_sandbox_id(target.sandbox_id_header)
    }

    async fn create(&self, body: Value) -> (String, SandboxProxyClient, Value) {
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
        let client = ClientBuilder::new(&target.base_url).build().unwrap();
        let proxy = SandboxProxyClient::new(client, target.host_override)
            .with_sandbox_id(target.sandbox_id_header);
        let info = self.raw("GET", &id, None).await;
        (id, proxy, info)
    }

    async fn raw(&self, method: &str, id: &str, body: Option<Value>) -> Value {
        let (status, v) = self.raw_status(method, id, body).await;
        assert!(status < 300, "{method} {id}: {status} {v}");
        v
    }

    async fn raw_status(&self, method: &str, id: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/{id}", self.server.sandboxes_url());
        let mut req = common::server::http().request(method.parse().unwrap(), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The sandbox's network as the backend recorded it: (slot, gateway, address).
    fn attachment(&self, id: &str) -> Option<(u32, String, String)> {
        let path = self.home.path().join("sandboxes").join(id).join("net.json");
        let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).unwrap();
        Some((
            v["slot"].as_u64().unwrap() as u32,
            v["gateway"].as_str().unwrap().to_string(),
            v["address"].as_str().unwrap().to_string(),
        ))
    }
}

/// A JSON answer to a GET.
async fn get_json(url: &str) -> Value {
    let resp = common::server::http().get(url).send().await.unwrap();
    resp.json().await.unwrap()
}

/// Runs `sh -c script` in the sandbox: (exit code, stdout).
async fn sh(sbx: &SandboxProxyClient, script: &str) -> (Option<i64>, String) {
    let events = sbx
        .run_process(&json!({"command": "sh", "args": ["-c", script]}))
        .await
        .unwrap()
        .into_inner();
    let mut out = String::new();
    let mut exit = None;
    for event in &events {
        match event {
            RunProcessEvent::Output(o) if o.stream.as_deref() == Some("stdout") => {
                out.push_str(&o.line);
                out.push('\n');
            }
            RunProcessEvent::Exited { exit_code, .. } => exit = *exit_code,
            _ => {}
        }
    }
    (exit, out)
}

/// A shell command fetching `http://ADDR:PORT/PATH` with busybox's `nc` (its static
/// `wget` crashes in gVisor), 2 s to connect.
fn http_get(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    format!("printf 'GET /{path} HTTP/1.0\r\n\r\n' | nc -w 2 {host} {port}")
}

/// Whether the sandbox fetches `url` (2 s to connect).
async fn fetches(sbx: &SandboxProxyClient, url: &str) -> bool {
    let (code, out) = sh(sbx, &http_get(url)).await;
    code == Some(0) && out.ends_with(std::str::from_utf8(GREETING).unwrap())
}

/// Waits up to a second for the sandbox to reach (or not) `url`: a policy applies to new
/// connections within a second.
async fn settles(sbx: &SandboxProxyClient, url: &str, reachable: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if fetches(sbx, url).await == reachable {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_reaches_out_and_nothing_reaches_the_host_or_other_sandboxes() {
    let net = Net::start();
    let url = net.host.url("hello.txt");

    // The SDK's default sends no network block: internet access.
    let (a, sbx_a, info) = net.create(json!({"timeout_secs": 300})).await;
    assert_eq!(
        info["network_policy"]["allow_internet_access"], true,
        "{info}"
    );
    if !fetches(&sbx_a, &url).await {
        let diag = sbx_a
            .run_process(
                &json!({"command": "sh", "args": ["-c", format!("{} 2>&1", http_get(&url))]}),
            )
            .await
            .unwrap()
            .into_inner();
        panic!("the default policy does not reach the test host: {diag:?}");
    }
    let (slot_a, gateway, _) = net.attachment(&a).expect("a networked sandbox");
    let (_, resolv) = sh(&sbx_a, "cat /etc/resolv.conf").await;
    assert_eq!(resolv.trim(), format!("nameserver {gateway}"));

    // The host: a listener on every address; the sandbox reaches none of them, its gateway
    // and the host's end of the test link included.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let addrs = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let mut host_addrs: Vec<String> = String::from_utf8_lossy(&addrs.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .filter(|a| !a.starts_with("127."))
        .map(str::to_string)
        .collect();
    host_addrs.push(gateway.clone());
    host_addrs.push(net.host.host_side.to_string());
    for addr in &host_addrs {
        let (code, _) = sh(&sbx_a, &format!("nc -w 2 {addr} {port} </dev/null")).await;
        assert_ne!(
            code,
            Some(0),
            "the sandbox connected to the host at {addr}:{port}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "a connection from the sandbox reached the host"
    );

    // Another sandbox, serving on a port: unreachable from the first.
    let (b, sbx_b, _) = net.create(json!({"timeout_secs": 300})).await;
    let (_, _, addr_b) = net.attachment(&b).unwrap();
    sbx_b
        .start_process(&json!({"command": "sh", "args": ["-c", "mkdir -p /w && echo hi > /w/x && httpd -f -p 8000 -h /w"]}))
        .await
        .unwrap();
    let (code, out) = sh(
        &sbx_b,
        &format!("sleep 0.3; {}", http_get("http://127.0.0.1:8000/x")),
    )
    .await;
    assert!(
        code == Some(0) && out.ends_with("hi\n"),
        "the server runs in b: {out}"
    );
    let (_, out) = sh(&sbx_a, &http_get(&format!("http://{addr_b}:8000/x"))).await;
    assert!(!out.contains("hi"), "sandbox a reached sandbox b: {out}");

    // Teardown leaves nothing: namespace, veth, chains, slot.
    net.raw("DELETE", &a, None).await;
    net.raw("DELETE", &b, None).await;
    let left = hutch_runtime::net::host::leftovers(slot_a);
    assert!(left.is_empty(), "{left:?}");
    net.home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_policy_switch_allow_deny_and_live_updates() {
    let net = Net::start();
    let url = net.host.url("hello.txt");
    let testhost = net.host.addr.to_string();

    // allow_internet_access: false, nothing allowed: no network at all.
    let (off, sbx_off, info) = net
        .create(json!({"network": {"allow_internet_access": false}}))
        .await;
    assert_eq!(info["network_policy"]["allow_internet_access"], false);
    assert!(
        net.attachment(&off).is_none(),
        "an offline sandbox got a network"
    );
    assert!(!fetches(&sbx_off, &url).await);

    // A non-empty allow_out is default deny.
    let (id, sbx, info) = net
        .create(json!({"network": {"allow_out": ["198.51.100.7"]}}))
        .await;
    assert_eq!(info["network_policy"]["allow_out"], json!(["198.51.100.7"]));
    assert!(
        !fetches(&sbx, &url).await,
        "allow_out must deny what it does not list"
    );

    // Live: allowing the test host (with a port suffix, which is accepted and ignored).
    let patched = net
        .raw(
            "PATCH",
            &id,
            Some(json!({"network": {"allow_out": [format!("{testhost}:8080")]}})),
        )
        .await;
    assert_eq!(
        patched["network_policy"]["allow_out"],
        json!([format!("{testhost}:8080")])
    );
    assert!(
        settles(&sbx, &url, true).await,
        "a live allow applies within a second"
    );

    // deny_out wins over allow_out.
    net.raw(
        "PATCH",
        &id,
        Some(json!({"network": {"allow_out": ["203.0.113.0/24"], "deny_out": [testhost]}})),
    )
    .await;
    assert!(
        settles(&sbx, &url, false).await,
        "deny_out takes precedence"
    );

    // The SDK's CLEAR_NETWORK_POLICY (null): unrestricted again.
    net.raw("PATCH", &id, Some(json!({"network": null}))).await;
    assert!(settles(&sbx, &url, true).await);

    // Bad input names the entry and changes nothing.
    let (status, body) = net
        .raw_status(
            "PATCH",
            &id,
            Some(json!({"network": {"allow_out": ["10.0.0.0/33"]}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("10.0.0.0/33"), "{body}");
    assert!(
        fetches(&sbx, &url).await,
        "a refused update changed the policy"
    );
    let request = json!({"network": {"deny_out": ["not a host!"]}});
    let refused = common::server::http()
        .post(net.server.sandboxes_url())
        .json(&request)
        .send()
        .await
        .unwrap();
    let code = refused.status().as_u16();
    let text = refused.text().await.unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("not a host!"), "{text}");

    net.raw("DELETE", &off, None).await;
    net.raw("DELETE", &id, None).await;
    net.home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_outlive_a_killed_server_and_teardown_after_it_is_clean() {
    let mut net = Net::start();
    let url = net.host.url("hello.txt");
    let (closed, sbx_closed, _) = net
        .create(json!({"network": {"allow_out": ["198.51.100.7"]}}))
        .await;
    let (open, sbx_open, _) = net.create(json!({})).await;
    assert!(!fetches(&sbx_closed, &url).await);
    assert!(fetches(&sbx_open, &url).await);
    let (slot, _, _) = net.attachment(&closed).unwrap();

    net.restart_after_kill9();
    // The rules are kernel state: the dead server took nothing with it.
    let chain = std::process::Command::new("nft")
        .args(["list", "chain", "inet", "hutch", &format!("s{slot}")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&chain.stdout).contains("198.51.100.7"),
        "{}",
        String::from_utf8_lossy(&chain.stderr)
    );
    // The new server adopted both, and each still runs under its own policy.
    let (sbx_closed, sbx_open) = (net.proxy(&closed).await, net.proxy(&open).await);
    assert!(
        !fetches(&sbx_closed, &url).await,
        "a policy was lost across the restart"
    );
    assert!(fetches(&sbx_open, &url).await);

    net.raw("DELETE", &closed, None).await;
    net.raw("DELETE", &open, None).await;
    assert!(hutch_runtime::net::host::leftovers(slot).is_empty());
    net.home.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_rules_follow_dns_answers_for_their_ttl() {
    let mut net = Net::start();
    let (first, second, port) = (net.host.addr, net.host.second_address(), net.host.port);
    net.host.start_dns(&json!({
        "ttl": 1,
        "web.test": [first.to_string()],
        "blocked.test": [second.to_string()],
    }));
    let (id, sbx, info) = net
        .create(json!({"image": "busybox", "network": {"allow_out": ["Web.Test:8080"]}}))
        .await;
    assert_eq!(
        info["network_policy"]["allow_out"],
        json!(["Web.Test:8080"])
    );
    let url = |host: &str| format!("http://{host}:{port}/hello.txt");

    // An address is admitted when the resolver answers it for a name of the policy.
    assert!(
        !fetches(&sbx, &url(&first.to_string())).await,
        "before any lookup"
    );
    assert!(fetches(&sbx, &url("web.test")).await, "by name");
    assert!(fetches(&sbx, &url(&first.to_string())).await, "admitted");
    assert!(
        !fetches(&sbx, &url(&second.to_string())).await,
        "never answered"
    );
    assert!(!fetches(&sbx, &url("blocked.test")).await, "another name");

    // The name moves: the new address passes once answered, the old one ends with its TTL
    // (at least 5 s).
    net.host.set_dns(&json!({
        "ttl": 1,
        "web.test": [second.to_string()],
        "blocked.test": [second.to_string()],
    }));
    assert!(fetches(&sbx, &url("web.test")).await, "by name, moved");
    assert!(
        fetches(&sbx, &url(&second.to_string())).await,
        "new address"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetches(&sbx, &url(&first.to_string())).await {
        assert!(Instant::now() < deadline, "the old address never expired");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // deny_out by name wins over internet access, applied live.
    net.raw(
        "PATCH",
        &id,
        Some(json!({"network": {"allow_internet_access": true, "deny_out": ["blocked.test"]}})),
    )
    .await;
    assert!(fetches(&sbx, &url(&first.to_string())).await, "internet");
    assert!(!fetches(&sbx, &url("blocked.test")).await, "denied by name");
    assert!(
        !fetches(&sbx, &url(&second.to_string())).await,
        "its address"
    );
    assert!(
        fetches(&sbx, &url(&first.to_string())).await,
        "others still"
    );

    // The egress audit log: every attempt with its verdict, the name the resolver answered
    // its address for, and bytes once the connection ended. conntrack keeps a closed TCP
    // connection 2 minutes (TIME_WAIT): make it forget the sandbox's now.
    let (_, _, address) = net.attachment(&id).unwrap();
    let _ = std::process::Command::new("conntrack")
        .args(["-D", "-s", &address])
        .output();
    let egress = format!(
        "http://127.0.0.1:{}/hutch/v1/sandboxes/{id}/egress",
        net.server.api_port
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = get_json(&egress).await;
        let counted = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["verdict"] == "allowed" && e["bytes"].as_u64().is_some_and(|b| b > 0));
        if counted || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let entries = log["entries"].as_array().unwrap();
    let has = |verdict: &str, ip: &std::net::Ipv4Addr, host: Option<&str>| {
        entries.iter().any(|e| {
            e["verdict"] == verdict
                && e["ip"] == ip.to_string()
                && e["port"] == port
                && e["protocol"] == "tcp"
                && host.is_none_or(|h| e["hostname"] == h)
        })
    };
    assert!(has("denied", &first, None), "{log}");
    assert!(has("allowed", &first, Some("web.test")), "{log}");
    assert!(has("allowed", &second, Some("web.test")), "{log}");
    assert!(has("denied", &second, Some("blocked.test")), "{log}");
    assert!(
        entries.iter().any(|e| e["verdict"] == "allowed"
            && e["bytes"]
                .as_u64()
                .is_some_and(|b| b > GREETING.len() as u64)),
        "bytes of an ended connection: {log}"
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let after = get_json(&format!("{egress}?after={}", log["last_seq"])).await;
    assert_eq!(after["entries"], json!([]), "{after}");
    let out = net
        .home
        .hutch()
        .env(
            "HUTCH_SERVER",
            format!("http://127.0.0.1:{}", net.server.api_port),
        )
        .args(["sbx", "egress", &id, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stdout(&out).lines().count() >= entries.len(),
        "{}",
        common::stdout(&out)
    );
    // An unknown sandbox: 404.
    let resp = common::server::http()
        .get(format!(
            "http://127.0.0.1:{}/hutch/v1/sandboxes/nope/egress",
            net.server.api_port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // Bad names are refused whole, named.
    let (status, body) = net
        .raw_status(
            "PATCH",
            &id,
            Some(json!({"network": {"allow_out": ["ok.test", "bad name!"]}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("bad name!"), "{body}");

    net.raw("DELETE", &id, None).await;
    net.home.assert_clean();
}
