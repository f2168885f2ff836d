//! `hutch-agent`: PID 1 of every Hutch sandbox.
//!
//! It needs nothing from the image (static binary, bind-mounted read-only), reaps every
//! zombie, forwards termination signals to the process groups it started, enforces the
//! per-process memory limit, and dials home to serve the data-plane API. Its configuration
//! arrives as JSON in `HUTCH_AGENT_CONFIG`. It depends on `hutch-wire` and nothing else of
//! Hutch.

mod api;
mod dial;
mod files;
mod http;
mod memory;
mod output;
mod pids;
mod process;
mod pty;
mod rootfs_build;
mod supervise;
mod tcp;
mod users;
mod watch;

use std::time::Duration;

use hutch_wire::AgentConfig;
use tokio::signal::unix::{SignalKind, signal};

use crate::process::Processes;

fn main() {
    // Run as `tl-rootfs-build` (a symlink in the builder image), this binary is the builder.
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_default();
    if argv0.rsplit('/').next() == Some(hutch_wire::build_channel::ROOTFS_BUILD_COMMAND) {
        std::process::exit(rootfs_build::main(argv.collect()));
    }
    // One malloc arena: per-thread arenas of the blocking pool would stay resident.
    // SAFETY: mallopt before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let config: AgentConfig = std::env::var(hutch_wire::AGENT_CONFIG_ENV)
        .ok()
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        // gVisor counts a thread's whole stack as resident: keep file-I/O threads small
        // and short-lived so the idle agent stays within a few MiB.
        .thread_stack_size(256 << 10)
        .thread_keep_alive(Duration::from_millis(500))
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hutch-agent: cannot start: {e}");
            std::process::exit(1);
        }
    };
    // Before any other process exists: once read, the secret lives only in this process.
    let secret = take_secret();
    let mut config = config;
    let boot = config.boot.take();
    runtime.block_on(async move {
        let limit = config.memory_limit_bytes;
        let pids_limit = config.pids_limit;
        let procs = Processes::new(config);
        tokio::spawn(process::reap(procs.clone()));
        // First, before the dial home: a one-shot sandbox's command does not wait for it.
        if let Some(spec) = boot {
            start_boot(&procs, spec);
        }
        tokio::spawn(forward_signals(procs.clone()));
        if let Some(limit) = limit {
            memory::set_limit(&procs, limit);
        }
        if let Some(limit) = pids_limit {
            tokio::spawn(pids::watch(limit));
        }
        let ptys = pty::PtySessions::new(procs.clone());
        dial::serve_forever(procs, ptys, secret).await;
    });
}

/// Reads the per-boot secret the host left in the socket directory and removes the file
/// (see [`hutch_wire::AGENT_SECRET_FILE`]). `None` from a host that wrote none.
fn take_secret() -> Option<String> {
    let path =
        std::path::Path::new(hutch_wire::AGENT_SOCKET_DIR).join(hutch_wire::AGENT_SECRET_FILE);
    let secret = std::fs::read_to_string(&path).ok()?;
    if let Err(e) = std::fs::remove_file(&path) {
        eprintln!("hutch-agent: removing {}: {e}", path.display());
    }
    let secret = secret.trim().to_string();
    (secret.len() == hutch_wire::AGENT_SECRET_LEN).then_some(secret)
}

/// Starts the boot process on the agent's stdio, then hands that stdio over for good: the
/// agent's own messages go to [`hutch_wire::AGENT_LOG_FILE`]. When the process ends, the
/// agent exits with its shell exit code, which ends the sandbox; the outcome file is written
/// first when the code does not say everything (a signal, out of memory, a failed start).
fn start_boot(procs: &Processes, spec: hutch_wire::StartProcess) {
    let dir = std::path::Path::new(hutch_wire::AGENT_SOCKET_DIR);
    let started = procs.spawn_boot(spec);
    release_stdio(&dir.join(hutch_wire::AGENT_LOG_FILE));
    match started {
        Ok(info) => {
            let procs = procs.clone();
            tokio::spawn(async move {
                let exit = procs.wait_exit(info.pid as i32).await;
                let code = exit.shell_code().clamp(0, 255);
                // A plain exit is all in the exit code; the file (a few gofer round trips
                // on the way out) only when there is more to say.
                if exit.oom_killed || exit.reason != hutch_wire::ProcessExitReason::Exited {
                    write_outcome(dir, &hutch_wire::BootOutcome::Exit(exit));
                }
                std::process::exit(code);
            });
        }
        Err(e) => {
            let code = match e.code {
                "command_not_found" => 127,
                "command_not_executable" => 126,
                _ => 125,
            };
            write_outcome(
                dir,
                &hutch_wire::BootOutcome::Error(hutch_wire::ErrorBody::new(e.code, e.message)),
            );
            std::process::exit(code);
        }
    }
}

/// Points the agent's fds 0, 1 and 2 away from the boot process's terminal or pipes.
fn release_stdio(log: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/null"));
    let null = std::fs::File::open("/dev/null");
    // SAFETY: dup2 onto the standard descriptors; the sources stay open until it returns.
    unsafe {
        if let Ok(null) = &null {
            libc::dup2(null.as_raw_fd(), 0);
        }
        if let Ok(log) = &log {
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Writes `outcome` atomically (temporary file, then rename).
fn write_outcome(dir: &std::path::Path, outcome: &hutch_wire::BootOutcome) {
    let path = dir.join(hutch_wire::BOOT_OUTCOME_FILE);
    let tmp = dir.join(format!(".{}.tmp", hutch_wire::BOOT_OUTCOME_FILE));
    let Ok(json) = serde_json::to_vec(outcome) else {
        return;
    };
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Forwards termination signals to every process group; on SIGTERM/SIGINT, exits once they
/// are gone, which ends the sandbox (the runtime SIGKILLs after its grace period).
async fn forward_signals(procs: Processes) {
    let kinds = [
        (SignalKind::terminate(), libc::SIGTERM, true),
        (SignalKind::interrupt(), libc::SIGINT, true),
        (SignalKind::hangup(), libc::SIGHUP, false),
        (SignalKind::quit(), libc::SIGQUIT, false),
        (SignalKind::user_defined1(), libc::SIGUSR1, false),
        (SignalKind::user_defined2(), libc::SIGUSR2, false),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(i32, bool)>(8);
    for (kind, number, terminal) in kinds {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send((number, terminal)).await.is_err() {
                    return;
                }
            }
        });
    }
    while let Some((number, terminal)) = rx.recv().await {
        for pid in procs.running_pids() {
            process::signal_group(pid, number);
        }
        // A one-shot sandbox ends when its boot process does, and with its exit code.
        if terminal && procs.resolve(hutch_wire::BOOT_PROCESS_NAME).is_err() {
            while !procs.running_pids().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::process::exit(0);
        }
    }
}
