//! Dialing home: the agent connects *out* to the host socket bind-mounted at
//! `/run/hutch/agent.sock` and serves HTTP/2 on that connection, the host being the client.
//! When the connection drops (the host restarted, or cut it) the agent dials again with
//! backoff; processes and their output logs live on in the meantime.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::api;
use crate::process::Processes;
use crate::pty::PtySessions;

const FIRST_BACKOFF: Duration = Duration::from_millis(2);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

pub fn socket_path() -> PathBuf {
    PathBuf::from(hutch_wire::AGENT_SOCKET_DIR).join(hutch_wire::AGENT_SOCKET_NAME)
}

pub async fn serve_forever(procs: Processes, ptys: PtySessions, secret: Option<String>) {
    let path = socket_path();
    let mut backoff = FIRST_BACKOFF;
    loop {
        match UnixStream::connect(&path).await {
            Ok(mut stream) => {
                // Proves to the host that this connection is the agent's (see
                // `hutch_wire::AGENT_PREFACE_TAG`); the host drops any that does not.
                if let Some(secret) = &secret {
                    let preface =
                        [hutch_wire::AGENT_PREFACE_TAG, secret.as_bytes(), b"\n"].concat();
                    if stream.write_all(&preface).await.is_err() {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
                let started = tokio::time::Instant::now();
                serve(stream, procs.clone(), ptys.clone()).await;
                // A session that lasted was a real one: dial again at once. One that ended
                // straight away was refused (the host still holds a live connection) and
                // backs off like a failed dial.
                if started.elapsed() > Duration::from_secs(1) {
                    backoff = FIRST_BACKOFF;
                } else {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn serve(stream: UnixStream, procs: Processes, ptys: PtySessions) {
    let service = service_fn(move |req| {
        let procs = procs.clone();
        let ptys = ptys.clone();
        async move { Ok::<_, Infallible>(api::handle(req, procs, ptys).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    builder
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(256 << 10)
        .max_concurrent_streams(4096)
        .keep_alive_interval(Some(Duration::from_secs(15)))
        .keep_alive_timeout(Duration::from_secs(30));
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
