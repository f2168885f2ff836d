//! `tl-rootfs-build --spec SPEC --metadata-out FILE`: the agent binary, run under that name
//! inside a builder sandbox, is the builder the Tensorlake build flow starts.
//!
//! It does not build: it hands the spec and the build context to the host's build engine over
//! the build channel (`hutch_wire::build_channel`), prints what the host reports as the build
//! goes (steps on stdout, RUN output on the stream it came from), and writes the metadata the
//! host answers with. The exit code is the build's outcome.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use hutch_wire::build_channel::{BUILD_SOCKET_NAME, BuildChannelEvent, BuildHello};

pub fn main(args: Vec<String>) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("tl-rootfs-build: {message}");
            1
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == name {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
    }
    None
}

fn run(args: &[String]) -> Result<(), String> {
    let usage = "usage: tl-rootfs-build --spec SPEC.json --metadata-out METADATA.json";
    let spec_path = flag(args, "--spec").ok_or(usage)?;
    let metadata_out = PathBuf::from(flag(args, "--metadata-out").ok_or(usage)?);
    let raw = std::fs::read(&spec_path).map_err(|e| format!("reading {spec_path}: {e}"))?;
    let spec: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| format!("{spec_path} is not JSON: {e}"))?;
    let import = spec
        .get("importImageReference")
        .and_then(|v| v.as_str())
        .is_some();
    let context_dir = match spec.get("contextDir").and_then(|v| v.as_str()) {
        Some(dir) if !import => Some(PathBuf::from(dir)),
        None if !import => return Err(format!("{spec_path} names no contextDir")),
        _ => None,
    };
    if let Some(dir) = &context_dir
        && !dir.is_dir()
    {
        return Err(format!(
            "the build context {} is not a directory",
            dir.display()
        ));
    }
    let socket = Path::new(hutch_wire::AGENT_SOCKET_DIR).join(BUILD_SOCKET_NAME);
    let stream = UnixStream::connect(&socket).map_err(|e| {
        format!(
            "cannot reach the host's build engine at {}: {e} (is this a Hutch builder sandbox?)",
            socket.display()
        )
    })?;
    let hello = BuildHello {
        spec,
        context: context_dir.is_some(),
    };
    let mut line = serde_json::to_vec(&hello).map_err(|e| e.to_string())?;
    line.push(b'\n');
    let mut writer = std::io::BufWriter::with_capacity(256 << 10, &stream);
    writer.write_all(&line).map_err(channel_lost)?;
    if let Some(dir) = &context_dir {
        let mut tar = tar::Builder::new(&mut writer);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        tar.append_dir_all(".", dir)
            .map_err(|e| format!("sending the build context {}: {e}", dir.display()))?;
        tar.finish().map_err(channel_lost)?;
    }
    writer.flush().map_err(channel_lost)?;
    drop(writer);
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(channel_lost)?;

    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(channel_lost)?;
        let event: BuildChannelEvent = serde_json::from_str(&line)
            .map_err(|e| format!("the host sent an unreadable event: {e}"))?;
        match event {
            BuildChannelEvent::Step { text } => {
                let _ = writeln!(stdout.lock(), "{text}");
            }
            BuildChannelEvent::Status { message } => {
                let _ = writeln!(stdout.lock(), "{message}");
            }
            BuildChannelEvent::Output {
                stderr: false,
                data,
            } => {
                let _ = stdout.lock().write_all(data.as_bytes());
            }
            BuildChannelEvent::Output { stderr: true, data } => {
                let _ = stderr.lock().write_all(data.as_bytes());
            }
            BuildChannelEvent::Warning { message } => {
                let _ = writeln!(stderr.lock(), "warning: {message}");
            }
            BuildChannelEvent::Done { metadata } => {
                let bytes = serde_json::to_vec_pretty(&metadata).map_err(|e| e.to_string())?;
                write_atomically(&metadata_out, &bytes)?;
                return Ok(());
            }
            BuildChannelEvent::Error { message } => return Err(message),
        }
    }
    Err("the host closed the build channel without a result".into())
}

fn channel_lost(e: std::io::Error) -> String {
    format!("the build channel to the host broke: {e}")
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}
