//! A misbehaving front for a real registry: it forwards requests, one per connection, and
//! breaks blob downloads on purpose (a 500, or a body cut short), so tests can show what a
//! pull does when a registry fails mid-way. Everything else passes through unchanged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Every blob GET answers 500.
    ServerError,
    /// The first `times` blob GETs send only this many body bytes, then close.
    Truncate { after: usize, times: u32 },
}

pub struct Faulty {
    pub port: u16,
    /// Blob GETs that were broken on purpose.
    pub broken: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

impl Faulty {
    pub fn start(upstream: u16, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let broken = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (Arc::clone(&broken), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, fault, &b);
                });
            }
        });
        Faulty { port, broken, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads an HTTP head (request or response) up to the blank line.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    Ok(lines)
}

fn serve(
    client: TcpStream,
    upstream: u16,
    fault: Fault,
    broken: &AtomicU32,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let head = read_head(&mut reader)?;
    let Some(request_line) = head.first() else {
        return Ok(());
    };
    let mut client = client;
    let is_blob_get = request_line.starts_with("GET ") && request_line.contains("/blobs/sha256:");
    if is_blob_get && matches!(fault, Fault::ServerError) {
        broken.fetch_add(1, Ordering::SeqCst);
        client.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 49\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"boom\"}]}",
        )?;
        return Ok(());
    }
    let body_len: usize = head
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body)?;
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    for line in &head {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        up.write_all(line.as_bytes())?;
        up.write_all(b"\r\n")?;
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    let mut up_reader = BufReader::new(up);
    let response = read_head(&mut up_reader)?;
    let mut rest = Vec::new();
    up_reader.read_to_end(&mut rest)?;
    let ok = response
        .first()
        .is_some_and(|l| l.contains(" 200 ") || l.contains(" 206 "));
    // Only bodies longer than the cut are broken, so the count means what it says.
    let cut = match fault {
        Fault::Truncate { after, times } if is_blob_get && ok && rest.len() > after => {
            let n = broken.fetch_add(1, Ordering::SeqCst);
            if n < times {
                Some(after)
            } else {
                broken.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
        _ => None,
    };
    for line in &response {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        client.write_all(line.as_bytes())?;
        client.write_all(b"\r\n")?;
    }
    client.write_all(b"Connection: close\r\n\r\n")?;
    match cut {
        Some(after) => client.write_all(&rest[..after.min(rest.len())])?,
        None => client.write_all(&rest)?,
    }
    client.flush()?;
    Ok(())
}
