//! A real `hutch serve` process over a test's home, on free ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Home, hutch_bin};

pub struct Server {
    pub child: Child,
    pub api_port: u16,
    pub proxy_port: u16,
    pub home: PathBuf,
    pub log: PathBuf,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Home {
    /// Starts `hutch serve` on fresh ports and waits until it answers. A port found free
    /// can be taken by another test before the server binds it: then new ports are tried.
    pub fn serve(&self) -> Server {
        for _ in 0..4 {
            match self.try_serve(free_port(), free_port(), &[], &[]) {
                Ok(server) => return server,
                Err(log) if log.contains("Address already in use") => continue,
                Err(log) => panic!("hutch serve exited:\n{log}"),
            }
        }
        panic!("hutch serve found no free ports in 4 tries");
    }

    pub fn serve_on(&self, api_port: u16, proxy_port: u16, extra: &[&str]) -> Server {
        self.serve_with(api_port, proxy_port, extra, &[])
    }

    /// [`Home::serve_on`] with extra environment variables for the server.
    pub fn serve_with(
        &self,
        api_port: u16,
        proxy_port: u16,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Server {
        self.try_serve(api_port, proxy_port, extra, envs)
            .unwrap_or_else(|log| panic!("hutch serve exited:\n{log}"))
    }

    /// Starts `hutch serve`; its log if it exits before answering.
    fn try_serve(
        &self,
        api_port: u16,
        proxy_port: u16,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server, String> {
        let log = self.path().join(format!("serve-{api_port}.log"));
        let child = Command::new(hutch_bin())
            .envs(envs.iter().copied())
            .env("HUTCH_HOME", self.path())
            // Busybox boots anything a test needs; the tests of the Debian default image pass
            // `--default-image` (the flag wins over the variable).
            .env("HUTCH_DEFAULT_IMAGE", "hutch/minimal")
            // Sandboxes' DNS goes to loopback, which drops it: no test sends a query to a
            // resolver outside this machine (tests that need DNS pass --sandbox-dns).
            .env("HUTCH_SANDBOX_DNS", "127.0.0.1")
            .env("HUTCH_LOG", "info,hutch_server=debug,hutch_state=debug")
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{api_port}"))
            .arg("--proxy-listen")
            .arg(format!("127.0.0.1:{proxy_port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            api_port,
            proxy_port,
            home: self.path().to_path_buf(),
            log,
        };
        server.try_wait_ready()?;
        Ok(server)
    }
}

impl Server {
    pub fn api_url(&self) -> String {
        format!("http://localhost:{}", self.api_port)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    pub fn sandboxes_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/v1/namespaces/default/sandboxes",
            self.api_port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("({status}) {}", self.log()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.api_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.proxy_port)).is_ok()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "hutch serve did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no chance to clean up anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// Deletes every sandbox the server lists, then every pool (which takes its warm
    /// sandboxes, never listed, with it), over HTTP.
    pub fn delete_all(&self) {
        let each = |url: &str, key: &str, id_key: &str| {
            let out = Command::new("curl").args(["-sf", url]).output().unwrap();
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for item in list[key].as_array().cloned().unwrap_or_default() {
                let id = item[id_key].as_str().unwrap_or_default().to_string();
                let _ = Command::new("curl")
                    .args(["-sf", "-XDELETE", &format!("{url}/{id}")])
                    .output();
            }
        };
        each(&self.sandboxes_url(), "sandboxes", "sandbox_id");
        let pools = self.sandboxes_url().replace("/sandboxes", "/sandbox-pools");
        each(&pools, "pools", "pool_id");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.delete_all();
            self.kill9();
        }
    }
}

/// An HTTP client for tests: the SDK's own transport (it installs the TLS provider that
/// feature unification makes reqwest require).
pub fn http() -> reqwest::Client {
    tensorlake::http_transport::https_builder().build().unwrap()
}

/// The JSON of the answer to `request` (whatever its status).
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The published SDK's lifecycle client for the server's namespace `default`.
pub fn sdk(server: &Server) -> tensorlake::sandboxes::SandboxesClient {
    tensorlake::Sdk::new(&server.api_url(), "")
        .unwrap()
        .sandboxes("default", true)
}

/// A proxy client built the way the SDK builds one from a sandbox's `sandbox_url`.
pub fn sdk_proxy(sandbox_url: &str, id: &str) -> tensorlake::sandboxes::SandboxProxyClient {
    let target = tensorlake::sandboxes::resolve_sandbox_proxy_target(sandbox_url, id).unwrap();
    let client = tensorlake::ClientBuilder::new(&target.base_url)
        .build()
        .unwrap();
    tensorlake::sandboxes::SandboxProxyClient::new(client, target.host_override)
        .with_sandbox_id(target.sandbox_id_header)
}
