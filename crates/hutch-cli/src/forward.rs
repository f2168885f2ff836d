//! `hutch sbx port-forward`: local listeners whose connections each ride one websocket to
//! the proxy's tunnel (`/api/v1/tunnels/tcp?port=N`, the endpoint the SDKs' `create_tunnel`
//! uses), binary messages carrying the bytes.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `LOCAL:REMOTE` or `REMOTE`.
pub fn parse_pair(s: &str) -> anyhow::Result<(u16, u16)> {
    let port = |p: &str, zero: bool| -> anyhow::Result<u16> {
        let n: u16 = p
            .parse()
            .with_context(|| format!("{s:?}: {p:?} is not a port"))?;
        if n == 0 && !zero {
            bail!("{s:?}: the remote port must be 1-65535");
        }
        Ok(n)
    };
    match s.split_once(':') {
        Some((local, remote)) => Ok((port(local, true)?, port(remote, false)?)),
        None => {
            let p = port(s, false)?;
            Ok((p, p))
        }
    }
}

pub async fn run(
    proxy: &str,
    host: &str,
    id: &str,
    address: IpAddr,
    pairs: &[(u16, u16)],
) -> anyhow::Result<()> {
    let authority = proxy
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("{proxy}: only http:// proxies are supported"))?
        .to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for &(local, remote) in pairs {
        let listener = TcpListener::bind(SocketAddr::new(address, local))
            .await
            .with_context(|| format!("listening on {address}:{local}"))?;
        let bound = listener.local_addr()?;
        println!("forwarding {bound} -> sandbox {id} port {remote}");
        let (authority, host) = (authority.clone(), host.to_string());
        tasks.spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (authority, host) = (authority.clone(), host.clone());
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &authority, &host, remote).await {
                        eprintln!("{peer} -> port {remote}: {e:#}");
                    }
                });
            }
        });
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = tasks.join_next() => bail!("a listener stopped"),
    }
}

async fn connection(
    mut stream: TcpStream,
    authority: &str,
    host: &str,
    remote: u16,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{authority}/api/v1/tunnels/tcp?port={remote}");
    let mut request = url.into_client_request()?;
    request.headers_mut().insert("host", host.parse()?);
    if let Ok(key) = std::env::var("HUTCH_API_KEY")
        && !key.is_empty()
    {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
    }
    let socket = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let _ = socket.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async(request, socket)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                anyhow::anyhow!("the proxy refused the tunnel ({}): {body}", resp.status())
            }
            e => anyhow::Error::new(e).context("opening the tunnel"),
        })?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut tcp_rx, mut tcp_tx) = stream.split();
    let outgoing = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tcp_rx.read(&mut buf).await?;
            if n == 0 {
                ws_tx.send(Message::Close(None)).await?;
                return anyhow::Ok(());
            }
            ws_tx
                .send(Message::Binary(buf[..n].to_vec().into()))
                .await?;
        }
    };
    let incoming = async {
        while let Some(message) = ws_rx.next().await {
            match message? {
                Message::Binary(data) => tcp_tx.write_all(&data).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        tcp_tx.shutdown().await?;
        anyhow::Ok(())
    };
    tokio::pin!(outgoing, incoming);
    tokio::select! {
        r = &mut incoming => r,
        r = &mut outgoing => {
            r?;
            incoming.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse() {
        assert_eq!(parse_pair("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_pair("5432").unwrap(), (5432, 5432));
        assert_eq!(parse_pair("0:22").unwrap(), (0, 22));
        for bad in ["0", "1:0", "a:1", "70000", "1:2:3", ""] {
            assert!(parse_pair(bad).is_err(), "{bad}");
        }
    }
}
