//! `hutch sbx`: sandboxes on a running `hutch serve`, through its lifecycle API and proxy.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::BodyExt;
use hutch_api::{
    CreateSandboxRequest, CreateSandboxResources, CreateSandboxResponse, ListSandboxesResponse,
    SandboxInfo,
};
use hutch_wire::query::encode;
use hutch_wire::{
    FrameDecoder, FrameKind, ListProcessesResponse, OutputResponse, StartProcess, StdinMode,
};
use hyper::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::client::{self, full};

#[derive(Subcommand)]
pub enum SbxCommand {
    /// Create a sandbox and print its id.
    Create {
        /// Image in the server's store [default: the built-in default image]
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory: Option<i64>,
        /// Lifetime in seconds (0: none).
        #[arg(long)]
        timeout: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// List sandboxes.
    Ls {
        /// Include terminated sandboxes.
        #[arg(long, short)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox (by id or name).
    Get {
        sandbox: String,
        #[arg(long)]
        json: bool,
    },
    /// Terminate and remove sandboxes.
    Rm { sandboxes: Vec<String> },
    /// Stop sandboxes gracefully: SIGTERM to every process, SIGKILL after the grace period,
    /// then the sandbox ends (reason `stopped`).
    Stop {
        #[arg(required = true)]
        sandboxes: Vec<String>,
        /// Seconds processes have after SIGTERM (0 to 300).
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Run a command in a sandbox; exits with its exit code.
    Exec {
        sandbox: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a file in or out: `hutch sbx cp LOCAL SANDBOX:/path` or `SANDBOX:/path LOCAL`.
    Cp { from: String, to: String },
    /// Print what changes under a path in a sandbox (created, modified, deleted, moved), a
    /// line per event, until interrupted.
    Watch {
        sandbox: String,
        path: String,
        /// Directories under it too, new ones included.
        #[arg(short, long)]
        recursive: bool,
        /// The events as JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the output of a sandbox's processes.
    Logs {
        sandbox: String,
        #[arg(long)]
        json: bool,
    },
    /// Forward local TCP ports to ports in a sandbox (through the proxy's tunnel), until
    /// interrupted: `hutch sbx port-forward ID 8080:80 5432`.
    PortForward {
        sandbox: String,
        /// LOCAL:REMOTE, or REMOTE for the same port on both sides; LOCAL 0 picks a free one.
        #[arg(required = true)]
        ports: Vec<String>,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// The sandbox's connection attempts (egress audit log): time, destination, host name,
    /// verdict, bytes once ended.
    Egress {
        sandbox: String,
        /// Keep printing new entries until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Route ports of a sandbox through the proxy at <port>-<id>.<ingress host>, or stop.
    Expose {
        sandbox: String,
        ports: Vec<u16>,
        /// Stop routing these ports instead.
        #[arg(long)]
        remove: bool,
        /// Whether the ports answer without an API key off loopback.
        #[arg(long)]
        public: Option<bool>,
    },
}

/// The lifecycle path of the sandboxes of `$HUTCH_NAMESPACE` (default `default`): a key
/// scoped to one namespace reaches only that one's.
pub fn sandboxes_path() -> String {
    let namespace = std::env::var("HUTCH_NAMESPACE")
        .ok()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_string());
    // Percent-encoding is not needed for valid names; anything else the server refuses.
    let namespace: String = namespace
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    format!("/v1/namespaces/{namespace}/sandboxes")
}

/// The sandbox's proxy address and Host label, from the lifecycle API.
/// `$HUTCH_PROXY_URL` (`http://host:port`) overrides the `sandbox_url` the server reports,
/// for a server whose public URL is https or a name this machine does not resolve.
pub async fn route(api: &str, sandbox: &str) -> anyhow::Result<(String, String, SandboxInfo)> {
    let info = get(api, sandbox).await?;
    let Some(url) = &info.sandbox_url else {
        bail!("sandbox {sandbox} is {}, not running", info.status.as_str());
    };
    let url = match std::env::var("HUTCH_PROXY_URL") {
        Ok(v) if !v.is_empty() => v,
        _ if !url.starts_with("http://") => bail!(
            "the server reports sandbox_url {url}, and this CLI speaks plain http: set \
             HUTCH_PROXY_URL=http://<server>:<proxy port>"
        ),
        _ => url.clone(),
    };
    Ok((
        url.replace("//localhost:", "//127.0.0.1:"),
        format!("{}.local", info.sandbox_id),
        info,
    ))
}

fn egress_row(e: &hutch_api::EgressEntry) -> String {
    let secs = e.time_ms.div_euclid(1000);
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        e.time_ms.rem_euclid(1000)
    );
    let dest = match e.port {
        Some(p) => format!("{}:{p}", e.ip),
        None => e.ip.clone(),
    };
    let verdict = match e.verdict {
        hutch_api::EgressVerdict::Allowed => "allowed",
        hutch_api::EgressVerdict::Denied => "denied",
    };
    format!(
        "{time:<24} {verdict:<7} {:<5} {dest:<22} {:<28} {}",
        e.protocol,
        e.hostname.as_deref().unwrap_or("-"),
        e.bytes.map_or_else(|| "-".to_string(), |b| b.to_string())
    )
}

/// `<scheme>://<port>-<id>.<ingress host>[:port]`, as the SDK's
/// `sandbox_url_from_ingress_endpoint` makes it.
fn port_url(ingress: &str, id: &str, port: u16) -> String {
    match ingress.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{port}-{id}.{rest}"),
        None => format!("{port}-{id}.{ingress}"),
    }
}

/// A sandbox by id or name, from the lifecycle API.
pub async fn get(api: &str, sandbox: &str) -> anyhow::Result<SandboxInfo> {
    let path = format!("{}/{sandbox}", sandboxes_path());
    client::call(api, Method::GET, &path, None, None::<&()>).await
}

fn row(info: &SandboxInfo) -> String {
    let reason = info
        .termination_reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    format!(
        "{:<22} {:<16} {:<11} {:<24} {}",
        info.sandbox_id,
        info.name.as_deref().unwrap_or("-"),
        info.status.as_str(),
        info.image,
        reason,
    )
}

pub async fn dispatch(cmd: SbxCommand) -> anyhow::Result<u8> {
    let api = client::server_url();
    match cmd {
        SbxCommand::Create {
            image,
            name,
            cpus,
            memory,
            timeout,
            json,
        } => {
            let body = CreateSandboxRequest {
                image,
                name,
                timeout_secs: timeout,
                resources: Some(CreateSandboxResources {
                    cpus,
                    memory_mb: memory,
                    ..CreateSandboxResources::default()
                }),
                ..CreateSandboxRequest::default()
            };
            let created: CreateSandboxResponse =
                client::call(&api, Method::POST, &sandboxes_path(), None, Some(&body)).await?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                println!("{}", created.sandbox_id);
            }
        }
        SbxCommand::Ls { all, json } => {
            let mut sandboxes = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut path = format!("{}?include_terminated={all}", sandboxes_path());
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={c}"));
                }
                let page: ListSandboxesResponse =
                    client::call(&api, Method::GET, &path, None, None::<&()>).await?;
                sandboxes.extend(page.sandboxes);
                match page.cursor {
                    Some(c) if !c.is_empty() => cursor = Some(c),
                    _ => break,
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&sandboxes)?);
            } else {
                println!(
                    "{:<22} {:<16} {:<11} {:<24} REASON",
                    "ID", "NAME", "STATUS", "IMAGE"
                );
                for s in &sandboxes {
                    println!("{}", row(s));
                }
            }
        }
        SbxCommand::Get { sandbox, json } => {
            let info = get(&api, &sandbox).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}", row(&info));
            }
        }
        SbxCommand::Rm { sandboxes } => {
            for s in sandboxes {
                client::json(
                    &api,
                    Method::DELETE,
                    &format!("{}/{s}", sandboxes_path()),
                    None,
                    None,
                )
                .await?;
            }
        }
        SbxCommand::Stop { sandboxes, grace } => {
            for s in sandboxes {
                let info: SandboxInfo = client::call(
                    &api,
                    Method::POST,
                    &format!("{}/{s}/stop", sandboxes_path()),
                    None,
                    Some(&json!({ "grace_secs": grace })),
                )
                .await?;
                println!("{}", row(&info));
            }
        }
        SbxCommand::Exec { sandbox, command } => return exec(&api, &sandbox, command).await,
        SbxCommand::Cp { from, to } => copy(&api, &from, &to).await?,
        SbxCommand::PortForward {
            sandbox,
            ports,
            address,
        } => {
            let (proxy, host, info) = route(&api, &sandbox).await?;
            let pairs = ports
                .iter()
                .map(|p| crate::forward::parse_pair(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            crate::forward::run(&proxy, &host, &info.sandbox_id, address, &pairs).await?;
        }
        SbxCommand::Egress {
            sandbox,
            follow,
            json,
        } => {
            let mut after = 0u64;
            if !json {
                println!(
                    "{:<24} {:<7} {:<5} {:<22} {:<28} BYTES",
                    "TIME", "VERDICT", "PROTO", "DESTINATION", "HOST"
                );
            }
            loop {
                let path = format!("{}/{sandbox}/egress?after={after}", sandboxes_path());
                let log: hutch_api::EgressLog =
                    client::call(&api, Method::GET, &path, None, None::<&()>).await?;
                for e in &log.entries {
                    if json {
                        println!("{}", serde_json::to_string(e)?);
                    } else {
                        println!("{}", egress_row(e));
                    }
                }
                after = log.last_seq;
                if !follow {
                    break;
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
        SbxCommand::Expose {
            sandbox,
            ports,
            remove,
            public,
        } => {
            let info = get(&api, &sandbox).await?;
            let mut exposed = info.exposed_ports.clone();
            if remove {
                exposed.retain(|p| !ports.contains(p));
            } else {
                exposed.extend(&ports);
            }
            let body = json!({
                "exposed_ports": exposed,
                "allow_unauthenticated_access": public.unwrap_or(info.allow_unauthenticated_access),
            });
            let path = format!("{}/{}", sandboxes_path(), info.sandbox_id);
            let updated: SandboxInfo =
                client::call(&api, Method::PATCH, &path, None, Some(&body)).await?;
            let ingress = updated.ingress_endpoint.as_deref().unwrap_or_default();
            for port in &updated.exposed_ports {
                println!("{port}\t{}", port_url(ingress, &updated.sandbox_id, *port));
            }
        }
        SbxCommand::Watch {
            sandbox,
            path,
            recursive,
            json,
        } => {
            let (proxy, host, _) = route(&api, &sandbox).await?;
            let uri = format!(
                "/hutch/v1/files/watch?path={}&recursive={recursive}",
                encode(&path)
            );
            let resp =
                client::send(&proxy, Method::GET, &uri, Some(&host), full(Bytes::new())).await?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                bail!(
                    "watching {path}: {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
            let mut body = resp.into_body();
            let mut pending = String::new();
            let mut stdout = tokio::io::stdout();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = pending.find("\n\n") {
                    let block: String = pending.drain(..end + 2).collect();
                    let Some(event) = block.trim().strip_prefix("data: ") else {
                        continue;
                    };
                    let line = if json {
                        format!("{event}\n")
                    } else {
                        let e: Value = serde_json::from_str(event).unwrap_or_default();
                        format!(
                            "{} {}{}\n",
                            e["type"].as_str().unwrap_or("?"),
                            e["path"].as_str().unwrap_or("?"),
                            if e["is_dir"] == true { "/" } else { "" }
                        )
                    };
                    stdout.write_all(line.as_bytes()).await?;
                    stdout.flush().await?;
                }
            }
        }
        SbxCommand::Logs { sandbox, json } => {
            let (proxy, host, _) = route(&api, &sandbox).await?;
            let procs: ListProcessesResponse = client::call(
                &proxy,
                Method::GET,
                "/api/v1/processes",
                Some(&host),
                None::<&()>,
            )
            .await?;
            let mut out = Vec::new();
            for p in procs.processes {
                let output: OutputResponse = client::call(
                    &proxy,
                    Method::GET,
                    &format!("/api/v1/processes/{}/output", p.pid),
                    Some(&host),
                    None::<&()>,
                )
                .await?;
                out.push((p, output.lines));
            }
            if json {
                let entries: Vec<Value> = out
                    .iter()
                    .map(|(p, lines)| json!({"process": p, "lines": lines}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for (p, lines) in &out {
                    let status = serde_json::to_value(p.status).unwrap_or_default();
                    println!(
                        "==> pid {} {} ({})",
                        p.pid,
                        p.command,
                        status.as_str().unwrap_or_default()
                    );
                    for line in lines {
                        println!("{line}");
                    }
                }
            }
        }
    }
    Ok(0)
}

/// Runs `command` through the proxy's byte-exact framed exec; stdout and stderr stay apart.
async fn exec(api: &str, sandbox: &str, command: Vec<String>) -> anyhow::Result<u8> {
    let (proxy, host, _) = route(api, sandbox).await?;
    let spec = StartProcess {
        command: command[0].clone(),
        args: command[1..].to_vec(),
        stdin_mode: StdinMode::Closed,
        ..StartProcess::default()
    };
    let resp = client::send(
        &proxy,
        Method::POST,
        "/hutch/v1/processes/exec",
        Some(&host),
        full(serde_json::to_vec(&spec)?),
    )
    .await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = client::read_whole(resp.into_body()).await?;
        bail!("{} (HTTP {status})", String::from_utf8_lossy(&body));
    }
    let mut body = resp.into_body();
    let mut decoder = FrameDecoder::default();
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("the stream broke")?.into_data() else {
            continue;
        };
        decoder.push(&data);
        while let Some(frame) = decoder.next_frame()? {
            match frame.kind {
                FrameKind::Stdout => stdout.write_all(&frame.payload).await?,
                FrameKind::Stderr => stderr.write_all(&frame.payload).await?,
                FrameKind::Exit => {
                    stdout.flush().await?;
                    stderr.flush().await?;
                    let exit: hutch_wire::ExitInfo = serde_json::from_slice(&frame.payload)?;
                    return Ok(exit.shell_code().clamp(0, 255) as u8);
                }
                FrameKind::Error => bail!("{}", String::from_utf8_lossy(&frame.payload)),
                _ => {}
            }
        }
    }
    bail!("the stream ended before the process exited")
}

/// Chunk size of `cp` uploads: memory stays a few chunks whatever the file's size.
const CP_CHUNK: usize = 256 << 10;

async fn copy(api: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let remote = |s: &str| {
        s.split_once(':')
            .filter(|(id, path)| !id.is_empty() && path.starts_with('/'))
            .map(|(a, b)| (a.to_string(), b.to_string()))
    };
    match (remote(from), remote(to)) {
        (Some((sandbox, path)), None) => {
            let (proxy, host, _) = route(api, &sandbox).await?;
            let resp = client::send(
                &proxy,
                Method::GET,
                &format!("/api/v1/files?path={}", encode(&path)),
                Some(&host),
                full(Bytes::new()),
            )
            .await?;
            let status = resp.status();
            if !status.is_success() {
                let bytes = client::read_whole(resp.into_body()).await?;
                bail!("{} (HTTP {status})", String::from_utf8_lossy(&bytes));
            }
            // Streamed to the destination as it arrives, never held whole.
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = if to == "-" {
                Box::new(tokio::io::stdout())
            } else {
                Box::new(
                    tokio::fs::File::create(to)
                        .await
                        .with_context(|| format!("writing {to}"))?,
                )
            };
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.context("the download broke")?;
                if let Ok(data) = frame.into_data() {
                    out.write_all(&data)
                        .await
                        .with_context(|| format!("writing {to}"))?;
                }
            }
            out.flush().await.with_context(|| format!("writing {to}"))?;
        }
        (None, Some((sandbox, path))) => {
            let (proxy, host, _) = route(api, &sandbox).await?;
            let file = std::fs::File::open(from).with_context(|| format!("reading {from}"))?;
            let resp = client::send(
                &proxy,
                Method::PUT,
                &format!("/api/v1/files?path={}", encode(&path)),
                Some(&host),
                file_body(file),
            )
            .await
            .with_context(|| format!("uploading {from}"))?;
            let status = resp.status();
            if !status.is_success() {
                let body = client::read_whole(resp.into_body()).await?;
                bail!("{} (HTTP {status})", String::from_utf8_lossy(&body));
            }
        }
        _ => bail!("name exactly one side as SANDBOX:/absolute/path"),
    }
    Ok(())
}

/// A request body read from `file` a chunk at a time. A read error ends the body with an
/// error, so the upload fails instead of storing a truncated file.
fn file_body(file: std::fs::File) -> client::Body {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    struct ReadBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);
    impl hyper::body::Body for ReadBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|r| r.map(hyper::body::Frame::data).map_err(BoxError::from)))
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file;
        loop {
            let mut buf = vec![0u8; CP_CHUNK];
            let chunk = match file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    ReadBody(rx).boxed_unsync()
}
