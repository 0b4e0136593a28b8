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
use checkpoint::{FileState, Store};
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
}

/// The writer thread; see the module docs.
pub struct Spool {
    pub tx: SyncSender<SpoolMsg>,
    handle: JoinHandle<Result<(), wal::Error>>,
}

/// How many harvester polls may wait for the writer.
const CHANNEL_DEPTH: usize = 32;
/// Most bytes of lines appended in one WAL call.
const APPEND_BYTES: usize = 8 << 20;

impl Spool {
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start(
        wal: Arc<Wal>,
        store: Arc<Mutex<Store>>,
        progress: Arc<Progress>,
        metrics: Arc<Metrics>,
        wait_durable: bool,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer(rx, &wal, &store, &progress, &metrics, wait_durable))?;
        Ok(Self { tx, handle })
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

fn to_batch(s: &Spooled, e: &Emitted) -> Batch {
    Batch {
        source: SourceId {
            device: e.id.device,
            inode: e.id.inode,
            fingerprint: e.id.fingerprint,
            path: e.path.to_string_lossy().into_owned(),
        },
        topic: s.topic.clone(),
        end_offset: e.resume_offset,
        read_ms: s.read_ms,
        meta: s.meta.to_vec(),
        lines: e
            .lines
            .iter()
            .map(|l| Line {
                offset: l.offset,
                bytes: l.bytes.clone(),
                flags: l.flags,
            })
            .collect(),
    }
}

fn writer(
    rx: Receiver<SpoolMsg>,
    wal: &Wal,
    store: &Mutex<Store>,
    progress: &Progress,
    metrics: &Metrics,
    wait_durable: bool,
) -> Result<(), wal::Error> {
    let mut pending: Vec<Spooled> = Vec::new();
    let mut barriers: Vec<Sender<()>> = Vec::new();
    loop {
        // Block for the first message, then take what else is queued.
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => take(m, &mut pending, &mut barriers),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        let mut bytes: usize = pending.iter().map(spooled_bytes).sum();
        while bytes < APPEND_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    if let SpoolMsg::Data(s) = &m {
                        bytes += spooled_bytes(s);
                    }
                    take(m, &mut pending, &mut barriers);
                }
                Err(_) => break,
            }
        }
        write(
            std::mem::take(&mut pending),
            wal,
            store,
            progress,
            metrics,
            wait_durable,
        )?;
        for b in barriers.drain(..) {
            let _ = b.send(());
        }
    }
}

fn take(m: SpoolMsg, pending: &mut Vec<Spooled>, barriers: &mut Vec<Sender<()>>) {
    match m {
        SpoolMsg::Data(s) => pending.push(s),
        SpoolMsg::Barrier(b) => barriers.push(b),
    }
}

fn spooled_bytes(s: &Spooled) -> usize {
    s.emitted
        .iter()
        .flat_map(|e| e.lines.iter())
        .map(|l| l.bytes.len() + 16)
        .sum()
}

fn write(
    spooled: Vec<Spooled>,
    wal: &Wal,
    store: &Mutex<Store>,
    progress: &Progress,
    metrics: &Metrics,
    wait_durable: bool,
) -> Result<(), wal::Error> {
    if spooled.is_empty() {
        return Ok(());
    }
    let batches: Vec<Batch> = spooled
        .iter()
        .flat_map(|s| s.emitted.iter().map(move |e| to_batch(s, e)))
        .collect();
    let range = loop {
        match wal.append(&batches)? {
            Append::Appended(r) => break r,
            Append::Full => {
                metrics.paused.set(1);
                metrics.wal_full.store(true, Ordering::Relaxed);
                if progress.stop_when_full.load(Ordering::Relaxed) {
                    tracing::warn!(
                        records = batches.len(),
                        "shutting down with the WAL full: these lines stay unread and are read again at the next start"
                    );
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    metrics.paused.set(0);
    metrics.wal_full.store(false, Ordering::Relaxed);
    if wait_durable {
        while !wal.wait_durable(*range.end(), Duration::from_secs(1))? {}
    }
    let now = checkpoint::now_ms();
    {
        let mut st = store.lock().unwrap_or_else(|p| p.into_inner());
        for s in &spooled {
            for e in &s.emitted {
                let path = e.path.to_string_lossy().into_owned();
                let state = match st.get(&e.id) {
                    Some(old) => FileState {
                        path,
                        durable_offset: e.resume_offset,
                        last_seen_ms: now,
                        ..old.clone()
                    },
                    None => FileState::durable_at(path, e.resume_offset),
                };
                st.update(e.id, state);
            }
        }
    }
    progress
        .checkpointed
        .fetch_max(*range.end(), Ordering::SeqCst);
    for s in &spooled {
        let lines: usize = s.emitted.iter().map(|e| e.lines.len()).sum();
        let bytes: usize = s
            .emitted
            .iter()
            .flat_map(|e| e.lines.iter())
            .map(|l| l.bytes.len())
            .sum();
        metrics
            .topic(&metrics.lines_read, &s.topic)
            .inc_by(lines as u64);
        metrics
            .topic(&metrics.bytes_read, &s.topic)
            .inc_by(bytes as u64);
    }
    Ok(())
}
