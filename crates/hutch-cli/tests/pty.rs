//! PTY sessions against real sandboxes: a shell on a terminal, typed input, resize, exit
//! codes, tokens, detach and reattach, and DELETE.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::Home;
use hutch_runtime::agent::{AgentClient, PtyInput, PtyStream};
use hutch_runtime::{Backend, RuntimeError, SandboxSpec};
use hutch_wire::{CreatePty, PtyMessage, PtySession, PtyStatus, StartProcess};

const PATIENCE: Duration = Duration::from_secs(20);

fn busybox() -> SandboxSpec {
    SandboxSpec {
        image: "busybox".into(),
        ..Default::default()
    }
}

fn shell() -> CreatePty {
    CreatePty {
        command: "sh".into(),
        ..CreatePty::default()
    }
}

/// One attached stream and what it printed so far.
struct Term {
    input: PtyInput,
    stream: PtyStream,
    seen: String,
    /// Where the next `expect` starts looking.
    cursor: usize,
}

impl Term {
    /// Attaches and sends READY, as the SDK does right after its handshake.
    async fn attach(agent: &AgentClient, session: &PtySession) -> Self {
        let (input, body) = PtyInput::channel(8);
        let token = session.token.as_deref().expect("create returns the token");
        let stream = agent
            .pty_stream(&session.session_id, token, body)
            .await
            .unwrap();
        input.send(&PtyMessage::Ready).await.unwrap();
        Self {
            input,
            stream,
            seen: String::new(),
            cursor: 0,
        }
    }

    async fn type_line(&self, line: &str) {
        let data = format!("{line}\n").into_bytes();
        self.input.send(&PtyMessage::Data(data)).await.unwrap();
    }

    /// Reads output until `needle` shows up after the previous match; returns the output
    /// from the previous match up to and including `needle`.
    async fn expect(&mut self, needle: &str) -> String {
        let read = async {
            loop {
                if let Some(at) = self.seen[self.cursor..].find(needle) {
                    let end = self.cursor + at + needle.len();
                    let text = self.seen[self.cursor..end].to_string();
                    self.cursor = end;
                    return text;
                }
                match self.stream.next().await.unwrap() {
                    Some(PtyMessage::Data(data)) => {
                        self.seen.push_str(&String::from_utf8_lossy(&data));
                    }
                    other => panic!(
                        "got {other:?} while waiting for {needle:?}; output: {:?}",
                        self.seen
                    ),
                }
            }
        };
        match tokio::time::timeout(PATIENCE, read).await {
            Ok(text) => text,
            Err(_) => panic!("no {needle:?} in time; output: {:?}", self.seen),
        }
    }

    /// Reads to the exit message, which must be followed by the end of the stream.
    async fn expect_exit(&mut self) -> i32 {
        let read = async {
            loop {
                match self.stream.next().await.unwrap() {
                    Some(PtyMessage::Data(data)) => {
                        self.seen.push_str(&String::from_utf8_lossy(&data))
                    }
                    Some(PtyMessage::Exit(code)) => return code,
                    other => panic!("got {other:?} before the exit; output: {:?}", self.seen),
                }
            }
        };
        let code = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("no exit message in time");
        let end = tokio::time::timeout(PATIENCE, self.stream.next()).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "the stream went on after the exit"
        );
        code
    }

    /// The stream must end without an exit message (replaced, or the session deleted).
    async fn expect_end(&mut self) {
        let read = async {
            loop {
                match self.stream.next().await {
                    Ok(Some(PtyMessage::Data(_))) => {}
                    Ok(None) => return,
                    other => panic!("expected the stream to end, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the stream did not end");
    }
}

async fn session(agent: &AgentClient, id: &str) -> Option<PtySession> {
    let sessions = agent.pty_sessions().await.unwrap();
    sessions.into_iter().find(|s| s.session_id == id)
}

/// Polls until `check` holds for the session (or `None` if it is gone).
async fn wait_for(agent: &AgentClient, id: &str, check: impl Fn(Option<&PtySession>) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let current = session(agent, id).await;
        if check(current.as_ref()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {id} never reached the expected state: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_shell_on_a_pty_runs_commands_resizes_and_exits_with_its_code() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let agent = &sandbox.agent;

    let created = agent.create_pty(&shell()).await.unwrap();
    assert!(created.token.as_ref().is_some_and(|t| t.len() >= 32));
    let listed = session(agent, &created.session_id).await.unwrap();
    assert_eq!(listed.status, PtyStatus::Running);
    assert_eq!((listed.rows, listed.cols), (24, 80));
    assert!(listed.token.is_none(), "listing handed out the token");

    let mut term = Term::attach(agent, &created).await;
    term.type_line("echo hi-$((6*7))").await;
    // The echoed input reads `hi-$((6*7))`; only the shell's output reads `hi-42`.
    term.expect("hi-42").await;
    term.type_line("tty; echo TERM=$TERM; stty size").await;
    term.expect("/dev/pts/").await;
    term.expect("TERM=xterm-256color").await;
    term.expect("24 80").await;

    term.input
        .send(&PtyMessage::Resize {
            cols: 100,
            rows: 30,
        })
        .await
        .unwrap();
    term.type_line("stty size").await;
    term.expect("30 100").await;
    let listed = session(agent, &created.session_id).await.unwrap();
    assert_eq!((listed.rows, listed.cols), (30, 100));
    assert_eq!(listed.client_count, 1);

    term.type_line("exit 3").await;
    assert_eq!(term.expect_exit().await, 3);
    let ended = session(agent, &created.session_id).await.unwrap();
    assert_eq!(ended.status, PtyStatus::Exited);
    assert_eq!(ended.exit_code, Some(3));

    // A shell killed by a signal reports 128 + the signal.
    let created = agent.create_pty(&shell()).await.unwrap();
    let mut term = Term::attach(agent, &created).await;
    term.type_line("kill -9 $$").await;
    assert_eq!(term.expect_exit().await, 137);

    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn tokens_are_checked_and_delete_kills_the_whole_session() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let agent = &sandbox.agent;
    let created = agent.create_pty(&shell()).await.unwrap();

    for token in ["", "0123456789abcdef", "not-the-token"] {
        let (_input, body) = PtyInput::channel(1);
        match agent.pty_stream(&created.session_id, token, body).await {
            Err(RuntimeError::ProcessFailure { code, .. }) => assert_eq!(code, "forbidden"),
            Err(other) => panic!("token {token:?}: unexpected error {other}"),
            Ok(_) => panic!("token {token:?} was accepted"),
        }
    }
    let (_input, body) = PtyInput::channel(1);
    let token = created.token.clone().unwrap();
    match agent.pty_stream("no-such-session", &token, body).await {
        Err(RuntimeError::ProcessFailure { code, .. }) => assert_eq!(code, "not_found"),
        other => panic!("unknown session: {:?}", other.err()),
    }

    let mut term = Term::attach(agent, &created).await;
    term.expect("# ").await;
    // A foreground job runs in a process group of its own under an interactive shell.
    term.type_line("sleep 1000 & sleep 2000").await;
    term.expect("sleep 2000").await;
    let ps = || async {
        let mut stream = agent
            .exec(&StartProcess {
                command: "ps".into(),
                ..StartProcess::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(event) = stream.next().await.unwrap() {
            if let hutch_runtime::agent::ExecEvent::Stdout { data, .. } = event {
                out.extend(data);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !ps().await.contains("sleep 2000") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleep never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    agent.kill_pty(&created.session_id).await.unwrap();
    term.expect_end().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let listing = ps().await;
        if !listing.contains("sleep 1000") && !listing.contains("sleep 2000") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session's processes survived DELETE:\n{listing}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(session(agent, &created.session_id).await.is_none());
    match agent.kill_pty(&created.session_id).await {
        Err(RuntimeError::ProcessFailure { code, .. }) => assert_eq!(code, "not_found"),
        other => panic!("second DELETE: {other:?}"),
    }

    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}

#[tokio::test]
async fn output_made_while_detached_arrives_on_reattach_and_a_new_attach_replaces_the_old() {
    let home = Home::with(&["busybox"]);
    let backend = home.backend();
    let sandbox = backend.create(busybox()).await.unwrap();
    let agent = &sandbox.agent;
    let created = agent.create_pty(&shell()).await.unwrap();
    let id = created.session_id.clone();

    let mut first = Term::attach(agent, &created).await;
    // Typed ahead of the prompt, the line would be echoed once by the terminal and drawn
    // again by the shell's line editor: wait for the shell.
    first.expect("# ").await;
    first.type_line("sleep 2; echo back-$((1+1))").await;
    first.expect("echo back-$((1+1))").await;
    drop(first);
    wait_for(agent, &id, |s| s.is_some_and(|s| s.client_count == 0)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut second = Term::attach(agent, &created).await;
    let replay = second.expect("back-2").await;
    assert!(
        !replay.contains("sleep 2"),
        "output delivered before the detach was sent again: {replay:?}"
    );

    // A concurrent attach takes over; the first stream ends without an exit.
    let mut third = Term::attach(agent, &created).await;
    second.expect_end().await;
    third.type_line("echo third-$((1+2))").await;
    third.expect("third-3").await;

    // An exit while nobody is attached waits for the next attach, after the output.
    third.type_line("sleep 1; echo bye-$((3+4)); exit 7").await;
    third.expect("exit 7").await;
    drop(third);
    wait_for(agent, &id, |s| {
        s.is_some_and(|s| s.status == PtyStatus::Exited && s.client_count == 0)
    })
    .await;
    let mut last = Term::attach(agent, &created).await;
    assert_eq!(last.expect_exit().await, 7);
    assert!(last.seen.contains("bye-7"), "{:?}", last.seen);

    agent.kill_pty(&id).await.unwrap();
    backend.delete(&sandbox.info.id).await.unwrap();
    home.assert_clean();
}
