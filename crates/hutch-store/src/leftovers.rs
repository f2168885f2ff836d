//! Files and directories a process names after its pid while it works on them (a temporary
//! file before its rename, a probe's state directory), and their removal once that process
//! is gone: a `kill -9` in between leaves them, and whoever next works in the directory
//! sweeps them.

use std::path::Path;

/// Removes entries of `dir` named `<prefix><pid>` for one of `prefixes` whose process no
/// longer exists; a live process's (another one at work at the same moment) stays. Returns
/// how many were removed. Only names are read: nothing is followed.
pub fn remove_dead_pid_entries(dir: &Path, prefixes: &[&str]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = prefixes
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    removed
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists, another user's.
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_process_s_entries_go() {
        let dir = tempfile::tempdir().unwrap();
        // No process can have this pid (above any pid_max); pid 1 always exists.
        std::fs::create_dir_all(dir.path().join(".probe.2147483646/state")).unwrap();
        std::fs::write(dir.path().join(".tmp.2147483646"), b"half").unwrap();
        std::fs::create_dir(dir.path().join(".probe.1")).unwrap();
        std::fs::write(dir.path().join(".probe.not-a-pid"), b"").unwrap();
        std::fs::write(dir.path().join("other.2147483646"), b"").unwrap();
        let removed = remove_dead_pid_entries(dir.path(), &[".probe.", ".tmp."]);
        assert_eq!(removed, 2);
        assert!(!dir.path().join(".probe.2147483646").exists());
        assert!(!dir.path().join(".tmp.2147483646").exists());
        assert!(dir.path().join(".probe.1").exists());
        assert!(dir.path().join(".probe.not-a-pid").exists());
        assert!(dir.path().join("other.2147483646").exists());
    }
}
