//! The process table: spawning, reaping, signalling and the life of every process the agent
//! starts.
//!
//! The agent is PID 1, so it reaps with `waitpid(-1)` itself rather than letting a child
//! handle do it: orphans re-parented to PID 1 must be reaped too, and a second waiter would
//! steal exit statuses. A process is *finished* only when its exit status is known and its
//! output pipes are drained (or a short grace has passed, for children that keep the pipes
//! open), so followers always see all output before the exit event.

use hutch_wire::clock::now_ms;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hutch_wire::{
    AgentConfig, ExitInfo, OutputMode, ProcessExitReason, ProcessInfo, ProcessStatus, ProcessUser,
    StartProcess, StdinMode,
};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::http::ApiError;
use crate::output::{OutputLog, Stream};
use crate::users::{self, Identity};

static SPAWNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SPAWNED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Tells the watchers (memory, pids) that a process is about to exist.
pub fn note_spawn() {
    SPAWNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    SPAWNED.notify_waiters();
}

/// How many spawns [`note_spawn`] has seen.
pub fn spawn_count() -> u64 {
    SPAWNS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits until a spawn after `seen` (a [`spawn_count`] read before the caller looked), or
/// `at_most`. The watchers sleep here while the agent is alone: an idle sandbox costs the
/// host no polling (it measured 6% of a core per idle sandbox at 50 polls a second).
pub async fn wait_for_spawn(seen: u64, at_most: Duration) {
    let notified = SPAWNED.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if spawn_count() != seen {
        return;
    }
    let _ = tokio::time::timeout(at_most, notified).await;
}

/// How long a process's pipes may stay open after it exited (held by its children).
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Finished processes kept for `get`/`list` before the oldest are forgotten.
const KEEP_FINISHED: usize = 256;

pub type StdinHandle = Arc<tokio::sync::Mutex<Option<pipe::Sender>>>;

pub struct Process {
    pub pid: i32,
    pub spec: StartProcess,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub output: OutputLog,
    pub stdin: StdinHandle,
    pub exit: Option<ExitInfo>,
    wait_status: Option<i32>,
    open_pipes: u8,
    oom_killed: bool,
    timed_out: bool,
    /// The managed process this is a run of.
    pub managed_id: Option<String>,
}

impl Process {
    pub fn info(&self) -> ProcessInfo {
        let stdin_writable = self.exit.is_none()
            && self.spec.stdin_mode == StdinMode::Pipe
            && self.stdin.try_lock().map(|s| s.is_some()).unwrap_or(true);
        let status = match &self.exit {
            None => ProcessStatus::Running,
            Some(e) if e.oom_killed => ProcessStatus::OomKilled,
            Some(e) if e.signal.is_some() => ProcessStatus::Signaled,
            Some(_) => ProcessStatus::Exited,
        };
        ProcessInfo {
            pid: self.pid as i64,
            status,
            exit_code: self.exit.as_ref().and_then(|e| e.exit_code),
            signal: self.exit.as_ref().and_then(|e| e.signal),
            oom_killed: self.exit.as_ref().is_some_and(|e| e.oom_killed),
            stdin_writable,
            command: self.spec.command.clone(),
            args: self.spec.args.clone(),
            started_at: self.started_at,
            ended_at: self.ended_at,
            name: self.spec.name.clone(),
            managed: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.exit.is_none()
    }

    fn maybe_finish(&mut self) {
        let Some(status) = self.wait_status else {
            return;
        };
        if self.open_pipes > 0 || self.exit.is_some() {
            return;
        }
        self.finish(status);
    }

    fn finish(&mut self, status: i32) {
        let (exit_code, signal) = if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status) as i64))
        } else {
            (Some(libc::WEXITSTATUS(status) as i64), None)
        };
        let reason = if self.oom_killed {
            ProcessExitReason::OomKilled
        } else if self.timed_out {
            ProcessExitReason::TimedOut
        } else if signal.is_some() {
            ProcessExitReason::Signaled
        } else {
            ProcessExitReason::Exited
        };
        self.exit = Some(ExitInfo {
            exit_code,
            signal,
            oom_killed: self.oom_killed,
            reason,
        });
        self.ended_at = Some(now_ms());
        self.output.close();
    }
}

/// What [`Processes::prepare_launch`] resolved for a new process.
pub struct Launch {
    pub identity: Identity,
    pub env: BTreeMap<String, String>,
    pub working_dir: String,
}

pub struct Table {
    procs: BTreeMap<i32, Process>,
    /// Managed processes by id, across their runs (see `supervise`).
    managed: HashMap<String, crate::supervise::Managed>,
    managed_seq: u64,
    names: HashMap<String, i32>,
    /// Children reaped on behalf of someone else (see [`Processes::watch_exit`]).
    exit_watchers: HashMap<i32, oneshot::Sender<i32>>,
    config: AgentConfig,
    /// Bytes of output kept per process (see [`output_capacity`]).
    output_capacity: usize,
    /// Bytes of output kept across all finished processes (see [`finished_output_budget`]).
    finished_budget: usize,
    pub total_started: u64,
    pub boot_ms: i64,
}

#[derive(Clone)]
pub struct Processes(Arc<Mutex<Table>>);

impl Processes {
    pub fn new(config: AgentConfig) -> Self {
        let output_capacity = output_capacity(&config);
        Self(Arc::new(Mutex::new(Table {
            procs: BTreeMap::new(),
            managed: HashMap::new(),
            managed_seq: 0,
            names: HashMap::new(),
            exit_watchers: HashMap::new(),
            finished_budget: finished_output_budget(&config).max(output_capacity),
            output_capacity,
            config,
            total_started: 0,
            boot_ms: now_ms(),
        })))
    }

    /// The table, even if a panicking holder poisoned the lock: its data stays consistent
    /// because every mutation is a single assignment.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> AgentConfig {
        self.lock().config.clone()
    }

    /// Resolves a `{pid_or_name}` path segment.
    pub fn resolve(&self, reference: &str) -> Result<i32, ApiError> {
        let table = self.lock();
        if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
            let pid: i32 = reference
                .parse()
                .map_err(|_| ApiError::not_found(format!("no process {reference}")))?;
            return if table.procs.contains_key(&pid) {
                Ok(pid)
            } else {
                Err(ApiError::not_found(format!("no process with pid {pid}")))
            };
        }
        table
            .names
            .get(reference)
            .copied()
            .ok_or_else(|| ApiError::not_found(format!("no process named {reference:?}")))
    }

    pub fn with<R>(&self, pid: i32, f: impl FnOnce(&mut Process) -> R) -> Result<R, ApiError> {
        let mut table = self.lock();
        table
            .procs
            .get_mut(&pid)
            .map(f)
            .ok_or_else(|| ApiError::not_found(format!("no process with pid {pid}")))
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        let table = self.lock();
        table.procs.values().map(|p| table.info_of(p)).collect()
    }

    /// A process's info, with its supervision when it is a run of a managed process.
    pub fn info(&self, pid: i32) -> Result<ProcessInfo, ApiError> {
        let table = self.lock();
        table
            .procs
            .get(&pid)
            .map(|p| table.info_of(p))
            .ok_or_else(|| ApiError::not_found(format!("no process with pid {pid}")))
    }

    /// Runs `f` on managed process `id`'s record, if it has one.
    pub fn managed<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut crate::supervise::Managed) -> R,
    ) -> Option<R> {
        self.lock().managed.get_mut(id).map(f)
    }

    /// The managed process `pid` is a run of.
    fn managed_id(&self, pid: i32) -> Option<String> {
        self.lock()
            .procs
            .get(&pid)
            .and_then(|p| p.managed_id.clone())
    }

    /// Ends the supervision of the managed process `pid` is a run of (`DELETE`).
    pub fn stop_managed(&self, pid: i32) {
        if let Some(id) = self.managed_id(pid) {
            self.managed(&id, |m| m.stopped = true);
        }
    }

    /// Starts the next run of managed process `id`.
    pub fn respawn(&self, id: &str) -> Result<(), ApiError> {
        let spec = self
            .managed(id, |m| m.spec.clone())
            .ok_or_else(|| ApiError::not_found(format!("no managed process {id:?}")))?;
        let info = self.launch(spec, false, Some(id.to_string()))?;
        self.managed(id, |m| {
            m.pid = info.pid as i32;
            m.restart_count += 1;
            m.status = hutch_wire::SupervisedProcessStatus::Running;
            m.next_restart_at = None;
            m.restart_now = false;
            m.consecutive_failures = 0;
            if m.spec.health_check.is_some() {
                m.health = hutch_wire::SupervisedProcessHealthStatus::Starting;
            }
        });
        Ok(())
    }

    pub fn counts(&self) -> (i64, i64, i64) {
        let table = self.lock();
        let running = table.procs.values().filter(|p| p.is_running()).count() as i64;
        (running, table.total_started as i64, table.boot_ms)
    }

    pub fn running_pids(&self) -> Vec<i32> {
        let table = self.lock();
        table
            .procs
            .values()
            .filter(|p| p.is_running())
            .map(|p| p.pid)
            .chain(table.exit_watchers.keys().copied())
            .collect()
    }

    /// Starts a process; everything that can be checked is checked before `fork`.
    pub fn spawn(&self, spec: StartProcess) -> Result<ProcessInfo, ApiError> {
        if !spec.is_managed() {
            return self.launch(spec, false, None);
        }
        let id = {
            let mut table = self.lock();
            if table.managed.len() >= crate::supervise::MAX_MANAGED {
                // The oldest record of a process that stays down makes room.
                let gone = table
                    .managed
                    .values()
                    .filter(|m| m.status == hutch_wire::SupervisedProcessStatus::Stopped)
                    .min_by_key(|m| m.last_exit.as_ref().map_or(0, |e| e.ended_at))
                    .map(|m| m.id.clone());
                match gone {
                    Some(id) => {
                        table.managed.remove(&id);
                    }
                    None => {
                        return Err(ApiError::conflict(format!(
                            "{} managed processes are supervised already",
                            crate::supervise::MAX_MANAGED
                        )));
                    }
                }
            }
            table.managed_seq += 1;
            spec.name
                .clone()
                .unwrap_or_else(|| format!("managed-{}", table.managed_seq))
        };
        let info = self.launch(spec.clone(), false, Some(id.clone()))?;
        self.lock().managed.insert(
            id.clone(),
            crate::supervise::Managed::new(id.clone(), spec, info.pid as i32),
        );
        tokio::spawn(crate::supervise::supervise(self.clone(), id));
        self.info(info.pid as i32)
    }

    /// Starts the boot process (see [`AgentConfig::boot`]) with the agent's own stdin,
    /// stdout and stderr.
    pub fn spawn_boot(&self, mut spec: StartProcess) -> Result<ProcessInfo, ApiError> {
        spec.name = Some(hutch_wire::BOOT_PROCESS_NAME.into());
        spec.stdin_mode = StdinMode::Closed;
        self.launch(spec, true, None)
    }

    fn launch(
        &self,
        spec: StartProcess,
        inherit_stdio: bool,
        managed_id: Option<String>,
    ) -> Result<ProcessInfo, ApiError> {
        if spec.command.is_empty() {
            return Err(ApiError::invalid("`command` must not be empty"));
        }
        if let Some(name) = &spec.name {
            validate_name(name)?;
            let table = self.lock();
            if let Some(pid) = table.names.get(name)
                && table.procs.get(pid).is_some_and(Process::is_running)
            {
                return Err(ApiError::conflict(format!(
                    "a running process is already named {name:?} (pid {pid})"
                )));
            }
        }
        let launch = self.prepare_launch(
            spec.user.as_ref(),
            spec.env.as_ref(),
            spec.working_dir.as_deref(),
        )?;

        note_spawn();
        let mut cmd = Command::new(&spec.command);
        cmd.args(&spec.args)
            .env_clear()
            .envs(&launch.env)
            .current_dir(&launch.working_dir);
        if inherit_stdio {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        } else {
            cmd.stdin(stdio(spec.stdin_mode == StdinMode::Pipe))
                .stdout(stdio(spec.stdout_mode == OutputMode::Capture))
                .stderr(stdio(spec.stderr_mode == OutputMode::Capture));
        }
        let ids = launch.identity;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || enter_session(&ids, false));
        }
        let mut child = cmd.spawn().map_err(|e| spawn_error(&spec.command, e))?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take().map(OwnedFd::from);
        let stdout = child.stdout.take().map(OwnedFd::from);
        let stderr = child.stderr.take().map(OwnedFd::from);
        // The child handle is dropped unwaited on purpose: the reaper owns waitpid.
        drop(child);

        let stdin_sender = stdin.and_then(|fd| pipe::Sender::from_owned_fd(fd).ok());
        let capacity = self.lock().output_capacity;
        let timeout = spec.timeout;
        let mut process = Process {
            pid,
            spec,
            started_at: now_ms(),
            ended_at: None,
            output: OutputLog::new(capacity),
            stdin: Arc::new(tokio::sync::Mutex::new(stdin_sender)),
            exit: None,
            wait_status: None,
            open_pipes: 0,
            oom_killed: false,
            timed_out: false,
            managed_id,
        };
        for (fd, stream) in [(stdout, Stream::Stdout), (stderr, Stream::Stderr)] {
            if let Some(fd) = fd {
                process.open_pipes += 1;
                self.spawn_reader(pid, fd, stream);
            }
        }
        let info = process.info();
        {
            let mut table = self.lock();
            if let Some(name) = &process.spec.name {
                table.names.insert(name.clone(), pid);
            }
            // A pid is reused only after its previous holder was reaped and finished.
            table.procs.insert(pid, process);
            table.total_started += 1;
            table.trim_finished();
        }
        if let Some(secs) = timeout.filter(|s| *s > 0.0 && s.is_finite()) {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                let still_running = this
                    .with(pid, |p| {
                        if p.is_running() {
                            p.timed_out = true;
                        }
                        p.is_running()
                    })
                    .unwrap_or(false);
                if still_running {
                    signal_group(pid, libc::SIGKILL);
                }
            });
        }
        Ok(info)
    }

    /// The identity, environment and working directory a new process starts with: the
    /// sandbox's defaults (image env, `PATH`, the user's `HOME`) overlaid by the request's.
    pub fn prepare_launch(
        &self,
        user: Option<&ProcessUser>,
        extra_env: Option<&BTreeMap<String, String>>,
        working_dir: Option<&str>,
    ) -> Result<Launch, ApiError> {
        let config = self.config();
        let identity = resolve_identity(user, config.user.as_deref())?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for kv in &config.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        if let Some(home) = &identity.home {
            env.entry("HOME".into()).or_insert_with(|| home.clone());
        }
        if let Some(extra) = extra_env {
            env.extend(extra.clone());
        }
        let working_dir = working_dir
            .map(str::to_string)
            .or(config.working_dir)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".into());
        if !std::path::Path::new(&working_dir).is_dir() {
            return Err(ApiError::invalid(format!(
                "working directory {working_dir:?} does not exist in the sandbox"
            )));
        }
        Ok(Launch {
            identity,
            env,
            working_dir,
        })
    }

    /// Hands `pid`'s wait status to the returned receiver instead of the process table:
    /// for children the table does not track (PTY sessions), which the reaper would
    /// otherwise reap into the void. Call it before the next `.await` after the fork, so the
    /// reaper cannot run in between. Such children count as running for signal forwarding
    /// and shutdown until they are reaped.
    pub fn watch_exit(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        self.lock().exit_watchers.insert(pid, tx);
        rx
    }

    fn spawn_reader(&self, pid: i32, fd: OwnedFd, stream: Stream) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(&buf[..n]);
                            let open = this
                                .with(pid, |p| {
                                    p.output.push(stream, chunk, now_ms());
                                    !p.output.is_closed()
                                })
                                .unwrap_or(false);
                            if !open {
                                break;
                            }
                        }
                    }
                }
            }
            let _ = this.with(pid, |p| {
                p.open_pipes = p.open_pipes.saturating_sub(1);
                p.maybe_finish();
            });
            this.lock().trim_finished();
        });
    }

    /// Called by the reaper with each `waitpid` result.
    pub fn on_exit(&self, pid: i32, status: i32) {
        let watcher = self.lock().exit_watchers.remove(&pid);
        if let Some(tx) = watcher {
            let _ = tx.send(status);
            return;
        }
        let pending = self
            .with(pid, |p| {
                p.wait_status = Some(status);
                p.maybe_finish();
                p.exit.is_none()
            })
            .unwrap_or(false);
        self.lock().trim_finished();
        if pending {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DRAIN_GRACE).await;
                let _ = this.with(pid, |p| {
                    if p.exit.is_none() {
                        p.finish(status);
                    }
                });
                this.lock().trim_finished();
            });
        }
    }

    /// `(pid, bytes)` of the output the agent holds for each running process: memory the
    /// agent spends on that process's behalf, which [`crate::memory`] charges to it.
    pub fn buffered_output(&self) -> Vec<(i32, u64)> {
        self.lock()
            .procs
            .values()
            .filter(|p| p.is_running())
            .map(|p| (p.pid, p.output.retained_bytes() as u64))
            .collect()
    }

    /// Marks the tracked process whose group holds `victim` as killed for memory.
    pub fn mark_oom(&self, victim: i32) {
        // SAFETY: getpgid only reads the process table.
        let pgid = unsafe { libc::getpgid(victim) };
        let mut table = self.lock();
        for p in table.procs.values_mut() {
            if p.is_running() && (p.pid == victim || p.pid == pgid) {
                p.oom_killed = true;
            }
        }
    }

    /// Waits until `pid` has finished (exit status known, output drained) and returns how.
    pub async fn wait_exit(&self, pid: i32) -> ExitInfo {
        let Ok(mut done) = self.with(pid, |p| p.output.subscribe()) else {
            return vanished();
        };
        loop {
            match self.with(pid, |p| p.exit.clone()) {
                Ok(Some(exit)) => return exit,
                Ok(None) => {}
                Err(_) => return vanished(),
            }
            if done.changed().await.is_err() {
                return self
                    .with(pid, |p| p.exit.clone())
                    .ok()
                    .flatten()
                    .unwrap_or_else(vanished);
            }
        }
    }

    /// Re-runs a process's spec (after stopping it if it still runs). A managed process
    /// gets its next run at once, under its supervision (restart count and all).
    pub async fn restart(&self, pid: i32) -> Result<ProcessInfo, ApiError> {
        if let Some(id) = self.managed_id(pid) {
            return self.restart_managed(&id).await;
        }
        let (spec, mut done) = self.with(pid, |p| (p.spec.clone(), p.output.subscribe()))?;
        if self.with(pid, |p| p.is_running())? {
            signal_group(pid, libc::SIGKILL);
            while self.with(pid, |p| p.is_running())? {
                if done.changed().await.is_err() {
                    break;
                }
            }
        }
        self.spawn(spec)
    }
}

impl Processes {
    async fn restart_managed(&self, id: &str) -> Result<ProcessInfo, ApiError> {
        use hutch_wire::SupervisedProcessStatus as S;
        let (old, status) = self
            .managed(id, |m| {
                m.stopped = false;
                m.restart_now = true;
                (m.pid, m.status)
            })
            .ok_or_else(|| ApiError::not_found(format!("no managed process {id:?}")))?;
        if status == S::Stopped {
            // Its supervisor is done: this run starts here, supervised again.
            self.respawn(id)?;
            tokio::spawn(crate::supervise::supervise(self.clone(), id.to_string()));
        } else if self.with(old, |p| p.is_running()).unwrap_or(false) {
            signal_group(old, libc::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.managed(id, |m| m.pid).unwrap_or(old);
            if now != old {
                return self.info(now);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ApiError::conflict(format!(
                    "managed process {id:?} did not start again within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Table {
    /// A process's info, with its supervision when it is a run of a managed process.
    fn info_of(&self, p: &Process) -> ProcessInfo {
        let mut info = p.info();
        info.managed = p
            .managed_id
            .as_ref()
            .and_then(|id| self.managed.get(id))
            .map(crate::supervise::Managed::info);
        info
    }

    /// Keeps what finished processes hold within bounds: at most [`KEEP_FINISHED`] of them
    /// are remembered, and their output totals at most the finished budget, the oldest
    /// finished losing their output (not their exit status) first. Running processes keep
    /// theirs: each is bounded by its own ring.
    fn trim_finished(&mut self) {
        let mut finished: Vec<(i64, i32)> = self
            .procs
            .values()
            .filter(|p| !p.is_running())
            .map(|p| (p.ended_at.unwrap_or(0), p.pid))
            .collect();
        finished.sort_unstable();
        let excess = finished.len().saturating_sub(KEEP_FINISHED);
        for (_, pid) in finished.drain(..excess) {
            if let Some(p) = self.procs.remove(&pid)
                && let Some(name) = p.spec.name
                && self.names.get(&name) == Some(&pid)
            {
                self.names.remove(&name);
            }
        }
        let mut total: usize = finished
            .iter()
            .filter_map(|(_, pid)| self.procs.get(pid))
            .map(|p| p.output.retained_bytes())
            .sum();
        for (_, pid) in &finished {
            if total <= self.finished_budget {
                break;
            }
            if let Some(p) = self.procs.get_mut(pid) {
                total -= p.output.retained_bytes();
                p.output.discard();
            }
        }
    }
}

/// Output kept per process unless the config says: 8 MiB, or 1/32 of a smaller sandbox's
/// memory (at least 1 MiB), so a few chatty processes cannot hold much of a small sandbox.
fn output_capacity(config: &AgentConfig) -> usize {
    if let Some(bytes) = config.output_buffer_bytes {
        return bytes;
    }
    match config.memory_limit_bytes {
        Some(limit) => usize::try_from(limit / 32)
            .unwrap_or(usize::MAX)
            .clamp(1 << 20, DEFAULT_OUTPUT_BUFFER),
        None => DEFAULT_OUTPUT_BUFFER,
    }
}

/// Output kept across all finished processes: 64 MiB, or 1/8 of a smaller sandbox's memory
/// (at least 4 MiB). Without it, 256 finished processes of 8 MiB each would be 2 GiB held
/// by the agent.
fn finished_output_budget(config: &AgentConfig) -> usize {
    const MAX: usize = 64 << 20;
    match config.memory_limit_bytes {
        Some(limit) => usize::try_from(limit / 8)
            .unwrap_or(usize::MAX)
            .clamp(4 << 20, MAX),
        None => MAX,
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_OUTPUT_BUFFER: usize = 8 << 20;

/// The exit of a process the table no longer knows: reported as killed.
fn vanished() -> ExitInfo {
    ExitInfo {
        exit_code: None,
        signal: Some(libc::SIGKILL as i64),
        oom_killed: false,
        reason: ProcessExitReason::Signaled,
    }
}

fn stdio(piped: bool) -> Stdio {
    if piped { Stdio::piped() } else { Stdio::null() }
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.contains('/') || name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "a process name must be non-empty, contain no '/', and not be all digits",
        ));
    }
    Ok(())
}

fn resolve_identity(
    requested: Option<&ProcessUser>,
    default: Option<&str>,
) -> Result<Identity, ApiError> {
    let resolved = match requested {
        Some(ProcessUser::Spec(spec)) => users::resolve(spec),
        Some(ProcessUser::Ids { name, uid, gid }) => {
            let base = match (name, uid) {
                (Some(name), _) => users::resolve(name),
                (None, Some(uid)) => users::resolve(&uid.to_string()),
                (None, None) => Ok(Identity::root()),
            };
            base.map(|mut id| {
                if let Some(uid) = uid {
                    id.uid = *uid;
                }
                if let Some(gid) = gid {
                    id.gid = *gid;
                    id.groups = vec![*gid];
                }
                id
            })
        }
        None => users::resolve(default.unwrap_or("")),
    };
    resolved.map_err(ApiError::invalid)
}

/// Runs in the child between `fork` and `exec`: a session of its own (so the agent can
/// signal the whole group), the terminal on fd 0 as controlling terminal if asked, then the
/// user's ids.
pub fn enter_session(id: &Identity, controlling_tty: bool) -> std::io::Result<()> {
    // SAFETY: plain syscalls on values owned by the closure; no allocation.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setgroups(id.groups.len(), id.groups.as_ptr()) < 0
            || libc::setgid(id.gid) < 0
            || libc::setuid(id.uid) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn spawn_error(command: &str, err: std::io::Error) -> ApiError {
    match err.kind() {
        std::io::ErrorKind::NotFound => ApiError::new(
            hyper::StatusCode::BAD_REQUEST,
            "command_not_found",
            format!("command not found: {command}"),
        ),
        std::io::ErrorKind::PermissionDenied => ApiError::new(
            hyper::StatusCode::BAD_REQUEST,
            "command_not_executable",
            format!("permission denied executing {command}"),
        ),
        _ => ApiError::new(
            hyper::StatusCode::BAD_REQUEST,
            "spawn_failed",
            format!("could not start {command}: {err}"),
        ),
    }
}

/// Sends `signal` to the process group led by `pid` (every process is a session leader).
pub fn signal_group(pid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a negative pid signals a process group.
    unsafe { libc::kill(-pid, signal) == 0 || libc::kill(pid, signal) == 0 }
}

/// Reaps every child, ours or re-parented, forever.
pub async fn reap(processes: Processes) {
    let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        return;
    };
    loop {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only to `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            processes.on_exit(pid, status);
        }
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process entry as the table holds one, with `bytes` of output, finished at
    /// `ended_at` (or running).
    fn entry(pid: i32, ended_at: Option<i64>, bytes: usize, capacity: usize) -> Process {
        let mut output = OutputLog::new(capacity);
        for _ in 0..bytes.div_ceil(64 << 10) {
            output.push(Stream::Stdout, Bytes::from(vec![0u8; 64 << 10]), 0);
        }
        let exit = ended_at.map(|_| ExitInfo {
            exit_code: Some(0),
            signal: None,
            oom_killed: false,
            reason: ProcessExitReason::Exited,
        });
        if exit.is_some() {
            output.close();
        }
        Process {
            pid,
            spec: StartProcess {
                command: "true".into(),
                name: Some(format!("p{pid}")),
                ..StartProcess::default()
            },
            started_at: 0,
            ended_at,
            output,
            stdin: Arc::new(tokio::sync::Mutex::new(None)),
            exit,
            wait_status: None,
            open_pipes: 0,
            oom_killed: false,
            timed_out: false,
            managed_id: None,
        }
    }

    fn table(memory_limit: u64) -> Processes {
        Processes::new(AgentConfig {
            memory_limit_bytes: Some(memory_limit),
            ..AgentConfig::default()
        })
    }

    #[test]
    fn small_sandboxes_keep_less_output() {
        let small = table(256 << 20);
        let t = small.lock();
        assert_eq!(t.output_capacity, 8 << 20);
        assert_eq!(t.finished_budget, 32 << 20);
        drop(t);
        let tiny = table(32 << 20);
        let t = tiny.lock();
        assert_eq!(t.output_capacity, 1 << 20);
        assert_eq!(t.finished_budget, 4 << 20);
        drop(t);
        let unlimited = Processes::new(AgentConfig::default());
        assert_eq!(unlimited.lock().finished_budget, 64 << 20);
    }

    #[test]
    fn finished_output_is_capped_in_total_oldest_first_and_running_output_kept() {
        let procs = table(256 << 20);
        let mut t = procs.lock();
        let capacity = t.output_capacity;
        // 40 finished processes with a full 8 MiB each (320 MiB), and a running one.
        for pid in 1..=40 {
            t.procs
                .insert(pid, entry(pid, Some(1000 + pid as i64), capacity, capacity));
        }
        t.procs.insert(100, entry(100, None, capacity, capacity));
        t.trim_finished();
        let finished: usize = t
            .procs
            .values()
            .filter(|p| !p.is_running())
            .map(|p| p.output.retained_bytes())
            .sum();
        assert!(finished <= t.finished_budget, "{finished}");
        assert_eq!(t.procs.len(), 41, "exit statuses are all kept");
        assert_eq!(t.procs[&1].output.retained_bytes(), 0, "oldest lose output");
        assert_eq!(
            t.procs[&40].output.retained_bytes(),
            capacity,
            "newest keep it"
        );
        assert_eq!(t.procs[&100].output.retained_bytes(), capacity);
    }

    #[test]
    fn at_most_keep_finished_processes_are_remembered() {
        let procs = table(1 << 30);
        let mut t = procs.lock();
        for pid in 1..=(KEEP_FINISHED as i32 + 50) {
            t.procs
                .insert(pid, entry(pid, Some(pid as i64), 1, 1 << 20));
            t.names.insert(format!("p{pid}"), pid);
        }
        t.procs.insert(10_000, entry(10_000, None, 1, 1 << 20));
        t.trim_finished();
        assert_eq!(t.procs.len(), KEEP_FINISHED + 1);
        assert!(!t.procs.contains_key(&50) && t.procs.contains_key(&51));
        assert!(!t.names.contains_key("p50") && t.names.contains_key("p51"));
        assert!(t.procs.contains_key(&10_000), "running processes stay");
    }
}
