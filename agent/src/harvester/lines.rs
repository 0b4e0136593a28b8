//! Splitting a byte stream into lines: a pure state machine.
//!
//! - Lines end at `\n`; a `\r` right before it is stripped (CRLF).
//! - A partial last line is kept until its newline arrives, or until the
//!   caller flushes it on a timeout ([`LineSplitter::flush_partial`]); it is
//!   then emitted with [`PARTIAL`].
//! - A line longer than `max_line_bytes` keeps its first `max_line_bytes`
//!   bytes and is emitted with [`TRUNCATED`] when its newline arrives; the
//!   rest is skipped and counted. Memory stays bounded and the file never
//!   stalls on a long line.
//! - Bytes are kept as they are (invalid UTF-8 and NUL included); lines that
//!   are not valid UTF-8 carry [`INVALID_UTF8`].
//!
//! Offsets are absolute positions in the file: each line carries the offset
//! of its first byte, and [`LineSplitter::resume_offset`] is where reading
//! must restart so that no complete line is read twice or skipped (the start
//! of the pending partial line).

/// The line was cut at `max_line_bytes`.
pub const TRUNCATED: u8 = 1;
/// The line had no newline yet and was emitted on a timeout.
pub const PARTIAL: u8 = 2;
/// The line is not valid UTF-8 (kept as bytes).
pub const INVALID_UTF8: u8 = 4;

/// One line found by the splitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitLine {
    /// Offset of the line's first byte in the file.
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub flags: u8,
}

/// A line without flags (tests).
#[cfg(test)]
pub fn line(offset: u64, s: &str) -> SplitLine {
    SplitLine {
        offset,
        bytes: s.as_bytes().to_vec(),
        flags: 0,
    }
}

#[derive(Debug, Clone)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// File offset of the next byte to be fed.
    pos: u64,
    /// File offset of the first byte of the pending line.
    line_start: u64,
    /// The pending line's bytes (at most `max_line_bytes + 1`).
    pending: Vec<u8>,
    /// Bytes of the pending line beyond what `pending` keeps.
    dropped: u64,
    /// Bytes dropped from over-long lines so far.
    pub truncated_bytes: u64,
}

impl LineSplitter {
    /// A splitter whose next byte is at `offset` of the file.
    pub fn new(offset: u64, max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            pos: offset,
            line_start: offset,
            pending: Vec::new(),
            dropped: 0,
            truncated_bytes: 0,
        }
    }

    /// Where reading must resume after a restart: the start of the pending
    /// partial line (everything before it was emitted).
    pub fn resume_offset(&self) -> u64 {
        self.line_start
    }

    /// The offset of the next byte expected.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether a partial line is pending.
    pub fn has_partial(&self) -> bool {
        self.pos > self.line_start
    }

    fn keep(&mut self, chunk: &[u8]) {
        let room = (self.max_line_bytes + 1).saturating_sub(self.pending.len());
        let n = chunk.len().min(room);
        self.pending.extend_from_slice(&chunk[..n]);
        self.dropped += (chunk.len() - n) as u64;
    }

    fn emit(&mut self, flags: u8, with_newline: bool, out: &mut Vec<SplitLine>) {
        let mut bytes = std::mem::take(&mut self.pending);
        let mut flags = flags;
        if with_newline && self.dropped == 0 && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if bytes.len() > self.max_line_bytes || self.dropped > 0 {
            self.truncated_bytes +=
                self.dropped + bytes.len().saturating_sub(self.max_line_bytes) as u64;
            bytes.truncate(self.max_line_bytes);
            flags |= TRUNCATED;
        }
        if std::str::from_utf8(&bytes).is_err() {
            flags |= INVALID_UTF8;
        }
        out.push(SplitLine {
            offset: self.line_start,
            bytes,
            flags,
        });
        self.dropped = 0;
    }

    /// Feeds the next bytes of the file; complete lines are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<SplitLine>) {
        let mut rest = data;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            if self.pending.is_empty() && self.dropped == 0 {
                // Fast path: the whole line is in this chunk.
                let mut line = &rest[..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if line.len() <= self.max_line_bytes {
                    let flags = if std::str::from_utf8(line).is_ok() {
                        0
                    } else {
                        INVALID_UTF8
                    };
                    out.push(SplitLine {
                        offset: self.line_start,
                        bytes: line.to_vec(),
                        flags,
                    });
                    self.pos += (i + 1) as u64;
                    self.line_start = self.pos;
                    rest = &rest[i + 1..];
                    continue;
                }
            }
            self.keep(&rest[..i]);
            self.emit(0, true, out);
            self.pos += (i + 1) as u64;
            self.line_start = self.pos;
            rest = &rest[i + 1..];
        }
        self.keep(rest);
        self.pos += rest.len() as u64;
    }

    /// Emits the pending partial line (a timeout passed); returns whether
    /// there was one. What follows it in the file starts a new line.
    pub fn flush_partial(&mut self, out: &mut Vec<SplitLine>) -> bool {
        if !self.has_partial() {
            return false;
        }
        self.emit(PARTIAL, false, out);
        self.line_start = self.pos;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(chunks: &[&[u8]], max: usize) -> (Vec<SplitLine>, LineSplitter) {
        let mut s = LineSplitter::new(0, max);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        (out, s)
    }

    #[test]
    fn lines_crlf_and_partial_tail() {
        let (out, s) = split(&[b"a\r\nbb\n", b"cc", b"c\nd"], 100);
        let got: Vec<(u64, &[u8], u8)> = out
            .iter()
            .map(|l| (l.offset, &l.bytes[..], l.flags))
            .collect();
        assert_eq!(got, vec![(0, &b"a"[..], 0), (3, b"bb", 0), (6, b"ccc", 0)]);
        assert_eq!(s.resume_offset(), 10);
        assert_eq!(s.position(), 11);
    }

    #[test]
    fn long_lines_are_truncated_and_never_stall() {
        let mut long = vec![b'x'; 50];
        long.push(b'\n');
        let (out, s) = split(&[&long[..20], &long[20..], b"ok\n"], 10);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, vec![b'x'; 10]);
        assert_eq!(out[0].flags, TRUNCATED);
        assert_eq!(out[1].bytes, b"ok");
        assert_eq!(out[1].offset, 51);
        assert_eq!(s.truncated_bytes, 40);
        // Exactly max bytes plus CRLF is not truncated.
        let (out, _) = split(&[b"0123456789\r\n"], 10);
        assert_eq!(
            (out[0].bytes.as_slice(), out[0].flags),
            (&b"0123456789"[..], 0)
        );
    }

    #[test]
    fn invalid_utf8_and_nul_are_kept_and_flagged() {
        let (out, _) = split(&[b"\xff\xfe\x00z\n", b"\x00\n"], 100);
        assert_eq!(out[0].bytes, b"\xff\xfe\x00z");
        assert_eq!(out[0].flags, INVALID_UTF8);
        assert_eq!(out[1].bytes, b"\x00");
        assert_eq!(out[1].flags, 0);
    }

    #[test]
    fn partial_flush_emits_once_and_continues() {
        let (mut out, mut s) = split(&[b"abc"], 100);
        assert!(out.is_empty());
        assert!(s.flush_partial(&mut out));
        assert!(!s.flush_partial(&mut out));
        s.feed(b"def\n", &mut out);
        assert_eq!(out[0].flags, PARTIAL);
        assert_eq!(out[1].bytes, b"def");
        assert_eq!(out[1].offset, 3);
        assert_eq!(s.resume_offset(), 7);
    }

    proptest! {
        /// However the bytes are chunked, the same lines come out, and
        /// resuming at `resume_offset` re-reads only the partial tail.
        #[test]
        fn chunking_does_not_matter(text in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..400), cuts in prop::collection::vec(0usize..400, 0..10), max in 1usize..40) {
            let (whole, ws) = split(&[&text], max);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&text[prev..c]); prev = c; }
            chunks.push(&text[prev..]);
            let (parts, ps) = split(&chunks, max);
            prop_assert_eq!(&whole, &parts);
            prop_assert_eq!(ws.resume_offset(), ps.resume_offset());
            let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            prop_assert_eq!(ws.resume_offset() as usize, complete);
            prop_assert_eq!(whole.len(), text.iter().filter(|b| **b == b'\n').count());
            for l in &whole { prop_assert!(l.bytes.len() <= max); }
        }
    }
}
