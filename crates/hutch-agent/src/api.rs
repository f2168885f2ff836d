//! Routes of the data-plane API the agent serves over its dial-home connection.
//!
//! `/api/v1/...` is the Tensorlake sandbox daemon's API, shape for shape; `/hutch/v1/...` adds
//! what those shapes cannot carry: byte-exact framed output with resumable sequence numbers
//! (`exec`, `attach`), `stat`, `mkdir` and `rename`, and the PTY stream the host proxy bridges
//! the SDK's PTY websocket onto (`/hutch/v1/pty/{id}/stream`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hutch_wire::frame::{GapPayload, StartedPayload, encode_parts};
use hutch_wire::{CreatePty, ListPtySessions, pty::PTY_TOKEN_HEADER};
use hutch_wire::{
    DaemonInfo, ErrorBody, ExitInfo, FrameKind, HealthResponse, ListProcessesResponse, OutputEvent,
    RunEvent, SendSignalRequest, SendSignalResponse, StartProcess,
};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::files;
use crate::http::{self, ApiError, Body, empty, ok_json};
use crate::output::{Chunk, LineSplitter, Stream};
use crate::process::{self, Processes};
use crate::pty::{self, PtySessions};
use crate::tcp;
use hutch_wire::clock::now_ms;

const HEARTBEAT: Duration = Duration::from_secs(10);

pub async fn handle(req: Request<Incoming>, procs: Processes, ptys: PtySessions) -> Response<Body> {
    route(req, procs, ptys)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn route(
    req: Request<Incoming>,
    procs: Processes,
    ptys: PtySessions,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(hutch_wire::query::decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["api", "v1", "health"]) => ok_json(&HealthResponse { healthy: true }),
        (&Method::GET, ["api", "v1", "info"]) => {
            let (running, total, boot) = procs.counts();
            ok_json(&DaemonInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_secs: (now_ms() - boot) / 1000,
                running_processes: running,
                total_processes: total,
            })
        }
        (&Method::GET, ["api", "v1", "processes"]) => ok_json(&ListProcessesResponse {
            processes: procs.list(),
        }),
        (&Method::POST, ["api", "v1", "processes"]) => {
            let spec: StartProcess = http::read_json(req.into_body()).await?;
            ok_json(&procs.spawn(spec)?)
        }
        (&Method::POST, ["api", "v1", "processes", "run"]) => {
            let spec: StartProcess = http::read_json(req.into_body()).await?;
            run_sse(procs, spec)
        }
        (&Method::POST, ["hutch", "v1", "processes", "exec"]) => {
            let spec: StartProcess = http::read_json(req.into_body()).await?;
            let info = procs.spawn(spec)?;
            Ok(framed(procs, info.pid as i32, 0, Some(info.started_at)))
        }
        (&Method::GET, ["hutch", "v1", "processes", p, "attach"]) => {
            let pid = procs.resolve(p)?;
            let from = http::query_param(&req, "from")
                .map(|v| v.parse::<u64>())
                .transpose()
                .map_err(|_| ApiError::invalid("`from` must be a sequence number"))?;
            Ok(framed(procs, pid, from.unwrap_or(0), None))
        }
        (_, ["api", "v1", "processes", p, rest @ ..]) => {
            let pid = procs.resolve(p)?;
            process_route(req, procs, pid, &method, rest).await
        }
        (_, ["api", "v1", "files"]) => {
            let path = files::request_path(&req, &procs)?;
            match method {
                Method::GET => files::read(path).await,
                Method::PUT | Method::POST => {
                    let attrs = files::WriteAttrs::from_query(
                        http::query_param(&req, "mode").as_deref(),
                        http::query_param(&req, "owner").as_deref(),
                    )?;
                    files::write(path, req.into_body(), &procs, attrs).await?;
                    Ok(empty(StatusCode::OK))
                }
                Method::DELETE => {
                    files::delete(path).await?;
                    Ok(empty(StatusCode::OK))
                }
                _ => Err(method_not_allowed(&method, &path_str(&segs))),
            }
        }
        (&Method::GET, ["api", "v1", "files", "list"]) => {
            ok_json(&files::list(files::request_path(&req, &procs)?).await?)
        }
        (&Method::GET, ["hutch", "v1", "files", "stat"]) => {
            ok_json(&files::stat(files::request_path(&req, &procs)?).await?)
        }
        (&Method::GET, ["hutch", "v1", "files", "watch"]) => {
            let recursive = http::query_param(&req, "recursive").is_some_and(|v| v == "true");
            crate::watch::watch(files::request_path(&req, &procs)?, recursive)
        }
        (&Method::GET, ["hutch", "v1", "files", "exists"]) => {
            ok_json(&files::exists(files::request_path(&req, &procs)?).await)
        }
        (&Method::POST, ["hutch", "v1", "files", "copy"]) => {
            let (from, to, body) = from_to(req, &procs).await?;
            let overwrite = body.get("overwrite").and_then(|v| v.as_bool());
            files::copy(from, to, overwrite.unwrap_or(false)).await?;
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, ["hutch", "v1", "files", "mkdir"]) => {
            files::mkdir(files::request_path(&req, &procs)?).await?;
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, ["hutch", "v1", "files", "rename"]) => {
            let (from, to, _) = from_to(req, &procs).await?;
            files::rename(from, to).await?;
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, ["hutch", "v1", "limits"]) => {
            // A live resize: the memory limit the agent enforces per process.
            let bytes = http::query_param(&req, "memory_bytes")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|b| *b >= 1 << 20)
                .ok_or_else(|| ApiError::invalid("`memory_bytes` must be at least 1 MiB"))?;
            crate::memory::set_limit(&procs, bytes);
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, ["hutch", "v1", "shutdown"]) => {
            let grace = http::query_param(&req, "grace_ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            Ok(shutdown(procs, Duration::from_millis(grace)).await)
        }
        (&Method::GET, ["api", "v1", "pty"]) => ok_json(&ListPtySessions {
            sessions: ptys.list(),
        }),
        (&Method::POST, ["api", "v1", "pty"]) => {
            let spec: CreatePty = http::read_json(req.into_body()).await?;
            Ok(http::json_response(
                StatusCode::CREATED,
                &ptys.create(spec)?,
            ))
        }
        (&Method::GET, ["api", "v1", "pty", id]) => ok_json(&ptys.info(id)?),
        (&Method::DELETE, ["api", "v1", "pty", id]) => {
            ptys.kill(id)?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, ["hutch", "v1", "pty", id, "stream"]) => {
            let token = http::query_param(&req, "token").or_else(|| {
                req.headers()
                    .get(PTY_TOKEN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            });
            pty::attach(&ptys, id, token, req.into_body())
        }
        (&Method::POST, ["hutch", "v1", "tcp"]) => {
            let port = tcp::port(http::query_param(&req, "port"))?;
            tcp::open(port, req.into_body()).await
        }
        (_, ["api", "v1", "pty", ..] | ["hutch", "v1", "pty", ..]) => {
            Err(method_not_allowed(&method, &path))
        }
        _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    }
}

/// Ends the sandbox: SIGTERM to every process group, SIGKILL to what is left after `grace`,
/// then the agent (PID 1) exits, which the runtime's supervisor turns into a teardown.
async fn shutdown(procs: Processes, grace: Duration) -> Response<Body> {
    if !grace.is_zero() {
        for pid in procs.running_pids() {
            process::signal_group(pid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !procs.running_pids().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for pid in procs.running_pids() {
        process::signal_group(pid, libc::SIGKILL);
    }
    tokio::spawn(async {
        // Let the response reach the host before PID 1 goes.
        tokio::time::sleep(Duration::from_millis(5)).await;
        std::process::exit(0);
    });
    empty(StatusCode::OK)
}

/// The `from` and `to` paths of a JSON body (rename, copy), checked, and the body.
async fn from_to(
    req: Request<Incoming>,
    procs: &Processes,
) -> Result<(std::path::PathBuf, std::path::PathBuf, serde_json::Value), ApiError> {
    let base = procs.config().working_dir.unwrap_or_else(|| "/".into());
    let body: serde_json::Value = http::read_json(req.into_body()).await?;
    let field = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| ApiError::invalid(format!("`{k}` is required")))
            .and_then(|p| files::sandbox_path(p, &base))
    };
    Ok((field("from")?, field("to")?, body))
}

fn path_str(segs: &[&str]) -> String {
    format!("/{}", segs.join("/"))
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    )
}

async fn process_route(
    req: Request<Incoming>,
    procs: Processes,
    pid: i32,
    method: &Method,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    match (method, rest) {
        (&Method::GET, []) => ok_json(&procs.info(pid)?),
        (&Method::DELETE, []) => {
            procs.stop_managed(pid);
            if procs.with(pid, |p| p.is_running())? {
                process::signal_group(pid, libc::SIGKILL);
            }
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, ["restart"]) => ok_json(&procs.restart(pid).await?),
        (&Method::POST, ["signal"]) => {
            let body: SendSignalRequest = http::read_json(req.into_body()).await?;
            if !(1..=64).contains(&body.signal) {
                return Err(ApiError::invalid(format!(
                    "signal {} is not a valid signal number (1-64)",
                    body.signal
                )));
            }
            let running = procs.with(pid, |p| p.is_running())?;
            let success = running && process::signal_group(pid, body.signal as i32);
            ok_json(&SendSignalResponse { success })
        }
        (&Method::POST, ["stdin"]) => {
            write_stdin(&procs, pid, req.into_body()).await?;
            Ok(empty(StatusCode::OK))
        }
        (&Method::POST, ["stdin", "close"]) => {
            let stdin = procs.with(pid, |p| p.stdin.clone())?;
            if let Some(mut pipe) = stdin.lock().await.take() {
                let _ = pipe.shutdown().await;
            }
            Ok(empty(StatusCode::OK))
        }
        (&Method::GET, [stream @ ("stdout" | "stderr" | "output")]) => {
            snapshot_lines(&procs, pid, stream_filter(stream))
        }
        (&Method::GET, [stream @ ("stdout" | "stderr" | "output"), "follow"]) => {
            Ok(follow_sse(procs, pid, stream_filter(stream)))
        }
        _ => Err(method_not_allowed(
            method,
            &format!("/api/v1/processes/{pid}/{}", rest.join("/")),
        )),
    }
}

fn stream_filter(name: &str) -> Option<Stream> {
    match name {
        "stdout" => Some(Stream::Stdout),
        "stderr" => Some(Stream::Stderr),
        _ => None,
    }
}

async fn write_stdin(procs: &Processes, pid: i32, mut body: Incoming) -> Result<(), ApiError> {
    let stdin = procs.with(pid, |p| p.stdin.clone())?;
    let mut guard = stdin.lock().await;
    let pipe = guard.as_mut().ok_or_else(|| {
        ApiError::conflict(
            "stdin is not open: start the process with stdin_mode \"pipe\" and do not close it",
        )
    })?;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::invalid(format!("stdin upload interrupted: {e}")))?;
        if let Ok(data) = frame.into_data()
            && let Err(e) = pipe.write_all(&data).await
        {
            *guard = None;
            return Err(ApiError::conflict(format!(
                "the process no longer reads stdin: {e}"
            )));
        }
    }
    Ok(())
}

/// `GET .../stdout|stderr|output`: every retained line as one JSON document. It is written
/// as it is read, batch by batch, so the agent holds a bounded amount however large the
/// output (a piece of a line is at most [`MAX_LINE`](crate::output::MAX_LINE) bytes, six
/// times that in JSON), and it covers output up to the request, so a busy process cannot
/// make it endless. Its total is bounded by the process's ring.
fn snapshot_lines(
    procs: &Processes,
    pid: i32,
    filter: Option<Stream>,
) -> Result<Response<Body>, ApiError> {
    let end = procs.with(pid, |p| p.output.next_seq())?;
    let procs = procs.clone();
    let (tx, body) = http::channel(4);
    tokio::spawn(async move {
        let mut doc = JsonLines::new(pid);
        let mut split = LineSplitter::default();
        let mut cursor = 0;
        while cursor < end {
            let Ok(slice) = procs.with(pid, |p| p.output.read_batch(cursor, READ_BATCH)) else {
                break;
            };
            let chunks: Vec<&Chunk> = slice.chunks.iter().take_while(|c| c.seq < end).collect();
            let Some(last) = chunks.last() else {
                break;
            };
            cursor = last.seq + 1;
            for chunk in chunks {
                if filter.is_none_or(|f| f == chunk.stream) {
                    doc.extend(split.push(chunk.stream, &chunk.data));
                }
                if let Some(full) = doc.take_full()
                    && tx.send(full).await.is_err()
                {
                    return;
                }
            }
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            doc.extend(split.finish(stream));
        }
        let _ = tx.send(doc.close()).await;
    });
    Ok(http::streaming("application/json", body))
}

/// An [`hutch_wire::OutputResponse`] written piece by piece: `{"pid":..,"lines":[..],
/// "line_count":..}`, handed out in parts of about [`JSON_PART`] bytes.
struct JsonLines {
    buf: Vec<u8>,
    count: usize,
}

/// The size at which a part of a streamed JSON document is handed to the connection.
const JSON_PART: usize = 64 << 10;

impl JsonLines {
    fn new(pid: i32) -> Self {
        Self {
            buf: format!("{{\"pid\":{pid},\"lines\":[").into_bytes(),
            count: 0,
        }
    }

    fn extend(&mut self, lines: impl IntoIterator<Item = String>) {
        for line in lines {
            if self.count > 0 {
                self.buf.push(b',');
            }
            // Serializing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.buf, &line);
            self.count += 1;
        }
    }

    fn take_full(&mut self) -> Option<Bytes> {
        (self.buf.len() >= JSON_PART).then(|| Bytes::from(std::mem::take(&mut self.buf)))
    }

    fn close(mut self) -> Bytes {
        self.buf
            .extend_from_slice(format!("],\"line_count\":{}}}", self.count).as_bytes());
        Bytes::from(self.buf)
    }
}

/// What a follower is handed, in order.
enum Event<'a> {
    Gap(u64),
    Chunk(&'a Chunk),
    End(Option<ExitInfo>),
    Idle,
}

/// Raw output bytes a follower takes from the log per read: what it pins of chunks the ring
/// evicts meanwhile, and what it renders before sending, stay bounded.
const READ_BATCH: usize = 256 << 10;
/// Raw bytes an SSE follower splits into lines at once. An empty line is some 60 bytes of
/// event, so this bounds what one render produces (about 500 KiB) before it is sent.
const SSE_PIECE: usize = 8 << 10;

/// Feeds `render`'s output for every event of `pid`'s log from `cursor` on into `tx`, until
/// the process finished and everything was delivered, or the client went away. With
/// `piece`, chunks are handed to `render` in slices of at most that many bytes (same
/// sequence number), and each render's output is sent before the next is made.
async fn pump(
    procs: Processes,
    pid: i32,
    mut cursor: u64,
    tx: mpsc::Sender<Bytes>,
    piece: Option<usize>,
    mut render: impl FnMut(Event<'_>) -> Vec<Bytes> + Send,
) {
    loop {
        let Ok((slice, mut changed)) = procs.with(pid, |p| {
            (
                p.output.read_batch(cursor, READ_BATCH),
                p.output.subscribe(),
            )
        }) else {
            return;
        };
        if let Some(first) = slice.first_available
            && !send_all(&tx, render(Event::Gap(first))).await
        {
            return;
        }
        let more = !slice.chunks.is_empty();
        for chunk in &slice.chunks {
            cursor = chunk.seq + 1;
            let step = piece.unwrap_or(usize::MAX).max(1);
            let mut at = 0;
            while at < chunk.data.len() {
                let upto = chunk.data.len().min(at.saturating_add(step));
                let part = Chunk {
                    data: chunk.data.slice(at..upto),
                    ..chunk.clone()
                };
                if !send_all(&tx, render(Event::Chunk(&part))).await {
                    return;
                }
                at = upto;
            }
        }
        if slice.closed {
            let exit = procs.with(pid, |p| p.exit.clone()).ok().flatten();
            send_all(&tx, render(Event::End(exit))).await;
            return;
        }
        if more {
            // The batch may have stopped short of the end: read on before waiting.
            continue;
        }
        match tokio::time::timeout(HEARTBEAT, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                if !send_all(&tx, render(Event::Idle)).await {
                    return;
                }
            }
        }
    }
}

/// Sends every part in order; false when the client went away.
async fn send_all(tx: &mpsc::Sender<Bytes>, parts: Vec<Bytes>) -> bool {
    for bytes in parts {
        if tx.send(bytes).await.is_err() {
            return false;
        }
    }
    true
}

fn sse_lines(split: &mut LineSplitter, chunk: &Chunk, filter: Option<Stream>) -> Vec<Bytes> {
    if filter.is_some_and(|f| f != chunk.stream) {
        return Vec::new();
    }
    split
        .push(chunk.stream, &chunk.data)
        .into_iter()
        .map(|line| line_event(line, chunk.time_ms, chunk.stream))
        .collect()
}

fn line_event(line: String, timestamp: i64, stream: Stream) -> Bytes {
    http::sse_event(&OutputEvent {
        line,
        timestamp,
        stream: Some(stream.name().to_string()),
    })
}

fn flush_lines(split: &mut LineSplitter, filter: Option<Stream>) -> Vec<Bytes> {
    [Stream::Stdout, Stream::Stderr]
        .into_iter()
        .filter(|s| filter.is_none_or(|f| f == *s))
        .filter_map(|s| split.finish(s).map(|l| line_event(l, now_ms(), s)))
        .collect()
}

fn follow_sse(procs: Processes, pid: i32, filter: Option<Stream>) -> Response<Body> {
    let (tx, body) = http::channel(16);
    let mut split = LineSplitter::default();
    tokio::spawn(pump(
        procs,
        pid,
        0,
        tx,
        Some(SSE_PIECE),
        move |event| match event {
            Event::Chunk(chunk) => sse_lines(&mut split, chunk, filter),
            Event::End(_) => flush_lines(&mut split, filter),
            Event::Gap(_) => Vec::new(),
            Event::Idle => vec![Bytes::from_static(b": keepalive\n\n")],
        },
    ));
    http::streaming("text/event-stream", body)
}

fn run_sse(procs: Processes, spec: StartProcess) -> Result<Response<Body>, ApiError> {
    let info = procs.spawn(spec)?;
    let pid = info.pid as i32;
    let (tx, body) = http::channel(16);
    let started = http::sse_event(&RunEvent::Started {
        pid: info.pid,
        started_at: info.started_at,
    });
    let mut split = LineSplitter::default();
    tokio::spawn(async move {
        if tx.send(started).await.is_err() {
            return;
        }
        pump(
            procs,
            pid,
            0,
            tx,
            Some(SSE_PIECE),
            move |event| match event {
                Event::Chunk(chunk) => sse_lines(&mut split, chunk, None),
                Event::End(exit) => {
                    let mut out = flush_lines(&mut split, None);
                    if let Some(exit) = exit {
                        out.push(http::sse_event(&RunEvent::Exited(exit)));
                    }
                    out
                }
                Event::Gap(_) => Vec::new(),
                Event::Idle => vec![Bytes::from_static(b": keepalive\n\n")],
            },
        )
        .await;
    });
    Ok(http::streaming("text/event-stream", body))
}

fn framed(procs: Processes, pid: i32, from: u64, started_at: Option<i64>) -> Response<Body> {
    let (tx, body) = http::channel(16);
    tokio::spawn(async move {
        if let Some(started_at) = started_at {
            let payload =
                serde_json::to_vec(&StartedPayload { pid, started_at }).unwrap_or_default();
            let mut out = Vec::new();
            encode_parts(FrameKind::Started, 0, &payload, &mut out);
            if tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
        }
        pump(procs, pid, from, tx, None, |event| {
            let mut out = Vec::new();
            match event {
                Event::Chunk(chunk) => {
                    let kind = match chunk.stream {
                        Stream::Stdout => FrameKind::Stdout,
                        Stream::Stderr => FrameKind::Stderr,
                    };
                    encode_parts(kind, chunk.seq, &chunk.data, &mut out);
                }
                Event::Gap(first) => {
                    let payload = serde_json::to_vec(&GapPayload {
                        first_available: first,
                    })
                    .unwrap_or_default();
                    encode_parts(FrameKind::Gap, first, &payload, &mut out);
                }
                Event::End(Some(exit)) => {
                    let payload = serde_json::to_vec(&exit).unwrap_or_default();
                    encode_parts(FrameKind::Exit, 0, &payload, &mut out);
                }
                Event::End(None) => {
                    let payload = serde_json::to_vec(&ErrorBody::new(
                        "lost",
                        "the process's exit status was not recorded",
                    ))
                    .unwrap_or_default();
                    encode_parts(FrameKind::Error, 0, &payload, &mut out);
                }
                Event::Idle => return Vec::new(),
            }
            vec![Bytes::from(out)]
        })
        .await;
    });
    http::streaming("application/x-hutch-frames", body)
}
