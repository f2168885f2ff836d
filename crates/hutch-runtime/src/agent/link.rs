//! The host end of an agent's dial-home connection.
//!
//! The link owns a unix listener at the sandbox's socket path. Whenever the agent connects
//! (at boot, or again after the connection dropped) the link performs the HTTP/2 client
//! handshake and makes that connection current; requests wait for a current connection up to
//! a deadline. Because the agent dials, a caller that restarts simply listens again and the
//! agent finds it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{AgentUnreachable, Result, RuntimeError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of requests sent to the agent: anything from a full buffer to a live stream,
/// including a client's incoming body forwarded by the proxy (which is `Send` only).
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

struct Current {
    sender: SendRequest<RequestBody>,
    connection: JoinHandle<()>,
    /// A duplicate of the socket: hyper drives HTTP/2 in tasks of its own, so closing the
    /// connection for real takes a `shutdown(2)` on the socket itself.
    socket: OwnedFd,
}

impl Current {
    fn close(self) {
        // SAFETY: shutdown on a descriptor we own.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        self.connection.abort();
    }
}

struct Inner {
    current: Mutex<Option<Current>>,
    /// Bumped on every new connection.
    generation: watch::Sender<u64>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl Inner {
    /// Whether the current connection is still open.
    fn live(&self) -> bool {
        self.current
            .lock()
            .ok()
            .is_some_and(|cur| cur.as_ref().is_some_and(|c| !c.sender.is_closed()))
    }

    /// Makes `stream`, an agent's connection, the current one.
    async fn adopt(&self, stream: tokio::net::UnixStream) {
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        builder
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(256 << 10)
            .keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(30));
        let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
            return;
        };
        let Ok((sender, conn)) = builder.handshake(TokioIo::new(stream)).await else {
            return;
        };
        let connection = tokio::spawn(async move {
            let _ = conn.await;
        });
        let previous = self.current.lock().ok().and_then(|mut cur| {
            cur.replace(Current {
                sender,
                connection,
                socket,
            })
        });
        if let Some(prev) = previous {
            prev.close();
        }
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut acceptor) = self.acceptor.lock()
            && let Some(task) = acceptor.take()
        {
            task.abort();
        }
        if let Ok(mut current) = self.current.lock()
            && let Some(cur) = current.take()
        {
            cur.close();
        }
    }
}

#[derive(Clone)]
pub struct AgentLink(Arc<Inner>);

/// How long a new connection has to prove it is the agent. Generous: on a loaded host a
/// booting sandbox's Sentry can take seconds between the agent's connect and its first write,
/// and at most [`MAX_PENDING`] connections wait at once anyway.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still proving themselves at once; more are dropped unread, so code in the
/// sandbox cannot pile up connections on the host.
const MAX_PENDING: usize = 8;

/// Reads the agent's preface (see [`hutch_wire::AGENT_PREFACE_TAG`]) and checks the secret.
/// How a connection to the agent socket opened.
#[derive(Debug, PartialEq, Eq)]
enum Preface {
    /// It proved to be the agent.
    Proven,
    /// It closed before sending a byte: an agent that exited while dialling (a one-shot
    /// sandbox whose command ended first). Nothing was attempted.
    Closed,
    /// A wrong or partial preface, or none in time.
    Refused,
}

async fn authenticate(stream: &mut tokio::net::UnixStream, secret: &str) -> Preface {
    use tokio::io::AsyncReadExt;
    let tag = hutch_wire::AGENT_PREFACE_TAG;
    let mut preface = vec![0u8; tag.len() + hutch_wire::AGENT_SECRET_LEN + 1];
    let mut got = 0;
    let read = tokio::time::timeout(PREFACE_TIMEOUT, async {
        while got < preface.len() {
            match stream.read(&mut preface[got..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got += n,
            }
        }
        true
    })
    .await;
    match read {
        Ok(true) => {}
        Ok(false) if got == 0 => return Preface::Closed,
        _ => return Preface::Refused,
    }
    let expected = [tag, secret.as_bytes(), b"\n"].concat();
    // Constant time: the comparison does not stop at the first wrong byte.
    let same = expected.len() == preface.len()
        && expected
            .iter()
            .zip(&preface)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Preface::Proven
    } else {
        Preface::Refused
    }
}

impl AgentLink {
    /// Listens at `path`, replacing a stale socket left by an earlier owner. With `secret`,
    /// only a connection that opens with it is taken for the agent, and only while no live
    /// connection exists: a live, healthy link is never replaced.
    pub fn listen(path: &Path, secret: Option<String>) -> Result<Self> {
        if path.as_os_str().len() >= 104 {
            return Err(RuntimeError::InvalidSpec {
                reason: format!(
                    "agent socket path {} is too long for a unix socket; use a shorter HUTCH_HOME",
                    path.display()
                ),
            });
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(format!("removing {}", path.display()), e)),
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| RuntimeError::io(format!("listening on {}", path.display()), e))?;
        let (generation, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            current: Mutex::new(None),
            generation,
            acceptor: Mutex::new(None),
            path: path.to_path_buf(),
        });
        let weak = Arc::downgrade(&inner);
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
        let task = tokio::spawn(async move {
            loop {
                let mut stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of descriptors or similar: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if weak.strong_count() == 0 {
                    return;
                }
                let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                    continue;
                };
                let weak = weak.clone();
                let secret = secret.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(secret) = &secret {
                        match authenticate(&mut stream, secret).await {
                            Preface::Proven => {}
                            Preface::Closed => {
                                tracing::debug!("a connection to the agent socket closed unsent");
                                return;
                            }
                            Preface::Refused => {
                                tracing::warn!(
                                    "refused a connection to an agent socket that did not prove \
                                     to be the agent"
                                );
                                return;
                            }
                        }
                    }
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    if secret.is_some() && inner.live() {
                        tracing::warn!("refused a second agent connection while the first is live");
                        return;
                    }
                    inner.adopt(stream).await;
                });
            }
        });
        if let Ok(mut acceptor) = inner.acceptor.lock() {
            *acceptor = Some(task);
        }
        Ok(Self(inner))
    }

    pub fn socket_path(&self) -> &Path {
        &self.0.path
    }

    /// How many connections the agent has made so far.
    pub fn generation(&self) -> u64 {
        *self.0.generation.borrow()
    }

    fn ready_sender(&self) -> Option<SendRequest<RequestBody>> {
        let current = self.0.current.lock().ok()?;
        let cur = current.as_ref()?;
        (!cur.sender.is_closed()).then(|| cur.sender.clone())
    }

    /// Waits until a live connection exists.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.sender(timeout).await.map(|_| ())
    }

    async fn sender(&self, timeout: Duration) -> Result<SendRequest<RequestBody>> {
        let mut generation = self.0.generation.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(sender) = self.ready_sender() {
                return Ok(sender);
            }
            match tokio::time::timeout_at(deadline, generation.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => {
                    return Err(RuntimeError::AgentUnavailable {
                        kind: AgentUnreachable::NeverConnected,
                        reason: format!("the agent did not connect within {timeout:?}"),
                    });
                }
            }
        }
    }

    /// Sends one request over the current connection, waiting up to `wait` for one.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        wait: Duration,
    ) -> Result<Response<Incoming>> {
        let mut sender = self.sender(wait).await?;
        sender
            .ready()
            .await
            .map_err(|e| RuntimeError::agent_disrupted(format!("connection lost: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| RuntimeError::agent_disrupted(format!("request failed: {e}")))
    }

    /// Closes the current connection; the agent notices and dials again.
    pub fn disconnect(&self) {
        let previous = self.0.current.lock().ok().and_then(|mut cur| cur.take());
        if let Some(prev) = previous {
            prev.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::AgentUnreachable;

    #[tokio::test]
    async fn a_connection_proves_itself_closes_unsent_or_is_refused() {
        use tokio::io::AsyncWriteExt;
        let secret = "s".repeat(hutch_wire::AGENT_SECRET_LEN);
        let preface = [hutch_wire::AGENT_PREFACE_TAG, secret.as_bytes(), b"\n"].concat();
        let (mut ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        theirs.write_all(&preface).await.unwrap();
        assert_eq!(authenticate(&mut ours, &secret).await, Preface::Proven);
        // An agent gone before it said anything: not an attempt.
        let (mut ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        drop(theirs);
        assert_eq!(authenticate(&mut ours, &secret).await, Preface::Closed);
        // Half a preface, or a wrong one: refused.
        let (mut ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        theirs.write_all(&preface[..10]).await.unwrap();
        drop(theirs);
        assert_eq!(authenticate(&mut ours, &secret).await, Preface::Refused);
        let (mut ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut wrong = preface.clone();
        let last = wrong.len() - 2;
        wrong[last] ^= 1;
        theirs.write_all(&wrong).await.unwrap();
        assert_eq!(authenticate(&mut ours, &secret).await, Preface::Refused);
    }

    #[tokio::test]
    async fn an_agent_that_never_dials_is_reported_as_never_connected() {
        let dir = tempfile::tempdir().unwrap();
        let link = AgentLink::listen(&dir.path().join("agent.sock"), None).unwrap();
        match link.wait_connected(Duration::from_millis(50)).await {
            Err(RuntimeError::AgentUnavailable { kind, reason }) => {
                assert_eq!(kind, AgentUnreachable::NeverConnected, "{reason}");
            }
            other => panic!("expected the agent to be unavailable, got {other:?}"),
        }
        // A request is refused the same way: it never left this process.
        let req = Request::builder()
            .uri("/api/v1/health")
            .body(super::super::client::empty())
            .unwrap();
        match link.send(req, Duration::from_millis(50)).await {
            Err(RuntimeError::AgentUnavailable { kind, .. }) => {
                assert_eq!(kind, AgentUnreachable::NeverConnected)
            }
            other => panic!(
                "expected the agent to be unavailable, got {:?}",
                other.err()
            ),
        }
    }
}
