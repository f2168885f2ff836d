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
        self.read_batch(cursor, usize::MAX)
    }

    /// Like [`read_from`](Self::read_from), but stops once `max_bytes` of data are taken (at
    /// least one chunk is). A follower that reads in batches pins at most that much of what
    /// the ring has since evicted, and renders at most that much at once. `closed` is set
    /// only when the batch reaches the end of a closed log.
    pub fn read_batch(&self, cursor: u64, max_bytes: usize) -> Slice {
        let first = self.chunks.front().map_or(self.next_seq, |c| c.seq);
        let first_available = (cursor < first).then_some(first);
        let start = cursor.max(first);
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        let mut taken = 0;
        let mut chunks = Vec::new();
        for chunk in self.chunks.iter().skip(skip) {
            if taken >= max_bytes {
                break;
            }
            taken += chunk.data.len();
            chunks.push(chunk.clone());
        }
        let reached_end = chunks.last().map_or(start, |c| c.seq + 1) >= self.next_seq;
        Slice {
            chunks,
            first_available,
            closed: self.closed && reached_end,
        }
    }

    /// The sequence number the next chunk will get: where a read of "everything so far"
    /// stops.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of output currently retained.
    pub fn retained_bytes(&self) -> usize {
        self.bytes
    }

    /// Drops every retained chunk (a finished process's output, to keep the sandbox's total
    /// within budget). Sequence numbers go on, so readers learn of the loss as a gap.
    pub fn discard(&mut self) {
        self.chunks = VecDeque::new();
        self.bytes = 0;
    }
}

/// The longest line served as one line. Output with no newline for longer (a binary blob,
/// `head -c 100M /dev/zero`) is served in pieces of this size, so neither the splitter nor
/// one event of the JSON APIs grows with the content: a piece is at most six times this in
/// JSON (`\u0000` for each control byte).
pub const MAX_LINE: usize = 64 << 10;

/// Splits chunks into lines per stream, keeping partial lines across chunks. Linear in its
/// input: each byte is scanned and copied once, and a partial line never exceeds
/// [`MAX_LINE`].
#[derive(Default)]
pub struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes examined in search of newlines, for the test that proves the splitter linear.
    #[cfg(test)]
    scanned: usize,
}

impl LineSplitter {
    /// Appends a chunk; returns the lines it completed (without their `\n` or `\r\n`), and
    /// the [`MAX_LINE`] pieces of any line that grew past it.
    pub fn push(&mut self, stream: Stream, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let partial = match stream {
                Stream::Stdout => &mut self.stdout,
                Stream::Stderr => &mut self.stderr,
            };
            let room = MAX_LINE.saturating_sub(partial.len());
            // One byte past the room: a newline there ends a line of exactly MAX_LINE.
            let window = &rest[..rest.len().min(room + 1)];
            let newline = window.iter().position(|&b| b == b'\n');
            #[cfg(test)]
            {
                self.scanned += newline.map_or(window.len(), |pos| pos + 1);
            }
            if let Some(pos) = newline {
                partial.extend_from_slice(&rest[..pos]);
                if partial.last() == Some(&b'\r') {
                    partial.pop();
                }
                lines.push(String::from_utf8_lossy(partial).into_owned());
                partial.clear();
                rest = &rest[pos + 1..];
            } else if rest.len() > room {
                partial.extend_from_slice(&rest[..room]);
                rest = &rest[room..];
                let cut = utf8_cut(partial);
                lines.push(String::from_utf8_lossy(&partial[..cut]).into_owned());
                partial.drain(..cut);
            } else {
                partial.extend_from_slice(rest);
                break;
            }
        }
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

/// Where to end a piece of `buf` so that a UTF-8 character cut by the size limit goes whole
/// into the next piece instead of becoming two replacement characters.
fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=len.min(3) {
        let byte = buf[len - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back && back < len {
            len - back
        } else {
            len
        };
    }
    len
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

    #[test]
    fn read_batch_stops_at_its_budget_and_reports_the_end_only_at_the_end() {
        let mut log = OutputLog::new(1 << 20);
        for i in 0..10u8 {
            log.push(Stream::Stdout, Bytes::from(vec![i; 100]), 0);
        }
        log.close();
        let batch = log.read_batch(0, 250);
        assert_eq!(batch.chunks.len(), 3);
        assert!(!batch.closed, "more chunks follow");
        let last = log.read_batch(7, 250);
        assert_eq!(last.chunks.len(), 3);
        assert!(last.closed);
        assert!(log.read_batch(10, 250).closed);
    }

    #[test]
    fn discarded_output_reads_as_a_gap() {
        let mut log = OutputLog::new(1 << 20);
        log.push(Stream::Stdout, Bytes::from_static(b"abc"), 0);
        log.push(Stream::Stdout, Bytes::from_static(b"def"), 0);
        log.discard();
        assert_eq!(log.retained_bytes(), 0);
        let slice = log.read_from(0);
        assert!(slice.chunks.is_empty());
        assert_eq!(slice.first_available, Some(2));
    }

    #[test]
    fn a_line_without_end_comes_out_in_capped_pieces() {
        let mut split = LineSplitter::default();
        let chunk = vec![0u8; 48 << 10];
        let mut pieces = Vec::new();
        // 3 MiB of NULs and no newline, in pipe-sized chunks.
        for _ in 0..64 {
            pieces.extend(split.push(Stream::Stdout, &chunk));
            assert!(split.stdout.len() <= MAX_LINE, "the partial line is capped");
        }
        pieces.extend(split.finish(Stream::Stdout));
        assert!(pieces.iter().all(|p| p.len() <= MAX_LINE));
        assert_eq!(
            pieces.iter().map(String::len).sum::<usize>(),
            64 * (48 << 10)
        );
        assert_eq!(pieces.len(), (64usize * (48 << 10)).div_ceil(MAX_LINE));
    }

    #[test]
    fn splitting_is_linear_in_the_input() {
        let mut split = LineSplitter::default();
        let mut input = 0;
        let mut produced = 0;
        // 16 MiB without a newline, then short lines; a splitter that rescans its partial
        // line would examine some 2 GiB here.
        for _ in 0..256 {
            let chunk = vec![b'x'; 64 << 10];
            input += chunk.len();
            produced += split.push(Stream::Stderr, &chunk).len();
        }
        for _ in 0..64 {
            let chunk = b"short line\n".repeat(6000);
            input += chunk.len();
            produced += split.push(Stream::Stderr, &chunk).len();
        }
        assert_eq!(produced, 256 + 64 * 6000);
        // Each byte once, plus the one-byte lookahead of each piece cut at the cap.
        assert!(
            split.scanned <= input + produced,
            "{} > {input}",
            split.scanned
        );
    }

    #[test]
    fn a_line_of_exactly_the_cap_is_one_line() {
        let mut split = LineSplitter::default();
        let mut line = vec![b'a'; MAX_LINE];
        line.push(b'\n');
        let lines = split.push(Stream::Stdout, &line);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(split.finish(Stream::Stdout), None);
    }

    #[test]
    fn pieces_do_not_split_a_character() {
        let mut split = LineSplitter::default();
        let mut data = vec![b'a'; MAX_LINE - 1];
        data.extend_from_slice("\u{e9}\u{1F600}".as_bytes());
        data.push(b'\n');
        let lines = split.push(Stream::Stdout, &data);
        assert_eq!(
            lines.len(),
            2,
            "{:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        assert_eq!(lines[0].len(), MAX_LINE - 1);
        assert_eq!(lines[1], "\u{e9}\u{1F600}");
    }
}
