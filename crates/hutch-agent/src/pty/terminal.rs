//! The pseudo-terminal itself: opening a master/slave pair, resizing it, and reading and
//! writing the master without blocking the agent's single-threaded runtime (the master is
//! non-blocking and driven by `AsyncFd`).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

/// The master side of a pseudo-terminal. The slave is handed to the child only.
pub struct Terminal {
    master: AsyncFd<OwnedFd>,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Terminal {
    /// Opens a new pair sized `rows` x `cols`; returns the master and the slave's descriptor.
    /// Both are close-on-exec and neither becomes the agent's controlling terminal.
    pub fn open(rows: u16, cols: u16) -> io::Result<(Self, OwnedFd)> {
        // SAFETY: posix_openpt returns a new descriptor we take ownership of at once.
        let master = unsafe {
            OwnedFd::from_raw_fd(check(libc::posix_openpt(
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ))?)
        };
        let fd = master.as_raw_fd();
        let mut name = [0 as libc::c_char; 64];
        // SAFETY: plain calls on a descriptor we own; `name` outlives ptsname_r's write.
        unsafe {
            check(libc::grantpt(fd))?;
            check(libc::unlockpt(fd))?;
            let err = libc::ptsname_r(fd, name.as_mut_ptr(), name.len());
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
        }
        // SAFETY: ptsname_r wrote a NUL-terminated path into `name`.
        let path = unsafe { CStr::from_ptr(name.as_ptr()) };
        // SAFETY: open returns a new descriptor we take ownership of at once.
        let slave = unsafe {
            OwnedFd::from_raw_fd(check(libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ))?)
        };
        set_winsize(fd, rows, cols)?;
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
            check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
        }
        // SAFETY: the OwnedFd is a valid descriptor that stays open, unreplaced, for as long
        // as the AsyncFd owns it.
        let master = unsafe { AsyncFd::register(master)? };
        Ok((Self { master }, slave))
    }

    /// Sets the window size; the kernel sends SIGWINCH to the foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        set_winsize(self.master.as_raw_fd(), rows, cols)
    }

    /// The terminal's foreground process group, if it has one.
    pub fn foreground_group(&self) -> Option<i32> {
        // SAFETY: tcgetpgrp only reads the terminal's state.
        let pgrp = unsafe { libc::tcgetpgrp(self.master.as_raw_fd()) };
        (pgrp > 0).then_some(pgrp)
    }

    /// Reads output; `Ok(0)` once no process holds the slave open any more (the kernel
    /// reports that as EIO on the master).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: read(2) into a buffer we borrow mutably for its length.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as input to the terminal, waiting while its buffer is full.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: write(2) from a buffer we borrow for its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) }).map(drop)
}

/// Compares secrets in time independent of where they first differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Pids of every process in session `sid` (a PTY session's process tree, including jobs a
/// shell moved to process groups of their own).
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        // SAFETY: getsid only reads the process table.
        .filter(|&pid| unsafe { libc::getsid(pid) } == sid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
