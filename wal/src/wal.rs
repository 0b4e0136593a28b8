//! The log itself: appending with a durability policy, recovery on open,
//! reading, acknowledging and freeing space.

use crate::format::{
    decode_ack, decode_payload, decode_segment_header, encode_ack, encode_frame_unsealed,
    encode_segment_header, parse_segment_file_name, seal_frame, segment_file_name, HeaderStatus,
    SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::hooks::{IoHooks, IoOp, NoHooks};
use crate::scan::{read_prefix, ScanItem, Scanner};
use crate::{Batch, Error, Result, Seq};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";

/// When appended records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fdatasync before `append` returns.
    Always,
    /// A background thread syncs at most `interval` after an append, or as
    /// soon as `max_pending_bytes` are unsynced; concurrent appends share one
    /// fdatasync.
    Group {
        interval: Duration,
        max_pending_bytes: u64,
    },
    /// Only [`Wal::sync`] makes records durable ("none" in the agent's config:
    /// the OS writes them back when it likes).
    Manual,
}

impl Default for SyncPolicy {
    /// Group commit every 10 ms or 4 MiB.
    fn default() -> Self {
        SyncPolicy::Group {
            interval: Duration::from_millis(10),
            max_pending_bytes: 4 << 20,
        }
    }
}

/// Options of [`Wal::open`].
#[derive(Clone)]
pub struct WalOptions {
    /// Target size of one segment file (default 64 MiB). A record never spans
    /// segments, so one record must fit in a segment.
    pub segment_bytes: u64,
    /// The most bytes all segment files may hold together (default 1 GiB).
    pub max_bytes: u64,
    /// Default: [`SyncPolicy::Group`] every 10 ms or 4 MiB.
    pub sync: SyncPolicy,
    /// Fault injection seam; default [`NoHooks`].
    pub hooks: Arc<dyn IoHooks>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            max_bytes: 1 << 30,
            sync: SyncPolicy::default(),
            hooks: Arc::new(NoHooks),
        }
    }
}

impl std::fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_bytes", &self.max_bytes)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// The result of [`Wal::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Append {
    /// The records got these sequence numbers, in order.
    Appended(RangeInclusive<Seq>),
    /// The log holds `max_bytes`; nothing was written. Retry after acks.
    Full,
}

/// What recovery found when the log was opened. Corruption is counted here,
/// never returned as data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid records found in the segments (acknowledged ones included).
    pub records_recovered: u64,
    /// Bytes cut from a torn or zero-filled tail of the last segment.
    pub bytes_truncated: u64,
    /// Records lost to corruption in the middle of the log or to missing
    /// segments (counted from sequence gaps).
    pub records_skipped: u64,
    /// Invalid bytes skipped in the middle of the log.
    pub bytes_skipped: u64,
    /// Segments with an invalid header, renamed to `*.corrupt`.
    pub bad_segments: u64,
    /// Gaps in the segment id sequence.
    pub missing_segments: u64,
    /// The ack file was unreadable; everything still present will be replayed.
    pub ack_file_reset: bool,
    /// The first sequence number not yet acknowledged: replay from here.
    pub first_unacked: Seq,
    /// The sequence number the next append gets.
    pub next_seq: Seq,
}

impl RecoveryReport {
    /// Whether recovery found anything wrong.
    pub fn is_clean(&self) -> bool {
        self.bytes_truncated == 0
            && self.records_skipped == 0
            && self.bytes_skipped == 0
            && self.bad_segments == 0
            && self.missing_segments == 0
            && !self.ack_file_reset
    }
}

/// What a [`Reader`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadItem {
    Record {
        seq: Seq,
        batch: Batch,
    },
    /// Corruption between two readable records: `records` sequence numbers
    /// (possibly 0 when unknown) and `bytes` bytes were skipped.
    Skipped {
        records: u64,
        bytes: u64,
    },
}

#[derive(Debug, Clone)]
struct SegMeta {
    first_seq: Seq,
    /// `first_seq - 1` while empty.
    last_seq: Seq,
    len: u64,
}

struct Active {
    id: u64,
    file: Arc<File>,
}

struct State {
    segments: BTreeMap<u64, SegMeta>,
    active: Active,
    next_seq: Seq,
    durable_seq: Seq,
    /// Bytes of the active segment known durable (readers stop there).
    active_durable_len: u64,
    acked_seq: Seq,
    total_bytes: u64,
    pending_bytes: u64,
    poisoned: bool,
    shutdown: bool,
}

struct Shared {
    dir: PathBuf,
    opts: WalOptions,
    state: Mutex<State>,
    /// Signalled when `durable_seq` advances or the log is poisoned.
    durable_cv: Condvar,
    /// Wakes the group-commit thread.
    sync_cv: Condvar,
    /// Serialises ack file replacement.
    ack_lock: Mutex<()>,
}

/// A segmented write-ahead log. Share it between threads with `Arc`.
pub struct Wal {
    shared: Arc<Shared>,
    sync_thread: Option<JoinHandle<()>>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

impl Shared {
    fn hook(&self, op: IoOp, path: &Path) -> Result<()> {
        hook_at(&*self.opts.hooks, op, path)
    }

    fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_file_name(id))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written record
        // the state does not know about (writes poison explicitly), so a
        // poisoned mutex is taken over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_dir(&self) -> Result<()> {
        sync_dir_at(&self.dir, &*self.opts.hooks)
    }

    /// Starts a new active segment after the current one.
    fn roll(&self, st: &mut State) -> Result<()> {
        roll(&self.dir, &*self.opts.hooks, st)
    }

    fn remove_segment(&self, st: &mut State, id: u64) -> Result<()> {
        remove_segment(&self.dir, &*self.opts.hooks, st, id)
    }

    /// Makes everything appended so far durable.
    fn sync(&self) -> Result<Seq> {
        let (file, target, id, len) = {
            let st = self.lock();
            if st.poisoned {
                return Err(Error::Poisoned);
            }
            let target = st.next_seq - 1;
            if st.durable_seq >= target {
                return Ok(st.durable_seq);
            }
            let len = st.segments.get(&st.active.id).map_or(0, |m| m.len);
            (Arc::clone(&st.active.file), target, st.active.id, len)
        };
        let path = self.seg_path(id);
        let res = self
            .hook(IoOp::Sync, &path)
            .and_then(|()| file.sync_data().map_err(io_err("fdatasync", &path)));
        let mut st = self.lock();
        match res {
            Ok(()) => {
                if target > st.durable_seq {
                    st.durable_seq = target;
                }
                if st.active.id == id && len > st.active_durable_len {
                    st.active_durable_len = len;
                }
                st.pending_bytes = 0;
                self.durable_cv.notify_all();
                Ok(st.durable_seq)
            }
            Err(e) => {
                st.poisoned = true;
                self.durable_cv.notify_all();
                Err(e)
            }
        }
    }
}

fn op_name(op: IoOp) -> &'static str {
    match op {
        IoOp::Write => "write",
        IoOp::Sync => "sync",
        IoOp::Create => "create",
        IoOp::Rename => "rename",
        IoOp::Remove => "remove",
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, recovering whatever is there.
    ///
    /// # Errors
    /// Invalid options, or an I/O error (reading the directory, truncating a
    /// torn tail, creating a segment). Corruption is not an error: see the
    /// returned [`RecoveryReport`].
    pub fn open(dir: impl AsRef<Path>, opts: WalOptions) -> Result<(Self, RecoveryReport)> {
        let dir = dir.as_ref().to_path_buf();
        if opts.segment_bytes < (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 1) as u64 {
            return Err(Error::Options(format!(
                "segment_bytes {} is too small",
                opts.segment_bytes
            )));
        }
        if opts.max_bytes < opts.segment_bytes {
            return Err(Error::Options(format!(
                "max_bytes {} is smaller than segment_bytes {}",
                opts.max_bytes, opts.segment_bytes
            )));
        }
        fs::create_dir_all(&dir).map_err(io_err("create dir", &dir))?;
        let (state, report) = recover(&dir, &*opts.hooks, opts.segment_bytes)?;
        let shared = Arc::new(Shared {
            dir,
            opts,
            state: Mutex::new(state),
            durable_cv: Condvar::new(),
            sync_cv: Condvar::new(),
            ack_lock: Mutex::new(()),
        });
        let sync_thread = match shared.opts.sync {
            SyncPolicy::Group { interval, .. } => {
                let shared = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("wal-group-commit".into())
                        .spawn(move || group_commit(&shared, interval))
                        .map_err(|e| Error::Io {
                            op: "spawn",
                            path: PathBuf::new(),
                            source: e,
                        })?,
                )
            }
            _ => None,
        };
        Ok((
            Wal {
                shared,
                sync_thread,
            },
            report,
        ))
    }

    /// Appends one record per batch, in order.
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`] for a batch that can never fit (nothing is
    /// written); an I/O error (the log is then poisoned: reopen it, recovery
    /// cuts whatever was half written).
    pub fn append(&self, batches: &[Batch]) -> Result<Append> {
        let sh = &*self.shared;
        let seg_room = sh.opts.segment_bytes - SEGMENT_HEADER_LEN as u64;
        // Frame everything before taking the lock; seqs and CRCs are sealed
        // under it. `starts[i]` is where record i's frame begins in `buf`.
        let mut buf = Vec::new();
        let mut starts = Vec::with_capacity(batches.len() + 1);
        for b in batches {
            let start = buf.len();
            starts.push(start);
            encode_frame_unsealed(&mut buf, b).map_err(Error::Encode)?;
            let payload = buf.len() - start - FRAME_HEADER_LEN;
            if payload > crate::MAX_RECORD_BYTES || (FRAME_HEADER_LEN + payload) as u64 > seg_room {
                return Err(Error::RecordTooLarge {
                    size: payload,
                    limit: (seg_room as usize - FRAME_HEADER_LEN).min(crate::MAX_RECORD_BYTES),
                });
            }
        }
        starts.push(buf.len());
        if batches.is_empty() {
            let st = sh.lock();
            return Ok(Append::Appended(st.next_seq..=st.next_seq - 1));
        }

        let mut st = sh.lock();
        if st.poisoned {
            return Err(Error::Poisoned);
        }
        // Place the records: which go to the active segment, where rolls happen.
        let mut cur_len = st.segments.get(&st.active.id).map_or(0, |m| m.len);
        let mut needed = 0u64;
        let mut bounds = vec![0]; // record indices where a segment's chunk starts
        for (i, w) in starts.windows(2).enumerate() {
            let framed = (w[1] - w[0]) as u64;
            if cur_len + framed > sh.opts.segment_bytes && cur_len > SEGMENT_HEADER_LEN as u64 {
                bounds.push(i);
                needed += SEGMENT_HEADER_LEN as u64;
                cur_len = SEGMENT_HEADER_LEN as u64;
            }
            cur_len += framed;
            needed += framed;
        }
        bounds.push(batches.len());
        if st.total_bytes + needed > sh.opts.max_bytes {
            return Ok(Append::Full);
        }

        let first = st.next_seq;
        for (i, w) in starts.windows(2).enumerate() {
            seal_frame(&mut buf[w[0]..w[1]], first + i as u64);
        }
        for (chunk, w) in bounds.windows(2).enumerate() {
            if chunk > 0 {
                // Close the full segment durably before starting the next one,
                // so durability only ever needs the active segment synced.
                let old_path = sh.seg_path(st.active.id);
                let res = sh
                    .hook(IoOp::Sync, &old_path)
                    .and_then(|()| {
                        st.active
                            .file
                            .sync_data()
                            .map_err(io_err("fdatasync", &old_path))
                    })
                    .and_then(|()| sh.roll(&mut st));
                if let Err(e) = res {
                    st.poisoned = true;
                    sh.durable_cv.notify_all();
                    return Err(e);
                }
                st.durable_seq = st.next_seq - 1;
                sh.durable_cv.notify_all();
            }
            if w[0] == w[1] {
                continue;
            }
            let bytes = &buf[starts[w[0]]..starts[w[1]]];
            let path = sh.seg_path(st.active.id);
            let res = sh.hook(IoOp::Write, &path).and_then(|()| {
                (&*st.active.file)
                    .write_all(bytes)
                    .map_err(io_err("write", &path))
            });
            if let Err(e) = res {
                st.poisoned = true;
                sh.durable_cv.notify_all();
                return Err(e);
            }
            let id = st.active.id;
            let last_seq = first + w[1] as u64 - 1;
            if let Some(meta) = st.segments.get_mut(&id) {
                meta.len += bytes.len() as u64;
                meta.last_seq = last_seq;
            }
            st.total_bytes += bytes.len() as u64;
            st.pending_bytes += bytes.len() as u64;
            st.next_seq = last_seq + 1;
        }
        let last = st.next_seq - 1;
        match sh.opts.sync {
            SyncPolicy::Always => {
                drop(st);
                sh.sync()?;
            }
            SyncPolicy::Group {
                max_pending_bytes, ..
            } => {
                if st.pending_bytes >= max_pending_bytes {
                    sh.sync_cv.notify_one();
                }
            }
            SyncPolicy::Manual => {}
        }
        Ok(Append::Appended(first..=last))
    }

    /// Makes everything appended so far durable now; returns the durable seq.
    ///
    /// # Errors
    /// An I/O error (the log is then poisoned).
    pub fn sync(&self) -> Result<Seq> {
        self.shared.sync()
    }

    /// The highest durable sequence number (0 when none).
    pub fn durable_seq(&self) -> Seq {
        self.shared.lock().durable_seq
    }

    /// The highest appended sequence number (0 when none).
    pub fn last_seq(&self) -> Seq {
        self.shared.lock().next_seq - 1
    }

    /// The highest acknowledged sequence number (0 when none).
    pub fn acked_seq(&self) -> Seq {
        self.shared.lock().acked_seq
    }

    /// Bytes held by segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.lock().total_bytes
    }

    /// Blocks until `seq` is durable or `timeout` passes; returns whether it
    /// is durable. With [`SyncPolicy::Manual`] only [`Wal::sync`] makes
    /// progress.
    ///
    /// # Errors
    /// [`Error::Poisoned`] when a sync failed.
    pub fn wait_durable(&self, seq: Seq, timeout: Duration) -> Result<bool> {
        let sh = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut st = sh.lock();
        loop {
            if st.durable_seq >= seq {
                return Ok(true);
            }
            if st.poisoned {
                return Err(Error::Poisoned);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if let SyncPolicy::Group { .. } = sh.opts.sync {
                sh.sync_cv.notify_one();
            }
            st = sh
                .durable_cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Records that every record up to `seq` is delivered downstream; durable
    /// when this returns. Frees segments whose records are all acknowledged.
    /// `seq` beyond the last appended record is clamped to it.
    ///
    /// # Errors
    /// An I/O error writing the ack file (the previous ack stays in force) or
    /// removing a segment.
    pub fn ack(&self, seq: Seq) -> Result<()> {
        let sh = &*self.shared;
        let _serial = sh.ack_lock.lock().unwrap_or_else(|p| p.into_inner());
        let seq = {
            let st = sh.lock();
            let seq = seq.min(st.next_seq - 1);
            if seq <= st.acked_seq {
                return Ok(());
            }
            seq
        };
        write_ack_file(sh, seq)?;
        let mut st = sh.lock();
        st.acked_seq = seq;
        let active = st.active.id;
        let done: Vec<u64> = st
            .segments
            .iter()
            .filter(|(id, m)| **id != active && m.last_seq <= seq)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            sh.remove_segment(&mut st, id)?;
        }
        // A fully acknowledged active segment is swapped for a fresh one so
        // its space can be freed too (otherwise a small max_bytes could stay
        // full for good).
        let meta = st.segments.get(&active).cloned();
        if let Some(meta) = meta {
            if meta.last_seq >= meta.first_seq && meta.last_seq <= seq && !st.poisoned {
                if let Err(e) = sh.roll(&mut st) {
                    st.poisoned = true;
                    sh.durable_cv.notify_all();
                    return Err(e);
                }
                sh.remove_segment(&mut st, active)?;
            }
        }
        Ok(())
    }

    /// A reader of durable records from `from` on (records below the first
    /// one still present are skipped silently: they were acknowledged).
    pub fn reader(&self, from: Seq) -> Reader {
        Reader {
            shared: Arc::clone(&self.shared),
            expected: from.max(1),
            cursor: None,
            pending: None,
            durable_only: true,
        }
    }

    /// Like [`Wal::reader`], but also yields records not yet durable.
    pub fn reader_including_unsynced(&self, from: Seq) -> Reader {
        Reader {
            durable_only: false,
            ..self.reader(from)
        }
    }

    /// Syncs, stops the group-commit thread and closes the log.
    ///
    /// # Errors
    /// The final sync's I/O error.
    pub fn close(mut self) -> Result<()> {
        let res = self.shared.sync().map(|_| ());
        self.stop_thread();
        res
    }

    fn stop_thread(&mut self) {
        if let Some(t) = self.sync_thread.take() {
            self.shared.lock().shutdown = true;
            self.shared.sync_cv.notify_all();
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    /// Stops the group-commit thread without a final sync (what is not
    /// durable yet is as if the process had crashed); use [`Wal::close`].
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn group_commit(shared: &Shared, interval: Duration) {
    let max_pending = match shared.opts.sync {
        SyncPolicy::Group {
            max_pending_bytes, ..
        } => max_pending_bytes,
        _ => u64::MAX,
    };
    loop {
        {
            let mut st = shared.lock();
            loop {
                if st.shutdown {
                    return;
                }
                let behind = st.durable_seq < st.next_seq - 1;
                if behind && !st.poisoned && st.pending_bytes >= max_pending {
                    break;
                }
                let (g, timeout) = shared
                    .sync_cv
                    .wait_timeout(st, interval)
                    .unwrap_or_else(|p| p.into_inner());
                st = g;
                let behind = st.durable_seq < st.next_seq - 1;
                if behind && !st.poisoned && (timeout.timed_out() || st.pending_bytes > 0) {
                    break;
                }
            }
        }
        if let Err(e) = shared.sync() {
            tracing::error!(error = %e, "wal group commit failed; the log is poisoned until reopened");
        }
    }
}

fn hook_at(hooks: &dyn IoHooks, op: IoOp, path: &Path) -> Result<()> {
    hooks.before(op, path).map_err(io_err(op_name(op), path))
}

fn sync_dir_at(dir: &Path, hooks: &dyn IoHooks) -> Result<()> {
    hook_at(hooks, IoOp::Sync, dir)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

/// Creates segment `id` starting at `first_seq`: header written, file and
/// directory entry synced.
fn create_segment(dir: &Path, hooks: &dyn IoHooks, id: u64, first_seq: Seq) -> Result<File> {
    let path = dir.join(segment_file_name(id));
    hook_at(hooks, IoOp::Create, &path)?;
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(io_err("create segment", &path))?;
    hook_at(hooks, IoOp::Write, &path)?;
    file.write_all(&encode_segment_header(SegmentHeader { id, first_seq }))
        .map_err(io_err("write header", &path))?;
    hook_at(hooks, IoOp::Sync, &path)?;
    file.sync_data().map_err(io_err("fdatasync", &path))?;
    sync_dir_at(dir, hooks)?;
    Ok(file)
}

/// Makes a new segment after the active one the active segment.
fn roll(dir: &Path, hooks: &dyn IoHooks, st: &mut State) -> Result<()> {
    let id = st.active.id + 1;
    let file = create_segment(dir, hooks, id, st.next_seq)?;
    st.segments.insert(
        id,
        SegMeta {
            first_seq: st.next_seq,
            last_seq: st.next_seq - 1,
            len: SEGMENT_HEADER_LEN as u64,
        },
    );
    st.total_bytes += SEGMENT_HEADER_LEN as u64;
    st.active = Active {
        id,
        file: Arc::new(file),
    };
    st.active_durable_len = SEGMENT_HEADER_LEN as u64;
    Ok(())
}

fn remove_segment(dir: &Path, hooks: &dyn IoHooks, st: &mut State, id: u64) -> Result<()> {
    let path = dir.join(segment_file_name(id));
    hook_at(hooks, IoOp::Remove, &path)?;
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove segment", &path)(e)),
    }
    if let Some(meta) = st.segments.remove(&id) {
        st.total_bytes -= meta.len;
    }
    Ok(())
}

fn write_ack_file(sh: &Shared, seq: Seq) -> Result<()> {
    let tmp = sh.dir.join(ACK_TMP);
    let dst = sh.dir.join(ACK_FILE);
    sh.hook(IoOp::Create, &tmp)?;
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    sh.hook(IoOp::Write, &tmp)?;
    f.write_all(&encode_ack(seq))
        .map_err(io_err("write", &tmp))?;
    sh.hook(IoOp::Sync, &tmp)?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    sh.hook(IoOp::Rename, &dst)?;
    fs::rename(&tmp, &dst).map_err(io_err("rename", &dst))?;
    sh.sync_dir()
}

fn read_ack(dir: &Path, report: &mut RecoveryReport) -> Result<Seq> {
    match fs::read(dir.join(ACK_FILE)) {
        Ok(bytes) => Ok(decode_ack(&bytes).unwrap_or_else(|| {
            tracing::warn!(dir = %dir.display(), "wal ack file is corrupt; replaying everything present");
            report.ack_file_reset = true;
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("read ack file", dir)(e)),
    }
}

/// Scans one segment whose header is valid; truncates a torn tail when it is
/// the last segment.
fn scan_segment(
    path: &Path,
    file: File,
    header: SegmentHeader,
    file_len: u64,
    is_last: bool,
    hooks: &dyn IoHooks,
    report: &mut RecoveryReport,
) -> Result<SegMeta> {
    let mut scanner = Scanner::new(
        file,
        SEGMENT_HEADER_LEN as u64,
        file_len,
        header.first_seq - 1,
    );
    let mut meta = SegMeta {
        first_seq: header.first_seq,
        last_seq: header.first_seq - 1,
        len: file_len,
    };
    loop {
        match scanner.next_item().map_err(io_err("read segment", path))? {
            ScanItem::Record { seq, .. } => {
                report.records_recovered += 1;
                meta.last_seq = seq;
            }
            ScanItem::Skipped { bytes, records, .. } => {
                tracing::warn!(segment = %path.display(), bytes, records, "wal: skipping a corrupt region");
                report.bytes_skipped += bytes;
                report.records_skipped += records;
            }
            ScanItem::End { tail: None } => return Ok(meta),
            ScanItem::End {
                tail: Some((offset, bytes)),
            } => {
                if is_last {
                    tracing::warn!(segment = %path.display(), offset, bytes, "wal: truncating a torn tail");
                    hook_at(hooks, IoOp::Remove, path)?;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err("open", path))?;
                    f.set_len(offset).map_err(io_err("truncate", path))?;
                    f.sync_all().map_err(io_err("fsync", path))?;
                    report.bytes_truncated += bytes;
                    meta.len = offset;
                } else {
                    tracing::warn!(segment = %path.display(), offset, bytes, "wal: skipping a corrupt segment end");
                    report.bytes_skipped += bytes;
                }
                return Ok(meta);
            }
        }
    }
}

/// Scans the directory and rebuilds the state (see the crate docs).
fn recover(dir: &Path, hooks: &dyn IoHooks, segment_bytes: u64) -> Result<(State, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    let acked = read_ack(dir, &mut report)?;

    let mut ids: Vec<u64> = fs::read_dir(dir)
        .map_err(io_err("read dir", dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_file_name))
        .collect();
    ids.sort_unstable();

    let mut segments = BTreeMap::new();
    let mut last_seq: Seq = 0;
    let mut prev_id: Option<u64> = None;
    let max_id = ids.last().copied().unwrap_or(0);
    for id in ids {
        let path = dir.join(segment_file_name(id));
        let mut file = File::open(&path).map_err(io_err("open segment", &path))?;
        let file_len = file
            .metadata()
            .map_err(io_err("stat segment", &path))?
            .len();
        let raw =
            read_prefix(&mut file, SEGMENT_HEADER_LEN).map_err(io_err("read header", &path))?;
        let header = match decode_segment_header(&raw) {
            HeaderStatus::Valid(h) if h.id == id && h.first_seq > last_seq => h,
            status => {
                tracing::warn!(segment = %path.display(), ?status, "wal segment has a bad header; set aside");
                report.bad_segments += 1;
                let aside = path.with_extension("seg.corrupt");
                hook_at(hooks, IoOp::Rename, &aside)?;
                fs::rename(&path, &aside).map_err(io_err("rename", &aside))?;
                continue;
            }
        };
        if let Some(p) = prev_id {
            report.missing_segments += id.saturating_sub(p + 1);
        }
        prev_id = Some(id);
        if last_seq > 0 && header.first_seq > last_seq + 1 {
            report.records_skipped += header.first_seq - last_seq - 1;
        }
        let meta = scan_segment(
            &path,
            file,
            header,
            file_len,
            id == max_id,
            hooks,
            &mut report,
        )?;
        last_seq = last_seq.max(meta.last_seq);
        segments.insert(id, meta);
    }

    let next_seq = last_seq.max(acked) + 1;
    let total_bytes = segments.values().map(|m| m.len).sum();
    let newest = segments.keys().next_back().copied();
    let mut st = State {
        segments,
        active: Active {
            id: max_id,
            file: Arc::new(File::open(dir).map_err(io_err("open dir", dir))?),
        },
        next_seq,
        durable_seq: next_seq - 1,
        active_durable_len: 0,
        acked_seq: acked,
        total_bytes,
        pending_bytes: 0,
        poisoned: false,
        shutdown: false,
    };
    // Acknowledged segments go (the newest may stay as the active one).
    let done: Vec<u64> = st
        .segments
        .iter()
        .filter(|(id, m)| Some(**id) != newest && m.last_seq <= acked)
        .map(|(id, _)| *id)
        .collect();
    for id in done {
        remove_segment(dir, hooks, &mut st, id)?;
    }
    // The newest segment stays active if records can continue in it;
    // otherwise (none, full, or the next seq does not follow on) a new one.
    let reuse = newest.filter(|id| {
        let m = &st.segments[id];
        m.last_seq + 1 == next_seq && m.len < segment_bytes
    });
    match reuse {
        Some(id) => {
            let path = dir.join(segment_file_name(id));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err("open segment", &path))?;
            // What a crashed process left in the page cache becomes durable.
            hook_at(hooks, IoOp::Sync, &path)?;
            file.sync_data().map_err(io_err("fdatasync", &path))?;
            st.active_durable_len = st.segments[&id].len;
            st.active = Active {
                id,
                file: Arc::new(file),
            };
        }
        None => roll(dir, hooks, &mut st)?,
    }
    let first_present = st
        .segments
        .values()
        .filter(|m| m.last_seq >= m.first_seq)
        .map(|m| m.first_seq)
        .min()
        .unwrap_or(next_seq);
    report.first_unacked = (acked + 1).max(first_present).min(next_seq);
    report.next_seq = next_seq;
    let _ = fs::remove_file(dir.join(ACK_TMP));
    Ok((st, report))
}

/// Iterates records from a sequence number on; see [`Wal::reader`].
pub struct Reader {
    shared: Arc<Shared>,
    /// The seq the reader returns next.
    expected: Seq,
    cursor: Option<Cursor>,
    /// A record read after a gap, returned after the gap is reported.
    pending: Option<(Seq, Batch)>,
    durable_only: bool,
}

struct Cursor {
    id: u64,
    scanner: Scanner,
}

/// Where a reader may read: per segment (id, first seq, readable bytes).
type Readable = Vec<(u64, Seq, u64)>;

impl Reader {
    fn readable(&self) -> Readable {
        let st = self.shared.lock();
        st.segments
            .iter()
            .map(|(id, m)| {
                let len = if *id == st.active.id && self.durable_only {
                    st.active_durable_len.min(m.len)
                } else {
                    m.len
                };
                (*id, m.first_seq, len)
            })
            .collect()
    }

    fn open(&mut self, id: u64, first_seq: Seq, len: u64) -> Result<bool> {
        let path = self.shared.seg_path(id);
        match File::open(&path) {
            Ok(file) => {
                self.cursor = Some(Cursor {
                    id,
                    scanner: Scanner::new(file, SEGMENT_HEADER_LEN as u64, len, first_seq - 1),
                });
                Ok(true)
            }
            // Removed by an ack since the list was taken.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("open segment", &path)(e)),
        }
    }

    /// The next item, or `None` when no more records are available yet (call
    /// again later).
    ///
    /// # Errors
    /// An I/O error reading a segment.
    pub fn next_item(&mut self) -> Result<Option<ReadItem>> {
        if let Some((seq, batch)) = self.pending.take() {
            self.expected = seq + 1;
            return Ok(Some(ReadItem::Record { seq, batch }));
        }
        loop {
            let segs = self.readable();
            if self.cursor.is_none() {
                // The segment holding `expected`: the last starting at or before it.
                let Some(&(id, first, len)) = segs
                    .iter()
                    .rev()
                    .find(|(_, first, _)| *first <= self.expected)
                    .or_else(|| segs.first())
                else {
                    return Ok(None);
                };
                if !self.open(id, first, len)? {
                    continue;
                }
            }
            let Some(cur) = self.cursor.as_mut() else {
                return Ok(None);
            };
            let here = segs.iter().find(|(id, _, _)| *id == cur.id).copied();
            if let Some((_, _, len)) = here {
                cur.scanner.set_limit(len);
            }
            let path = self.shared.seg_path(cur.id);
            match cur
                .scanner
                .next_item()
                .map_err(io_err("read segment", &path))?
            {
                ScanItem::Record { seq, payload, .. } => {
                    if seq < self.expected {
                        continue;
                    }
                    let gap = seq - self.expected;
                    match decode_payload(cur.scanner.payload(payload)) {
                        None => {
                            self.expected = seq + 1;
                            return Ok(Some(ReadItem::Skipped {
                                records: gap + 1,
                                bytes: 0,
                            }));
                        }
                        Some(batch) if gap == 0 => {
                            self.expected = seq + 1;
                            return Ok(Some(ReadItem::Record { seq, batch }));
                        }
                        Some(batch) => {
                            self.pending = Some((seq, batch));
                            self.expected = seq;
                            return Ok(Some(ReadItem::Skipped {
                                records: gap,
                                bytes: 0,
                            }));
                        }
                    }
                }
                ScanItem::Skipped { bytes, .. } => {
                    return Ok(Some(ReadItem::Skipped { records: 0, bytes }));
                }
                ScanItem::End { tail } => {
                    let id = cur.id;
                    let Some(&(nid, nfirst, nlen)) = segs.iter().find(|(sid, _, _)| *sid > id)
                    else {
                        // The newest segment: more may be appended later.
                        return Ok(None);
                    };
                    if here.is_none() || !self.open(nid, nfirst, nlen)? {
                        // Our segment or the next was removed: locate again.
                        self.cursor = None;
                    }
                    if let Some((_, bytes)) = tail {
                        return Ok(Some(ReadItem::Skipped { records: 0, bytes }));
                    }
                }
            }
        }
    }
}

impl Iterator for Reader {
    type Item = Result<ReadItem>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}
