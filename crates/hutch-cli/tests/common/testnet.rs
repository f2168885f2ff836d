//! "The internet" for network tests: a host in a network namespace the test creates, on a
//! /29 of TEST-NET-3 (203.0.113.0/24), serving HTTP. Tests send traffic only there and to
//! loopback, never to any other address.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SLOTS_DIR: &str = "/run/hutch-test/testnet";

pub struct TestHost {
    slot: u32,
    /// The test host's address.
    pub addr: Ipv4Addr,
    /// The host's end of the link.
    pub host_side: Ipv4Addr,
    pub port: u16,
    server: Child,
    dns: Option<Child>,
    _www: tempfile::TempDir,
}

/// A DNS server for the test net: answers A queries from a JSON file (`{"name": [ips]}`,
/// plus `"ttl"`), read on every query so a test can change answers; NXDOMAIN otherwise.
const DNS_SERVER: &str = r#"
import json, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    q, src = s.recvfrom(4096)
    try:
        table = json.load(open(sys.argv[2]))
        pos, labels = 12, []
        while q[pos]:
            labels.append(q[pos + 1:pos + 1 + q[pos]].decode().lower()); pos += 1 + q[pos]
        qend = pos + 5
        name, qtype = ".".join(labels), struct.unpack(">H", q[pos + 1:pos + 3])[0]
        ips = table.get(name, []) if qtype == 1 else []
        rcode = 0 if name in table else 3
        head = q[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, len(ips), 0, 0)
        ans = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, table.get("ttl", 1), 4)
                       + socket.inet_aton(ip) for ip in ips)
        s.sendto(head + q[12:qend] + ans, src)
    except Exception:
        pass
"#;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestHost {
    /// A test host serving `files` (name, content) over HTTP on port 8080.
    pub fn start(files: &[(&str, &[u8])]) -> Self {
        Self::start_with(|www| {
            for (name, content) in files {
                std::fs::write(www.join(name), content).unwrap();
            }
        })
    }

    /// A test host serving over HTTP on port 8080 what `fill` writes into the (empty)
    /// directory it is given.
    pub fn start_with(fill: impl FnOnce(&std::path::Path)) -> Self {
        std::fs::create_dir_all(SLOTS_DIR).unwrap();
        let slot = (0..32u32)
            .find(|k| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(PathBuf::from(SLOTS_DIR).join(k.to_string()))
                    .is_ok()
            })
            .expect("a free TEST-NET slot");
        let (ns, ifname) = (format!("htest-{slot}"), format!("ht{slot}"));
        let host_side = Ipv4Addr::new(203, 0, 113, (slot * 8 + 1) as u8);
        let addr = Ipv4Addr::new(203, 0, 113, (slot * 8 + 2) as u8);
        let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
        let _ = Command::new("ip")
            .args(["link", "delete", &ifname])
            .output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &ifname, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{host_side}/29"), "dev", &ifname]);
        ip(&["link", "set", &ifname, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/29"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &host_side.to_string(),
        ]);
        let www = tempfile::tempdir().unwrap();
        fill(www.path());
        let port = 8080;
        // Python's HTTPServer looks its own address up in DNS at bind: a query that would
        // leave for the host's resolver. This one binds without asking anybody.
        let script = "import functools, http.server, socketserver, sys\n\
            class S(http.server.ThreadingHTTPServer):\n    \
                def server_bind(self): socketserver.TCPServer.server_bind(self)\n\
            h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])\n\
            S((sys.argv[1], int(sys.argv[2])), h).serve_forever()\n";
        // Every address of the namespace: a test may add a second one.
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", script])
            .arg("0.0.0.0")
            .arg(port.to_string())
            .arg(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let host = Self {
            slot,
            addr,
            host_side,
            port,
            server,
            dns: None,
            _www: www,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(200))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the test host's server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        host
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}/{path}", self.addr, self.port)
    }

    /// A second address on the test host (its HTTP server answers there too).
    pub fn second_address(&self) -> Ipv4Addr {
        let second = Ipv4Addr::new(203, 0, 113, (self.slot * 8 + 3) as u8);
        ip(&[
            "-n",
            &format!("htest-{}", self.slot),
            "addr",
            "add",
            &format!("{second}/29"),
            "dev",
            "eth0",
        ]);
        second
    }

    /// Starts the test host's DNS server (UDP 53 on its address), answering from `table`.
    pub fn start_dns(&mut self, table: &serde_json::Value) {
        let file = self._www.path().join("dns.json");
        std::fs::write(&file, table.to_string()).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("htest-{}", self.slot)])
            .args(["python3", "-c", DNS_SERVER])
            .arg(self.addr.to_string())
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.dns = Some(child);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Changes what the DNS server answers, from the next query on.
    pub fn set_dns(&self, table: &serde_json::Value) {
        let file = self._www.path().join("dns.json");
        let tmp = self._www.path().join("dns.json.new");
        std::fs::write(&tmp, table.to_string()).unwrap();
        std::fs::rename(tmp, file).unwrap();
    }

    /// Runs `args` inside the test host's namespace.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &format!("htest-{}", self.slot)])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some(mut dns) = self.dns.take() {
            let _ = dns.kill();
            let _ = dns.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &format!("htest-{}", self.slot)])
            .output();
        let _ = std::fs::remove_file(PathBuf::from(SLOTS_DIR).join(self.slot.to_string()));
    }
}
