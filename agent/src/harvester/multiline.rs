//! Joining the lines of one event (a Java stack trace, say) into one
//! message: a line matching the start pattern begins an event, any other
//! line continues the current one.
//!
//! An event is emitted when the next one starts, when it reaches
//! `max_lines`, or when no line came for `flush_timeout`. Its offset is its
//! first line's; while it is pending, the file's resume offset stays at that
//! first line, so a restart reads the whole event again instead of emitting
//! half of it twice. Joined bytes are capped at `max_bytes` ([`TRUNCATED`]).

use super::container::{stored_prefix_len, CONTAINER, MALFORMED};
use super::lines::{SplitLine, TRUNCATED};
use regex::bytes::{Regex, RegexBuilder};
use std::time::Duration;

/// The most memory a multiline start pattern may compile to. Sensible
/// patterns (`^\d{4}-\d{2}-\d{2} `) take a few KiB; a big repetition
/// (`a{200000}`, `\d{111112}`) would cost every harvester megabytes and the
/// agent a long compile on each etcd update, so it is refused at once.
pub const START_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a multiline start pattern within [`START_SIZE_LIMIT`] (the one
/// place it is compiled, validation included).
///
/// # Errors
/// The pattern is not a valid regex, or compiles to more than the limit.
pub fn start_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(START_SIZE_LIMIT)
        .build()
}

/// How to join lines into events.
#[derive(Debug, Clone)]
pub struct MultilineConfig {
    /// A line matching this starts a new event.
    pub start: Regex,
    /// Most lines in one event (default 500).
    pub max_lines: usize,
    /// Most bytes in one event (default 1 MiB).
    pub max_bytes: usize,
    /// Emit a pending event after this long without a new line (default 5 s).
    pub flush_timeout: Duration,
}

impl MultilineConfig {
    /// # Errors
    /// The pattern is not a valid regex.
    pub fn new(start: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            start: start_regex(start)?,
            max_lines: 500,
            max_bytes: 1 << 20,
            flush_timeout: Duration::from_secs(5),
        })
    }
}

/// The per-file joining state.
#[derive(Debug, Clone, Default)]
pub struct Joiner {
    pending: Option<SplitLine>,
    lines: usize,
}

impl Joiner {
    /// The offset of the pending event's first line, if one is pending.
    pub fn pending_offset(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.offset)
    }

    /// Feeds lines in file order; finished events are appended to `out`.
    pub fn feed(&mut self, cfg: &MultilineConfig, lines: Vec<SplitLine>, out: &mut Vec<SplitLine>) {
        for line in lines {
            // A decoded container line is matched and joined on its
            // message; the event keeps its first line's time and stream.
            let body = if line.flags & CONTAINER != 0 {
                stored_prefix_len(&line.bytes)
            } else {
                0
            };
            let starts = cfg.start.is_match(&line.bytes[body..]);
            match self.pending.as_mut() {
                Some(p) if !starts && self.lines < cfg.max_lines => {
                    let text = &line.bytes[body..];
                    let room = cfg.max_bytes.saturating_sub(p.bytes.len());
                    if room > text.len() {
                        p.bytes.push(b'\n');
                        p.bytes.extend_from_slice(text);
                    } else {
                        p.bytes.push(b'\n');
                        p.bytes.extend_from_slice(&text[..room.saturating_sub(1)]);
                        p.bytes.truncate(cfg.max_bytes);
                        p.flags |= TRUNCATED;
                    }
                    // The form of the event is its first line's.
                    p.flags |= line.flags & !(CONTAINER | MALFORMED);
                    self.lines += 1;
                }
                _ => {
                    self.flush(out);
                    self.pending = Some(line);
                    self.lines = 1;
                }
            }
        }
    }

    /// Emits the pending event, if any.
    pub fn flush(&mut self, out: &mut Vec<SplitLine>) {
        if let Some(p) = self.pending.take() {
            out.push(p);
        }
        self.lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::harvester::lines::line as l;

    #[test]
    fn java_stack_traces_become_one_event() {
        let cfg = MultilineConfig::new(r"^\d{4}-\d{2}-\d{2} ").unwrap();
        let mut j = Joiner::default();
        let mut out = Vec::new();
        j.feed(
            &cfg,
            vec![
                l(0, "2026-11-21 ERROR boom"),
                l(22, "java.lang.IllegalStateException: x"),
                l(58, "\tat a.b.C.d(C.java:1)"),
                l(80, "2026-11-21 INFO next"),
            ],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].bytes,
            b"2026-11-21 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.b.C.d(C.java:1)"
        );
        assert_eq!(out[0].offset, 0);
        assert_eq!(j.pending_offset(), Some(80));
        j.flush(&mut out);
        assert_eq!(out[1].bytes, b"2026-11-21 INFO next");
        assert_eq!(j.pending_offset(), None);
    }

    #[test]
    fn container_lines_are_joined_on_their_messages() {
        let cfg = MultilineConfig::new(r"^\d{4}-").unwrap();
        let mut j = Joiner::default();
        let mut out = Vec::new();
        let c = |offset, s: &str| SplitLine {
            offset,
            bytes: format!("2026-12-01T10:00:00Z stderr {s}").into_bytes(),
            flags: CONTAINER,
        };
        j.feed(
            &cfg,
            vec![
                c(0, "2026-12-01 ERROR boom"),
                c(60, "\tat a.B(B.java:1)"),
                c(99, "2026-12-01 next"),
            ],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].bytes,
            b"2026-12-01T10:00:00Z stderr 2026-12-01 ERROR boom\n\tat a.B(B.java:1)"
        );
        assert_eq!(out[0].flags, CONTAINER);
        assert_eq!(j.pending_offset(), Some(99));
    }

    #[test]
    fn events_are_capped_by_lines_and_bytes() {
        let mut cfg = MultilineConfig::new("^S").unwrap();
        cfg.max_lines = 3;
        cfg.max_bytes = 12;
        let mut j = Joiner::default();
        let mut out = Vec::new();
        j.feed(
            &cfg,
            vec![l(0, "S1"), l(3, "a"), l(5, "b"), l(7, "c")],
            &mut out,
        );
        assert_eq!(out[0].bytes, b"S1\na\nb");
        j.feed(&cfg, vec![l(9, "S2"), l(12, "0123456789")], &mut out);
        j.flush(&mut out);
        assert_eq!(out[2].bytes.len(), 12);
        assert_eq!(out[2].flags & TRUNCATED, TRUNCATED);
    }
}
