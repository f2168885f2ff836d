//! A small HTTP/1.1 client for talking to `hutch serve`: the lifecycle API and the sandbox
//! proxy. Bodies stream in both directions.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub use hutch_runtime::agent::{RequestBody as Body, full};

/// Where the server is: `$HUTCH_SERVER`, else the default lifecycle address.
pub fn server_url() -> String {
    std::env::var("HUTCH_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8900".into())
}

/// `http://host:port` → `host:port`, refusing what this client cannot speak.
fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// servers are supported"))?;
    let host = rest.split('/').next().unwrap_or_default();
    Ok(if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    })
}

/// Sends one request to `base` + `path`; `host` overrides the Host header (proxy routing).
pub async fn send(
    base: &str,
    method: Method,
    path: &str,
    host: Option<&str>,
    body: Body,
) -> anyhow::Result<Response<Incoming>> {
    send_with(base, method, path, host, &[], body).await
}

/// [`send`] with extra request headers.
pub async fn send_with(
    base: &str,
    method: Method,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: Body,
) -> anyhow::Result<Response<Incoming>> {
    let authority = authority(base)?;
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {base} (is `hutch serve` running?)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host.unwrap_or(&authority))
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Ok(key) = std::env::var("HUTCH_API_KEY")
        && !key.is_empty()
    {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    Ok(sender.send_request(req.body(body)?).await?)
}

/// A JSON request whose answer must be a 2xx JSON body; an error answer becomes its message.
pub async fn json(
    base: &str,
    method: Method,
    path: &str,
    host: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    json_with(base, method, path, host, &[], body).await
}

/// [`json`] with extra request headers.
pub async fn json_with(
    base: &str,
    method: Method,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let body = body.map_or_else(|| full(Bytes::new()), |b| full(b.to_string()));
    let resp = send_with(base, method, path, host, headers, body).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if !status.is_success() {
        let message = value["message"]
            .as_str()
            .or(value["error"].as_str())
            .map(String::from)
            .unwrap_or_else(|| value.to_string());
        bail!("{message} (HTTP {status})");
    }
    Ok(value)
}
