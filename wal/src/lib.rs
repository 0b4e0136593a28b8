//! The agent's write-ahead spool: a segmented, CRC-checked log of records
//! that never loses a synced record and never gets stuck.
//!
//! # On-disk format (version 1)
//!
//! One directory holds the segment files and one ack file:
//!
//! ```text
//! <dir>/00000000000000000001.seg   segment id 1 (20 zero-padded digits)
//! <dir>/00000000000000000002.seg   ids are consecutive; a gap is a missing segment
//! <dir>/ack                        the acknowledged position
//! <dir>/*.corrupt                  segments set aside by recovery (bad header)
//! ```
//!
//! Segment header, 32 bytes, little-endian:
//!
//! ```text
//! 0      8        12           20              28      32
//! +------+--------+------------+---------------+-------+
//! |magic |version | segment id | first seq     | crc32 |   magic = b"LPWALSEG"
//! +------+--------+------------+---------------+-------+   crc32 over bytes 0..28
//! ```
//!
//! Then records, back to back; a record never spans segments:
//!
//! ```text
//! 0       4       8
//! +-------+-------+---------------------------+
//! | crc32 |  len  |  payload (len bytes)      |   crc32 over the len field + payload
//! +-------+-------+---------------------------+   1 <= len <= MAX_RECORD_BYTES
//! ```
//!
//! The payload is a bincode 2.x (standard config) encoding of
//! [`StoredRecord`], an enum whose variant is the schema version: `V1`
//! (source, topic, end offset, lines) is still read; `V2` adds `read_ms` (when
//! the lines were read) and `meta` (opaque bytes of the writer) and is what
//! is written. Sequence numbers start at 1 and increase by one per record
//! across segments.
//!
//! The ack file is 24 bytes: magic `b"LPWALACK"`, version u32, acked seq u64,
//! crc32 over the first 20 bytes. It is replaced atomically (write a temporary
//! file, fsync, rename, fsync the directory).
//!
//! # Invariants
//!
//! - Only the writer creates segments and only acks (or recovery setting a
//!   corrupt segment aside) remove them. A segment is removed only when every
//!   record in it is acknowledged.
//! - A record is *durable* once the segment's bytes up to its end were
//!   fdatasync'ed and, for a new segment, the directory entry was fsynced.
//!   [`Wal::durable_seq`] is the highest durable seq; [`Wal::wait_durable`]
//!   blocks until a given seq is durable.
//! - With [`SyncPolicy::Always`] a record is durable when `append` returns;
//!   with [`SyncPolicy::Group`] when the group-commit thread next syncs (at
//!   most `interval` after the append, or sooner once `max_bytes` are
//!   pending); with [`SyncPolicy::Manual`] when the caller calls [`Wal::sync`].
//! - `ack(seq)` is durable when it returns.
//! - The total size of the segment files never exceeds `max_bytes`;
//!   an append that would exceed it returns [`Append::Full`] and writes
//!   nothing.
//!
//! # Recovery
//!
//! On open every segment is scanned and every record validated (length bound,
//! CRC, decoding, increasing seq):
//!
//! - a torn or zero-filled tail of the **last** segment is truncated to the
//!   end of the last valid record (`bytes_truncated`);
//! - an invalid region anywhere else is skipped: the scanner resynchronises
//!   on the next position that holds a valid record, and the records lost in
//!   between are counted from the seq gap (`records_skipped`);
//! - a segment with a bad header is renamed to `*.corrupt` and counted
//!   (`bad_segments`); a gap in segment ids is counted (`missing_segments`);
//! - an unreadable ack file counts as "nothing acked" (replaying is safe,
//!   losing is not) and is reported (`ack_file_reset`).
//!
//! The log always opens (I/O errors aside) and a reader never returns a
//! corrupt record: it skips invalid regions the same way and counts them.

mod format;
mod hooks;
mod scan;
mod wal;

pub use format::{Batch, Line, SourceId, StoredRecord, MAX_RECORD_BYTES};
pub use hooks::{IoHooks, IoOp, NoHooks};
pub use wal::{Append, ReadItem, Reader, RecoveryReport, SyncPolicy, Wal, WalOptions};

/// A record's sequence number (1-based, increasing by one per record).
pub type Seq = u64;

/// Errors of the WAL. Corruption found on disk is not an error: it is
/// reported in [`RecoveryReport`] and [`ReadItem::Skipped`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("wal I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("cannot encode record: {0}")]
    Encode(String),
    #[error("invalid WAL options: {0}")]
    Options(String),
    #[error("the WAL is poisoned by an earlier I/O error; reopen it")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
