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
mod process;
mod pty;
mod users;

use std::time::Duration;

use hutch_wire::AgentConfig;
use tokio::signal::unix::{SignalKind, signal};

use crate::process::Processes;

fn main() {
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
    runtime.block_on(async move {
        let limit = config.memory_limit_bytes;
        let procs = Processes::new(config);
        tokio::spawn(process::reap(procs.clone()));
        tokio::spawn(forward_signals(procs.clone()));
        if let Some(limit) = limit {
            tokio::spawn(memory::watch(procs.clone(), limit));
        }
        let ptys = pty::PtySessions::new(procs.clone());
        dial::serve_forever(procs, ptys).await;
    });
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
        if terminal {
            while !procs.running_pids().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            std::process::exit(0);
        }
    }
}
