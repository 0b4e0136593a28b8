//! The spool writer: harvested lines → WAL → file checkpoints.
//!
//! Harvesters hand their lines to one writer thread over a bounded channel.
//! The writer appends them to the WAL (one record per file per poll), waits
//! until the group commit made them durable, and only then advances those
//! files' `durable_offset` in the checkpoint store. It then publishes the
//! highest seq whose checkpoints are updated ([`Progress::checkpointed`]);
//! the shipper never acknowledges WAL records beyond it, so a record is never
//! freed from the WAL before the checkpoint store knows its offsets.
//!
//! Backpressure: when the WAL is full the writer retries until Kafka acks free
//! space; meanwhile the channel fills and the harvesters block in their send —
//! harvesting pauses with its positions kept, nothing is read twice or lost.

use crate::harvester::Emitted;
use crate::metrics::Metrics;
use checkpoint::{FileId, FileState, Store, Tail};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wal::{Append, Batch, Line, SourceId, Wal};

/// Lines of one harvester poll, with the entry's output settings at the time.
pub struct Spooled {
    pub topic: String,
    pub meta: Arc<Vec<u8>>,
    pub read_ms: u64,
    pub emitted: Vec<Emitted>,
}

pub enum SpoolMsg {
    Data(Spooled),
    /// Answered once everything sent before it is in the WAL and checkpointed.
    Barrier(Sender<()>),
}

/// What the writer has done, read by the shipper and the shutdown.
#[derive(Default)]
pub struct Progress {
    /// Every record up to this seq is durable and its offsets are in the
    /// checkpoint store.
    pub checkpointed: AtomicU64,
    /// Set on shutdown: when the WAL is full, drop instead of waiting (the
    /// dropped lines are not checkpointed, so they are read again later).
    pub stop_when_full: AtomicBool,
    /// Set once the writer dropped lines: from then on it drops everything,
    /// so no later line of a file is checkpointed past a dropped one.
    pub gave_up: AtomicBool,
}

/// What the writer, the shipper and the start-up share.
#[derive(Clone)]
pub struct Shared {
    pub wal: Arc<Wal>,
    pub store: Arc<Mutex<Store>>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    /// Which partition each `by_file` file goes to (kept in `store`).
    pub spread: Arc<Mutex<crate::spread::Plan>>,
}

/// The writer thread; see the module docs.
pub struct Spool {
    pub tx: SyncSender<SpoolMsg>,
    /// Bytes of lines handed over and not yet taken by the writer.
    pub queued: Queued,
    handle: JoinHandle<Result<(), wal::Error>>,
}

/// Most bytes of lines waiting for the writer (besides the polls' own
/// bound): a harvester whose lines do not fit keeps them and offers them
/// again, like when the channel is full.
pub const QUEUE_BYTES: usize = 4 << 20;

/// Bytes of lines in the channel, bounded by [`QUEUE_BYTES`].
#[derive(Clone, Default)]
pub struct Queued(Arc<std::sync::atomic::AtomicUsize>);

impl Queued {
    /// Reserves `n` bytes; `false` when they do not fit. One hand-over
    /// always fits into an empty queue (a poll larger than the bound must
    /// not wait forever).
    pub fn try_reserve(&self, n: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur == 0 || cur + n <= QUEUE_BYTES).then_some(cur + n)
            })
            .is_ok()
    }

    pub fn release(&self, n: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some(cur.saturating_sub(n))
            });
    }

    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Size limits of the writer's WAL appends.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of one record (a record must fit in a segment).
    pub record: usize,
    /// Most bytes appended in one call (well below the WAL's `max_bytes`).
    pub append: usize,
}

impl Limits {
    pub fn for_wal(segment_bytes: u64, max_bytes: u64) -> Self {
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            // A segment less its header and a frame header.
            record: to_usize(segment_bytes.saturating_sub(64)).min(wal::MAX_RECORD_BYTES),
            append: to_usize(max_bytes / 4).clamp(4096, APPEND_BYTES),
        }
    }
}

/// How many harvester polls may wait for the writer.
const CHANNEL_DEPTH: usize = 32;
/// Most bytes of lines appended in one WAL call.
const APPEND_BYTES: usize = 2 << 20;

impl Spool {
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(shared: Shared, wait_durable: bool, limits: Limits) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_DEPTH);
        let queued = Queued::default();
        let w = Writer {
            shared,
            wait_durable,
            limits,
            queued: queued.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || w.run(rx))?;
        Ok(Self { tx, queued, handle })
    }

    /// Whether the writer thread ended (by itself only on a WAL failure).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the writer to finish; it does once every sender is dropped.
    ///
    /// # Errors
    /// The WAL failed (it is poisoned; the agent must restart).
    pub fn join(self) -> Result<(), wal::Error> {
        drop(self.tx);
        self.handle.join().unwrap_or(Err(wal::Error::Poisoned))
    }
}

/// The WAL records of one file's poll: split so that each fits in
/// `budget` bytes (a record must fit in a segment). A piece ends where the
/// next begins (the next line's offset), the last one at the poll's resume
/// offset. A single line longer than the budget is cut and flagged
/// truncated — only possible with a tiny `wal.segment_bytes`.
fn to_batches(topic: &str, meta: &[u8], read_ms: u64, e: Emitted, budget: usize) -> Vec<Batch> {
    let path = e.path.to_string_lossy().into_owned();
    let fixed = path.len() + topic.len() + meta.len() + 64;
    let room = budget.saturating_sub(fixed).max(1024);
    let new = |lines: Vec<Line>, end_offset: u64| Batch {
        source: SourceId {
            device: e.id.device,
            inode: e.id.inode,
            fingerprint: e.id.fingerprint,
            path: path.clone(),
        },
        topic: topic.to_string(),
        end_offset,
        read_ms,
        meta: meta.to_vec(),
        lines,
    };
    let mut out = Vec::new();
    let mut cur: Vec<Line> = Vec::new();
    let mut used = 0;
    for l in e.lines {
        let mut bytes = l.bytes;
        let mut flags = l.flags;
        if bytes.len() + 16 > room {
            bytes.truncate(room - 16);
            flags |= crate::harvester::lines::TRUNCATED;
        }
        if !cur.is_empty() && used + bytes.len() + 16 > room {
            out.push(new(std::mem::take(&mut cur), l.offset));
            used = 0;
        }
        used += bytes.len() + 16;
        cur.push(Line {
            offset: l.offset,
            bytes,
            flags,
        });
    }
    out.push(new(cur, e.resume_offset));
    out
}

/// The writer thread's state.
struct Writer {
    shared: Shared,
    wait_durable: bool,
    limits: Limits,
    queued: Queued,
}

impl Writer {
    fn run(self, rx: Receiver<SpoolMsg>) -> Result<(), wal::Error> {
        let mut pending: Vec<Spooled> = Vec::new();
        let mut barriers: Vec<Sender<()>> = Vec::new();
        loop {
            // Block for the first message, then take what else is queued.
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => take(m, &mut pending, &mut barriers, &self.queued),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let mut bytes: usize = pending.iter().map(spooled_bytes).sum();
            while bytes < self.limits.append {
                match rx.try_recv() {
                    Ok(m) => {
                        if let SpoolMsg::Data(s) = &m {
                            bytes += spooled_bytes(s);
                        }
                        take(m, &mut pending, &mut barriers, &self.queued);
                    }
                    Err(_) => break,
                }
            }
            self.write(std::mem::take(&mut pending))?;
            for b in barriers.drain(..) {
                let _ = b.send(());
            }
        }
    }

    fn write(&self, spooled: Vec<Spooled>) -> Result<(), wal::Error> {
        let Shared {
            wal,
            store,
            progress,
            metrics,
            ..
        } = &self.shared;
        let limits = self.limits;
        if progress.gave_up.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The content check of each (file, resume offset), for its checkpoint.
        let tails: HashMap<(FileId, u64), Tail> = spooled
            .iter()
            .flat_map(|s| s.emitted.iter())
            .filter_map(|e| Some(((e.id, e.resume_offset), e.tail?)))
            .collect();
        let batches: Vec<Batch> = spooled
            .into_iter()
            .flat_map(|s| {
                let Spooled {
                    topic,
                    meta,
                    read_ms,
                    emitted,
                } = s;
                emitted
                    .into_iter()
                    .flat_map(|e| to_batches(&topic, &meta, read_ms, e, limits.record))
                    .collect::<Vec<_>>()
            })
            .collect();
        // Appended in chunks well below `max_bytes` (one call for everything
        // could be larger than the whole WAL and never fit), and each chunk is
        // checkpointed before the next is tried: the shipper may free WAL space
        // only up to checkpointed records.
        let mut rest = &batches[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && (n == 0 || bytes + batch_bytes(&rest[n]) <= limits.append) {
                bytes += batch_bytes(&rest[n]);
                n += 1;
            }
            let chunk = &rest[..n];
            let range = loop {
                match wal.append(chunk)? {
                    Append::Appended(r) => break r,
                    Append::Full => {
                        metrics.paused.set(1);
                        metrics.wal_full.store(true, Ordering::Relaxed);
                        if progress.stop_when_full.load(Ordering::Relaxed) {
                            progress.gave_up.store(true, Ordering::SeqCst);
                            tracing::warn!(
                                records = rest.len(),
                                "shutting down with the WAL full: these lines and all read after them stay unread and are read again at the next start"
                            );
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            metrics.paused.set(0);
            metrics.wal_full.store(false, Ordering::Relaxed);
            if self.wait_durable {
                while !wal.wait_durable(*range.end(), Duration::from_secs(1))? {}
            }
            checkpoint_batches(chunk, *range.start(), store, &tails);
            progress
                .checkpointed
                .fetch_max(*range.end(), Ordering::SeqCst);
            for b in chunk {
                metrics
                    .topic(&metrics.lines_read, &b.topic)
                    .inc_by(b.lines.len() as u64);
                metrics
                    .topic(&metrics.bytes_read, &b.topic)
                    .inc_by(b.lines.iter().map(|l| l.bytes.len() as u64).sum());
            }
            rest = &rest[n..];
        }
        Ok(())
    }
}

fn take(m: SpoolMsg, pending: &mut Vec<Spooled>, barriers: &mut Vec<Sender<()>>, queued: &Queued) {
    match m {
        SpoolMsg::Data(s) => {
            queued.release(spooled_bytes(&s));
            pending.push(s);
        }
        SpoolMsg::Barrier(b) => barriers.push(b),
    }
}

fn batch_bytes(b: &Batch) -> usize {
    b.lines.iter().map(|l| l.bytes.len() + 16).sum::<usize>() + 64
}

/// The bytes a hand-over counts for (lines and their framing).
pub fn spooled_bytes(s: &Spooled) -> usize {
    s.emitted
        .iter()
        .flat_map(|e| e.lines.iter())
        .map(|l| l.bytes.len() + 16)
        .sum()
}

/// Durable records' end offsets become their files' resume offsets; each
/// entry remembers its last record's seq (`first_seq` is the first batch's).
fn checkpoint_batches(
    batches: &[Batch],
    first_seq: u64,
    store: &Mutex<Store>,
    tails: &HashMap<(FileId, u64), Tail>,
) {
    let now = checkpoint::now_ms();
    let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
    for (seq, b) in (first_seq..).zip(batches) {
        let id = FileId {
            device: b.source.device,
            inode: b.source.inode,
            fingerprint: b.source.fingerprint,
        };
        let tail = tails.get(&(id, b.end_offset)).copied();
        let state = match st.get(&id) {
            Some(old) => FileState {
                path: b.source.path.clone(),
                durable_offset: b.end_offset,
                last_seen_ms: now,
                tail: tail.or(old.tail),
                wal_seq: seq,
                ..old.clone()
            },
            None => FileState {
                tail,
                wal_seq: seq,
                ..FileState::durable_at(b.source.path.clone(), b.end_offset)
            },
        };
        st.update(id, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harvester::lines::SplitLine;
    use checkpoint::FileId;

    fn emitted(lens: &[usize]) -> Emitted {
        let mut off = 0;
        let mut lines = Vec::new();
        for &n in lens {
            lines.push(SplitLine {
                offset: off,
                bytes: vec![b'x'; n],
                flags: 0,
            });
            off += n as u64 + 1;
        }
        Emitted {
            id: FileId {
                device: 1,
                inode: 2,
                fingerprint: 3,
            },
            path: "/var/log/a.log".into(),
            lines,
            resume_offset: off,
            tail: None,
        }
    }

    #[test]
    fn big_polls_are_split_where_the_next_line_starts() {
        let e = emitted(&[1000; 10]);
        let b = to_batches("t", &[], 1, e.clone(), 4096 - 64);
        assert!(b.len() > 2);
        let all: Vec<u64> = b
            .iter()
            .flat_map(|x| x.lines.iter().map(|l| l.offset))
            .collect();
        assert_eq!(all, e.lines.iter().map(|l| l.offset).collect::<Vec<_>>());
        for w in b.windows(2) {
            assert_eq!(w[0].end_offset, w[1].lines[0].offset);
        }
        assert_eq!(b.last().unwrap().end_offset, e.resume_offset);
        let dir = tempfile::tempdir().unwrap();
        let opts = wal::WalOptions {
            segment_bytes: 4096,
            max_bytes: 1 << 20,
            ..wal::WalOptions::default()
        };
        let (w, _) = Wal::open(dir.path(), opts).unwrap();
        for x in &b {
            assert!(matches!(
                w.append(std::slice::from_ref(x)).unwrap(),
                Append::Appended(_)
            ));
        }
    }

    proptest::proptest! {
        /// Any poll split for any budget: the same lines in order, pieces
        /// chained by offsets, the last ending at the resume offset, and
        /// every piece accepted by a WAL whose segments are that budget.
        #[test]
        fn splitting_keeps_lines_offsets_and_fits(
            lens in proptest::collection::vec(0usize..3000, 0..40),
            budget in 1500usize..10_000,
        ) {
            let e = emitted(&lens);
            let b = to_batches("t", &[], 1, e.clone(), budget);
            let offsets: Vec<u64> = b.iter().flat_map(|x| x.lines.iter().map(|l| l.offset)).collect();
            proptest::prop_assert_eq!(offsets, e.lines.iter().map(|l| l.offset).collect::<Vec<_>>());
            for w in b.windows(2) {
                proptest::prop_assert_eq!(w[0].end_offset, w[1].lines[0].offset);
            }
            proptest::prop_assert_eq!(b.last().map(|x| x.end_offset), Some(e.resume_offset));
            let dir = tempfile::tempdir().unwrap();
            let opts = wal::WalOptions {
                segment_bytes: budget as u64 + 64,
                max_bytes: 1 << 24,
                ..wal::WalOptions::default()
            };
            let (w, _) = Wal::open(dir.path(), opts).unwrap();
            for x in &b {
                proptest::prop_assert!(w.append(std::slice::from_ref(x)).is_ok());
            }
        }
    }

    #[test]
    fn a_line_longer_than_a_record_is_cut_and_flagged() {
        let e = emitted(&[10, 50_000, 10]);
        let b = to_batches("t", &[], 1, e, 8192);
        let big = b
            .iter()
            .flat_map(|x| &x.lines)
            .find(|l| l.offset == 11)
            .unwrap();
        assert!(big.bytes.len() < 8192);
        assert_ne!(big.flags & crate::harvester::lines::TRUNCATED, 0);
        assert_eq!(b.iter().map(|x| x.lines.len()).sum::<usize>(), 3);
    }
}

#[cfg(test)]
mod shutdown_tests {
    use super::*;
    use crate::harvester::lines::SplitLine;
    use crate::metrics::Metrics;

    fn poll(from: u64, n: u64) -> Spooled {
        Spooled {
            topic: "t".into(),
            meta: Arc::new(Vec::new()),
            read_ms: 1,
            emitted: vec![Emitted {
                id: FileId {
                    device: 1,
                    inode: 2,
                    fingerprint: 3,
                },
                path: "/var/log/a.log".into(),
                lines: (from..from + n)
                    .map(|i| SplitLine {
                        offset: i * 1000,
                        bytes: vec![b'x'; 999],
                        flags: 0,
                    })
                    .collect(),
                resume_offset: (from + n) * 1000,
                tail: None,
            }],
        }
    }

    /// Shutting down with a full WAL: after one poll is dropped, a later
    /// poll of the same file must not be checkpointed even if space freed.
    #[test]
    fn after_a_drop_nothing_later_is_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = wal::WalOptions {
            segment_bytes: 16 << 10,
            max_bytes: 32 << 10,
            sync: wal::SyncPolicy::Always,
            ..wal::WalOptions::default()
        };
        let (wal, _) = Wal::open(dir.path().join("wal"), opts).unwrap();
        let wal = Arc::new(wal);
        let (store, _) = Store::open(dir.path().join("cp"), Duration::from_secs(60)).unwrap();
        let store = Arc::new(Mutex::new(store));
        let progress = Arc::new(Progress::default());
        let w = Writer {
            shared: Shared {
                wal: Arc::clone(&wal),
                store: Arc::clone(&store),
                progress: Arc::clone(&progress),
                metrics: Metrics::new(),
                spread: Arc::default(),
            },
            wait_durable: true,
            limits: Limits::for_wal(16 << 10, 32 << 10),
            queued: Queued::default(),
        };
        w.write(vec![poll(0, 24)]).unwrap(); // fills the WAL
        progress.stop_when_full.store(true, Ordering::SeqCst);
        w.write(vec![poll(24, 24)]).unwrap(); // (partly) dropped
        let id = FileId {
            device: 1,
            inode: 2,
            fingerprint: 3,
        };
        let offset = || store.lock().unwrap().get(&id).unwrap().durable_offset;
        let before = offset();
        assert!(before < 48_000, "the WAL was full: something was dropped");
        wal.ack(wal.last_seq()).unwrap(); // space is freed
        w.write(vec![poll(48, 4)]).unwrap(); // must be dropped too
        assert_eq!(offset(), before, "the checkpoint went past dropped lines");
    }
}

#[cfg(test)]
mod queued_tests {
    use super::*;

    #[test]
    fn the_queue_is_bounded_by_bytes_but_never_refuses_when_empty() {
        let q = Queued::default();
        assert!(
            q.try_reserve(QUEUE_BYTES * 2),
            "an empty queue takes anything"
        );
        assert!(!q.try_reserve(1));
        q.release(QUEUE_BYTES * 2);
        assert!(q.try_reserve(QUEUE_BYTES / 2));
        assert!(q.try_reserve(QUEUE_BYTES / 2));
        assert!(!q.try_reserve(1));
        q.release(QUEUE_BYTES);
        assert_eq!(q.bytes(), 0);
    }
}
