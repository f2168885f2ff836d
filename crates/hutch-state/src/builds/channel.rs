//! The build channel: a unix socket the host listens on only in builder sandboxes
//! (`/run/hutch/build.sock`). A builder sends one hello line (the spec, with the build id and
//! token prepare handed out) and the context tar; the host claims the build, unpacks the
//! context safely, builds in a task of its own and answers with JSON-line events.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use hutch_wire::build_channel::{
    BUILD_SOCKET_NAME, BuildChannelEvent, BuildHello, MAX_HELLO_BYTES,
};
use serde_json::Value;

use super::{BUILDER_GRACE_SECS, Builds, CHANNEL_IDLE, Limits, events, token_hash};
use crate::db::BuildRow;
use crate::now_ms;

/// Connections a builder sandbox may hold open on its build channel at once. A builder makes
/// one; each costs the host two threads for as long as it lasts (up to [`CHANNEL_IDLE`]
/// idle), so a sandbox opening thousands must not get thousands.
const CONNECTIONS: usize = 2;

/// Serves each connection `listener` accepts with `serve`, at most `limit` at a time; one
/// past that is closed at once. Runs until its task is aborted.
async fn accept<F, Fut>(listener: tokio::net::UnixListener, limit: usize, serve: F)
where
    F: Fn(tokio::net::UnixStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let open = Arc::new(tokio::sync::Semaphore::new(limit));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            // Not a warning: a sandbox reconnecting in a loop must not flood the log either.
            tracing::debug!(limit, "closed a build-channel connection past the limit");
            continue;
        };
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
}

impl Builds {
    /// Opens the build channel of a builder sandbox.
    pub(super) fn listen(&self, sandbox: &str) {
        let Some(this) = self.me.upgrade() else {
            return;
        };
        let listener = match self.backend.listen_in_sandbox(sandbox, BUILD_SOCKET_NAME) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%sandbox, error = %e, "cannot open the build channel");
                return;
            }
        };
        let id = sandbox.to_string();
        let task = tokio::spawn(accept(listener, CONNECTIONS, move |stream| {
            let (this, id) = (Arc::clone(&this), id.clone());
            async move { this.serve_channel(id, stream).await }
        }));
        if let Some(old) = self.lock().insert(sandbox.to_string(), task) {
            old.abort();
        }
    }

    /// Closes the build channel of a sandbox that is gone (a build in flight goes on).
    pub(super) fn forget(&self, sandbox: &str) {
        if let Some(task) = self.lock().remove(sandbox) {
            task.abort();
        }
    }

    async fn serve_channel(self: Arc<Self>, sandbox: String, stream: tokio::net::UnixStream) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        // A builder that stops sending (or reading) must not hold a thread forever.
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(CHANNEL_IDLE)).is_err()
            || stream.set_write_timeout(Some(CHANNEL_IDLE)).is_err()
        {
            return;
        }
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        // Bounded: a builder that stops reading costs the server a few MiB at most.
        let (tx, rx) = events::bounded(events::OUTPUT_BYTES);
        let writer_thread = std::thread::spawn(move || write_events(writer, rx));
        let this = Arc::clone(&self);
        let sbx = sandbox.clone();
        let received = tokio::task::spawn_blocking(move || this.receive(&sbx, stream)).await;
        let (build, context) = match received {
            Ok(Ok(got)) => got,
            Ok(Err(message)) => {
                tracing::warn!(%sandbox, %message, "refused a build request");
                tx.send(BuildChannelEvent::Error { message });
                drop(tx);
                let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
                return;
            }
            Err(_) => return,
        };
        tracing::info!(%sandbox, build = %build.id, "building a template for a builder sandbox");
        // The builder sandbox must outlive the build, whatever timeout its creator gave it.
        let _ = self.sandboxes.set_timeout(&sandbox, 0);
        let started = std::time::Instant::now();
        // A task of its own: a builder that goes away mid-build cancels nothing halfway.
        let this = Arc::clone(&self);
        let events = tx.clone();
        let limits = self.limits_of(&sandbox);
        let outcome = tokio::spawn(async move {
            let dir = context.as_ref().map(hutch_store::ScratchDir::path);
            let result = this.run(&build, dir, limits, &events).await;
            // Removes the context: until now it is locked against other processes' cleanup.
            drop(context);
            // Recorded here, with the build: whatever happens to the channel.
            if let Err(message) = &result {
                let _ = this.db.fail_build(&build.id, message, now_ms());
            }
            (build, result)
        })
        .await;
        let _ = self.sandboxes.expire_in(&sandbox, BUILDER_GRACE_SECS);
        let final_event = match outcome {
            Ok((build, Ok(metadata))) => {
                tracing::info!(build = %build.id, secs = started.elapsed().as_secs_f64(), "template build done");
                BuildChannelEvent::Done { metadata }
            }
            Ok((build, Err(message))) => {
                tracing::warn!(build = %build.id, %message, "template build failed");
                BuildChannelEvent::Error { message }
            }
            Err(e) => BuildChannelEvent::Error {
                message: format!("the build task failed: {e}"),
            },
        };
        tx.send(final_event);
        drop(tx);
        let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    }

    /// The resources the builder sandbox was created with.
    fn limits_of(&self, sandbox: &str) -> Limits {
        let row = self.sandboxes.by_id(sandbox).ok().flatten();
        let namespace = row
            .as_ref()
            .map_or_else(|| "default".to_string(), |r| r.namespace.clone());
        let spec = row.map(|row| row.spec).unwrap_or_default();
        let strings = |key: &str| -> Vec<String> {
            spec[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let egress = serde_json::from_value::<hutch_runtime::NetworkMode>(spec["network"].clone())
            .is_ok_and(|mode| mode == hutch_runtime::NetworkMode::Egress);
        Limits {
            cpus: spec["cpus"].as_f64(),
            memory_mb: spec["memory_mb"].as_u64(),
            namespace,
            network: egress.then(|| hutch_runtime::net::NetworkPolicy {
                allow_internet_access: spec["allow_internet_access"].as_bool().unwrap_or(false),
                allow_out: strings("allow_out"),
                deny_out: strings("deny_out"),
            }),
        }
    }

    /// Reads the hello and the context (blocking), and claims the build.
    fn receive(
        &self,
        sandbox: &str,
        stream: std::os::unix::net::UnixStream,
    ) -> Result<(BuildRow, Option<hutch_store::ScratchDir>), String> {
        let mut reader = BufReader::with_capacity(256 << 10, stream);
        let mut line = Vec::new();
        (&mut reader)
            .take(MAX_HELLO_BYTES as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the build request: {e}"))?;
        if line.last() != Some(&b'\n') {
            return Err("the build request line is missing or too long".into());
        }
        let hello: BuildHello = serde_json::from_slice(&line)
            .map_err(|e| format!("the build request is not valid: {e}"))?;
        let field = |name: &str| {
            hello
                .spec
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let id = field("buildId").ok_or("the spec names no buildId")?;
        let token = field("buildToken").ok_or("the spec carries no buildToken")?;
        let build = self
            .db
            .build(&id)
            .map_err(|e| e.to_string())?
            .filter(|b| b.token_sha256 == token_hash(&token))
            .ok_or_else(|| format!("build {id} is unknown, or its token does not match"))?;
        if !self
            .db
            .claim_build(&id, sandbox, now_ms())
            .map_err(|e| e.to_string())?
        {
            return Err(format!(
                "build {id} is {}, not waiting for a builder",
                build.state.as_str()
            ));
        }
        let import = field("importImageReference");
        if let Some(reference) = &import
            && !same_reference(reference, &build.base_image, &build.dockerfile)
        {
            let message = format!("the spec imports {reference:?}, not what build {id} prepared");
            let _ = self.db.fail_build(&id, &message, now_ms());
            return Err(message);
        }
        if import.is_some() {
            return Ok((build, None));
        }
        if !hello.context {
            let message = "a Dockerfile build needs its context".to_string();
            let _ = self.db.fail_build(&id, &message, now_ms());
            return Err(message);
        }
        // Locked: `hutch image ls` or fsck in another process must not remove it mid-build.
        let scratch = self
            .store
            .scratch_dir("build-context")
            .map_err(|e| format!("creating the context directory: {e}"))?;
        let dir = scratch.path();
        // No bigger than the root filesystem it is for.
        let mut limited = (&mut reader).take(build.rootfs_disk_bytes);
        let unpacked = unpack_context(&mut limited, dir);
        let unpacked = match unpacked {
            Ok(()) if limited.limit() == 0 => Err(std::io::Error::other(format!(
                "the context is larger than the template's {} byte disk",
                build.rootfs_disk_bytes
            ))),
            other => other,
        };
        if let Err(e) = unpacked {
            let message = format!("receiving the build context: {e}");
            let _ = self.db.fail_build(&id, &message, now_ms());
            return Err(message);
        }
        Ok((build, Some(scratch)))
    }
}

/// An import build's spec must import what prepare was told (`FROM <reference>`).
fn same_reference(reference: &str, base_image: &str, dockerfile: &str) -> bool {
    reference == base_image || dockerfile.trim() == format!("FROM {reference}")
}

fn write_events(mut socket: std::os::unix::net::UnixStream, rx: events::EventReceiver) {
    let mut broken = false;
    for event in rx {
        if broken {
            continue;
        }
        let Ok(mut line) = serde_json::to_vec(&event) else {
            continue;
        };
        line.push(b'\n');
        if socket.write_all(&line).is_err() {
            // The builder went away; the build goes on and its result is recorded anyway.
            broken = true;
        }
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
}

/// Unpacks a build context tar into `dir`: regular files, directories and symlinks only, never
/// outside `dir` (the tar crate refuses `..` and writes through symlinks out of it), owners
/// not kept (COPY sets them).
fn unpack_context(reader: &mut impl Read, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        if !entry.unpack_in(dir)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the context entry {:?} leaves the context",
                    entry.path().unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar entry with a raw name (the tar crate's own setters refuse `..`).
    fn entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn finish(mut tar: Vec<u8>) -> Vec<u8> {
        tar.extend_from_slice(&[0; 1024]);
        tar
    }

    #[test]
    fn a_context_keeps_files_dirs_and_symlinks() {
        let mut tar = Vec::new();
        entry(&mut tar, "./src/", tar::EntryType::Directory, "", b"");
        entry(
            &mut tar,
            "./src/a.txt",
            tar::EntryType::Regular,
            "",
            b"hello",
        );
        entry(
            &mut tar,
            "./link",
            tar::EntryType::Symlink,
            "src/a.txt",
            b"",
        );
        entry(&mut tar, "./dev", tar::EntryType::Char, "", b"");
        let dir = tempfile::tempdir().unwrap();
        unpack_context(&mut finish(tar).as_slice(), dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("src/a.txt")).unwrap(),
            b"hello"
        );
        assert!(dir.path().join("link").is_symlink());
        assert!(!dir.path().join("dev").exists(), "devices are not context");
    }

    #[test]
    fn a_context_never_writes_outside_its_directory() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("ctx");
        std::fs::create_dir(&dir).unwrap();

        let mut tar = Vec::new();
        entry(
            &mut tar,
            "../escaped.txt",
            tar::EntryType::Regular,
            "",
            b"x",
        );
        let err = unpack_context(&mut finish(tar).as_slice(), &dir).unwrap_err();
        assert!(err.to_string().contains("leaves the context"), "{err}");
        assert!(!outer.path().join("escaped.txt").exists());

        // A symlink to the outside, then a file written through it.
        let mut tar = Vec::new();
        let target = outer.path().to_str().unwrap();
        entry(&mut tar, "out", tar::EntryType::Symlink, target, b"");
        entry(
            &mut tar,
            "out/through.txt",
            tar::EntryType::Regular,
            "",
            b"x",
        );
        assert!(unpack_context(&mut finish(tar).as_slice(), &dir).is_err());
        assert!(!outer.path().join("through.txt").exists());
    }

    #[tokio::test]
    async fn a_builder_holds_at_most_a_few_channel_connections() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = Arc::clone(&served);
        let task = tokio::spawn(accept(listener, 2, move |stream| {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                // An idle builder: holds its connection until told to let go.
                let _ = released.wait_for(|r| *r).await;
                drop(stream);
            }
        }));
        let mut clients = Vec::new();
        for _ in 0..10 {
            clients.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(served.load(Ordering::SeqCst), 2);
        // The other eight were closed, not left waiting.
        let mut closed = 0;
        for client in &mut clients {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                tokio::io::AsyncReadExt::read(client, &mut byte),
            )
            .await;
            if matches!(read, Ok(Ok(0))) {
                closed += 1;
            }
        }
        assert_eq!(closed, 8);
        // Once the open ones end, the channel serves again.
        release.send(true).unwrap();
        drop(clients);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let _again = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(served.load(Ordering::SeqCst), 3);
        task.abort();
    }

    #[test]
    fn an_import_spec_must_import_what_was_prepared() {
        assert!(same_reference("r/x:1", "r/x:1", "FROM r/x:1\n"));
        assert!(same_reference("r/x:1", "", "FROM r/x:1\n"));
        assert!(!same_reference("r/evil:1", "r/x:1", "FROM r/x:1\n"));
    }
}
