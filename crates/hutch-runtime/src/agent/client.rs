//! A typed client for the agent's data-plane API, over an [`AgentLink`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hutch_wire::frame::StartedPayload;
use hutch_wire::query::encode;
use hutch_wire::{
    CreatePty, ErrorBody, ExitInfo, FileStat, FrameDecoder, FrameKind, HealthResponse,
    ListDirectoryResponse, ListProcessesResponse, ListPtySessions, ProcessInfo, PtySession,
    SendSignalRequest, SendSignalResponse, StartProcess,
};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::http::{MAX_ANSWER_BYTES, read_capped};
use super::link::{AgentLink, BoxError, RequestBody};
use super::pty::PtyStream;
use super::remote::ProxyRoute;
use super::tcp::{AgentTcp, TcpReader, TcpWriter};
use crate::error::{Result, RuntimeError};

/// How long a request waits for the agent to (re)connect.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AgentClient {
    route: Route,
}

/// How requests reach the agent.
#[derive(Clone)]
enum Route {
    /// The sandbox's own dial-home link (this process owns the sandbox).
    Link(AgentLink),
    /// A `hutch serve` sandbox proxy (a server owns the sandbox).
    Proxy(std::sync::Arc<ProxyRoute>),
}

#[derive(Clone, Copy)]
enum Domain {
    Process,
    Files,
}

impl AgentClient {
    pub fn new(link: AgentLink) -> Self {
        Self {
            route: Route::Link(link),
        }
    }

    /// A client for a sandbox a `hutch serve` owns, through its proxy at `proxy_url`.
    pub fn via_proxy(proxy_url: &str, sandbox_id: &str, api_key: Option<&str>) -> Result<Self> {
        Ok(Self {
            route: Route::Proxy(std::sync::Arc::new(ProxyRoute::new(
                proxy_url, sandbox_id, api_key,
            )?)),
        })
    }

    /// The dial-home link, when this client uses one.
    pub fn link(&self) -> Option<&AgentLink> {
        match &self.route {
            Route::Link(link) => Some(link),
            Route::Proxy(_) => None,
        }
    }

    async fn send(&self, req: Request<RequestBody>, wait: Duration) -> Result<Response<Incoming>> {
        match &self.route {
            Route::Link(link) => link.send(req, wait).await,
            Route::Proxy(proxy) => proxy.send(req, wait).await,
        }
    }

    /// Sends a raw request; the proxy uses this to forward client requests unchanged.
    pub async fn request(&self, req: Request<RequestBody>) -> Result<Response<Incoming>> {
        self.send(req, CONNECT_WAIT).await
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: RequestBody,
        domain: Domain,
    ) -> Result<Response<Incoming>> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| RuntimeError::InvalidSpec {
                reason: format!("bad request to agent: {e}"),
            })?;
        let resp = self.send(req, CONNECT_WAIT).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = collect(resp.into_body()).await.unwrap_or_default();
        let body: ErrorBody = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| ErrorBody::new("agent_error", format!("agent answered {status}")));
        Err(match domain {
            Domain::Process => RuntimeError::ProcessFailure {
                code: body.code,
                message: body.error,
            },
            Domain::Files => RuntimeError::FilesystemFailure {
                code: body.code,
                message: body.error,
            },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: RequestBody,
        domain: Domain,
    ) -> Result<T> {
        let resp = self.call(method, uri, body, domain).await?;
        let bytes = collect(resp.into_body()).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::agent_disrupted(format!("agent sent malformed JSON: {e}")))
    }

    pub async fn health(&self) -> Result<bool> {
        let h: HealthResponse = self
            .json(Method::GET, "/api/v1/health", empty(), Domain::Process)
            .await?;
        Ok(h.healthy)
    }

    pub async fn start(&self, spec: &StartProcess) -> Result<ProcessInfo> {
        self.json(
            Method::POST,
            "/api/v1/processes",
            json_body(spec),
            Domain::Process,
        )
        .await
    }

    /// Starts a process and streams its framed output until it exits.
    pub async fn exec(&self, spec: &StartProcess) -> Result<ExecStream> {
        let resp = self
            .call(
                Method::POST,
                "/hutch/v1/processes/exec",
                json_body(spec),
                Domain::Process,
            )
            .await?;
        Ok(ExecStream::new(resp.into_body()))
    }

    /// Output of `pid` from sequence number `from` on, then its exit.
    pub async fn attach(&self, pid: i64, from: u64) -> Result<ExecStream> {
        let uri = format!("/hutch/v1/processes/{pid}/attach?from={from}");
        let resp = self
            .call(Method::GET, &uri, empty(), Domain::Process)
            .await?;
        Ok(ExecStream::new(resp.into_body()))
    }

    pub async fn process(&self, pid: i64) -> Result<ProcessInfo> {
        let uri = format!("/api/v1/processes/{pid}");
        self.json(Method::GET, &uri, empty(), Domain::Process).await
    }

    pub async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        let list: ListProcessesResponse = self
            .json(Method::GET, "/api/v1/processes", empty(), Domain::Process)
            .await?;
        Ok(list.processes)
    }

    /// Signals a process by pid or by managed-process name.
    pub async fn signal(&self, process: impl std::fmt::Display, signal: i32) -> Result<bool> {
        let uri = format!("/api/v1/processes/{}/signal", encode(&process.to_string()));
        let body = json_body(&SendSignalRequest {
            signal: signal.into(),
        });
        let resp: SendSignalResponse = self.json(Method::POST, &uri, body, Domain::Process).await?;
        Ok(resp.success)
    }

    pub async fn kill_process(&self, pid: i64) -> Result<()> {
        let uri = format!("/api/v1/processes/{pid}");
        self.call(Method::DELETE, &uri, empty(), Domain::Process)
            .await
            .map(drop)
    }

    /// Streams `body` into the process's stdin (it stays open afterwards).
    pub async fn write_stdin(&self, pid: i64, body: RequestBody) -> Result<()> {
        let uri = format!("/api/v1/processes/{pid}/stdin");
        self.call(Method::POST, &uri, body, Domain::Process)
            .await
            .map(drop)
    }

    pub async fn close_stdin(&self, pid: i64) -> Result<()> {
        let uri = format!("/api/v1/processes/{pid}/stdin/close");
        self.call(Method::POST, &uri, empty(), Domain::Process)
            .await
            .map(drop)
    }

    /// Starts a command on a new pseudo-terminal; the answer carries the session's id and
    /// the token every attach must present.
    pub async fn create_pty(&self, req: &CreatePty) -> Result<PtySession> {
        self.json(Method::POST, "/api/v1/pty", json_body(req), Domain::Process)
            .await
    }

    /// Every PTY session, running or ended but not yet forgotten (without tokens).
    pub async fn pty_sessions(&self) -> Result<Vec<PtySession>> {
        let list: ListPtySessions = self
            .json(Method::GET, "/api/v1/pty", empty(), Domain::Process)
            .await?;
        Ok(list.sessions)
    }

    /// Attaches to a PTY session: `input` (see [`super::PtyInput::channel`]) carries the
    /// client's messages, the returned stream the agent's. The agent sends nothing until it
    /// received READY. Attaching replaces a stream attached before.
    pub async fn pty_stream(
        &self,
        session_id: &str,
        token: &str,
        input: RequestBody,
    ) -> Result<PtyStream> {
        let uri = format!(
            "/hutch/v1/pty/{}/stream?token={}",
            encode(session_id),
            encode(token)
        );
        let resp = self
            .call(Method::POST, &uri, input, Domain::Process)
            .await?;
        Ok(PtyStream::new(resp.into_body()))
    }

    /// Opens a TCP connection to `port` on the sandbox's loopback, through the agent. A
    /// refusal is `ProcessFailure` with the agent's code (`connection_refused`,
    /// `connect_timeout`, `too_many_streams`).
    pub async fn tcp(&self, port: u16) -> Result<AgentTcp> {
        let (tx, body) = channel_body(super::tcp::WRITE_QUEUE);
        let uri = format!("/hutch/v1/tcp?port={port}");
        let resp = self.call(Method::POST, &uri, body, Domain::Process).await?;
        Ok(AgentTcp {
            writer: TcpWriter(tx),
            reader: TcpReader(resp.into_body()),
        })
    }

    /// Ends a PTY session: SIGHUP, then SIGKILL, to its processes; attached streams end.
    pub async fn kill_pty(&self, session_id: &str) -> Result<()> {
        let uri = format!("/api/v1/pty/{}", encode(session_id));
        self.call(Method::DELETE, &uri, empty(), Domain::Process)
            .await
            .map(drop)
    }

    /// The file's content as a stream of chunks.
    pub async fn read_file(&self, path: &str) -> Result<Incoming> {
        let uri = format!("/api/v1/files?path={}", encode(path));
        Ok(self
            .call(Method::GET, &uri, empty(), Domain::Files)
            .await?
            .into_body())
    }

    pub async fn write_file(&self, path: &str, body: RequestBody) -> Result<()> {
        let uri = format!("/api/v1/files?path={}", encode(path));
        self.call(Method::PUT, &uri, body, Domain::Files)
            .await
            .map(drop)
    }

    /// Writes a small file with `mode` (the agent's `mode` query parameter, octal).
    pub async fn write_file_with_mode(
        &self,
        path: &str,
        mode: u32,
        data: impl Into<Bytes>,
    ) -> Result<()> {
        let uri = format!("/api/v1/files?path={}&mode={mode:o}", encode(path));
        self.call(Method::PUT, &uri, full(data), Domain::Files)
            .await
            .map(drop)
    }

    pub async fn delete_file(&self, path: &str) -> Result<()> {
        let uri = format!("/api/v1/files?path={}", encode(path));
        self.call(Method::DELETE, &uri, empty(), Domain::Files)
            .await
            .map(drop)
    }

    pub async fn list_dir(&self, path: &str) -> Result<ListDirectoryResponse> {
        let uri = format!("/api/v1/files/list?path={}", encode(path));
        self.json(Method::GET, &uri, empty(), Domain::Files).await
    }

    pub async fn stat(&self, path: &str) -> Result<FileStat> {
        let uri = format!("/hutch/v1/files/stat?path={}", encode(path));
        self.json(Method::GET, &uri, empty(), Domain::Files).await
    }

    /// Asks the agent to end the sandbox: SIGTERM, SIGKILL after `grace`, then exit.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        let uri = format!("/hutch/v1/shutdown?grace_ms={}", grace.as_millis());
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .body(empty())
            .map_err(|e| RuntimeError::InvalidSpec {
                reason: e.to_string(),
            })?;
        // A short wait: if the agent is gone, the caller falls back to runsc.
        let wait = Duration::from_millis(200);
        let resp = tokio::time::timeout(grace + Duration::from_secs(2), self.send(req, wait))
            .await
            .map_err(|_| {
                RuntimeError::agent_disrupted("the agent did not answer the shutdown request")
            })??;
        drop(resp);
        Ok(())
    }

    /// Sets the memory limit the agent enforces per process (a live resize).
    pub async fn set_memory_limit(&self, bytes: u64) -> Result<()> {
        let uri = format!("/hutch/v1/limits?memory_bytes={bytes}");
        self.call(Method::POST, &uri, empty(), Domain::Process)
            .await
            .map(drop)
    }

    pub async fn mkdir(&self, path: &str) -> Result<()> {
        let uri = format!("/hutch/v1/files/mkdir?path={}", encode(path));
        self.call(Method::POST, &uri, empty(), Domain::Files)
            .await
            .map(drop)
    }
}

/// Events of a framed process stream.
#[derive(Debug, PartialEq)]
pub enum ExecEvent {
    Started {
        pid: i64,
    },
    Stdout {
        seq: u64,
        data: Vec<u8>,
    },
    Stderr {
        seq: u64,
        data: Vec<u8>,
    },
    /// Output before `first_available` was evicted from the agent's buffer.
    Gap {
        first_available: u64,
    },
    Exit(ExitInfo),
}

pub struct ExecStream {
    body: Incoming,
    decoder: FrameDecoder,
    finished: bool,
}

impl ExecStream {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            decoder: FrameDecoder::default(),
            finished: false,
        }
    }

    /// The next event; `Ok(None)` after the exit event. An error means the connection was
    /// lost mid-stream: reattach from the last sequence number seen plus one.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let frame = self
                .decoder
                .next_frame()
                .map_err(|e| RuntimeError::agent_disrupted(format!("corrupt stream: {e}")))?;
            if let Some(frame) = frame {
                let event = match frame.kind {
                    FrameKind::Started => {
                        let started: Option<StartedPayload> =
                            serde_json::from_slice(&frame.payload).ok();
                        ExecEvent::Started {
                            pid: started.map_or(-1, |s| s.pid.into()),
                        }
                    }
                    FrameKind::Stdout => ExecEvent::Stdout {
                        seq: frame.seq,
                        data: frame.payload,
                    },
                    FrameKind::Stderr => ExecEvent::Stderr {
                        seq: frame.seq,
                        data: frame.payload,
                    },
                    FrameKind::Gap => ExecEvent::Gap {
                        first_available: frame.seq,
                    },
                    FrameKind::Exit => {
                        self.finished = true;
                        let exit = serde_json::from_slice(&frame.payload).map_err(|e| {
                            RuntimeError::agent_disrupted(format!("malformed exit frame: {e}"))
                        })?;
                        ExecEvent::Exit(exit)
                    }
                    FrameKind::Error => {
                        self.finished = true;
                        let body: ErrorBody = serde_json::from_slice(&frame.payload)
                            .unwrap_or_else(|_| ErrorBody::new("agent_error", "stream failed"));
                        return Err(RuntimeError::ProcessFailure {
                            code: body.code,
                            message: body.error,
                        });
                    }
                };
                return Ok(Some(event));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(RuntimeError::agent_disrupted(format!(
                        "stream interrupted: {e}"
                    )));
                }
                None => {
                    return Err(RuntimeError::agent_disrupted(
                        "stream ended before the process's exit",
                    ));
                }
            }
        }
    }
}

pub fn empty() -> RequestBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_body<T: serde::Serialize>(value: &T) -> RequestBody {
    full(serde_json::to_vec(value).unwrap_or_default())
}

/// An answer of the agent read whole, at most [`MAX_ANSWER_BYTES`]: the agent is the
/// sandbox's, and a longer answer is refused rather than buffered.
pub(super) async fn collect(body: Incoming) -> Result<Bytes> {
    read_capped(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| RuntimeError::agent_disrupted(format!("reading the agent's answer: {e}")))
}

/// A request body fed chunk by chunk through the returned sender (stdin, uploads).
pub fn channel_body(capacity: usize) -> (tokio::sync::mpsc::Sender<Bytes>, RequestBody) {
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);
    impl hyper::body::Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Bytes>, BoxError>>>
        {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (tx, ChannelBody(rx).boxed_unsync())
}
