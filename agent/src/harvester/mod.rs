//! The file side of the agent: finding files, identifying them, reading
//! complete lines and surviving every kind of rotation.
//!
//! - [`lines`]: the line splitter (pure).
//! - [`fingerprint`]: file identity beyond (device, inode).
//! - [`watch`]: the harvester on its own thread, woken by inotify with a
//!   periodic rescan as the fallback.
//! - [`Harvester`]: a synchronous poller over a set of globs. Each
//!   [`Harvester::poll`] discovers matching files, checks every open file for
//!   rotation, truncation and deletion, and reads what was appended. It keeps
//!   no offsets of its own beyond the open handles: the caller records
//!   [`Emitted::resume_offset`] in the checkpoint store once the lines are
//!   durable (the agent: once the WAL has synced them), and a new harvester
//!   resumes from the store.
//!
//! # Rotation rules
//!
//! - rename (`app.log` → `app.log.1`, new `app.log`): the old handle is read
//!   to its end, then closed once it has not grown for `rotate_grace`; the
//!   new file at the path is a new identity, read from 0. When the glob also
//!   matches the new name, the same inode is simply seen at a new path.
//! - copytruncate: a file whose size drops below the read position, or
//!   whose first line changed, is read again from 0 and the event is counted. Lines appended between the
//!   copy and the truncation that were not read yet are lost — copytruncate's
//!   inherent window, which only renaming avoids.
//! - deletion: the open handle is read to its end, then closed.
//! - inode reuse: identities include the fingerprint of the first line, so a
//!   new file on a reused inode has a new identity and is read from 0.
//! - the same first line (a CSV header, W3C `#Software:`), new content: the
//!   identity matches, so every resume point carries a [`Tail`] check (CRC of
//!   the 256 bytes before it, stored with the checkpoint). When the bytes
//!   before the position differ — a file truncated and rewritten past the old
//!   offset while the agent was down or paused, or a new file on a reused
//!   inode with the same header — it is read again from 0.

pub mod container;
pub mod fingerprint;
pub mod lines;
pub mod multiline;
pub mod safe_open;
pub mod watch;

use checkpoint::{FileId, FileState, Store, Tail};
use globset::{GlobSet, GlobSetBuilder};
use lines::{LineSplitter, SplitLine};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What to harvest.
#[derive(Debug, Clone)]
pub struct HarvestConfig {
    /// Absolute globs (`*`, `?`, `[..]`, `**`).
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub max_line_bytes: usize,
    pub fingerprint_bytes: usize,
    /// How long a rotated or deleted file's handle stays open after its last
    /// growth.
    pub rotate_grace: Duration,
    /// Emit a partial last line after this long without growth (`None`:
    /// never; partial lines wait for their newline).
    pub partial_timeout: Option<Duration>,
    /// Most bytes read from one file per poll (fairness between files).
    pub read_chunk: usize,
    /// Most bytes of lines one poll emits (memory bound): the files not
    /// read yet wait for the next poll, which starts where this one
    /// stopped (fairness).
    pub poll_bytes: usize,
    /// A file whose first line stays incomplete (and shorter than
    /// `fingerprint_bytes`) this long is fingerprinted on the bytes it has.
    pub fingerprint_timeout: Duration,
    /// Most files held open at once; more wait until some close.
    pub max_open_files: usize,
    /// A file that has not grown for this long is closed (its position is
    /// kept) and reopened when it changes.
    pub close_idle_after: Duration,
    /// Decode container runtime log lines (CRI, Docker json-file) and join
    /// their partial pieces ([`container`]), before `multiline`.
    pub container: Option<container::ContainerFormat>,
    /// Join continuation lines into events (stack traces).
    pub multiline: Option<multiline::MultilineConfig>,
    /// (include, exclude) globs of the collect entries before this one: a
    /// file one of them collects is theirs, and this harvester leaves it
    /// alone (logged once per path), so two entries never share a file's
    /// checkpoint.
    pub shadowed_by: Vec<(Vec<String>, Vec<String>)>,
    /// Nothing whose real path lies outside these directories is read,
    /// whatever symlinks lead there ([`safe_open`]). Empty: no bound (tests
    /// and benches only; the agent always passes its `allowed_roots`).
    pub allowed_roots: Vec<PathBuf>,
    /// Follow symlinked *files* matched by the globs (Kubernetes'
    /// `/var/log/containers/*.log`) when their target is a regular file
    /// inside `allowed_roots`; identity and content are the target's, the
    /// event's path is the link's. Off: symlinks are skipped (logged once,
    /// counted). Symlinked directories are never walked into.
    pub follow_symlinks: bool,
    /// At start-up only: also read files no checkpoint knows that sit at a
    /// rotated name of these globs and were born while no agent read them
    /// (see [`Recover`]).
    pub recover: Option<Recover>,
}

/// The start-up recovery of files born and rotated out of the globs while
/// the agent was down (or between its last poll and a kill): no checkpoint
/// knows them, so the first poll reads, from 0, every file under the glob
/// roots that
/// - sits at a *rotated name* of the globs ([`rotated_base`]: the name of a
///   matching path followed by `.1`, `-20261201`, `.2026-12-01`, …; not a
///   compressed one, `.gz`, `.bz2`, …),
/// - was born (its inode's birth time; the modification time where the
///   filesystem records none) at or after `born_after_ms`,
/// - is not collected directly by another entry (`others`), and
/// - is not a copy of a file we read (copytruncate's `app.log.1`: its
///   first line and the bytes before that file's checkpoint are the same).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recover {
    /// Unix ms (the agent's alive stamp, `run::alive`).
    pub born_after_ms: u64,
    /// Every other entry's (include, exclude) globs.
    pub others: Vec<(Vec<String>, Vec<String>)>,
}

/// Most new identities held for [`Harvester::record_opened`] (a caller
/// that never records them does not grow memory).
const MAX_OPENED: usize = 65_536;

/// Compression suffixes: a rotated name ending in one is not text.
const COMPRESSED: &[&str] = &[
    "gz", "bz2", "xz", "zst", "lz4", "zip", "z", "lzma", "lzo", "br", "7z", "sz",
];

/// The paths `path` would have had before rotation added suffixes to its
/// name (pure): `app.log.2026-12-01` gives `app.log.2026-12`,
/// `app.log.2026`, `app.log`. A suffix is `.`, `-` or `_` then letters and
/// digits with at least one digit; nothing for a compressed name.
pub fn rotated_base(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if let Some((_, ext)) = name.rsplit_once('.') {
        if COMPRESSED.contains(&ext.to_ascii_lowercase().as_str()) {
            return Vec::new();
        }
    }
    let mut out = Vec::new();
    let mut rest = name;
    for _ in 0..8 {
        let Some(i) = rest.rfind(['.', '-', '_']) else {
            break;
        };
        let group = &rest[i + 1..];
        let ok = i > 0
            && !group.is_empty()
            && group.bytes().all(|b| b.is_ascii_alphanumeric())
            && group.bytes().any(|b| b.is_ascii_digit());
        if !ok {
            break;
        }
        rest = &rest[..i];
        out.push(dir.join(rest));
    }
    out
}

/// When the inode was born (Unix ms), or last modified where the
/// filesystem keeps no birth time.
fn born_ms(md: &std::fs::Metadata) -> Option<u64> {
    let t = md.created().or_else(|_| md.modified()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

impl Default for HarvestConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            max_line_bytes: 1 << 20,
            fingerprint_bytes: 1024,
            rotate_grace: Duration::from_secs(5),
            partial_timeout: None,
            read_chunk: 1 << 20,
            poll_bytes: 2 << 20,
            fingerprint_timeout: Duration::from_secs(60),
            max_open_files: 1024,
            close_idle_after: Duration::from_secs(300),
            container: None,
            multiline: None,
            shadowed_by: Vec::new(),
            allowed_roots: Vec::new(),
            follow_symlinks: false,
            recover: None,
        }
    }
}

/// Why a file under the globs was not read: a label of
/// `logagent_files_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// A symlink, with `follow_symlinks` off or its target not acceptable.
    Symlink,
    /// A FIFO, socket or device.
    NotRegular,
    /// Its real path is outside `allowed_roots`.
    OutsideRoots,
    /// Its real path could not be checked.
    Unverifiable,
    /// A directory or file under a root could not be listed or stat'ed
    /// (permissions): its files are not seen.
    WalkError,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Symlink => "symlink",
            Self::NotRegular => "not_regular",
            Self::OutsideRoots => "outside_roots",
            Self::Unverifiable => "unverifiable",
            Self::WalkError => "walk_error",
        }
    }
}

/// Where the harvester reports what it refused (metrics in the agent).
pub trait Observer: Send + Sync {
    fn refused(&self, why: Refusal);
}

/// Lines read from one file in one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub id: FileId,
    pub path: PathBuf,
    pub lines: Vec<SplitLine>,
    /// Where reading resumes after these lines: checkpoint this once they
    /// are durable.
    pub resume_offset: u64,
    /// The content check of `resume_offset`, stored with the checkpoint.
    pub tail: Option<Tail>,
}

/// Counters of what the harvester saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HarvestStats {
    pub files_opened: u64,
    pub files_closed: u64,
    pub truncations: u64,
    pub bytes_read: u64,
    pub lines: u64,
    pub truncated_lines: u64,
    /// Files left unopened in a poll because `max_open_files` were open.
    pub open_limit_hits: u64,
    /// Files fingerprinted on a short, incomplete first line after the wait.
    pub fingerprint_timeouts: u64,
    /// Files no checkpoint knew, read at start-up from a rotated name
    /// ([`Recover`]).
    pub recovered: u64,
    /// Files not read by policy or for a walk error, by reason.
    pub refused: std::collections::BTreeMap<Refusal, u64>,
}

/// Errors of the harvester setup (file I/O errors are per file and logged).
#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    #[error("invalid glob `{glob}`: {message}")]
    Glob { glob: String, message: String },
    #[error("glob `{0}` is not an absolute path")]
    Relative(String),
}

struct Tracked {
    id: FileId,
    path: PathBuf,
    file: File,
    splitter: LineSplitter,
    last_growth: Instant,
    /// Set once the path no longer leads to this file.
    detached_at: Option<Instant>,
    /// After a truncation, the new content's first line is not complete
    /// yet: the identity's fingerprint is taken once it is.
    fingerprint_pending: bool,
    /// Meanwhile, a fingerprint of the bytes read so far, to notice a
    /// second truncation that the size alone would hide.
    provisional: Option<u64>,
    /// Container line decoding state (unused without `container`).
    decoder: container::Decoder,
    /// Multiline joining state (unused without `multiline`).
    joiner: multiline::Joiner,
    /// The content check of the last resume offset handed out.
    tail: Option<Tail>,
}

/// A synchronous, poll-driven harvester over a set of globs.
pub struct Harvester {
    cfg: HarvestConfig,
    include: GlobSet,
    exclude: GlobSet,
    /// Earlier entries' (include, exclude) sets.
    shadows: Vec<(GlobSet, GlobSet)>,
    /// [`Recover::others`], built (empty without recovery).
    others: Vec<(GlobSet, GlobSet)>,
    /// New identities opened since [`Harvester::record_opened`].
    opened: Vec<(FileId, PathBuf)>,
    /// Paths left to an earlier entry, logged once.
    shadow_logged: std::collections::HashSet<PathBuf>,
    roots: Vec<PathBuf>,
    /// `allowed_roots` resolved when the harvester was made.
    bounds: Vec<PathBuf>,
    /// Paths whose refusal was logged (once each, bounded).
    refusal_logged: std::collections::HashSet<PathBuf>,
    observer: Option<std::sync::Arc<dyn Observer>>,
    /// Where the next poll starts reading (round robin over open files).
    cursor: usize,
    open: HashMap<(u64, u64), Tracked>,
    buf: Vec<u8>,
    /// Not polled yet: look for rotated files the checkpoints know.
    first_poll: bool,
    /// Idle files closed to save handles: identity and resume offset.
    parked: HashMap<(u64, u64), (FileId, u64)>,
    /// Files seen too short to fingerprint, since when.
    unready: HashMap<(u64, u64), Instant>,
    /// (device, inode) at a matched path in the last walk.
    matched: Vec<(u64, u64)>,
    pub stats: HarvestStats,
}

/// A file found by a walk.
struct Found {
    /// Where it was found (what events name).
    path: PathBuf,
    /// What to open: `path`, or a followed symlink's resolved target.
    open: PathBuf,
    /// Collected by this harvester.
    matched: bool,
}

/// The directory before a glob's first metacharacter: where walking starts.
fn glob_root(glob: &str) -> PathBuf {
    let meta = glob.find(['*', '?', '[', '{']).unwrap_or(glob.len());
    let literal = &glob[..meta];
    match literal.rfind('/') {
        Some(0) => PathBuf::from("/"),
        Some(i) => PathBuf::from(&literal[..i]),
        None => PathBuf::from("/"),
    }
}

fn build_set(globs: &[String]) -> Result<GlobSet, HarvestError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        if !g.starts_with('/') {
            return Err(HarvestError::Relative(g.clone()));
        }
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| HarvestError::Glob {
                glob: g.clone(),
                message: e.to_string(),
            })?;
        b.add(glob);
    }
    b.build().map_err(|e| HarvestError::Glob {
        glob: globs.join(", "),
        message: e.to_string(),
    })
}

impl Harvester {
    /// # Errors
    /// A glob that does not parse or is not absolute.
    pub fn new(cfg: HarvestConfig) -> Result<Self, HarvestError> {
        let include = build_set(&cfg.include)?;
        let exclude = build_set(&cfg.exclude)?;
        let shadows = cfg
            .shadowed_by
            .iter()
            .map(|(i, x)| Ok((build_set(i)?, build_set(x)?)))
            .collect::<Result<Vec<_>, HarvestError>>()?;
        let others = cfg
            .recover
            .iter()
            .flat_map(|r| r.others.iter())
            .map(|(i, x)| Ok((build_set(i)?, build_set(x)?)))
            .collect::<Result<Vec<_>, HarvestError>>()?;
        let mut roots: Vec<PathBuf> = cfg.include.iter().map(|g| glob_root(g)).collect();
        roots.sort();
        roots.dedup();
        Ok(Self {
            include,
            exclude,
            shadows,
            others,
            opened: Vec::new(),
            shadow_logged: std::collections::HashSet::new(),
            roots,
            bounds: safe_open::resolve_roots(&cfg.allowed_roots),
            refusal_logged: std::collections::HashSet::new(),
            observer: None,
            cursor: 0,
            open: HashMap::new(),
            buf: Vec::new(),
            first_poll: true,
            parked: HashMap::new(),
            unready: HashMap::new(),
            matched: Vec::new(),
            stats: HarvestStats::default(),
            cfg,
        })
    }

    /// Reports refusals to `observer` too.
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Logs and counts a refusal, once per path.
    fn refuse(&mut self, path: &Path, why: Refusal, detail: &dyn std::fmt::Display) {
        // Once per path: a refused file is met again at every poll.
        if self.refusal_logged.len() >= 10_000 || !self.refusal_logged.insert(path.to_path_buf()) {
            return;
        }
        *self.stats.refused.entry(why).or_default() += 1;
        if let Some(o) = &self.observer {
            o.refused(why);
        }
        tracing::warn!(path = %path.display(), reason = why.label(), "not read: {detail}");
    }

    /// Whether `path` is collected by this harvester: its globs match and
    /// no earlier entry's do.
    pub fn matches(&self, path: &Path) -> bool {
        self.matches_own(path) && !self.shadowed(path)
    }

    fn matches_own(&self, path: &Path) -> bool {
        self.include.is_match(path) && !self.exclude.is_match(path)
    }

    fn shadowed(&self, path: &Path) -> bool {
        self.shadows
            .iter()
            .any(|(i, x)| i.is_match(path) && !x.is_match(path))
    }

    /// The directories the globs are walked from.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Files currently open.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// Regular files under the glob roots, each with whether it matches;
    /// matched symlinks to acceptable files when `follow_symlinks` is on.
    /// Walk errors other than "gone meanwhile" are refused (logged, counted).
    fn discover(&mut self) -> Vec<Found> {
        let mut out = Vec::new();
        for root in self.roots.clone() {
            for entry in walkdir::WalkDir::new(&root).follow_links(false) {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        let gone = e
                            .io_error()
                            .is_some_and(|x| x.kind() == io::ErrorKind::NotFound);
                        if !gone {
                            let at = e.path().unwrap_or(&root).to_path_buf();
                            self.refuse(&at, Refusal::WalkError, &e);
                        }
                        continue;
                    }
                };
                let ft = entry.file_type();
                if ft.is_file() {
                    let matched = self.matches(entry.path());
                    let path = entry.into_path();
                    out.push(Found {
                        open: path.clone(),
                        path,
                        matched,
                    });
                } else if ft.is_symlink() && entry.depth() > 0 && self.matches(entry.path()) {
                    if let Some(target) = self.symlink_target(entry.path()) {
                        out.push(Found {
                            path: entry.into_path(),
                            open: target,
                            matched: true,
                        });
                    }
                }
            }
        }
        out
    }

    /// The resolved target of a matched symlink, when it may be read.
    fn symlink_target(&mut self, link: &Path) -> Option<PathBuf> {
        if !self.cfg.follow_symlinks {
            self.refuse(
                link,
                Refusal::Symlink,
                &"a symlink (the entry's follow_symlinks is off)",
            );
            return None;
        }
        let target = match std::fs::canonicalize(link) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None, // dangling
            Err(e) => {
                self.refuse(link, Refusal::Unverifiable, &e);
                return None;
            }
        };
        if !safe_open::within(&target, &self.bounds) {
            let why = format!("a symlink to {} outside allowed_roots", target.display());
            self.refuse(link, Refusal::OutsideRoots, &why);
            return None;
        }
        match std::fs::symlink_metadata(&target) {
            Ok(md) if md.file_type().is_file() => Some(target),
            Ok(_) => {
                self.refuse(
                    link,
                    Refusal::NotRegular,
                    &"a symlink to a non-regular file",
                );
                None
            }
            Err(_) => None,
        }
    }

    /// One round: discover, check, read. `store` gives the resume offsets
    /// of files seen before; it is read, never written.
    pub fn poll(&mut self, store: &Store) -> Vec<Emitted> {
        let now = Instant::now();
        let mut emitted = Vec::new();
        let at_path = self.discover_and_open(store, now);

        if std::mem::take(&mut self.first_poll) {
            self.reopen_rotated(store, &at_path, now);
        }

        // Round robin from where the last poll stopped, up to poll_bytes.
        let mut keys: Vec<(u64, u64)> = self.open.keys().copied().collect();
        keys.sort_unstable();
        if !keys.is_empty() {
            let start = self.cursor % keys.len();
            keys.rotate_left(start);
        }
        let mut emitted_bytes = 0usize;
        for key in keys {
            if emitted_bytes >= self.cfg.poll_bytes {
                break; // the rest is read by the next poll, first
            }
            self.cursor = self.cursor.wrapping_add(1);
            let Some(mut t) = self.open.remove(&key) else {
                continue;
            };
            match at_path.get(&key) {
                Some(p) => {
                    t.path = p.clone();
                    t.detached_at = None;
                }
                None => {
                    t.detached_at.get_or_insert(now);
                }
            }
            let before = emitted.len();
            let grew = self.read_file(&mut t, now, &mut emitted);
            emitted_bytes += emitted[before..]
                .iter()
                .flat_map(|e| e.lines.iter())
                .map(|l| l.bytes.len())
                .sum::<usize>();
            let grew = match grew {
                Ok(grew) => grew,
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), error = %e, "read failed; closing the file");
                    self.stats.files_closed += 1;
                    continue;
                }
            };
            let idle = now.duration_since(t.last_growth);
            let done = t.detached_at.is_some() && !grew && idle >= self.cfg.rotate_grace;
            if done {
                self.stats.files_closed += 1;
                Self::flush_joiner(&mut t, self.cfg.multiline.as_ref(), &mut emitted);
            } else if !grew && idle >= self.cfg.close_idle_after {
                // Still at its path: close it, remember where we were.
                self.stats.files_closed += 1;
                Self::flush_joiner(&mut t, self.cfg.multiline.as_ref(), &mut emitted);
                self.parked.insert(key, (t.id, t.splitter.resume_offset()));
            } else {
                self.open.insert(key, t);
            }
        }
        emitted
    }

    /// While the lines of the last poll wait (the WAL is full): open the
    /// files that appeared since, reading nothing, so a file rotated and
    /// deleted meanwhile is still held open (up to `max_open_files`) and
    /// its lines are read once reading resumes.
    pub fn open_new(&mut self, store: &Store) {
        self.discover_and_open(store, Instant::now());
    }

    /// The first half of a poll: walk, open what is new; which (device,
    /// inode) each matching path leads to now.
    fn discover_and_open(&mut self, store: &Store, now: Instant) -> HashMap<(u64, u64), PathBuf> {
        let mut at_path: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut renamed_parked = Vec::new();
        for Found {
            path,
            open,
            matched,
        } in self.discover()
        {
            // Not following symlinks: a file swapped for one since the walk
            // is refused at open (O_NOFOLLOW).
            let Ok(md) = std::fs::symlink_metadata(&open) else {
                continue;
            };
            let key = (md.dev(), md.ino());
            if !matched
                && self.shadow_logged.len() < 10_000
                && self.matches_own(&path)
                && self.shadow_logged.insert(path.clone())
            {
                tracing::warn!(path = %path.display(), globs = ?self.cfg.include, "also matched by an earlier collect entry, which collects it; this entry leaves it alone");
            }
            if !matched {
                // A parked (idle, closed) file renamed out of the globs that
                // grew since: its rest must still be read.
                if self
                    .parked
                    .get(&key)
                    .is_some_and(|(_, off)| md.len() != *off)
                {
                    renamed_parked.push((path, open, key));
                }
                continue;
            }
            at_path.insert(key, path.clone());
            if self.open.contains_key(&key) {
                continue;
            }
            if let Some((_, offset)) = self.parked.get(&key) {
                if md.len() == *offset {
                    continue; // parked and unchanged
                }
            }
            if self.open.len() >= self.cfg.max_open_files {
                self.stats.open_limit_hits += 1;
                continue;
            }
            match self.open_file(&path, &open, key, store, now, false) {
                Ok(Some(t)) => {
                    self.stats.files_opened += 1;
                    self.unready.remove(&key);
                    self.open.insert(key, t);
                }
                Ok(None) => {
                    self.unready.entry(key).or_insert(now);
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot open file"),
            }
        }
        for (path, open, key) in renamed_parked {
            if let Ok(Some(mut t)) = self.open_file(&path, &open, key, store, now, true) {
                t.detached_at = Some(now);
                self.stats.files_opened += 1;
                self.open.insert(key, t);
            }
        }
        // Forget what is gone from the globs.
        self.parked.retain(|k, _| at_path.contains_key(k));
        self.unready.retain(|k, _| at_path.contains_key(k));
        self.matched.clear();
        self.matched.extend(at_path.keys().copied());
        at_path
    }

    /// Marks every file this harvester tracks as seen at `now_ms` in
    /// `store` (the agent's `gc` module): open ones (deleted or rotated ones
    /// too, while their handle is open), parked ones, and — for a file at a
    /// matched path that is neither (the open limit, not fingerprinted yet)
    /// — every identity recorded for its inode. Returns how many entries
    /// changed ([`Store::mark_seen`] writes each at most once per
    /// [`Store::seen_every`]).
    pub fn mark_seen(&self, store: &mut Store, now_ms: u64) -> usize {
        let mut ids: Vec<FileId> = self.open.values().map(|t| t.id).collect();
        ids.extend(self.parked.values().map(|(id, _)| *id));
        for key in &self.matched {
            if !self.open.contains_key(key) && !self.parked.contains_key(key) {
                ids.extend(store.ids_on_inode(key.0, key.1).map(|(id, _)| *id));
            }
        }
        store.mark_seen(ids, now_ms)
    }

    /// After a restart: files renamed out of the globs while the agent was
    /// down (rotation) still have unread lines. Any file under the glob roots
    /// whose identity has a checkpoint of ours short of its size is opened as
    /// detached, read to its end and closed. With [`HarvestConfig::recover`],
    /// so are the files no checkpoint knows that [`Recover`] describes, from 0.
    fn reopen_rotated(
        &mut self,
        store: &Store,
        matched: &HashMap<(u64, u64), PathBuf>,
        now: Instant,
    ) {
        // Only files this harvester collected (their checkpoint was last
        // written at a path its globs match): another entry's files under
        // the same roots, or a removed entry's, are not ours to read.
        let known: std::collections::HashSet<(u64, u64)> = store
            .iter()
            .filter(|(_, s)| self.matches(Path::new(&s.path)))
            .map(|(id, _)| (id.device, id.inode))
            .collect();
        let born_after = self.cfg.recover.as_ref().map(|r| r.born_after_ms);
        if known.is_empty() && born_after.is_none() {
            return;
        }
        for root in self.roots.clone() {
            for entry in walkdir::WalkDir::new(&root)
                .follow_links(false)
                .into_iter()
                .filter_map(Result::ok)
            {
                if !entry.file_type().is_file() {
                    continue;
                }
                let Ok(md) = entry.metadata() else { continue };
                let key = (md.dev(), md.ino());
                if matched.contains_key(&key) || self.open.contains_key(&key) {
                    continue;
                }
                // Unknown files: the path of ours the rotated name came from.
                let base = born_after
                    .filter(|t| born_ms(&md).is_some_and(|b| b >= *t))
                    .and_then(|_| self.rotated_from(entry.path()));
                if !known.contains(&key) && base.is_none() {
                    continue;
                }
                // Events and checkpoints name the path of ours the file was
                // rotated from, as for a file followed after a rename: a
                // restart in the middle of it still knows it as ours.
                let named = base.clone().unwrap_or_else(|| entry.path().to_path_buf());
                let Ok(Some(mut t)) =
                    self.open_file(&named, entry.path(), key, store, now, base.is_none())
                else {
                    continue;
                };
                match store.get(&t.id) {
                    // Ours, with lines left.
                    Some(s) if self.matches(Path::new(&s.path)) => {
                        if s.durable_offset >= md.len() {
                            continue;
                        }
                        t.path = PathBuf::from(&s.path);
                        tracing::info!(path = %entry.path().display(), "reading the rest of a file rotated while stopped");
                    }
                    // Another entry's file (on an inode we once used).
                    Some(_) => continue,
                    None => {
                        if self.is_copy_of_ours(store, &t, key) {
                            self.opened.retain(|(id, _)| *id != t.id);
                            continue;
                        }
                        self.stats.recovered += 1;
                        tracing::info!(path = %entry.path().display(), from = %named.display(), "reading a file that was made and rotated away while no agent read it");
                    }
                }
                t.detached_at = Some(now);
                self.stats.files_opened += 1;
                self.open.insert(key, t);
            }
        }
    }

    /// When `path` is a rotated name of this harvester's globs that no
    /// other entry collects directly ([`Recover`]): the path of ours it
    /// came from.
    fn rotated_from(&self, path: &Path) -> Option<PathBuf> {
        if self
            .others
            .iter()
            .any(|(i, x)| i.is_match(path) && !x.is_match(path))
        {
            return None;
        }
        rotated_base(path).into_iter().find(|b| self.matches(b))
    }

    /// Whether the file `t` (no checkpoint of its own) is a copy of a file
    /// of ours on another inode: the same first line, and the bytes before
    /// that file's checkpoint are its bytes too (copytruncate's copy).
    fn is_copy_of_ours(&self, store: &Store, t: &Tracked, key: (u64, u64)) -> bool {
        store.iter().any(|(id, s)| {
            id.fingerprint == t.id.fingerprint
                && (id.device, id.inode) != key
                && s.durable_offset > 0
                && self.matches(Path::new(&s.path))
                && s.tail_at_resume().is_some_and(|tail| tail.matches(&t.file))
        })
    }

    /// Records every file opened as a new identity since the last call in
    /// `store` at offset 0 (when it has no entry yet), so a restart finds
    /// it after a rename even when none of its lines was made durable (the
    /// WAL full, a kill before the first sync). Returns how many entries
    /// were added: the caller flushes the store when any were.
    pub fn record_opened(&mut self, store: &mut Store) -> usize {
        let mut n = 0;
        for (id, path) in self.opened.drain(..) {
            if store.get(&id).is_none() {
                store.update(id, FileState::durable_at(path.display().to_string(), 0));
                n += 1;
            }
        }
        n
    }

    /// Opens the file at `open` (`path` itself, or a followed symlink's
    /// target) through [`safe_open`]; `path` is what events name. A refusal
    /// is logged and counted and gives `Ok(None)`.
    fn open_file(
        &mut self,
        path: &Path,
        open: &Path,
        key: (u64, u64),
        store: &Store,
        now: Instant,
        only_known: bool,
    ) -> io::Result<Option<Tracked>> {
        let file = match safe_open::open_beneath(open, &self.bounds) {
            Ok(f) => f,
            Err(safe_open::OpenError::Io(e)) => return Err(e),
            Err(e) => {
                let why = match e {
                    safe_open::OpenError::Symlink => Refusal::Symlink,
                    safe_open::OpenError::NotRegular => Refusal::NotRegular,
                    safe_open::OpenError::OutsideRoots(_) => Refusal::OutsideRoots,
                    _ => Refusal::Unverifiable,
                };
                self.refuse(path, why, &e);
                return Ok(None);
            }
        };
        let md = file.metadata()?;
        if (md.dev(), md.ino()) != key {
            return Ok(None); // replaced between stat and open: next poll
        }
        // Where we were: a parked handle, else a checkpoint of this inode
        // whose covered first bytes are still the file's (the same file,
        // however grown), else a new file from 0. Outside the globs
        // (`only_known`: followed after a rename) only a checkpoint written
        // at a path of ours counts: the inode of a file of ours that was
        // deleted may now hold another entry's file.
        let parked = self.parked.remove(&key);
        let known = parked
            .into_iter()
            .map(|(id, off)| (id, off, None))
            .chain(
                store
                    .ids_on_inode(key.0, key.1)
                    .filter(|(_, s)| !only_known || self.matches(Path::new(&s.path)))
                    .map(|(id, s)| (*id, s.durable_offset, s.tail_at_resume())),
            )
            .find(|(id, _, _)| fingerprint::matches(&file, id.fingerprint).unwrap_or(false));
        let (id, mut offset) = match known {
            Some((id, _, Some(tail))) if !tail.matches(&file) => {
                // Same first line, other content before the checkpoint.
                self.stats.truncations += 1;
                tracing::info!(path = %path.display(), offset = tail.offset, "the content before the checkpoint changed (rewritten with the same first line): reading from the start");
                (id, 0)
            }
            Some((id, off, _)) => (id, off),
            // Outside the globs, only a file we were reading is ours (a new
            // file on a reused inode is not).
            None if only_known => return Ok(None),
            None => {
                let fp = match fingerprint::fingerprint_file(&file, self.cfg.fingerprint_bytes)? {
                    Some(fp) => fp,
                    None => {
                        let waited = self.unready.get(&key).is_some_and(|since| {
                            now.duration_since(*since) >= self.cfg.fingerprint_timeout
                        });
                        let len = (md.len() as usize).min(self.cfg.fingerprint_bytes);
                        if !waited || len == 0 {
                            return Ok(None);
                        }
                        let mut head = vec![0u8; len];
                        file.read_exact_at(&mut head, 0)?;
                        self.stats.fingerprint_timeouts += 1;
                        fingerprint::prefix_fingerprint(&head)
                    }
                };
                let id = FileId {
                    device: key.0,
                    inode: key.1,
                    fingerprint: fp,
                };
                if self.opened.len() < MAX_OPENED {
                    self.opened.push((id, path.to_path_buf()));
                }
                (id, 0)
            }
        };
        if offset > md.len() {
            // Truncated while we were not looking (copytruncate during a stop).
            offset = 0;
        }
        Ok(Some(Tracked {
            id,
            path: path.to_path_buf(),
            file,
            splitter: LineSplitter::new(offset, self.cfg.max_line_bytes),
            last_growth: Instant::now(),
            detached_at: None,
            fingerprint_pending: false,
            provisional: None,
            decoder: container::Decoder::default(),
            joiner: multiline::Joiner::default(),
            tail: None,
        }))
    }

    /// Reads what was appended; returns whether anything was.
    fn read_file(
        &mut self,
        t: &mut Tracked,
        now: Instant,
        out: &mut Vec<Emitted>,
    ) -> io::Result<bool> {
        let size = t.file.metadata()?.len();
        // A first line that changed means the file was truncated and written
        // again, even when it has already grown past our position.
        let expected = if t.fingerprint_pending {
            t.provisional
        } else {
            Some(t.id.fingerprint)
        };
        // So do other bytes before our position (the same first line,
        // rewritten and grown past it while we were paused).
        let rewritten = t.splitter.position() > 0
            && size >= t.splitter.position()
            && (match expected {
                Some(fp) => !fingerprint::matches(&t.file, fp)?,
                None => false,
            } || (size > t.splitter.position()
                && t.tail
                    .is_some_and(|tl| tl.offset <= t.splitter.position() && !tl.matches(&t.file))));
        if t.fingerprint_pending && !rewritten {
            if let Some(fp) = fingerprint::fingerprint_file(&t.file, self.cfg.fingerprint_bytes)? {
                t.id.fingerprint = fp;
                t.fingerprint_pending = false;
                t.provisional = None;
            }
        }
        if size < t.splitter.position() || rewritten {
            // copytruncate: start over, under the new content's identity.
            self.stats.truncations += 1;
            tracing::info!(path = %t.path.display(), size, position = t.splitter.position(), "file truncated; reading it again from the start");
            // An event pending from the old content ends here.
            Self::flush_joiner(t, self.cfg.multiline.as_ref(), out);
            t.splitter = LineSplitter::new(0, self.cfg.max_line_bytes);
            t.provisional = None;
            t.tail = None;
            match fingerprint::fingerprint_file(&t.file, self.cfg.fingerprint_bytes)? {
                Some(fp) => {
                    t.id.fingerprint = fp;
                    t.fingerprint_pending = false;
                }
                None => t.fingerprint_pending = true,
            }
        }
        let mut lines = Vec::new();
        let mut grew = false;
        let mut budget = self.cfg.read_chunk;
        self.buf.resize(256 * 1024, 0);
        while budget > 0 {
            let pos = t.splitter.position();
            let want = self.buf.len().min(budget);
            let n = t.file.read_at(&mut self.buf[..want], pos)?;
            if n == 0 {
                break;
            }
            grew = true;
            budget -= n.min(budget);
            self.stats.bytes_read += n as u64;
            t.splitter.feed(&self.buf[..n], &mut lines);
        }
        if t.fingerprint_pending && grew {
            let n = (t.splitter.position() as usize).min(self.cfg.fingerprint_bytes);
            let mut head = vec![0u8; n];
            if n > 0 && t.file.read_exact_at(&mut head, 0).is_ok() {
                t.provisional = Some(fingerprint::prefix_fingerprint(&head));
            }
        }
        if grew {
            t.last_growth = now;
        } else if let Some(timeout) = self.cfg.partial_timeout {
            if now.duration_since(t.last_growth) >= timeout {
                t.splitter.flush_partial(&mut lines);
            }
        }
        let lines = match self.cfg.container {
            None => lines,
            Some(format) => {
                let mut decoded = Vec::with_capacity(lines.len());
                t.decoder
                    .feed(format, self.cfg.max_line_bytes, lines, &mut decoded);
                if !grew && now.duration_since(t.last_growth) >= container::FLUSH_TIMEOUT {
                    t.decoder.flush(&mut decoded);
                }
                decoded
            }
        };
        let lines = match &self.cfg.multiline {
            None => lines,
            Some(ml) => {
                let mut events = Vec::new();
                t.joiner.feed(ml, lines, &mut events);
                if !grew && now.duration_since(t.last_growth) >= ml.flush_timeout {
                    t.joiner.flush(&mut events);
                }
                events
            }
        };
        if !lines.is_empty() {
            self.stats.lines += lines.len() as u64;
            self.stats.truncated_lines += lines
                .iter()
                .filter(|l| l.flags & lines::TRUNCATED != 0)
                .count() as u64;
            let resume_offset = t
                .joiner
                .pending_offset()
                .or_else(|| t.decoder.pending_offset())
                .unwrap_or_else(|| t.splitter.resume_offset());
            t.tail = Tail::of(&t.file, resume_offset);
            out.push(Emitted {
                id: t.id,
                path: t.path.clone(),
                lines,
                resume_offset,
                tail: t.tail,
            });
        }
        Ok(grew)
    }

    /// Emits a pending multiline event of a file being closed.
    fn flush_joiner(
        t: &mut Tracked,
        ml: Option<&multiline::MultilineConfig>,
        out: &mut Vec<Emitted>,
    ) {
        let mut events = Vec::new();
        let mut decoded = Vec::new();
        t.decoder.flush(&mut decoded);
        match ml {
            Some(ml) => t.joiner.feed(ml, decoded, &mut events),
            None => events = decoded,
        }
        t.joiner.flush(&mut events);
        if !events.is_empty() {
            let resume_offset = t.splitter.resume_offset();
            t.tail = Tail::of(&t.file, resume_offset);
            out.push(Emitted {
                id: t.id,
                path: t.path.clone(),
                lines: events,
                resume_offset,
                tail: t.tail,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        Store::open(dir.join("cp"), Duration::from_secs(60))
            .unwrap()
            .0
    }

    fn texts(out: Vec<Emitted>) -> Vec<String> {
        out.into_iter()
            .flat_map(|e| e.lines)
            .map(|l| String::from_utf8(l.bytes).unwrap())
            .collect()
    }

    #[test]
    fn multiline_events_are_emitted_once_across_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let f = logs.join("app.log");
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            multiline: Some(multiline::MultilineConfig::new("^S").unwrap()),
            ..HarvestConfig::default()
        };
        let mut st = store(tmp.path());
        let mut h = Harvester::new(cfg.clone()).unwrap();
        std::fs::write(&f, b"S1 start\n at frame 1\nS2 start\n at frame 2\n").unwrap();
        let out = h.poll(&st);
        assert_eq!(out[0].resume_offset, 21, "resume at the pending event S2");
        for e in &out {
            st.update(
                e.id,
                checkpoint::FileState::durable_at(e.path.display().to_string(), e.resume_offset),
            );
        }
        assert_eq!(texts(out), vec!["S1 start\n at frame 1"]);
        drop(h);
        let mut h = Harvester::new(cfg).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        std::io::Write::write_all(&mut file, b" at frame 3\nS3\n").unwrap();
        assert_eq!(
            texts(h.poll(&st)),
            vec!["S2 start\n at frame 2\n at frame 3"]
        );
    }

    /// A CRI line split into pieces is emitted once, whole, even when the
    /// agent stops between its pieces; with multiline on top, a stack trace
    /// written as several CRI lines is one event.
    #[test]
    fn container_partials_are_emitted_once_across_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let f = logs.join("0.log");
        let mut ml = multiline::MultilineConfig::new(r"^\S").unwrap();
        ml.flush_timeout = Duration::ZERO;
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            container: Some(container::ContainerFormat::Cri),
            multiline: Some(ml),
            ..HarvestConfig::default()
        };
        let t = "2026-12-01T10:00:00Z";
        let mut st = store(tmp.path());
        let mut h = Harvester::new(cfg.clone()).unwrap();
        let trace = format!("{t} stdout F Exception in main\n{t} stdout F \tat A.b(A.java:1)\n");
        let next = format!("{t} stderr F next\n");
        let piece = format!("{t} stdout P long line, part 1; \n");
        std::fs::write(&f, format!("{trace}{next}{piece}")).unwrap();
        let out = h.poll(&st);
        assert_eq!(
            out[0].resume_offset,
            trace.len() as u64,
            "resume at the pending event `next` (the partial line after it is held too)"
        );
        for e in &out {
            st.update(
                e.id,
                checkpoint::FileState::durable_at(e.path.display().to_string(), e.resume_offset),
            );
        }
        assert_eq!(
            texts(out),
            vec![format!("{t} stdout Exception in main\n\tat A.b(A.java:1)")]
        );
        drop(h);
        let mut h = Harvester::new(cfg).unwrap();
        let mut file = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        std::io::Write::write_all(&mut file, format!("{t} stdout F part 2\n").as_bytes()).unwrap();
        let mut out = h.poll(&st);
        out.extend(h.poll(&st));
        assert!(out
            .iter()
            .all(|e| e.lines.iter().all(|l| l.flags == container::CONTAINER)));
        assert_eq!(
            texts(out),
            vec![
                format!("{t} stderr next"),
                format!("{t} stdout long line, part 1; part 2")
            ]
        );
    }

    #[test]
    fn a_reused_inode_of_a_parked_file_does_not_pull_in_another_entrys_file() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let sub = logs.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let other = sub.join("j.jsonl");
        std::fs::write(&other, b"{\"n\":1}\n{\"n\":2}\n").unwrap();
        let mut st = store(tmp.path());
        // Entry B collects it and checkpoints it.
        let mut b = Harvester::new(HarvestConfig {
            include: vec![format!("{}/*.jsonl", sub.display())],
            ..HarvestConfig::default()
        })
        .unwrap();
        for e in b.poll(&st) {
            st.update(
                e.id,
                checkpoint::FileState::durable_at(e.path.display().to_string(), e.resume_offset),
            );
        }
        // Entry A had parked a file on the same inode (since deleted).
        let mut a = Harvester::new(HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            ..HarvestConfig::default()
        })
        .unwrap();
        let md = std::fs::metadata(&other).unwrap();
        let gone = FileId {
            device: md.dev(),
            inode: md.ino(),
            fingerprint: 0x1234_5678,
        };
        a.parked.insert((md.dev(), md.ino()), (gone, 3));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&other)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"n\":3}\n").unwrap();
        assert_eq!(
            texts(a.poll(&st)),
            Vec::<String>::new(),
            "entry A read entry B's file"
        );
        assert_eq!(texts(b.poll(&st)), vec![r#"{"n":3}"#]);
    }

    /// A temp dir with `logs/data.csv` (not written yet) and a config
    /// collecting `logs/*.csv`.
    fn csv_dir() -> (tempfile::TempDir, PathBuf, HarvestConfig) {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.csv", logs.display())],
            ..HarvestConfig::default()
        };
        (tmp, logs.join("data.csv"), cfg)
    }

    /// Issue #12 item 3: a file truncated and rewritten with the same first
    /// line (a CSV header) that grew past the old offset while the agent was
    /// down is read again from 0, not resumed at the old offset.
    #[test]
    fn a_repeated_header_does_not_hide_new_content_across_a_restart() {
        let (tmp, f, cfg) = csv_dir();
        let mut st = store(tmp.path());
        let mut h = Harvester::new(cfg.clone()).unwrap();
        std::fs::write(&f, b"id,name\n1,old-a\n2,old-b\n").unwrap();
        let out = h.poll(&st);
        for e in &out {
            st.update(
                e.id,
                checkpoint::FileState {
                    tail: e.tail,
                    ..checkpoint::FileState::durable_at(
                        e.path.display().to_string(),
                        e.resume_offset,
                    )
                },
            );
        }
        assert_eq!(texts(out), vec!["id,name", "1,old-a", "2,old-b"]);
        drop(h);
        // Down: rewritten in place (same inode, same header), longer than before.
        std::fs::write(&f, b"id,name\n10,new-aaaa\n11,new-bbbb\n12,new-c\n").unwrap();
        let mut h = Harvester::new(cfg).unwrap();
        assert_eq!(
            texts(h.poll(&st)),
            vec!["id,name", "10,new-aaaa", "11,new-bbbb", "12,new-c"]
        );
    }

    /// The same while running (paused between two polls): the bytes before
    /// the position changed, so the file starts over.
    #[test]
    fn a_repeated_header_does_not_hide_new_content_between_polls() {
        let (tmp, f, cfg) = csv_dir();
        let st = store(tmp.path());
        let mut h = Harvester::new(cfg).unwrap();
        std::fs::write(&f, b"id,name\n1,old-a\n").unwrap();
        assert_eq!(texts(h.poll(&st)), vec!["id,name", "1,old-a"]);
        std::fs::write(&f, b"id,name\n10,new-aaaa\n11,new-b\n").unwrap();
        assert_eq!(
            texts(h.poll(&st)),
            vec!["id,name", "10,new-aaaa", "11,new-b"]
        );
    }

    #[test]
    fn at_most_max_open_files_are_open() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        for i in 0..5 {
            std::fs::write(logs.join(format!("{i}.log")), format!("line {i}\n")).unwrap();
        }
        let st = store(tmp.path());
        let mut h = Harvester::new(HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            max_open_files: 2,
            close_idle_after: Duration::ZERO,
            ..HarvestConfig::default()
        })
        .unwrap();
        let mut all = Vec::new();
        for _ in 0..6 {
            all.extend(texts(h.poll(&st)));
            assert!(h.open_files() <= 2);
        }
        all.sort();
        assert_eq!(all, (0..5).map(|i| format!("line {i}")).collect::<Vec<_>>());
        assert!(h.stats.open_limit_hits > 0);
    }

    #[test]
    fn glob_roots_and_matching() {
        assert_eq!(
            glob_root("/var/log/nginx/*.log"),
            PathBuf::from("/var/log/nginx")
        );
        assert_eq!(
            glob_root("/var/log/**/app-?.log"),
            PathBuf::from("/var/log")
        );
        assert_eq!(glob_root("/*.log"), PathBuf::from("/"));
        let h = Harvester::new(HarvestConfig {
            include: vec!["/var/log/**/*.log".into(), "/srv/app/*.txt".into()],
            exclude: vec!["/var/log/**/debug*.log".into()],
            ..HarvestConfig::default()
        })
        .unwrap();
        assert!(h.matches(Path::new("/var/log/a.log")));
        assert!(h.matches(Path::new("/var/log/nginx/x/access.log")));
        assert!(!h.matches(Path::new("/var/log/nginx/debug-1.log")));
        assert!(!h.matches(Path::new("/var/log/a.log.1")));
        assert!(h.matches(Path::new("/srv/app/a.txt")));
        assert!(
            !h.matches(Path::new("/srv/app/sub/a.txt")),
            "* does not cross /"
        );
        assert!(matches!(
            Harvester::new(HarvestConfig {
                include: vec!["var/log/*.log".into()],
                ..HarvestConfig::default()
            }),
            Err(HarvestError::Relative(_))
        ));
        assert!(matches!(
            Harvester::new(HarvestConfig {
                include: vec!["/var/log/[.log".into()],
                ..HarvestConfig::default()
            }),
            Err(HarvestError::Glob { .. })
        ));
    }
}

/// Issue #14: nothing outside `allowed_roots` is read, whatever symlinks
/// lead there; symlinked files are followed only when asked and only to
/// targets inside the roots.
#[cfg(test)]
mod symlink_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Dirs {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        store: Store,
    }

    /// `root/` (the allowed root, with `root/app.log`) and `outside/secret`
    /// holding a line no test may ever see.
    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"SECRET root:x:0:0\n").unwrap();
        std::fs::write(root.join("app.log"), b"inside\n").unwrap();
        let store = Store::open(tmp.path().join("cp"), Duration::from_secs(60))
            .unwrap()
            .0;
        Dirs {
            _tmp: tmp,
            root,
            outside,
            store,
        }
    }

    fn harvester(d: &Dirs, glob: &str, follow: bool) -> Harvester {
        Harvester::new(HarvestConfig {
            include: vec![format!("{}/{glob}", d.root.display())],
            allowed_roots: vec![d.root.clone()],
            follow_symlinks: follow,
            ..HarvestConfig::default()
        })
        .unwrap()
    }

    fn lines(out: &[Emitted]) -> Vec<(String, String)> {
        out.iter()
            .flat_map(|e| {
                e.lines.iter().map(|l| {
                    (
                        e.path.display().to_string(),
                        String::from_utf8_lossy(&l.bytes).into_owned(),
                    )
                })
            })
            .collect()
    }

    #[test]
    fn a_symlinked_directory_in_the_glob_reads_nothing_outside() {
        let d = dirs();
        symlink(&d.outside, d.root.join("etcdir")).unwrap();
        // The issue's etcd entry: `<root>/etcdir/secret`, textually inside.
        for glob in ["etcdir/secret", "etcdir/*", "**/*"] {
            let mut h = harvester(&d, glob, true);
            let got = lines(&h.poll(&d.store));
            assert!(
                got.iter().all(|(_, l)| !l.contains("SECRET")),
                "{glob}: {got:?}"
            );
        }
        let mut h = harvester(&d, "etcdir/secret", false);
        h.poll(&d.store);
        assert_eq!(h.stats.refused.get(&Refusal::OutsideRoots), Some(&1));
    }

    #[test]
    fn symlinked_files_are_skipped_unless_followed_and_inside() {
        let d = dirs();
        std::fs::create_dir_all(d.root.join("pods")).unwrap();
        std::fs::write(d.root.join("pods/c1.log"), b"from the pod\n").unwrap();
        std::fs::create_dir_all(d.root.join("containers")).unwrap();
        symlink(d.root.join("pods/c1.log"), d.root.join("containers/c1.log")).unwrap();
        symlink(d.outside.join("secret"), d.root.join("containers/evil.log")).unwrap();

        let mut off = harvester(&d, "containers/*.log", false);
        assert!(off.poll(&d.store).is_empty());
        assert_eq!(off.stats.refused.get(&Refusal::Symlink), Some(&2));
        off.poll(&d.store);
        assert_eq!(
            off.stats.refused.get(&Refusal::Symlink),
            Some(&2),
            "counted once per path"
        );

        let mut on = harvester(&d, "containers/*.log", true);
        let got = lines(&on.poll(&d.store));
        let link = d.root.join("containers/c1.log").display().to_string();
        assert_eq!(got, vec![(link, "from the pod".to_string())]);
        assert_eq!(on.stats.refused.get(&Refusal::OutsideRoots), Some(&1));
    }

    /// A local user swaps a collected file for a symlink to a secret and
    /// back, as fast as they can, while the harvester polls: not one byte of
    /// the secret is read. `SWAP_RACE_SECS` (default 3) sets the duration.
    #[test]
    fn a_file_swapped_for_a_symlink_in_a_race_reads_nothing_outside() {
        let d = dirs();
        let secs = std::env::var("SWAP_RACE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (root, outside, stop) = (d.root.clone(), d.outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let target = root.join("app.log");
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = root.join(".f");
                    std::fs::write(&f, format!("inside {n}\n")).unwrap();
                    std::fs::rename(&f, &target).unwrap();
                    let l = root.join(".l");
                    let _ = std::fs::remove_file(&l);
                    symlink(outside.join("secret"), &l).unwrap();
                    std::fs::rename(&l, &target).unwrap();
                    n += 1;
                }
                n
            })
        };
        let mut h = harvester(&d, "*.log", false);
        let until = Instant::now() + Duration::from_secs(secs);
        let (mut polls, mut inside) = (0u64, 0usize);
        while Instant::now() < until {
            for (_, l) in lines(&h.poll(&d.store)) {
                assert!(!l.contains("SECRET"), "read through a swapped symlink");
                inside += 1;
            }
            polls += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 100 && polls > 100, "swaps {swaps}, polls {polls}");
        assert!(inside > 0, "the regular files were read ({polls} polls)");
    }
}

/// Issue #12 item 9: while reading pauses (the WAL is full), files that
/// appear are opened without being read, so one rotated and deleted before
/// reading resumes is still read through its handle.
#[cfg(test)]
mod paused_tests {
    use super::*;

    #[test]
    fn a_file_made_and_deleted_while_paused_is_read_after() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let st = Store::open(tmp.path().join("cp"), Duration::from_secs(60))
            .unwrap()
            .0;
        let mut h = Harvester::new(HarvestConfig {
            include: vec![format!("{}/app.log*", logs.display())],
            ..HarvestConfig::default()
        })
        .unwrap();
        assert!(h.poll(&st).is_empty());
        // Paused: the loop only calls open_new. A file appears, is rotated
        // (renamed) and the rotated name deleted, all before reading resumes.
        let f = logs.join("app.log");
        std::fs::write(&f, b"made while paused\n").unwrap();
        h.open_new(&st);
        let rotated = logs.join("app.log.1");
        std::fs::rename(&f, &rotated).unwrap();
        std::fs::remove_file(&rotated).unwrap();
        let got: Vec<Vec<u8>> = h
            .poll(&st)
            .into_iter()
            .flat_map(|e| e.lines.into_iter().map(|l| l.bytes))
            .collect();
        assert_eq!(got, vec![b"made while paused".to_vec()]);
    }
}

/// Issue #12 item 8: a poll emits at most about `poll_bytes` (plus one
/// file's chunk), and the files it did not reach are read first next time.
#[cfg(test)]
mod poll_bytes_tests {
    use super::*;

    #[test]
    fn polls_are_bounded_by_bytes_and_every_file_gets_its_turn() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let line = "x".repeat(99) + "\n";
        for i in 0..4 {
            std::fs::write(logs.join(format!("{i}.log")), line.repeat(1000)).unwrap();
        }
        let st = Store::open(tmp.path().join("cp"), Duration::from_secs(60))
            .unwrap()
            .0;
        let mut h = Harvester::new(HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            read_chunk: 50_000,
            poll_bytes: 60_000,
            ..HarvestConfig::default()
        })
        .unwrap();
        let mut per_file: HashMap<PathBuf, usize> = HashMap::new();
        let mut polls = 0;
        loop {
            let out = h.poll(&st);
            if out.is_empty() {
                break;
            }
            polls += 1;
            let bytes: usize = out
                .iter()
                .flat_map(|e| &e.lines)
                .map(|l| l.bytes.len())
                .sum();
            assert!(bytes <= 60_000 + 50_000, "poll {polls}: {bytes} bytes");
            for e in out {
                *per_file.entry(e.path).or_default() += e.lines.len();
            }
            // Every file is reached within the first four polls.
            if polls == 4 {
                assert_eq!(per_file.len(), 4, "{per_file:?}");
            }
        }
        assert!(per_file.values().all(|n| *n == 1000), "{per_file:?}");
        assert!(polls >= 4, "{polls} polls");
    }
}

/// Files that no checkpoint knows and that were renamed out of the globs
/// before the agent read them: recorded when opened, recovered at start-up
/// from a rotated name when born while no agent read them ([`Recover`]).
#[cfg(test)]
mod recover_tests {
    use super::*;
    use std::sync::Arc;

    fn lines(out: Vec<Emitted>) -> Vec<String> {
        let mut v: Vec<String> = out
            .into_iter()
            .flat_map(|e| e.lines)
            .map(|l| String::from_utf8(l.bytes).unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotated_names_strip_numbered_and_dated_suffixes_but_not_compressed_ones() {
        let base = |p: &str| rotated_base(Path::new(p));
        assert_eq!(base("/d/app.log.1"), vec![PathBuf::from("/d/app.log")]);
        assert_eq!(
            base("/d/app.log-20261201"),
            vec![PathBuf::from("/d/app.log")]
        );
        assert_eq!(
            base("/d/app.log.2026-12-01"),
            ["/d/app.log.2026-12", "/d/app.log.2026", "/d/app.log"]
                .map(PathBuf::from)
                .to_vec()
        );
        assert_eq!(base("/d/app.log_3"), vec![PathBuf::from("/d/app.log")]);
        assert!(base("/d/app.log.1.gz").is_empty());
        assert!(base("/d/app.log.2.bz2").is_empty());
        assert!(base("/d/app.log").is_empty(), "`.log` has no digit");
        assert!(base("/d/.1").is_empty(), "nothing before the suffix");
    }

    /// A temporary directory with `logs/` and a checkpoint store.
    fn logs_and_store() -> (tempfile::TempDir, PathBuf, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let st = Store::open(tmp.path().join("cp"), Duration::from_secs(60))
            .unwrap()
            .0;
        (tmp, logs, st)
    }

    /// Polls `h` and checkpoints what it read, as the spool writer does.
    fn checkpoint_poll(h: &mut Harvester, st: &mut Store) {
        let out = h.poll(st);
        checkpoint(out, st);
    }

    fn checkpoint(out: Vec<Emitted>, st: &mut Store) {
        for e in out {
            st.update(
                e.id,
                FileState {
                    tail: e.tail,
                    ..FileState::durable_at(e.path.display().to_string(), e.resume_offset)
                },
            );
        }
    }

    fn recover_all() -> Option<Recover> {
        Some(Recover {
            born_after_ms: 0,
            others: Vec::new(),
        })
    }

    /// Born and rotated twice while the agent was down (or between its last
    /// poll and a kill): `app.log.1` was never at a path a running agent
    /// looked at. Before `Recover` its lines were never read (a CI torture
    /// run lost 1,304 lines of one `j0.jsonl` generation this way).
    #[test]
    fn a_file_born_and_rotated_away_while_down_is_read_at_the_next_start() {
        let (_tmp, logs, mut st) = logs_and_store();
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            ..HarvestConfig::default()
        };
        let f = logs.join("app.log");
        // Before the agent ever ran: history, never read.
        std::fs::write(logs.join("old.log.1"), b"history\n").unwrap();
        std::fs::write(&f, b"gen0 a\n").unwrap();
        checkpoint_poll(&mut Harvester::new(cfg.clone()).unwrap(), &mut st);
        std::thread::sleep(Duration::from_millis(20));
        let born_after_ms = checkpoint::now_ms();
        std::thread::sleep(Duration::from_millis(20));
        // Down: gen0 → app.log.2, gen1 born at app.log and rotated to
        // app.log.1, gen2 at app.log; a compressed and a copied generation.
        std::fs::rename(&f, logs.join("app.log.1")).unwrap();
        std::fs::write(&f, b"gen1 a\ngen1 b\n").unwrap();
        std::fs::rename(logs.join("app.log.1"), logs.join("app.log.2")).unwrap();
        std::fs::rename(&f, logs.join("app.log.1")).unwrap();
        std::fs::write(&f, b"gen2 a\n").unwrap();
        std::fs::write(logs.join("app.log.3.gz"), b"\x1f\x8b not text\n").unwrap();
        std::fs::copy(logs.join("app.log.2"), logs.join("app.log.2-copy1")).unwrap();
        let got = |recover: Option<Recover>| {
            let mut h = Harvester::new(HarvestConfig {
                recover,
                ..cfg.clone()
            })
            .unwrap();
            let out = lines(h.poll(&st));
            (out, h.stats.recovered)
        };
        assert_eq!(
            got(None).0,
            vec!["gen2 a"],
            "without recovery gen1 is never read"
        );
        let (out, recovered) = got(Some(Recover {
            born_after_ms,
            others: Vec::new(),
        }));
        assert_eq!(out, vec!["gen1 a", "gen1 b", "gen2 a"]);
        assert_eq!(recovered, 1);
        // Another entry collecting `*.log.1` directly keeps its file.
        let (out, _) = got(Some(Recover {
            born_after_ms,
            others: vec![(vec![format!("{}/*.log.1", logs.display())], Vec::new())],
        }));
        assert_eq!(out, vec!["gen2 a"]);
    }

    /// A file rotated while the agent was down is read from its rotated
    /// name in several polls, with a restart in between: its checkpoints
    /// keep the path of ours (`app.log`), so the second start still knows
    /// it. Before, they took the rotated name, which the globs do not
    /// match, and the rest of the file was never read.
    #[test]
    fn a_restart_while_reading_a_rotated_file_still_finishes_it() {
        let (_tmp, logs, mut st) = logs_and_store();
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            read_chunk: 8,
            poll_bytes: 8,
            ..HarvestConfig::default()
        };
        let f = logs.join("app.log");
        std::fs::write(&f, b"a1\n").unwrap();
        checkpoint_poll(&mut Harvester::new(cfg.clone()).unwrap(), &mut st);
        // Down: it grows and is rotated.
        let mut w = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
        std::io::Write::write_all(&mut w, b"b1\nb2\nb3\nb4\nb5\n").unwrap();
        std::fs::rename(&f, logs.join("app.log.1")).unwrap();
        // Start 2 reads a little of it, then is killed.
        let mut h = Harvester::new(cfg.clone()).unwrap();
        let first = h.poll(&st);
        assert!(!first.is_empty());
        assert!(first.iter().all(|e| e.path == f), "named after app.log");
        checkpoint(first, &mut st);
        drop(h);
        // Start 3 reads the rest.
        let mut h = Harvester::new(cfg).unwrap();
        let mut rest = Vec::new();
        for _ in 0..5 {
            rest.extend(lines(h.poll(&st)));
        }
        rest.sort();
        assert_eq!(rest, vec!["b3", "b4", "b5"]);
    }

    /// A copy of a file of ours (copytruncate's `app.log.1`) is not read
    /// again: its first line and the bytes before our checkpoint are ours.
    /// A file with the same first line but other content is read.
    #[test]
    fn a_copy_is_not_read_again_but_a_file_with_the_same_header_is() {
        let (_tmp, logs, mut st) = logs_and_store();
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.csv", logs.display())],
            recover: recover_all(),
            ..HarvestConfig::default()
        };
        let f = logs.join("t.csv");
        std::fs::write(&f, b"a,b\n1,2\n3,4\n").unwrap();
        checkpoint_poll(&mut Harvester::new(cfg.clone()).unwrap(), &mut st);
        std::fs::copy(&f, logs.join("t.csv.1")).unwrap();
        std::fs::write(logs.join("t.csv.2"), b"a,b\n5,6\n7,8\n").unwrap();
        let mut h = Harvester::new(cfg).unwrap();
        assert_eq!(lines(h.poll(&st)), vec!["5,6", "7,8", "a,b"]);
    }

    /// Opened while paused (the WAL full, nothing read), then the agent is
    /// killed and the file renamed away: the loop recorded it at offset 0
    /// and flushed, so the next start reads it from the rotated name.
    #[test]
    fn a_file_opened_but_unread_before_a_kill_is_read_after_a_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let cp = tmp.path().join("cp");
        let cfg = HarvestConfig {
            include: vec![format!("{}/*.log", logs.display())],
            ..HarvestConfig::default()
        };
        let f = logs.join("app.log");
        std::fs::write(&f, b"never durable\n").unwrap();
        {
            let store = Arc::new(std::sync::Mutex::new(
                Store::open(&cp, Duration::from_secs(60)).unwrap().0,
            ));
            let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // A sink that never takes anything: paused from the first poll.
            let lp = watch::spawn(
                Harvester::new(cfg.clone()).unwrap(),
                Arc::clone(&store),
                Duration::from_millis(50),
                watch::Discovery::RescanOnly,
                Arc::clone(&open),
                Some,
            )
            .unwrap();
            let t0 = Instant::now();
            while open.load(std::sync::atomic::Ordering::Relaxed) == 0
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            // "Killed": stopped without checkpointing anything (no one
            // else flushes this store); sled is reopened from disk.
            lp.stop();
        }
        std::fs::rename(&f, logs.join("app.log.1")).unwrap();
        let st = Store::open(&cp, Duration::from_secs(60)).unwrap().0;
        let mut h = Harvester::new(cfg).unwrap();
        assert_eq!(lines(h.poll(&st)), vec!["never durable"]);
    }
}
