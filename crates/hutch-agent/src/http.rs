//! HTTP plumbing for the agent: the response body type, typed API errors, JSON/SSE/frame
//! responses and query-string parsing. Kept tiny on purpose: the agent has no web framework.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hutch_wire::ErrorBody;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;

/// A streamed response body fed by a channel; dropping the receiver (client gone) makes the
/// producer's next `send` fail, which is how producers learn to stop.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody(rx).boxed())
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn io(context: &str, err: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let (status, code) = match err.kind() {
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            IsADirectory => (StatusCode::BAD_REQUEST, "is_a_directory"),
            NotADirectory => (StatusCode::BAD_REQUEST, "not_a_directory"),
            DirectoryNotEmpty => (StatusCode::CONFLICT, "directory_not_empty"),
            StorageFull | QuotaExceeded => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "io_error"),
        };
        Self::new(status, code, format!("{context}: {err}"))
    }

    pub fn into_response(self) -> Response<Body> {
        json_response(self.status, &ErrorBody::new(self.code, self.message))
    }
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn ok_json<T: serde::Serialize>(value: &T) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, value))
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = status;
    resp
}

pub fn streaming(content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// One SSE event carrying a JSON value.
pub fn sse_event<T: serde::Serialize>(value: &T) -> Bytes {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("data: {json}\n\n"))
}

/// Reads a whole (small) request body, refusing more than `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(ApiError::invalid(format!(
            "could not read request body: {e}"
        ))),
    }
}

pub async fn read_json<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = read_body(body, 1 << 20).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// The decoded value of query parameter `key`.
pub fn query_param(req: &Request<Incoming>, key: &str) -> Option<String> {
    hutch_wire::query::param(req.uri().query()?, key)
}
