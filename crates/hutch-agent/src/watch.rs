//! File watches: `GET /hutch/v1/files/watch?path=P&recursive=true` streams what changes under
//! a path as server-sent events, from the sandbox's own inotify (gVisor implements it).
//!
//! Each event is `data: {"type", "path", "is_dir", "timestamp"}` with `type` one of `created`,
//! `modified` (written and closed, or attributes changed), `deleted`, `moved_from`,
//! `moved_to`; a `: keepalive` comment goes out every 15 s. A recursive watch follows new
//! directories as they appear. Bounds: 64 watch streams per sandbox, 4096 watched
//! directories per stream; past the second, the stream says so (`type: "overflow"`) and
//! watches what it has. When the kernel's queue overflows, an `overflow` event says events
//! were lost.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::http::{self, ApiError, Body};

const MAX_STREAMS: usize = 64;
const MAX_WATCHES: usize = 4096;
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The most entries of a new directory reported as created when the watch takes it (a tree
/// moved in can hold millions); past it, an `overflow` event says to rescan.
const MAX_SCANNED: usize = 1024;

static STREAMS: AtomicUsize = AtomicUsize::new(0);

/// `IN_MODIFY` is left out: one event per write(2) would flood a stream; a file is
/// `modified` when a writer closes it (or its attributes change).
const MASK: u32 = libc::IN_CREATE
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_DELETE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO;

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    path: String,
    is_dir: bool,
    timestamp: i64,
}

/// A held place among the sandbox's watch streams.
struct Slot;

impl Slot {
    fn take() -> Option<Self> {
        let before = STREAMS.fetch_add(1, Ordering::SeqCst);
        if before >= MAX_STREAMS {
            STREAMS.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        STREAMS.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Inotify {
    fd: AsyncFd<OwnedFd>,
    /// Watch descriptor → the directory (or file) it watches.
    dirs: HashMap<i32, PathBuf>,
}

impl Inotify {
    fn new() -> std::io::Result<Self> {
        // SAFETY: inotify_init1 has no memory preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor inotify_init1 just returned, owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd returns the one descriptor it owns, open until it drops, which
        // is when the AsyncFd drops.
        let fd = unsafe { AsyncFd::register(owned) }.map_err(std::io::Error::from)?;
        Ok(Self {
            fd,
            dirs: HashMap::new(),
        })
    }

    fn add(&mut self, path: &Path) -> std::io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                self.fd.get_ref().as_raw_fd(),
                c.as_ptr(),
                MASK | libc::IN_DONT_FOLLOW,
            )
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, path.to_path_buf());
        Ok(())
    }

    /// Watches `root` and, when `recursive`, every directory under it (symlinks not
    /// followed), up to the bound. Returns whether everything fit.
    fn add_tree(&mut self, root: &Path, recursive: bool) -> std::io::Result<bool> {
        self.add(root)?;
        if !recursive {
            return Ok(true);
        }
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if self.dirs.len() >= MAX_WATCHES {
                        return Ok(false);
                    }
                    let path = entry.path();
                    if self.add(&path).is_ok() {
                        pending.push(path);
                    }
                }
            }
        }
        Ok(true)
    }
}

/// The SSE stream of changes under `path`.
pub fn watch(path: PathBuf, recursive: bool) -> Result<Response<Body>, ApiError> {
    let meta = std::fs::symlink_metadata(&path)
        .map_err(|e| ApiError::io(&format!("cannot watch {}", path.display()), &e))?;
    let slot = Slot::take().ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watches",
            format!("{MAX_STREAMS} watch streams are open in this sandbox already"),
        )
    })?;
    let mut inotify = Inotify::new().map_err(|e| ApiError::io("cannot start a watch", &e))?;
    let complete = inotify
        .add_tree(&path, recursive && meta.is_dir())
        .map_err(|e| ApiError::io(&format!("cannot watch {}", path.display()), &e))?;
    let (tx, body) = http::channel(64);
    tokio::spawn(async move {
        let _slot = slot;
        if !complete && tx.send(overflow(&path)).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let ready = tokio::select! {
                ready = inotify.fd.readable() => ready,
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ = tx.closed() => return,
            };
            let Ok(mut guard) = ready else {
                return;
            };
            // SAFETY: reading into a buffer this task owns, of its length.
            let n = unsafe {
                libc::read(
                    inotify.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return;
            }
            for event in parse(&buf[..n as usize]) {
                for out in handle(&mut inotify, recursive, event) {
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(http::streaming("text/event-stream", body))
}

/// Events were lost or not everything could be watched: the client should rescan.
fn overflow(path: &Path) -> Bytes {
    http::sse_event(&Event {
        kind: "overflow",
        path: path.display().to_string(),
        is_dir: true,
        timestamp: hutch_wire::clock::now_ms(),
    })
}

/// `created` events for what directory `dir` already holds, at most `cap` of them, then an
/// `overflow` when there was more.
fn already_there(dir: &Path, now: i64, cap: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        if out.len() == cap {
            out.push(overflow(dir));
            break;
        }
        out.push(http::sse_event(&Event {
            kind: "created",
            path: entry.path().display().to_string(),
            is_dir: entry.file_type().is_ok_and(|t| t.is_dir()),
            timestamp: now,
        }));
    }
    out
}

struct RawEvent {
    wd: i32,
    mask: u32,
    name: Option<String>,
}

fn parse(mut buf: &[u8]) -> Vec<RawEvent> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut out = Vec::new();
    while buf.len() >= HEADER {
        let field =
            |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let (wd, mask, len) = (field(0) as i32, field(4), field(12) as usize);
        let end = (HEADER + len).min(buf.len());
        let raw_name = &buf[HEADER..end];
        let name = raw_name
            .split(|b| *b == 0)
            .next()
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned());
        out.push(RawEvent { wd, mask, name });
        buf = &buf[end..];
    }
    out
}

fn handle(inotify: &mut Inotify, recursive: bool, event: RawEvent) -> Vec<Bytes> {
    let now = hutch_wire::clock::now_ms();
    if event.mask & libc::IN_Q_OVERFLOW != 0 {
        return vec![overflow(Path::new("/"))];
    }
    if event.mask & libc::IN_IGNORED != 0 {
        inotify.dirs.remove(&event.wd);
        return Vec::new();
    }
    let Some(dir) = inotify.dirs.get(&event.wd).cloned() else {
        return Vec::new();
    };
    let path = match &event.name {
        Some(name) => dir.join(name),
        None => dir.clone(),
    };
    let is_dir = event.mask & libc::IN_ISDIR != 0;
    let kind = if event.mask & libc::IN_CREATE != 0 {
        "created"
    } else if event.mask & (libc::IN_DELETE | libc::IN_DELETE_SELF) != 0 {
        "deleted"
    } else if event.mask & libc::IN_MOVED_FROM != 0 {
        "moved_from"
    } else if event.mask & libc::IN_MOVED_TO != 0 {
        "moved_to"
    } else if event.mask & (libc::IN_CLOSE_WRITE | libc::IN_ATTRIB) != 0 {
        "modified"
    } else {
        return Vec::new();
    };
    // A directory created (or moved in) under a recursive watch is watched too, and what
    // was made inside it before the watch took is reported as created.
    let mut out = vec![http::sse_event(&Event {
        kind,
        path: path.display().to_string(),
        is_dir,
        timestamp: now,
    })];
    if recursive && is_dir && matches!(kind, "created" | "moved_to") {
        let before = inotify.dirs.len();
        let watched = inotify.add_tree(&path, true).unwrap_or(false) || inotify.dirs.len() > before;
        if watched {
            out.extend(already_there(&path, now, MAX_SCANNED));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_reported_up_to_the_bound_then_overflow() {
        let dir = std::env::temp_dir().join(format!("hutch-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join(format!("f{i}")), b"").unwrap();
        }
        let events: Vec<String> = already_there(&dir, 1, 3)
            .iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect();
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(
            events[..3].iter().all(|e| e.contains("\"created\"")),
            "{events:?}"
        );
        assert!(events[3].contains("\"overflow\""), "{events:?}");
        assert_eq!(already_there(&dir, 1, 10).len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
