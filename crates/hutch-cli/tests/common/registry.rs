//! A real image registry for pull tests: Debian's `docker-registry` (distribution 2.8) on a free
//! localhost port over plain HTTP, optionally behind htpasswd basic auth, filled with `skopeo`
//! from the OCI layouts under `fixtures/`. Each `Registry` owns its process and its storage; both
//! go away on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::server::free_port;

pub struct Registry {
    pub port: u16,
    /// Basic-auth user and password, when the registry requires them.
    pub auth: Option<(String, String)>,
    child: Child,
    /// Holds `config.yml`, `storage/`, `htpasswd` and `registry.log`.
    dir: tempfile::TempDir,
}

impl Registry {
    /// An anonymous registry: anyone may push and pull.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry that answers 401 to any request without these basic-auth credentials.
    pub fn start_with_auth(user: &str, pass: &str) -> Self {
        Self::launch(Some((user.to_owned(), pass.to_owned())))
    }

    fn launch(auth: Option<(String, String)>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hutch-registry")
            .tempdir_in("/tmp")
            .unwrap();
        let auth_config = match &auth {
            None => String::new(),
            Some((user, pass)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .expect("running htpasswd (apt-get install apache2-utils)");
                assert!(out.status.success(), "htpasswd: {}", super::stderr(&out));
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, &out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: hutch-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        // Another process can take the free port before the registry binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(&config, registry_config(dir.path(), port, &auth_config)).unwrap();
            let log = dir.path().join("registry.log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("running docker-registry (apt-get install docker-registry)");
            match wait_ready(&mut child, port, auth.is_some(), &log) {
                Ok(()) => {
                    return Registry {
                        port,
                        auth,
                        child,
                        dir,
                    };
                }
                Err(log) if log.contains("address already in use") => {}
                Err(log) => panic!("docker-registry exited before answering:\n{log}"),
            }
        }
        panic!("docker-registry found no free port in 5 attempts");
    }

    /// `127.0.0.1:PORT`
    /// The registry's storage root (`docker/registry/v2/...` below it), to corrupt blobs.
    pub fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("storage")
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/repo:tag`, an image reference into this registry.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// Everything the registry logged so far (JSON lines, see `blob_bytes_served`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `layout_dir:tag_in_layout` as `dest_repo_tag`, manifest and blobs as they are in
    /// the layout, with this registry's credentials. Panics if skopeo fails.
    pub fn push_oci_layout(&self, layout_dir: &Path, tag_in_layout: &str, dest_repo_tag: &str) {
        let out = self.try_push(layout_dir, tag_in_layout, dest_repo_tag, &[], self.creds());
        assert_pushed(&out, dest_repo_tag);
    }

    /// Like `push_oci_layout`, converting the manifest to `format`: `"v2s2"` (Docker schema 2)
    /// or `"oci"`.
    pub fn push_with_format(
        &self,
        layout_dir: &Path,
        tag_in_layout: &str,
        dest_repo_tag: &str,
        format: &str,
    ) {
        let out = self.try_push(
            layout_dir,
            tag_in_layout,
            dest_repo_tag,
            &["--format", format],
            self.creds(),
        );
        assert_pushed(&out, dest_repo_tag);
    }

    /// Pushes an OCI manifest whose layers skopeo recompresses with zstd
    /// (`application/vnd.oci.image.layer.v1.tar+zstd`). Caveat: skopeo's blob-info cache lets it
    /// reuse a gzip blob this registry already holds for the same layer instead, so push into a
    /// registry (or at least a repository) that has not seen these layers to get zstd throughout.
    pub fn push_zstd(&self, layout_dir: &Path, tag_in_layout: &str, dest_repo_tag: &str) {
        let out = self.try_push(
            layout_dir,
            tag_in_layout,
            dest_repo_tag,
            &["--format", "oci", "--dest-compress-format", "zstd"],
            self.creds(),
        );
        assert_pushed(&out, dest_repo_tag);
    }

    /// `skopeo copy [extra] oci:LAYOUT:TAG docker://HOST/DEST` with `creds` (none: anonymous),
    /// returning skopeo's output whatever happened. The auth file is a path that does not exist,
    /// so credentials from a `skopeo login` on this machine never leak in.
    pub fn try_push(
        &self,
        layout_dir: &Path,
        tag_in_layout: &str,
        dest_repo_tag: &str,
        extra: &[&str],
        creds: Option<(&str, &str)>,
    ) -> Output {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg("--dest-authfile")
            .arg(self.dir.path().join("no-auth.json"))
            .args(extra);
        if let Some((user, pass)) = creds {
            cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
        }
        cmd.arg(format!("oci:{}:{tag_in_layout}", layout_dir.display()))
            .arg(format!("docker://{}", self.reference(dest_repo_tag)))
            .stdin(Stdio::null())
            .output()
            .expect("running skopeo (apt-get install skopeo)")
    }

    fn creds(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Bytes of blob bodies (layers and configs) this registry has served: the sum over the
    /// successful `GET /v2/<name>/blobs/<digest>` requests so far.
    ///
    /// Relies on distribution 2.8's application log with `log.level: info` and
    /// `log.formatter: json` (see `registry_config`): one JSON object per line, and for every
    /// request that got past auth a line like
    /// `{"msg":"response completed","http.request.method":"GET",
    ///   "http.request.uri":"/v2/busybox/blobs/sha256:7d28…","http.response.status":200,
    ///   "http.response.written":1088194,…}`
    /// where `written` is the body bytes actually sent (0 for HEAD; a range request counts its
    /// range). Requests refused by auth (401) have no such line, and upload URLs
    /// (`/blobs/uploads/…`) are not downloads. Lines that are not JSON are skipped.
    ///
    /// The registry writes that line just after the body, so a client that has read the whole
    /// response can be a hair ahead of the log. To close that gap this first sends one more
    /// request of its own (a unique `GET /v2/?hutch-sync=N`, with the credentials) and waits for
    /// its line. The earlier request only had to return from its handler meanwhile, this one a
    /// whole round trip, so its line coming first would take a scheduler stall of milliseconds:
    /// not a formal guarantee, but not seen in practice.
    pub fn blob_bytes_served(&self) -> u64 {
        static SYNC: AtomicU64 = AtomicU64::new(0);
        let marker = format!("/v2/?hutch-sync={}", SYNC.fetch_add(1, Ordering::Relaxed));
        let status = get_status(self.port, &marker, self.auth.as_ref());
        assert_eq!(status, Some(200), "GET {marker}:\n{}", self.log());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entries = completed_requests(&self.log());
            if entries.iter().any(|e| e.uri == marker) {
                return entries
                    .iter()
                    .filter(|e| e.method == "GET" && (200..300).contains(&e.status))
                    .filter(|e| is_blob_download(&e.uri))
                    .map(|e| e.written)
                    .sum();
            }
            assert!(
                Instant::now() < deadline,
                "the registry never logged {marker}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `GET /v2/` to answer 200 (anonymous) or 401 (`auth`); `Err(log)` if the registry
/// exited first.
fn wait_ready(child: &mut Child, port: u16, auth: bool, log: &Path) -> Result<(), String> {
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    let want = if auth { 401 } else { 200 };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("{status}\n{}", read_log()));
        }
        match get_status(port, "/v2/", None) {
            Some(got) if got == want => return Ok(()),
            Some(got) => panic!("GET /v2/ answered {got}, not {want}:\n{}", read_log()),
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "docker-registry did not answer on port {port} within 20 s:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Status of `GET path` on `127.0.0.1:port` over a fresh connection, with basic auth when
/// `creds` are given; None if nothing answers.
fn get_status(port: u16, path: &str, creds: Option<&(String, String)>) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let authorization = creds
        .map(|(user, pass)| {
            let token = base64(format!("{user}:{pass}").as_bytes());
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{authorization}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    // "HTTP/1.1 200 OK\r\n..."
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn assert_pushed(out: &Output, dest: &str) {
    assert!(
        out.status.success(),
        "skopeo copy to {dest} failed: {}",
        super::stderr(out)
    );
}

fn registry_config(dir: &Path, port: u16, auth: &str) -> String {
    let storage = dir.join("storage");
    // `http.secret` only silences a warning (it signs upload state; one instance needs no
    // shared value). Upload purging would start a background sweep nobody here needs.
    format!(
        "version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: hutch-test-registry
{auth}",
        storage = storage.display()
    )
}

/// One `"response completed"` line of the registry log.
struct Completed {
    method: String,
    uri: String,
    status: u16,
    written: u64,
}

fn completed_requests(log: &str) -> Vec<Completed> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["msg"] == "response completed")
        .filter_map(|v| {
            Some(Completed {
                method: v["http.request.method"].as_str()?.to_owned(),
                uri: v["http.request.uri"].as_str()?.to_owned(),
                status: u16::try_from(v["http.response.status"].as_u64()?).ok()?,
                written: v["http.response.written"].as_u64()?,
            })
        })
        .collect()
}

/// `/v2/<name>/blobs/<algorithm>:<hex>` (the name may have slashes), not an upload URL.
fn is_blob_download(uri: &str) -> bool {
    let path = uri.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/v2/") else {
        return false;
    };
    let mut segments = rest.rsplit('/');
    let (Some(digest), Some("blobs"), Some(name)) =
        (segments.next(), segments.next(), segments.next())
    else {
        return false;
    };
    !name.is_empty()
        && digest
            .split_once(':')
            .is_some_and(|(alg, hex)| !alg.is_empty() && !hex.is_empty())
}

/// Standard base64 with padding (Docker's `auths.*.auth`, basic-auth headers).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
