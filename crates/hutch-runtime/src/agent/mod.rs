//! Talking to a sandbox's agent: the dial-home link and a typed client over it.

mod client;
mod http;
mod link;
mod pty;
mod remote;
mod tcp;

pub use client::{AgentClient, ExecEvent, ExecStream, channel_body, empty, full};
pub use http::{CONNECT_TIMEOUT, HttpClient, MAX_ANSWER_BYTES, http_client, read_capped};
pub use link::{AgentLink, BoxError, RequestBody};
pub use pty::{PtyInput, PtyStream};
pub use tcp::{AgentTcp, TcpReader, TcpWriter};
