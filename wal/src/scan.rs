//! A forward scanner over one segment file's records, shared by recovery and
//! readers. Reads through a bounded buffer (never the whole segment) and
//! resynchronises after invalid bytes instead of stopping.

use crate::format::{parse_frame, seq_bounds, Frame, FRAME_HEADER_LEN, MAX_RECORD_BYTES};
use crate::Seq;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;

const CHUNK: usize = 1 << 20;

/// What the scanner found next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanItem {
    /// A valid record; its payload is `scanner.payload(range)`, and it ends at
    /// byte `end` of the file.
    Record {
        seq: Seq,
        payload: Range<usize>,
        end: u64,
    },
    /// Invalid bytes `[offset, offset+bytes)` followed by a valid record;
    /// `records` seqs were lost in between.
    Skipped {
        offset: u64,
        bytes: u64,
        records: u64,
    },
    /// The end of what may be read. `tail` is a trailing invalid region
    /// `(offset, bytes)` with no valid record after it.
    End { tail: Option<(u64, u64)> },
}

pub(crate) struct Scanner {
    file: File,
    buf: Vec<u8>,
    /// `buf[start..end]` holds the bytes from file offset `pos` on.
    start: usize,
    end: usize,
    pos: u64,
    /// Bytes of the file that may be read (the rest may be being written).
    limit: u64,
    last_seq: Seq,
    /// Offset where the current invalid region began, while resynchronising.
    resync_from: Option<u64>,
    /// The next record may follow a gap (just after a reported skip).
    accept_gap: bool,
}

impl Scanner {
    /// A scanner over `file` positioned at `offset`, which holds the first
    /// record after `last_seq`. `limit` is the file length that may be read.
    pub(crate) fn new(file: File, offset: u64, limit: u64, last_seq: Seq) -> Self {
        Self {
            file,
            buf: Vec::new(),
            start: 0,
            end: 0,
            pos: offset,
            limit,
            last_seq,
            resync_from: None,
            accept_gap: false,
        }
    }

    pub(crate) fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    pub(crate) fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Reads more bytes; false when nothing more may be read.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        let buffered_to = self.pos + (self.end - self.start) as u64;
        if buffered_to >= self.limit {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = want
            .max(self.end + CHUNK)
            .min(FRAME_HEADER_LEN + MAX_RECORD_BYTES + CHUNK);
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        let room = (self.buf.len() - self.end) as u64;
        let to_read = room.min(self.limit - buffered_to) as usize;
        let n = read_at_most(
            &mut self.file,
            buffered_to,
            &mut self.buf[self.end..self.end + to_read],
        )?;
        self.end += n;
        Ok(n > 0)
    }

    pub(crate) fn next_item(&mut self) -> io::Result<ScanItem> {
        loop {
            let (min, max) =
                seq_bounds(self.last_seq, self.resync_from.is_some() || self.accept_gap);
            let found = match parse_frame(&self.buf[self.start..self.end], min, max) {
                Frame::Valid { seq, total, .. } => Some((seq, total)),
                Frame::Incomplete => {
                    let want = self.wanted_len();
                    if self.fill(want)? {
                        continue;
                    }
                    if self.start == self.end {
                        let tail = self.resync_from.take().map(|from| (from, self.pos - from));
                        return Ok(ScanItem::End { tail });
                    }
                    None
                }
                Frame::Invalid => None,
            };
            match found {
                Some((seq, total)) => {
                    if let Some(from) = self.resync_from.take() {
                        self.accept_gap = true;
                        return Ok(ScanItem::Skipped {
                            offset: from,
                            bytes: self.pos - from,
                            records: seq - self.last_seq - 1,
                        });
                    }
                    self.accept_gap = false;
                    let range = self.start + FRAME_HEADER_LEN..self.start + total;
                    self.start += total;
                    self.pos += total as u64;
                    self.last_seq = seq;
                    return Ok(ScanItem::Record {
                        seq,
                        payload: range,
                        end: self.pos,
                    });
                }
                None => {
                    if self.resync_from.is_none() {
                        self.resync_from = Some(self.pos);
                    }
                    self.start += 1;
                    self.pos += 1;
                }
            }
        }
    }

    /// How many buffered bytes the frame at the cursor needs.
    fn wanted_len(&self) -> usize {
        let b = &self.buf[self.start..self.end];
        if b.len() < 8 {
            return FRAME_HEADER_LEN;
        }
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        FRAME_HEADER_LEN + len.min(MAX_RECORD_BYTES)
    }
}

fn read_at_most(file: &mut File, offset: u64, out: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < out.len() {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads up to `n` bytes from the start of `file`.
pub(crate) fn read_prefix(file: &mut File, n: usize) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    file.take(n as u64).read_to_end(&mut v)?;
    Ok(v)
}
