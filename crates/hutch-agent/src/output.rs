//! A process's output log: a bounded ring of chunks numbered by sequence.
//!
//! Every byte a process writes lands here once, tagged with its stream and a sequence number.
//! Followers read by sequence number, so one that attaches late gets a replay of what is
//! retained and then live chunks, and one that reattaches after losing its connection resumes
//! from the next number: nothing lost or doubled at the seam. When the ring is over its byte
//! budget the oldest chunks go, and a reader that asked for them learns where the log now
//! starts.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Chunk {
    pub seq: u64,
    pub stream: Stream,
    pub time_ms: i64,
    pub data: Bytes,
}

/// What a read returns: retained chunks from the cursor on, and whether the log is complete.
pub struct Slice {
    pub chunks: Vec<Chunk>,
    /// Set when the cursor pointed before the oldest retained chunk.
    pub first_available: Option<u64>,
    pub closed: bool,
}

pub struct OutputLog {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    capacity: usize,
    next_seq: u64,
    closed: bool,
    /// Carries `next_seq` (and a final bump on close) so followers wake up.
    changed: watch::Sender<u64>,
}

impl OutputLog {
    pub fn new(capacity: usize) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            chunks: VecDeque::new(),
            bytes: 0,
            capacity,
            next_seq: 0,
            closed: false,
            changed,
        }
    }

    pub fn push(&mut self, stream: Stream, data: Bytes, time_ms: i64) {
        if self.closed || data.is_empty() {
            return;
        }
        self.bytes += data.len();
        self.chunks.push_back(Chunk {
            seq: self.next_seq,
            stream,
            time_ms,
            data,
        });
        self.next_seq += 1;
        // Keep at least the newest chunk even if it alone exceeds the budget.
        while self.bytes > self.capacity && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.data.len();
            }
        }
        self.changed.send_replace(self.next_seq);
    }

    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.changed.send_replace(self.next_seq + 1);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn read_from(&self, cursor: u64) -> Slice {
        let first = self.chunks.front().map_or(self.next_seq, |c| c.seq);
        let first_available = (cursor < first).then_some(first);
        let start = cursor.max(first);
        let skip = (start - first) as usize;
        Slice {
            chunks: self.chunks.iter().skip(skip).cloned().collect(),
            first_available,
            closed: self.closed,
        }
    }
}

/// Splits chunks into lines per stream, keeping partial lines across chunks.
#[derive(Default)]
pub struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineSplitter {
    /// Appends a chunk; returns the lines it completed (without their `\n` or `\r\n`).
    pub fn push(&mut self, stream: Stream, data: &[u8]) -> Vec<String> {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        buf.extend_from_slice(data);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = buf[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&buf[start..end]);
            lines.push(String::from_utf8_lossy(line).into_owned());
            start = end + 1;
        }
        buf.drain(..start);
        lines
    }

    /// The unterminated last line of a stream, if any, once output is complete.
    pub fn finish(&mut self, stream: Stream) -> Option<String> {
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if buf.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(buf).into_owned();
        buf.clear();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resume_exactly_where_they_stopped() {
        let mut log = OutputLog::new(1 << 20);
        for i in 0..10u8 {
            log.push(Stream::Stdout, Bytes::from(vec![i]), 0);
        }
        let first = log.read_from(0);
        assert_eq!(first.chunks.len(), 10);
        let resumed = log.read_from(first.chunks[4].seq + 1);
        assert_eq!(resumed.chunks.first().map(|c| c.data[0]), Some(5));
        assert!(resumed.first_available.is_none());
    }

    #[test]
    fn eviction_is_reported_not_hidden() {
        let mut log = OutputLog::new(4);
        for i in 0..8u8 {
            log.push(Stream::Stderr, Bytes::from(vec![i, i]), 0);
        }
        let slice = log.read_from(0);
        assert_eq!(slice.first_available, Some(6));
        assert_eq!(slice.chunks.len(), 2);
    }

    #[test]
    fn lines_split_across_chunks_and_streams() {
        let mut split = LineSplitter::default();
        assert!(split.push(Stream::Stdout, b"hel").is_empty());
        assert_eq!(split.push(Stream::Stderr, b"err\n"), vec!["err"]);
        assert_eq!(split.push(Stream::Stdout, b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(split.finish(Stream::Stdout), Some("wor".to_string()));
        assert_eq!(split.finish(Stream::Stderr), None);
    }
}
