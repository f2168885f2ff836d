//! Talking to `hutch serve` over HTTP/1.1: the lifecycle API and the sandbox proxy, on the
//! process's pooled client (`hutch_runtime::agent::http_client`, keep-alive on). Bodies
//! stream in both directions.

use anyhow::{Context, bail};
use bytes::Bytes;
use hutch_api::ErrorBody;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use hutch_runtime::agent::{MAX_ANSWER_BYTES, read_capped};
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
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
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
    let resp = hutch_runtime::agent::http_client()
        .request(req.body(body)?)
        .await
        .map_err(|e| {
            let context = if e.is_connect() {
                format!("connecting to {base} (is `hutch serve` running?)")
            } else {
                format!("{base}{path}")
            };
            anyhow::Error::new(e).context(context)
        })?;
    Ok(resp)
}

/// An answer read whole: a JSON document or an error body, refused past
/// [`MAX_ANSWER_BYTES`] (through the proxy, the other side is a sandbox's agent).
pub async fn read_whole(body: Incoming) -> anyhow::Result<Bytes> {
    read_capped(body, MAX_ANSWER_BYTES)
        .await
        .map_err(anyhow::Error::from_boxed)
        .context("reading the server's answer")
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
    let bytes = read_whole(resp.into_body()).await?;
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if !status.is_success() {
        let message = match serde_json::from_value::<ErrorBody>(value.clone()) {
            Ok(e) if !e.message.is_empty() => e.message,
            Ok(e) => e.error,
            Err(_) => value.to_string(),
        };
        bail!("{message} (HTTP {status})");
    }
    Ok(value)
}

/// [`json`] with a typed answer (the `hutch-api` and `hutch-wire` shapes).
pub async fn call<T: DeserializeOwned>(
    base: &str,
    method: Method,
    path: &str,
    host: Option<&str>,
    body: Option<&impl Serialize>,
) -> anyhow::Result<T> {
    let body = body.map(serde_json::to_value).transpose()?;
    let value = json(base, method, path, host, body).await?;
    serde_json::from_value(value).with_context(|| format!("an unexpected answer from {base}{path}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers one request with `body`, as a 200.
    pub(crate) async fn answer_once(body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if tcp.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                request.push(byte[0]);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let _ = tcp.write_all(&body).await;
        });
        base
    }

    #[tokio::test]
    async fn a_json_answer_past_the_cap_is_refused_not_buffered() {
        // JSON whitespace past the cap: read whole, the answer would parse.
        let mut body = vec![b' '; MAX_ANSWER_BYTES];
        body.extend_from_slice(br#"{"ok":true}"#);
        let base = answer_once(body).await;
        let err = json(&base, Method::GET, "/big", None, None)
            .await
            .expect_err("an answer past the cap was read");
        assert!(format!("{err:#}").contains("length limit"), "{err:#}");

        let base = answer_once(br#"{"ok":true}"#.to_vec()).await;
        let value = json(&base, Method::GET, "/small", None, None)
            .await
            .unwrap();
        assert_eq!(value["ok"], true);
    }
}
