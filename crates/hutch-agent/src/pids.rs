//! The sandbox's process limit, enforced from inside.
//!
//! Every process in a gVisor sandbox costs the host a process and several threads, so a
//! fork bomb must end inside the sandbox. The host cgroup's `pids.max` is only a backstop:
//! when the Sentry reaches it, it panics and the whole sandbox dies. gVisor's own
//! `RLIMIT_NPROC` is not enforced, and the runsc this runs on cannot create pids cgroups
//! inside the sandbox, so the agent counts: past the limit it kills every process of the
//! session that holds the most (a fork bomb and all its children share one), and the
//! sandbox lives on. The agent itself (PID 1) is never a victim.

use std::collections::HashMap;
use std::time::Duration;

const INTERVAL: Duration = Duration::from_millis(25);
/// While the agent is alone nothing can fork: it waits for its next spawn (this long at
/// most, for anything that slips past).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub async fn watch(limit: u32) {
    let me = std::process::id() as i32;
    loop {
        tokio::time::sleep(INTERVAL).await;
        let seen = crate::process::spawn_count();
        let tasks = sample();
        if tasks.iter().all(|t| t.pid == me) {
            crate::process::wait_for_spawn(seen, IDLE_CHECK).await;
            continue;
        }
        let count: u64 = tasks.iter().map(|t| t.threads).sum();
        if count <= u64::from(limit) {
            continue;
        }
        if let Some(session) = largest_session(&tasks, me) {
            let victims: Vec<i32> = tasks
                .iter()
                .filter(|t| t.session == session && t.pid != me)
                .map(|t| t.pid)
                .collect();
            eprintln!(
                "hutch-agent: {count} tasks past the sandbox's limit of {limit}: ending session {session} ({} processes)",
                victims.len()
            );
            for pid in victims {
                // SAFETY: kill(2) on a pid read from /proc; a pid gone since fails harmlessly.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// One process of the sandbox, as `/proc/<pid>/stat` shows it.
#[derive(Debug, PartialEq)]
struct Task {
    pid: i32,
    session: i32,
    threads: u64,
}

fn sample() -> Vec<Task> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// `session` (field 6) and `num_threads` (field 20) of a stat line; the command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(pid: i32, stat: &str) -> Option<Task> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) session(6) ... num_threads(20).
    Some(Task {
        pid,
        session: fields.get(3)?.parse().ok()?,
        threads: fields.get(17)?.parse::<u64>().ok()?.max(1),
    })
}

/// The session with the most tasks, the agent's own excluded (it holds the agent alone:
/// every process it starts gets a session of its own).
fn largest_session(tasks: &[Task], agent: i32) -> Option<i32> {
    let agent_session = tasks.iter().find(|t| t.pid == agent).map(|t| t.session);
    let mut sizes: HashMap<i32, u64> = HashMap::new();
    for t in tasks.iter().filter(|t| t.pid != agent) {
        if Some(t.session) != agent_session {
            *sizes.entry(t.session).or_default() += t.threads;
        }
    }
    sizes
        .into_iter()
        .max_by_key(|&(session, size)| (size, session))
        .map(|(session, _)| session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "42 (a (weird) name) S 1 42 40 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 3 0 100 0 0";
        assert_eq!(
            parse_stat(42, line),
            Some(Task {
                pid: 42,
                session: 40,
                threads: 3
            })
        );
        assert_eq!(parse_stat(1, "1 (x"), None);
    }

    #[test]
    fn the_largest_session_is_chosen_never_the_agents() {
        let t = |pid, session, threads| Task {
            pid,
            session,
            threads,
        };
        let tasks = vec![
            t(1, 1, 40),
            t(10, 10, 1),
            t(11, 10, 1),
            t(20, 20, 1),
            t(21, 20, 1),
            t(22, 20, 1),
        ];
        assert_eq!(largest_session(&tasks, 1), Some(20));
        assert_eq!(largest_session(&[t(1, 1, 5)], 1), None);
    }
}
