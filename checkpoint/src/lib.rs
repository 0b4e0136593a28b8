//! Per-file checkpoints of logagent, kept in sled behind this crate's API.
//!
//! # What is stored
//!
//! Tree `files`: key = [`FileId`] (device, inode, fingerprint), 24 bytes
//! big-endian; value = a bincode 2.x encoding of [`StoredState`], an enum
//! whose variant is the schema version: `V1(FileStateV1)` and
//! `V2(FileStateV2)` (read, never written any more; V2 added the [`Tail`]
//! check of the resume point) or `V3(FileState)`, which adds `wal_seq`, the
//! WAL seq of the last record holding the file's lines (issue #12 item 8: a
//! gone file's entry is kept while that record is unacknowledged). V1 and
//! V2 values decode with `wal_seq = 0` (nothing known to be pending); the
//! agent's start-up sets it again from the WAL's unacknowledged records.
//! A store written by this version is not readable by a logagent older
//! than it (V3 values are undecodable there and dropped).
//! Tree `meta`: `collect-config` = the last good collection config received
//! from etcd (opaque bytes, so the agent can start when etcd is unreachable);
//! `refusals` = the agent's refusal ledger (opaque, `agent::refusal`).
//!
//! # When it is durable
//!
//! Updates go to an in-memory view first; [`Store::flush`] writes every
//! changed entry in one atomic sled batch and then calls sled's `flush`, so
//! after a crash the store holds the state of some flush, never a mix of two.
//! Unchanged entries are never rewritten. The agent flushes at a bounded
//! interval ([`Store::maybe_flush`]) and on shutdown.
//!
//! # Garbage collection
//!
//! An entry is collected by [`Store::gc`] once its file has not been seen
//! for the retention ([`Store::set_retention`], [`DEFAULT_RETENTION`]) and
//! its last WAL record is acknowledged ([`collectible`]). "Seen" is
//! `last_seen_ms`: set when lines of the file are checkpointed, and
//! refreshed by [`Store::mark_seen`] for the files the harvesters track (the
//! agent calls it after its polls); a refresh changes the entry only when
//! its `last_seen_ms` is older than [`Store::seen_every`] (1/8 of the
//! retention, at most 10 minutes), so an idle file costs one write in that
//! interval, not one per poll.
//!
//! # The snapshot
//!
//! Beside the sled directory, `<dir>.snapshot` holds a compact copy of every
//! entry and the config cache, so a store lost to corruption does not send
//! every file again from 0. Layout (little-endian):
//!
//! ```text
//! magic "LPCS" | version u32 = 1 | crc32 u32 (of the body) | len u64 | body
//! body = bincode 2.x of Snapshot { entries: Vec<([u8; 24] key, value bytes)>,
//!                                  config: Option<Vec<u8>> }
//! ```
//!
//! Values are the same [`StoredState`] encoding as in sled. It is written
//! to `<dir>.snapshot.tmp`, fsync'ed, renamed over the old one and the
//! directory fsync'ed, by [`Store::flush`] when something changed and
//! [`SNAPSHOT_EVERY`] has passed since the last one, and by
//! [`Store::snapshot`] (the agent calls it at shutdown). A snapshot that
//! fails its CRC is ignored.
//!
//! # Failure handling
//!
//! A store that cannot be opened (corrupt or unreadable sled directory) is
//! moved aside to `<dir>.corrupt-<unix time>` and a fresh one is created,
//! filled from the snapshot: positions at most [`SNAPSHOT_EVERY`] old, so
//! at most that much of each file is read and sent again (duplicates, never
//! loss: an older position only re-reads). The same restore happens when
//! sled opens but values are undecodable or the store is empty while the
//! snapshot is not. The [`OpenReport`] says what happened; the agent then
//! makes positions agree with its WAL. A store locked by another process is
//! never moved aside: opening waits up to 10 s for the lock (a closing
//! process releases it shortly), then fails with [`Error::Locked`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The identity of a file: where it lives and what it starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub device: u64,
    pub inode: u64,
    /// Checksum of the file's first bytes (see the harvester's fingerprinting).
    pub fingerprint: u64,
}

impl FileId {
    fn key(&self) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&self.device.to_be_bytes());
        k[8..16].copy_from_slice(&self.inode.to_be_bytes());
        k[16..].copy_from_slice(&self.fingerprint.to_be_bytes());
        k
    }

    fn from_key(k: &[u8]) -> Option<Self> {
        if k.len() != 24 {
            return None;
        }
        let n = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[r]);
            u64::from_be_bytes(b)
        };
        Some(Self {
            device: n(0..8),
            inode: n(8..16),
            fingerprint: n(16..24),
        })
    }
}

/// How many bytes before a resume offset its [`Tail`] check covers.
pub const TAIL_BYTES: u64 = 256;

/// A check of the content just before a resume offset: CRC-32 of the file's
/// bytes `[offset - min(offset, TAIL_BYTES), offset)`. Identity (device,
/// inode, first line) cannot tell a file rewritten with the same first line
/// (a CSV header, `#Software:`) from the one read before; the bytes before
/// the resume point can: when they differ, the file is read from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub offset: u64,
    pub crc: u32,
}

impl Tail {
    /// The check of `file` at `offset`; `None` at offset 0 or on a short read.
    pub fn of(file: &std::fs::File, offset: u64) -> Option<Self> {
        use std::os::unix::fs::FileExt;
        let n = offset.min(TAIL_BYTES);
        if n == 0 {
            return None;
        }
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, offset - n).ok()?;
        Some(Self {
            offset,
            crc: crc32fast::hash(&buf),
        })
    }

    /// Whether `file` still has this content before `self.offset`
    /// (`false` when it is shorter).
    pub fn matches(&self, file: &std::fs::File) -> bool {
        Self::of(file, self.offset).is_some_and(|t| t.crc == self.crc)
    }
}

/// Frozen: the schema of `StoredState::V1`. Never change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStateV1 {
    pub path: String,
    pub durable_offset: u64,
    pub acked_offset: u64,
    pub size: u64,
    pub mtime_ms: i64,
    pub last_seen_ms: u64,
}

/// Frozen: the schema of `StoredState::V2`. Never change it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStateV2 {
    pub path: String,
    pub durable_offset: u64,
    pub acked_offset: u64,
    pub size: u64,
    pub mtime_ms: i64,
    pub last_seen_ms: u64,
    pub tail: Option<Tail>,
}

/// What is known about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// The path the file was last seen at.
    pub path: String,
    /// Lines up to this offset are durable in the WAL: reading resumes here.
    pub durable_offset: u64,
    /// Lines up to this offset are acknowledged by Kafka.
    pub acked_offset: u64,
    pub size: u64,
    pub mtime_ms: i64,
    /// When the file was last seen at its path (Unix ms); drives GC.
    pub last_seen_ms: u64,
    /// The check of the content before `durable_offset` (when its offset is
    /// `durable_offset`; a check of another offset is not used).
    pub tail: Option<Tail>,
    /// The WAL seq of the last record holding lines of this file (0: none
    /// known); the entry is not collected while it is above the WAL's
    /// acknowledged seq.
    pub wal_seq: u64,
}

impl FileState {
    /// The state of a file at `path` whose lines up to `durable_offset` are
    /// durable, seen now (acked offset 0 until Kafka acknowledges).
    pub fn durable_at(path: impl Into<String>, durable_offset: u64) -> Self {
        Self {
            path: path.into(),
            durable_offset,
            acked_offset: 0,
            size: durable_offset,
            mtime_ms: 0,
            last_seen_ms: now_ms(),
            tail: None,
            wal_seq: 0,
        }
    }

    /// The tail check that applies to `durable_offset`, if any.
    pub fn tail_at_resume(&self) -> Option<Tail> {
        self.tail.filter(|t| t.offset == self.durable_offset)
    }
}

/// How long checkpoints of files that are gone are kept by default: 7
/// days. A file that comes back within it (an agent stopped, an entry
/// removed and added again, a volume unmounted for a while) resumes where
/// it was; one coming back later is read again from 0. An entry is about
/// 100 bytes, so even 10,000 rotated files a day keep the store small.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most `last_seen_ms` may lag behind a file that is seen (see
/// [`Store::seen_every`]).
pub const MAX_SEEN_EVERY: Duration = Duration::from_secs(600);

/// The versioned value encoding. Add variants; never change an old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredState {
    V1(FileStateV1),
    V2(FileStateV2),
    V3(FileState),
}

/// Whether `state` may be collected (pure): its file was last seen before
/// `cutoff_ms` and its last WAL record is acknowledged (`acked_seq`). A
/// deleted file whose lines still wait in the WAL keeps its entry.
pub fn collectible(state: &FileState, cutoff_ms: u64, acked_seq: u64) -> bool {
    state.last_seen_ms < cutoff_ms && state.wal_seq <= acked_seq
}

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint store {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("checkpoint store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint store {path} is in use by another process (is another logagent running with this data_dir?): {message}")]
    Locked { path: PathBuf, message: String },
    #[error("checkpoint store {path}: cannot be opened ({first}) nor recreated after moving it aside ({second})")]
    Unrecoverable {
        path: PathBuf,
        first: String,
        second: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`Store::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries loaded.
    pub entries: usize,
    /// Entries whose value could not be decoded (dropped; the WAL knows them).
    pub undecodable: usize,
    /// Where a store that could not be opened was moved, if it was.
    pub moved_aside: Option<PathBuf>,
    /// Why it could not be opened.
    pub open_error: Option<String>,
    /// Entries restored from the snapshot (a lost or damaged store).
    pub from_snapshot: usize,
}

const CONFIG_KEY: &str = "collect-config";

/// How old the snapshot may get while entries change (see the module docs).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);

const SNAPSHOT_MAGIC: &[u8; 4] = b"LPCS";
const SNAPSHOT_VERSION: u32 = 1;

/// Frozen: the snapshot body, version 1. Never change it.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    entries: Vec<([u8; 24], Vec<u8>)>,
    config: Option<Vec<u8>>,
}

fn snapshot_path(store: &Path) -> PathBuf {
    PathBuf::from(format!("{}.snapshot", store.display()))
}

/// Reads a snapshot; `None` when absent, torn or failing its CRC.
fn read_snapshot(path: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 20 || &bytes[..4] != SNAPSHOT_MAGIC {
        return None;
    }
    let word = |r: std::ops::Range<usize>| bytes.get(r).map(|b| b.to_vec());
    let version = u32::from_le_bytes(word(4..8)?.try_into().ok()?);
    let crc = u32::from_le_bytes(word(8..12)?.try_into().ok()?);
    let len = u64::from_le_bytes(word(12..20)?.try_into().ok()?);
    let body = bytes.get(20..20usize.checked_add(usize::try_from(len).ok()?)?)?;
    if version != SNAPSHOT_VERSION || crc32fast::hash(body) != crc {
        return None;
    }
    let cfg = bincode::config::standard().with_limit::<{ 1 << 30 }>();
    bincode::serde::decode_from_slice::<Snapshot, _>(body, cfg)
        .ok()
        .map(|(s, _)| s)
}

fn write_snapshot(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    use std::io::Write;
    let body = bincode::serde::encode_to_vec(snap, bincode::config::standard())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(SNAPSHOT_MAGIC)?;
        f.write_all(&SNAPSHOT_VERSION.to_le_bytes())?;
        f.write_all(&crc32fast::hash(&body).to_le_bytes())?;
        f.write_all(&(body.len() as u64).to_le_bytes())?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The checkpoint store.
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    files: sled::Tree,
    meta: sled::Tree,
    view: BTreeMap<FileId, FileState>,
    dirty: HashSet<FileId>,
    removed: HashSet<FileId>,
    last_flush: Instant,
    flush_every: Duration,
    /// When the snapshot was last written (`None`: not by this process).
    last_snapshot: Option<Instant>,
    /// Flushed changes the snapshot does not have yet.
    snapshot_stale: bool,
    /// How long entries of files not seen are kept ([`Store::gc`]).
    retention: Duration,
}

fn bincode_cfg() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 20 }>()
}

fn encode(state: &FileState) -> Vec<u8> {
    #[derive(Serialize)]
    enum Ref<'a> {
        #[allow(dead_code)]
        V1(&'a FileStateV1),
        #[allow(dead_code)]
        V2(&'a FileStateV2),
        V3(&'a FileState),
    }
    bincode::serde::encode_to_vec(Ref::V3(state), bincode::config::standard()).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Option<FileState> {
    match bincode::serde::decode_from_slice::<StoredState, _>(bytes, bincode_cfg()) {
        Ok((StoredState::V1(s), used)) if used == bytes.len() => Some(FileState {
            path: s.path,
            durable_offset: s.durable_offset,
            acked_offset: s.acked_offset,
            size: s.size,
            mtime_ms: s.mtime_ms,
            last_seen_ms: s.last_seen_ms,
            tail: None,
            wal_seq: 0,
        }),
        // V2 knew no WAL seq: 0, nothing known to be pending (start-up sets
        // it again from the WAL's unacknowledged records).
        Ok((StoredState::V2(s), used)) if used == bytes.len() => Some(FileState {
            path: s.path,
            durable_offset: s.durable_offset,
            acked_offset: s.acked_offset,
            size: s.size,
            mtime_ms: s.mtime_ms,
            last_seen_ms: s.last_seen_ms,
            tail: s.tail,
            wal_seq: 0,
        }),
        Ok((StoredState::V3(s), used)) if used == bytes.len() => Some(s),
        _ => None,
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why opening failed: held by someone else (wait, never move aside), or
/// anything else (corrupt or unreadable).
enum OpenFailure {
    Locked(String),
    Broken(String),
}

/// Opens the store, waiting up to 10 s for a lock held by a process that is
/// exiting (sled's background threads release it shortly after a close).
fn open_waiting(
    path: &Path,
) -> std::result::Result<(sled::Db, sled::Tree, sled::Tree), OpenFailure> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_open(path) {
            Ok(t) => return Ok(t),
            Err(e) if is_lock_error(&e) => {
                if Instant::now() >= deadline {
                    return Err(OpenFailure::Locked(e));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(OpenFailure::Broken(e)),
        }
    }
}

/// Whether sled's open error means the directory is locked by a process.
fn is_lock_error(message: &str) -> bool {
    message.contains("could not acquire lock")
}

fn try_open(path: &Path) -> std::result::Result<(sled::Db, sled::Tree, sled::Tree), String> {
    // sled may panic on some corrupt files; a panic here is a corrupt store.
    let opened = std::panic::catch_unwind(|| {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(16 << 20)
            .open()?;
        let files = db.open_tree("files")?;
        let meta = db.open_tree("meta")?;
        // Touch every value so corruption shows now, not later.
        for kv in files.iter() {
            kv?;
        }
        Ok::<_, sled::Error>((db, files, meta))
    });
    match opened {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sled panicked while opening it".into()),
    }
}

impl Store {
    /// Opens the store at `path` (a directory), creating it if needed.
    /// `flush_every` bounds how long an update may stay unflushed when the
    /// agent calls [`Store::maybe_flush`].
    ///
    /// # Errors
    /// Only when neither the store nor a fresh one in its place can be
    /// opened; a corrupt store is moved aside and reported instead.
    pub fn open(path: impl AsRef<Path>, flush_every: Duration) -> Result<(Self, OpenReport)> {
        let path = path.as_ref().to_path_buf();
        let mut report = OpenReport::default();
        let (db, files, meta) = match open_waiting(&path) {
            Ok(t) => t,
            Err(OpenFailure::Locked(message)) => return Err(Error::Locked { path, message }),
            Err(OpenFailure::Broken(first)) => {
                let aside =
                    PathBuf::from(format!("{}.corrupt-{}", path.display(), now_ms() / 1000));
                tracing::error!(store = %path.display(), error = %first, aside = %aside.display(),
                    "checkpoint store cannot be opened; moving it aside and starting empty");
                std::fs::rename(&path, &aside).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                report.moved_aside = Some(aside);
                report.open_error = Some(first.clone());
                open_waiting(&path).map_err(|second| Error::Unrecoverable {
                    path: path.clone(),
                    first,
                    second: match second {
                        OpenFailure::Locked(m) | OpenFailure::Broken(m) => m,
                    },
                })?
            }
        };
        let mut view = BTreeMap::new();
        for kv in files.iter() {
            let (k, v) = kv.map_err(|source| Error::Sled {
                path: path.clone(),
                source,
            })?;
            match (FileId::from_key(&k), decode(&v)) {
                (Some(id), Some(state)) => {
                    view.insert(id, state);
                }
                _ => report.undecodable += 1,
            }
        }
        let mut store = Self {
            path,
            db,
            files,
            meta,
            view,
            dirty: HashSet::new(),
            removed: HashSet::new(),
            last_flush: Instant::now(),
            flush_every,
            last_snapshot: None,
            snapshot_stale: false,
            retention: DEFAULT_RETENTION,
        };
        if report.moved_aside.is_some() || report.undecodable > 0 || store.view.is_empty() {
            report.from_snapshot = store.restore_snapshot()?;
        }
        report.entries = store.view.len();
        Ok((store, report))
    }

    /// Fills in entries (and the config cache) the snapshot has and the
    /// store lacks; returns how many entries.
    fn restore_snapshot(&mut self) -> Result<usize> {
        let Some(snap) = read_snapshot(&snapshot_path(&self.path)) else {
            return Ok(0);
        };
        let mut n = 0;
        for (k, v) in &snap.entries {
            if let (Some(id), Some(state)) = (FileId::from_key(k), decode(v)) {
                if let std::collections::btree_map::Entry::Vacant(e) = self.view.entry(id) {
                    e.insert(state);
                    self.dirty.insert(id);
                    n += 1;
                }
            }
        }
        if let Some(cfg) = &snap.config {
            if self.load_config().is_none() {
                self.save_config(cfg)?;
            }
        }
        if n > 0 {
            tracing::warn!(store = %self.path.display(), entries = n, "checkpoints restored from the snapshot (at most a few seconds old: those lines may be sent again)");
            self.flush()?;
        }
        Ok(n)
    }

    /// Writes the snapshot when flushed changes are missing from it and
    /// [`SNAPSHOT_EVERY`] has passed since the last one. Call it
    /// periodically (the agent: every second): changes flushed just after a
    /// snapshot reach the next one even when nothing changes afterwards. A
    /// failure is logged (the store itself is unaffected).
    pub fn maybe_snapshot(&mut self) {
        if self.snapshot_stale
            && self
                .last_snapshot
                .is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY)
        {
            if let Err(e) = self.snapshot() {
                tracing::warn!(error = %e, "cannot write the checkpoint snapshot; the store itself is flushed");
            }
        }
    }

    /// Writes the snapshot now (see the module docs).
    ///
    /// # Errors
    /// The snapshot file cannot be written; the store itself is unaffected.
    pub fn snapshot(&mut self) -> Result<()> {
        let snap = Snapshot {
            entries: self
                .view
                .iter()
                .map(|(id, s)| (id.key(), encode(s)))
                .collect(),
            config: self.load_config(),
        };
        let path = snapshot_path(&self.path);
        write_snapshot(&path, &snap).map_err(|source| Error::Io { path, source })?;
        self.last_snapshot = Some(Instant::now());
        self.snapshot_stale = false;
        Ok(())
    }

    pub fn get(&self, id: &FileId) -> Option<&FileState> {
        self.view.get(id)
    }

    /// Every identity recorded for (device, inode), whatever its fingerprint.
    pub fn ids_on_inode(
        &self,
        device: u64,
        inode: u64,
    ) -> impl Iterator<Item = (&FileId, &FileState)> {
        let lo = FileId {
            device,
            inode,
            fingerprint: 0,
        };
        let hi = FileId {
            device,
            inode,
            fingerprint: u64::MAX,
        };
        self.view.range(lo..=hi)
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FileId, &FileState)> {
        self.view.iter()
    }

    /// Records `state` for `id`; nothing is written when it is unchanged.
    pub fn update(&mut self, id: FileId, state: FileState) {
        if self.view.get(&id) == Some(&state) {
            return;
        }
        self.removed.remove(&id);
        self.view.insert(id, state);
        self.dirty.insert(id);
    }

    pub fn remove(&mut self, id: &FileId) {
        if self.view.remove(id).is_some() {
            self.dirty.remove(id);
            self.removed.insert(*id);
        }
    }

    /// Changes not yet flushed.
    pub fn pending(&self) -> usize {
        self.dirty.len() + self.removed.len()
    }

    /// Writes every change since the last flush in one atomic batch and
    /// makes it durable; returns how many entries were written or removed.
    ///
    /// # Errors
    /// sled's write or flush failed; the changes stay pending.
    pub fn flush(&mut self) -> Result<usize> {
        self.last_flush = Instant::now();
        if self.dirty.is_empty() && self.removed.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for id in &self.dirty {
            if let Some(s) = self.view.get(id) {
                batch.insert(&id.key()[..], encode(s));
            }
        }
        for id in &self.removed {
            batch.remove(&id.key()[..]);
        }
        let sled_err = |source| Error::Sled {
            path: self.path.clone(),
            source,
        };
        self.files.apply_batch(batch).map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        let n = self.dirty.len() + self.removed.len();
        self.dirty.clear();
        self.removed.clear();
        self.snapshot_stale = true;
        self.maybe_snapshot();
        Ok(n)
    }

    /// Flushes when the interval has passed since the last flush.
    ///
    /// # Errors
    /// See [`Store::flush`].
    pub fn maybe_flush(&mut self) -> Result<usize> {
        if self.last_flush.elapsed() >= self.flush_every {
            self.flush()
        } else {
            Ok(0)
        }
    }

    /// Sets how long entries of files not seen are kept
    /// (default [`DEFAULT_RETENTION`]).
    pub fn set_retention(&mut self, retention: Duration) {
        self.retention = retention;
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// How stale `last_seen_ms` may get before [`Store::mark_seen`]
    /// refreshes it: 1/8 of the retention, at most [`MAX_SEEN_EVERY`].
    pub fn seen_every(&self) -> Duration {
        (self.retention / 8).min(MAX_SEEN_EVERY)
    }

    /// Records that the files `ids` were seen at `now_ms` (tracked by a
    /// harvester). Only entries whose `last_seen_ms` is older than
    /// [`Store::seen_every`] change (and are written at the next flush);
    /// unknown ids are ignored. Returns how many changed.
    pub fn mark_seen(&mut self, ids: impl IntoIterator<Item = FileId>, now_ms: u64) -> usize {
        let every = self.seen_every().as_millis() as u64;
        let mut n = 0;
        for id in ids {
            if let Some(s) = self.view.get_mut(&id) {
                if now_ms.saturating_sub(s.last_seen_ms) >= every && s.last_seen_ms < now_ms {
                    s.last_seen_ms = now_ms;
                    self.dirty.insert(id);
                    n += 1;
                }
            }
        }
        n
    }

    /// Makes `wal_seq`s agree with a WAL whose last seq is `last_seq`: one
    /// above it names a record that no longer exists (the WAL was set aside
    /// or replaced) and becomes 0, so that entry is not kept forever.
    /// Returns how many changed.
    pub fn forget_missing_records(&mut self, last_seq: u64) -> usize {
        let mut n = 0;
        for (id, s) in &mut self.view {
            if s.wal_seq > last_seq {
                s.wal_seq = 0;
                self.dirty.insert(*id);
                n += 1;
            }
        }
        n
    }

    /// Removes the entries [`collectible`] at `now_ms` with the retention:
    /// files not seen for that long whose last WAL record is acknowledged
    /// (`acked_seq`). Returns how many; they leave sled at the next flush.
    pub fn gc(&mut self, now_ms: u64, acked_seq: u64) -> usize {
        let cutoff = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let old: Vec<FileId> = self
            .view
            .iter()
            .filter(|(_, s)| collectible(s, cutoff, acked_seq))
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            self.remove(id);
        }
        old.len()
    }

    /// Stores the last good collection config (durable when this returns).
    ///
    /// # Errors
    /// sled's write or flush failed.
    pub fn save_config(&self, bytes: &[u8]) -> Result<()> {
        self.save_meta(CONFIG_KEY, bytes)
    }

    /// The last good collection config, if one was saved.
    pub fn load_config(&self) -> Option<Vec<u8>> {
        self.load_meta(CONFIG_KEY)
    }

    /// Stores opaque bytes under `key` in tree `meta` (durable when this
    /// returns; not in the snapshot). The agent keeps its refusal ledger
    /// here (`refusals`).
    ///
    /// # Errors
    /// sled's write or flush failed.
    pub fn save_meta(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let sled_err = |source| Error::Sled {
            path: self.path.clone(),
            source,
        };
        self.meta.insert(key, bytes).map_err(sled_err)?;
        self.db.flush().map_err(sled_err)?;
        Ok(())
    }

    /// What [`Store::save_meta`] stored under `key`.
    pub fn load_meta(&self, key: &str) -> Option<Vec<u8>> {
        self.meta.get(key).ok().flatten().map(|v| v.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #12 item 7: a store garbled on disk (every sled file
    /// overwritten) after 100 files were checkpointed comes back with all
    /// 100 positions and the config cache from the snapshot — not empty
    /// (which re-ships every file from 0).
    #[test]
    fn a_garbled_store_comes_back_from_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cp");
        let id = |i: u64| FileId {
            device: 1,
            inode: i,
            fingerprint: 7,
        };
        {
            let (mut st, _) = Store::open(&dir, Duration::from_secs(1)).unwrap();
            for i in 0..100 {
                st.update(
                    id(i),
                    FileState::durable_at(format!("/l/{i}.log"), 1000 + i),
                );
            }
            st.save_config(b"[cfg]").unwrap();
            st.flush().unwrap();
            st.snapshot().unwrap();
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let p = f.unwrap().path();
            if p.is_file() {
                let len = std::fs::metadata(&p).unwrap().len().max(64) as usize;
                std::fs::write(&p, vec![0xA5u8; len]).unwrap();
            }
        }
        let (st, report) = Store::open(&dir, Duration::from_secs(1)).unwrap();
        assert_eq!(report.from_snapshot, 100, "{report:?}");
        assert_eq!(st.len(), 100);
        for i in 0..100 {
            assert_eq!(st.get(&id(i)).unwrap().durable_offset, 1000 + i);
        }
        assert_eq!(st.load_config().as_deref(), Some(&b"[cfg]"[..]));
    }

    #[test]
    fn a_torn_snapshot_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cp");
        {
            let (mut st, _) = Store::open(&dir, Duration::from_secs(1)).unwrap();
            st.update(
                FileId {
                    device: 1,
                    inode: 1,
                    fingerprint: 1,
                },
                FileState::durable_at("/l/a.log", 5),
            );
            st.flush().unwrap();
        }
        let snap = snapshot_path(&dir);
        let bytes = std::fs::read(&snap).unwrap();
        std::fs::write(&snap, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_snapshot(&snap).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        let (st, report) = Store::open(&dir, Duration::from_secs(1)).unwrap();
        assert_eq!((st.len(), report.from_snapshot), (0, 0));
    }

    #[test]
    fn v2_values_still_decode_with_no_record_known() {
        let v2 = FileStateV2 {
            path: "/var/log/a.log".into(),
            durable_offset: 10,
            acked_offset: 5,
            size: 10,
            mtime_ms: 1,
            last_seen_ms: 2,
            tail: Some(Tail { offset: 10, crc: 7 }),
        };
        let bytes = bincode::serde::encode_to_vec(StoredState::V2(v2), bincode::config::standard())
            .unwrap();
        let s = decode(&bytes).unwrap();
        assert_eq!(
            (s.durable_offset, s.last_seen_ms, s.tail, s.wal_seq),
            (10, 2, Some(Tail { offset: 10, crc: 7 }), 0)
        );
        let v3 = FileState { wal_seq: 42, ..s };
        assert_eq!(decode(&encode(&v3)), Some(v3));
    }

    #[test]
    fn v1_values_still_decode_and_v3_round_trips() {
        let v1 = FileStateV1 {
            path: "/var/log/a.log".into(),
            durable_offset: 10,
            acked_offset: 5,
            size: 10,
            mtime_ms: 1,
            last_seen_ms: 2,
        };
        let bytes = bincode::serde::encode_to_vec(StoredState::V1(v1), bincode::config::standard())
            .unwrap();
        let s = decode(&bytes).unwrap();
        assert_eq!((s.durable_offset, s.acked_offset, s.tail), (10, 5, None));
        let mut v2 = s.clone();
        v2.tail = Some(Tail { offset: 10, crc: 7 });
        assert_eq!(decode(&encode(&v2)), Some(v2.clone()));
        assert_eq!(v2.tail_at_resume(), Some(Tail { offset: 10, crc: 7 }));
        v2.durable_offset = 11;
        assert_eq!(
            v2.tail_at_resume(),
            None,
            "a check of another offset is not used"
        );
    }

    fn st(path: &str, off: u64, seen: u64) -> FileState {
        FileState {
            path: path.into(),
            durable_offset: off,
            acked_offset: off / 2,
            size: off,
            mtime_ms: 1,
            last_seen_ms: seen,
            tail: None,
            wal_seq: 0,
        }
    }

    fn id(inode: u64) -> FileId {
        FileId {
            device: 1,
            inode,
            fingerprint: 0xabc,
        }
    }

    #[test]
    fn updates_survive_reopen_after_flush_and_unchanged_ones_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        {
            let (mut s, r) = Store::open(&path, Duration::from_secs(1)).unwrap();
            assert_eq!(r, OpenReport::default());
            s.update(id(1), st("/var/log/a", 10, 5));
            s.update(id(2), st("/var/log/b", 20, 5));
            assert_eq!(s.flush().unwrap(), 2);
            s.update(id(1), st("/var/log/a", 10, 5));
            assert_eq!(s.pending(), 0, "an unchanged entry is not dirty");
            s.update(id(1), st("/var/log/a", 15, 6));
            s.remove(&id(2));
            assert_eq!(s.flush().unwrap(), 2);
            s.save_config(br#"[{"path":"/var/log/*.log","topic":"t"}]"#)
                .unwrap();
        }
        let (s, r) = Store::open(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(r.entries, 1);
        assert_eq!(s.get(&id(1)), Some(&st("/var/log/a", 15, 6)));
        assert_eq!(s.get(&id(2)), None);
        assert_eq!(
            s.load_config().as_deref(),
            Some(&br#"[{"path":"/var/log/*.log","topic":"t"}]"#[..])
        );
    }

    #[test]
    fn gc_removes_files_not_seen_for_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        let day = 24 * 3600 * 1000;
        {
            let (mut s, _) = Store::open(&path, Duration::from_secs(1)).unwrap();
            assert_eq!(s.retention(), DEFAULT_RETENTION);
            s.set_retention(Duration::from_secs(24 * 3600));
            s.update(id(1), st("/a", 1, 10 * day));
            s.update(id(2), st("/b", 1, 12 * day - 1000));
            s.flush().unwrap();
            assert_eq!(s.gc(12 * day, 0), 1);
            assert!(s.get(&id(1)).is_none() && s.get(&id(2)).is_some());
            assert_eq!(s.flush().unwrap(), 1, "the removal reaches sled");
        }
        let (s, _) = Store::open(&path, Duration::from_secs(1)).unwrap();
        assert_eq!((s.len(), s.get(&id(2)).is_some()), (1, true));
    }

    /// Issue #12 item 8: a file deleted while its lines wait in the WAL
    /// keeps its entry until Kafka acknowledged its last record.
    #[test]
    fn gc_keeps_entries_whose_last_record_is_unacknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(dir.path().join("cp"), Duration::from_secs(1)).unwrap();
        s.set_retention(Duration::from_secs(60));
        let now = 1_000_000_000;
        for (i, seq) in [(1, 0), (2, 7), (3, 9)] {
            s.update(
                id(i),
                FileState {
                    wal_seq: seq,
                    ..st("/gone", 10, now - 61_000)
                },
            );
        }
        assert_eq!(s.gc(now, 6), 1, "only the entry with no record pending");
        assert!(s.get(&id(2)).is_some() && s.get(&id(3)).is_some());
        assert_eq!(s.gc(now, 7), 1, "its record acked: collected");
        assert_eq!(s.gc(now, 100), 1);
        assert!(s.is_empty());
        // The rule itself: seen recently, or pending, is kept.
        let e = |seen, seq| FileState {
            wal_seq: seq,
            ..st("/a", 1, seen)
        };
        assert!(collectible(&e(99, 5), 100, 5));
        assert!(!collectible(&e(100, 5), 100, 5));
        assert!(!collectible(&e(99, 6), 100, 5));
    }

    #[test]
    fn seen_files_are_refreshed_at_most_once_per_interval_and_survive_gc() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(dir.path().join("cp"), Duration::from_secs(1)).unwrap();
        s.set_retention(Duration::from_secs(80));
        assert_eq!(s.seen_every(), Duration::from_secs(10));
        let t0 = 1_000_000_000;
        s.update(id(1), st("/live", 5, t0));
        s.update(id(2), st("/gone", 5, t0));
        s.flush().unwrap();
        // Seen again within the interval: nothing to write.
        assert_eq!(s.mark_seen([id(1), id(9)], t0 + 9_999), 0);
        assert_eq!(s.pending(), 0);
        // Once the interval passed: one change, written at the next flush.
        assert_eq!(s.mark_seen([id(1), id(9)], t0 + 10_000), 1);
        assert_eq!(s.pending(), 1);
        assert_eq!(s.get(&id(1)).unwrap().last_seen_ms, t0 + 10_000);
        assert_eq!(s.mark_seen([id(1)], t0 + 10_001), 0);
        // 81 s after t0 the file not seen is collected, the seen one kept.
        assert_eq!(s.gc(t0 + 81_000, 0), 1);
        assert!(s.get(&id(1)).is_some() && s.get(&id(2)).is_none());
        let mut long = s;
        long.set_retention(DEFAULT_RETENTION);
        assert_eq!(long.seen_every(), MAX_SEEN_EVERY);
    }

    #[test]
    fn records_no_longer_in_the_wal_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(dir.path().join("cp"), Duration::from_secs(1)).unwrap();
        let at = |seq| FileState {
            wal_seq: seq,
            ..st("/a", 1, 1)
        };
        s.update(id(1), at(5));
        s.update(id(2), at(50));
        s.flush().unwrap();
        assert_eq!(s.forget_missing_records(10), 1);
        assert_eq!(
            (
                s.get(&id(1)).unwrap().wal_seq,
                s.get(&id(2)).unwrap().wal_seq
            ),
            (5, 0)
        );
        assert_eq!(s.pending(), 1);
    }

    #[test]
    fn a_garbage_directory_is_moved_aside_and_a_fresh_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("conf"), b"\x00garbage\xffnot sled").unwrap();
        std::fs::write(path.join("db"), vec![0xa5u8; 10_000]).unwrap();
        let (mut s, r) = Store::open(&path, Duration::from_secs(1)).unwrap();
        let aside = r.moved_aside.expect("moved aside");
        assert!(aside.exists());
        assert!(r.open_error.is_some());
        s.update(id(1), st("/a", 1, 1));
        s.flush().unwrap();
    }

    #[test]
    fn a_store_in_use_is_not_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp");
        // Closing and reopening at once (sled's threads still hold the lock
        // for a moment) must find the same store, not set it aside.
        for i in 0..20u64 {
            let (mut s, r) = Store::open(&path, Duration::from_secs(1)).unwrap();
            assert!(r.moved_aside.is_none(), "reopen {i}: {r:?}");
            assert_eq!(r.entries as u64, i.min(1));
            s.update(id(1), st("/a", i, 1));
            s.flush().unwrap();
        }
        assert!(is_lock_error("could not acquire lock on \"x\": WouldBlock"));
        assert!(!is_lock_error("Corruption { at: 5 }"));
    }

    #[test]
    fn keys_round_trip() {
        let i = FileId {
            device: u64::MAX,
            inode: 7,
            fingerprint: 1 << 40,
        };
        assert_eq!(FileId::from_key(&i.key()), Some(i));
        assert_eq!(FileId::from_key(b"short"), None);
    }
}
