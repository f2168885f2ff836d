//! PTY sessions: interactive processes on a pseudo-terminal, the Tensorlake SDK's
//! `/api/v1/pty` sessions.
//!
//! A session is a process tree on a terminal the agent holds the master of, plus an output
//! log of what the terminal printed. Sessions outlive their streams: a client attaches (see
//! `stream.rs`), detaches, and the next attach gets what was printed in between. Output not
//! yet delivered waits in a bounded ring (oldest dropped past [`OUTPUT_BUFFER`]). The child is
//! reaped by the agent's reaper, which hands its status over through
//! [`Processes::watch_exit`]; the session *ends* when that status is known and the terminal
//! is drained, and is forgotten [`LINGER_DELIVERED`] after its exit reached a client (or
//! [`LINGER_UNDELIVERED`] after it ended if nobody came), or at once on DELETE.

mod stream;
mod terminal;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hutch_wire::{CreatePty, PtySession, PtyStatus};
use tokio::sync::{oneshot, watch};

pub use stream::attach;

use crate::http::ApiError;
use crate::output::{OutputLog, Stream};
use crate::process::{self, Processes};
use hutch_wire::clock::now_ms;
use terminal::Terminal;

/// Bytes of terminal output kept for the next attach.
const OUTPUT_BUFFER: usize = 1 << 20;
/// How long the terminal may keep printing after its process exited (children holding it).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long an ended session stays attachable once its exit was delivered.
const LINGER_DELIVERED: Duration = Duration::from_secs(60);
/// How long an ended session whose exit nobody collected stays attachable.
const LINGER_UNDELIVERED: Duration = Duration::from_secs(600);
/// Between SIGHUP and SIGKILL when a session is deleted.
const HANGUP_GRACE: Duration = Duration::from_millis(200);

struct Session {
    token: String,
    pid: i32,
    command: String,
    args: Vec<String>,
    rows: u16,
    cols: u16,
    created_at: i64,
    ended_at: Option<i64>,
    /// Set when the session ended: the exit code, or 128 + signal.
    exit_code: Option<i32>,
    terminal: Arc<Terminal>,
    output: OutputLog,
    /// Sequence number of the first chunk no client has been handed yet.
    delivered: u64,
    /// Generation of the current attach; bumping it ends the previous stream. Dropping the
    /// session drops the sender, which ends every stream and the session's reader.
    attach: watch::Sender<u64>,
    attached: bool,
}

impl Session {
    fn info(&self, id: &str, token: bool) -> PtySession {
        PtySession {
            session_id: id.to_string(),
            token: token.then(|| self.token.clone()),
            pid: self.pid as i64,
            command: self.command.clone(),
            args: self.args.clone(),
            status: if self.exit_code.is_some() {
                PtyStatus::Exited
            } else {
                PtyStatus::Running
            },
            exit_code: self.exit_code,
            rows: self.rows,
            cols: self.cols,
            client_count: u32::from(self.attached),
            created_at: self.created_at,
            ended_at: self.ended_at,
        }
    }
}

#[derive(Clone)]
pub struct PtySessions {
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    procs: Processes,
}

impl PtySessions {
    pub fn new(procs: Processes) -> Self {
        Self {
            sessions: Arc::new(Mutex::new(HashMap::new())),
            procs,
        }
    }

    /// The table, even if a panicking holder poisoned the lock (every mutation is a single
    /// assignment, so the data stays consistent).
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        self.lock().get_mut(id).map(f)
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::not_found(format!("no PTY session {id:?}"))
    }

    pub fn list(&self) -> Vec<PtySession> {
        let mut sessions: Vec<PtySession> = self
            .lock()
            .iter()
            .map(|(id, s)| s.info(id, false))
            .collect();
        sessions.sort_by_key(|s| s.created_at);
        sessions
    }

    pub fn info(&self, id: &str) -> Result<PtySession, ApiError> {
        self.with(id, |s| s.info(id, false))
            .ok_or_else(|| Self::not_found(id))
    }

    /// Starts `req.command` on a new terminal; the answer carries the attach token.
    pub fn create(&self, req: CreatePty) -> Result<PtySession, ApiError> {
        if req.command.is_empty() {
            return Err(ApiError::invalid("`command` must not be empty"));
        }
        let mut launch = self.procs.prepare_launch(
            req.user.as_ref(),
            req.env.as_ref(),
            req.working_dir.as_deref(),
        )?;
        // Full-screen programs need a terminal type; the SDK's own CLI sends one.
        launch
            .env
            .entry("TERM".into())
            .or_insert_with(|| "xterm-256color".into());
        let internal = |what: &str, e: std::io::Error| {
            ApiError::new(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                "pty_failed",
                format!("{what}: {e}"),
            )
        };
        let (terminal, slave) = Terminal::open(req.rows, req.cols)
            .map_err(|e| internal("opening a pseudo-terminal", e))?;
        let id = hutch_wire::ids::random_hex(8).map_err(|e| internal("reading randomness", e))?;
        let token =
            hutch_wire::ids::random_hex(32).map_err(|e| internal("reading randomness", e))?;
        let stdio = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map(Stdio::from)
                .map_err(|e| internal("duplicating the terminal", e))
        };
        crate::process::note_spawn();
        let mut cmd = Command::new(&req.command);
        cmd.args(&req.args)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.working_dir)
            .stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(Stdio::from(slave));
        let ids = launch.identity;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || process::enter_session(&ids, true));
        }
        let child = cmd
            .spawn()
            .map_err(|e| process::spawn_error(&req.command, e))?;
        let pid = child.id() as i32;
        // Registered before the next await, so the reaper cannot take the status first.
        let exited = self.procs.watch_exit(pid);
        // The child handle is dropped unwaited (the reaper owns waitpid), and the command
        // with it: it holds the parent's copies of the slave, which would keep the terminal
        // from ever reporting the end of output.
        drop(child);
        drop(cmd);

        let terminal = Arc::new(terminal);
        let (attach, _) = watch::channel(0);
        let session = Session {
            token,
            pid,
            command: req.command,
            args: req.args,
            rows: req.rows,
            cols: req.cols,
            created_at: now_ms(),
            ended_at: None,
            exit_code: None,
            terminal: terminal.clone(),
            output: OutputLog::new(OUTPUT_BUFFER),
            delivered: 0,
            attach,
            attached: false,
        };
        let info = session.info(&id, true);
        let gone = session.attach.subscribe();
        self.lock().insert(id.clone(), session);
        tokio::spawn(self.clone().run(id, terminal, exited, gone));
        Ok(info)
    }

    /// Copies terminal output into the session's log until the process ended and the
    /// terminal is drained, then records the exit.
    async fn run(
        self,
        id: String,
        terminal: Arc<Terminal>,
        mut exited: oneshot::Receiver<i32>,
        mut gone: watch::Receiver<u64>,
    ) {
        let this = self.clone();
        let key = id.clone();
        let reader = async move {
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n @ 1..) = terminal.read(&mut buf).await {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if this
                    .with(&key, |s| s.output.push(Stream::Stdout, chunk, now_ms()))
                    .is_none()
                {
                    return;
                }
            }
        };
        tokio::pin!(reader);
        let removed = async move { while gone.changed().await.is_ok() {} };
        tokio::pin!(removed);
        let mut drained = false;
        let status = tokio::select! {
            status = &mut exited => status.ok(),
            () = &mut reader => {
                drained = true;
                tokio::select! {
                    status = &mut exited => status.ok(),
                    () = &mut removed => return,
                }
            }
            () = &mut removed => return,
        };
        if !drained {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut reader).await;
        }
        let code = status.map_or(-1, |status| {
            if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            }
        });
        let ended = self
            .with(&id, |s| {
                s.exit_code = Some(code);
                s.ended_at = Some(now_ms());
                s.output.close();
            })
            .is_some();
        if ended {
            self.forget_later(id, LINGER_UNDELIVERED);
        }
    }

    /// Forgets the session `after` from now, if it has ended by then.
    fn forget_later(&self, id: String, after: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut sessions = this.lock();
            if sessions.get(&id).is_some_and(|s| s.exit_code.is_some()) {
                sessions.remove(&id);
            }
        });
    }

    /// Ends the session: its streams close, its process tree gets SIGHUP, then SIGKILL.
    pub fn kill(&self, id: &str) -> Result<(), ApiError> {
        let session = self.lock().remove(id).ok_or_else(|| Self::not_found(id))?;
        if session.exit_code.is_some() {
            return Ok(());
        }
        let pid = session.pid;
        if let Some(pgrp) = session.terminal.foreground_group() {
            // SAFETY: kill(2) with a negative pid signals a process group.
            unsafe { libc::kill(-pgrp, libc::SIGHUP) };
        }
        process::signal_group(pid, libc::SIGHUP);
        tokio::spawn(async move {
            tokio::time::sleep(HANGUP_GRACE).await;
            // Every member, not just the leader's group: a shell runs jobs in groups of
            // their own.
            for member in terminal::session_members(pid) {
                // SAFETY: kill(2) on a pid of the session we started.
                unsafe { libc::kill(member, libc::SIGKILL) };
            }
        });
        Ok(())
    }
}
