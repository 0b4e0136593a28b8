//! State-machine test: random append / sync / ack / read / crash / reopen
//! sequences against a model of what the log must hold.
//!
//! Crashes drop the log without a final sync and then damage the newest
//! segment in one of three ways:
//! - cut it at a random byte at or after the length it had at the last
//!   confirmed sync (a torn write: only unsynced bytes can be lost);
//! - flip one random bit in its record area (media corruption: at most the
//!   record holding that bit is lost, and it must never be returned);
//! - append zeros (a zero-filled tail: nothing is lost).
//!
//! Invariants checked after every reopen and read: every record confirmed
//! durable (and not acknowledged) is read back intact and in order; nothing
//! is read back that was never appended; corruption shows up as a skip, never
//! as data.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use wal::{Append, Batch, Line, ReadItem, SourceId, SyncPolicy, Wal, WalOptions};

#[derive(Debug, Clone)]
enum Crash {
    Cut(u64),
    Flip(u64, u8),
    Zeros(usize),
}

#[derive(Debug, Clone)]
enum Action {
    Append(Vec<Vec<Vec<u8>>>),
    Sync,
    Ack(u8),
    Read,
    Crash(Crash),
    Reopen,
}

fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => prop::collection::vec(prop::collection::vec(line_bytes(), 1..4), 1..4).prop_map(Action::Append),
        3 => Just(Action::Sync),
        2 => any::<u8>().prop_map(Action::Ack),
        3 => Just(Action::Read),
        1 => any::<u64>().prop_map(|x| Action::Crash(Crash::Cut(x))),
        1 => (any::<u64>(), 0u8..8).prop_map(|(x, b)| Action::Crash(Crash::Flip(x, b))),
        1 => (1usize..300).prop_map(|n| Action::Crash(Crash::Zeros(n))),
        1 => Just(Action::Reopen),
    ]
}

fn batch(lines: &[Vec<u8>], n: u64) -> Batch {
    Batch {
        source: SourceId {
            device: 1,
            inode: n,
            fingerprint: 7,
            path: format!("/var/log/app-{n}.log"),
        },
        topic: "t".into(),
        end_offset: n * 100,
        read_ms: 0,
        meta: Vec::new(),
        lines: lines
            .iter()
            .enumerate()
            .map(|(i, b)| Line {
                offset: i as u64,
                bytes: b.clone(),
                flags: 0,
            })
            .collect(),
    }
}

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes: 1024,
        max_bytes: 8 * 1024,
        sync: SyncPolicy::Manual,
        ..WalOptions::default()
    }
}

fn newest_segment(dir: &Path) -> Option<PathBuf> {
    let mut segs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop()
}

fn synced_point(dir: &Path) -> Option<(PathBuf, u64)> {
    newest_segment(dir).map(|p| {
        let len = fs::metadata(&p).map(|md| md.len()).unwrap_or(0);
        (p, len)
    })
}

struct Model {
    /// What the log holds and may return: seq -> batch.
    records: BTreeMap<u64, Batch>,
    /// Highest seq confirmed durable by a sync.
    durable: u64,
    acked: u64,
    /// The newest segment and its length at the last confirmed sync.
    synced: Option<(PathBuf, u64)>,
    counter: u64,
    /// Corruption in the middle stays on disk and is reported at every open.
    ever_flipped: bool,
}

/// Reads everything from `from`; returns records and skipped-record counts.
fn read_all(wal: &Wal, from: u64) -> (Vec<(u64, Batch)>, u64) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for item in wal.reader_including_unsynced(from) {
        match item.expect("read") {
            ReadItem::Record { seq, batch } => out.push((seq, batch)),
            ReadItem::Skipped { records, .. } => skipped += records,
        }
    }
    (out, skipped)
}

fn run(actions: Vec<Action>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, report) = Wal::open(dir.path(), opts()).expect("open");
    prop_assert!(report.is_clean());
    let mut m = Model {
        records: BTreeMap::new(),
        durable: 0,
        acked: 0,
        synced: None,
        counter: 0,
        ever_flipped: false,
    };
    for action in actions {
        match action {
            Action::Append(batches) => {
                let bs: Vec<Batch> = batches
                    .iter()
                    .map(|l| {
                        m.counter += 1;
                        batch(l, m.counter)
                    })
                    .collect();
                let before = wal.last_seq();
                match wal.append(&bs).expect("append") {
                    Append::Appended(range) => {
                        prop_assert_eq!(*range.start(), before + 1);
                        prop_assert_eq!(range.clone().count(), bs.len());
                        for (seq, b) in range.zip(bs) {
                            m.records.insert(seq, b);
                        }
                    }
                    Append::Full => prop_assert_eq!(wal.last_seq(), before),
                }
            }
            Action::Sync => {
                let d = wal.sync().expect("sync");
                prop_assert_eq!(d, wal.last_seq());
                m.durable = d;
                m.synced = synced_point(dir.path());
            }
            Action::Ack(x) => {
                if m.durable > m.acked {
                    let seq = m.acked + 1 + u64::from(x) % (m.durable - m.acked);
                    wal.ack(seq).expect("ack");
                    m.acked = seq;
                    m.records.retain(|s, _| *s > seq);
                }
            }
            Action::Read => {
                let (got, skipped) = read_all(&wal, m.acked + 1);
                let want: Vec<(u64, Batch)> =
                    m.records.iter().map(|(s, b)| (*s, b.clone())).collect();
                prop_assert_eq!(&got, &want);
                // Gaps left by earlier corruption are reported as skips, once each.
                let missing = got
                    .last()
                    .map_or(0, |(last, _)| last - m.acked - got.len() as u64);
                prop_assert_eq!(skipped, missing);
            }
            Action::Reopen => {
                wal.close().expect("close");
                let (w, report) = Wal::open(dir.path(), opts()).expect("reopen");
                wal = w;
                prop_assert_eq!(report.bytes_truncated, 0);
                if !m.ever_flipped {
                    prop_assert!(report.is_clean(), "{:?}", report);
                }
                m.durable = wal.last_seq();
                // Recovery syncs what it keeps.
                m.synced = synced_point(dir.path());
                let (got, _) = read_all(&wal, m.acked + 1);
                let want: Vec<(u64, Batch)> =
                    m.records.iter().map(|(s, b)| (*s, b.clone())).collect();
                prop_assert_eq!(got, want);
            }
            Action::Crash(kind) => {
                drop(wal);
                let newest = newest_segment(dir.path()).expect("a segment exists");
                let len = fs::metadata(&newest).expect("stat").len();
                let header = 32u64;
                let floor = match &m.synced {
                    Some((p, l)) if *p == newest => *l,
                    _ => header,
                };
                let mut flipped = false;
                match kind {
                    Crash::Cut(x) => {
                        let cut = floor + x % (len - floor + 1);
                        fs::OpenOptions::new()
                            .write(true)
                            .open(&newest)
                            .and_then(|f| f.set_len(cut))
                            .expect("cut");
                    }
                    Crash::Flip(x, bit) => {
                        if len > header {
                            let pos = header + x % (len - header);
                            let mut bytes = fs::read(&newest).expect("read");
                            bytes[pos as usize] ^= 1 << bit;
                            fs::write(&newest, bytes).expect("write");
                            flipped = true;
                            m.ever_flipped = true;
                        }
                    }
                    Crash::Zeros(n) => {
                        let mut bytes = fs::read(&newest).expect("read");
                        bytes.extend(std::iter::repeat_n(0u8, n));
                        fs::write(&newest, bytes).expect("write");
                    }
                }
                let (w, report) = Wal::open(dir.path(), opts()).expect("reopen after crash");
                wal = w;
                prop_assert_eq!(report.bad_segments, 0);
                let (got, _) = read_all(&wal, m.acked + 1);
                // Nothing that was never appended, in order, intact.
                let mut prev = 0;
                for (seq, b) in &got {
                    prop_assert!(*seq > prev);
                    prev = *seq;
                    prop_assert_eq!(Some(b), m.records.get(seq), "seq {} differs", seq);
                }
                let present: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
                let lost_durable: Vec<u64> = m
                    .records
                    .keys()
                    .copied()
                    .filter(|s| *s <= m.durable && !present.contains(s))
                    .collect();
                if flipped {
                    prop_assert!(lost_durable.len() <= 1, "lost {:?}", lost_durable);
                } else {
                    prop_assert!(
                        lost_durable.is_empty(),
                        "lost {:?} ({:?})",
                        lost_durable,
                        report
                    );
                }
                // From here on the log holds exactly what was read back.
                m.records = got.into_iter().collect();
                prop_assert_eq!(report.next_seq, wal.last_seq() + 1);
                m.durable = wal.last_seq();
                // Recovery syncs what it keeps.
                m.synced = synced_point(dir.path());
                prop_assert_eq!(wal.durable_seq(), wal.last_seq());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn wal_matches_model(actions in prop::collection::vec(action(), 1..60)) {
        run(actions)?;
    }
}
