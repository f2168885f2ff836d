//! The host end of a TCP stream to a port inside the sandbox (`POST /hutch/v1/tcp?port=N`).
//! Writes go through a [`TcpWriter`], reads come from a [`TcpReader`]; [`AgentTcp::into_io`]
//! joins them into one `AsyncRead + AsyncWrite` for code that speaks a protocol over it
//! (the proxy's HTTP client).

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use crate::error::{Result, RuntimeError};

/// Chunks in flight towards the sandbox before a writer waits.
pub const WRITE_QUEUE: usize = 8;
/// Bytes buffered by [`AgentTcp::into_io`] in each direction.
const PIPE: usize = 256 * 1024;

/// One open stream to a port in the sandbox.
pub struct AgentTcp {
    pub writer: TcpWriter,
    pub reader: TcpReader,
}

/// Sends bytes to the sandbox's port; dropping it is the client's FIN.
pub struct TcpWriter(pub(super) mpsc::Sender<Bytes>);

impl TcpWriter {
    pub async fn send(&self, data: Bytes) -> Result<()> {
        self.0
            .send(data)
            .await
            .map_err(|_| RuntimeError::agent_disrupted("the sandbox's connection is closed"))
    }
}

/// Bytes from the sandbox's port; `None` is its FIN.
pub struct TcpReader(pub(super) Incoming);

impl TcpReader {
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            match self.0.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(RuntimeError::agent_disrupted(format!(
                        "the sandbox's connection broke: {e}"
                    )));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

impl AgentTcp {
    /// One socket-like stream, pumped by two tasks that end with it.
    pub fn into_io(self) -> DuplexStream {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let (mut from_client, mut to_client) = tokio::io::split(theirs);
        let AgentTcp { writer, mut reader } = self;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if writer
                            .send(Bytes::copy_from_slice(&buf[..n]))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Some(data)) = reader.next().await {
                if to_client.write_all(&data).await.is_err() {
                    return;
                }
            }
            let _ = to_client.shutdown().await;
        });
        ours
    }
}
