//! Named scenarios: recovery from each kind of damage, the full log, group
//! commit, and injected I/O faults.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wal::{
    Append, Batch, Error, IoHooks, IoOp, Line, ReadItem, SourceId, SyncPolicy, Wal, WalOptions,
};

fn batch(n: u64, line_len: usize) -> Batch {
    Batch {
        source: SourceId {
            device: 1,
            inode: 2,
            fingerprint: 3,
            path: "/var/log/a.log".into(),
        },
        topic: "web_log".into(),
        end_offset: n,
        read_ms: 0,
        meta: Vec::new(),
        lines: vec![Line {
            offset: n,
            bytes: vec![b'a' + (n % 26) as u8; line_len],
            flags: 0,
        }],
    }
}

fn manual(segment_bytes: u64, max_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        max_bytes,
        sync: SyncPolicy::Manual,
        ..WalOptions::default()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn read_seqs(wal: &Wal, from: u64) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut skipped = 0;
    for item in wal.reader(from) {
        match item.unwrap() {
            ReadItem::Record { seq, batch } => {
                assert_eq!(batch.end_offset, seq, "record {seq} carries its own batch");
                seqs.push(seq);
            }
            ReadItem::Skipped { records, .. } => skipped += records,
        }
    }
    (seqs, skipped)
}

/// Appends records 1..=n one by one (record k has end_offset k) and syncs.
fn fill(wal: &Wal, n: u64, line_len: usize) {
    for k in 1..=n {
        let got = wal.append(&[batch(k, line_len)]).unwrap();
        assert_eq!(got, Append::Appended(k..=k));
    }
    wal.sync().unwrap();
}

#[test]
fn records_survive_a_clean_reopen_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    assert!(report.is_clean());
    assert_eq!((report.first_unacked, report.next_seq), (1, 1));
    fill(&wal, 40, 50);
    assert!(
        segments(dir.path()).len() > 3,
        "records rolled over segments"
    );
    wal.close().unwrap();

    let (wal, report) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records_recovered, 40);
    assert_eq!((report.first_unacked, report.next_seq), (1, 41));
    assert_eq!(read_seqs(&wal, 1), ((1..=40).collect(), 0));
    assert_eq!(read_seqs(&wal, 25).0, (25..=40).collect::<Vec<_>>());
}

#[test]
fn acks_are_durable_and_free_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    fill(&wal, 40, 50);
    let before = segments(dir.path()).len();
    wal.ack(30).unwrap();
    assert!(segments(dir.path()).len() < before);
    drop(wal); // no close: the ack must already be durable

    let (wal, report) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    assert_eq!(report.first_unacked, 31);
    assert_eq!(
        read_seqs(&wal, report.first_unacked).0,
        (31..=40).collect::<Vec<_>>()
    );
    // Acking everything frees the active segment too.
    wal.ack(40).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(wal.disk_bytes(), 32);
}

#[test]
fn a_full_log_says_full_and_resumes_after_acks() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(1024, 4096)).unwrap();
    let mut n = 0;
    while let Append::Appended(_) = wal.append(&[batch(n + 1, 100)]).unwrap() {
        n += 1;
        assert!(n < 1000, "never became full");
    }
    assert!(wal.disk_bytes() <= 4096);
    // Full is not sticky and writes nothing.
    assert_eq!(wal.append(&[batch(n + 1, 100)]).unwrap(), Append::Full);
    assert_eq!(wal.last_seq(), n);
    wal.sync().unwrap();
    wal.ack(n).unwrap();
    assert_eq!(
        wal.append(&[batch(n + 1, 100)]).unwrap(),
        Append::Appended(n + 1..=n + 1)
    );
}

#[test]
fn a_record_larger_than_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(512, 4096)).unwrap();
    assert!(matches!(
        wal.append(&[batch(1, 1000)]),
        Err(Error::RecordTooLarge { .. })
    ));
    assert_eq!(wal.last_seq(), 0);
}

#[test]
fn zero_filled_and_torn_tails_are_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    fill(&wal, 10, 30);
    drop(wal);
    let seg = segments(dir.path()).pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    fs::write(&seg, &bytes).unwrap();

    let (wal, report) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    assert_eq!(report.bytes_truncated, 4096);
    assert_eq!(report.records_recovered, 10);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    // Appends continue after the cut.
    assert_eq!(
        wal.append(&[batch(11, 30)]).unwrap(),
        Append::Appended(11..=11)
    );
    wal.sync().unwrap();
    drop(wal);

    // Half of the last record torn away.
    let len = fs::metadata(&seg).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    let (wal, report) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    assert!(report.bytes_truncated > 0);
    assert_eq!(report.next_seq, 11);
    assert_eq!(read_seqs(&wal, 1), ((1..=10).collect(), 0));
}

#[test]
fn corruption_in_the_middle_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    fill(&wal, 10, 30);
    drop(wal);
    let seg = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let rec = (bytes.len() - 32) / 10; // all records have the same size
    bytes[32 + rec * 4 + rec / 2] ^= 0x40; // inside record 5
    fs::write(&seg, &bytes).unwrap();

    let (wal, report) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    assert_eq!(report.records_recovered, 9);
    assert_eq!(report.records_skipped, 1);
    assert_eq!(report.bytes_skipped, rec as u64);
    assert_eq!(report.bytes_truncated, 0);
    let (seqs, skipped) = read_seqs(&wal, 1);
    assert_eq!(seqs, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    assert_eq!(skipped, 1);
    // Opening again finds the same, and never loops.
    drop(wal);
    let (_, again) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    assert_eq!(again, report);
}

#[test]
fn a_bad_header_and_a_missing_segment_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    fill(&wal, 40, 50);
    drop(wal);
    let segs = segments(dir.path());
    assert!(segs.len() >= 5);
    // Segment 2: bad magic. Segment 4: gone.
    let mut bytes = fs::read(&segs[1]).unwrap();
    bytes[0] = b'X';
    fs::write(&segs[1], &bytes).unwrap();
    fs::remove_file(&segs[3]).unwrap();

    let (wal, report) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    assert_eq!(report.bad_segments, 1);
    assert_eq!(report.missing_segments, 2, "{report:?}"); // 2 (set aside) and 4
    assert!(report.records_skipped > 0);
    assert!(dir
        .path()
        .join(segs[1].file_name().unwrap())
        .with_extension("seg.corrupt")
        .exists());
    let (seqs, skipped) = read_seqs(&wal, 1);
    assert_eq!(seqs.len() as u64 + skipped, 40);
    assert_eq!(seqs.last(), Some(&40));
    assert_eq!(report.records_recovered, seqs.len() as u64);
    // It keeps working.
    assert_eq!(
        wal.append(&[batch(41, 10)]).unwrap(),
        Append::Appended(41..=41)
    );
}

#[test]
fn a_corrupt_ack_file_replays_everything_present() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    fill(&wal, 10, 30);
    wal.ack(5).unwrap();
    drop(wal);
    fs::write(dir.path().join("ack"), b"garbage").unwrap();
    let (wal, report) = Wal::open(dir.path(), manual(1 << 20, 1 << 22)).unwrap();
    assert!(report.ack_file_reset);
    assert_eq!(report.first_unacked, 1);
    assert_eq!(read_seqs(&wal, 1).0, (1..=10).collect::<Vec<_>>());
}

#[test]
fn readers_see_only_durable_records_and_follow_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
    let mut reader = wal.reader(1);
    wal.append(&[batch(1, 10), batch(2, 10)]).unwrap();
    assert!(reader.next_item().unwrap().is_none(), "not durable yet");
    wal.sync().unwrap();
    let mut got = Vec::new();
    for k in 3..=30 {
        wal.append(&[batch(k, 40)]).unwrap();
        wal.sync().unwrap();
        while let Some(ReadItem::Record { seq, .. }) = reader.next_item().unwrap() {
            got.push(seq);
        }
    }
    assert_eq!(got, (1..=30).collect::<Vec<_>>());
}

#[test]
fn group_commit_shares_fsyncs_between_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(CountingHooks::default());
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 24,
        sync: SyncPolicy::Group {
            interval: Duration::from_millis(5),
            max_pending_bytes: 1 << 20,
        },
        hooks: syncs.clone(),
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let wal = Arc::new(wal);
    let before = syncs.syncs.load(Ordering::SeqCst);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let Append::Appended(r) = wal.append(&[batch(t * 100 + i, 100)]).unwrap()
                    else {
                        panic!("full")
                    };
                    assert!(wal.wait_durable(*r.end(), Duration::from_secs(10)).unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let used = syncs.syncs.load(Ordering::SeqCst) - before;
    assert_eq!(wal.durable_seq(), 400);
    assert!(used < 400, "{used} fsyncs for 400 durable appends");
}

#[derive(Default)]
struct CountingHooks {
    syncs: AtomicU64,
}

impl IoHooks for CountingHooks {
    fn before(&self, op: IoOp, _path: &Path) -> io::Result<()> {
        if op == IoOp::Sync {
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Fails the `n`-th operation of one kind (counting from 1) once.
struct FailNth {
    op: IoOp,
    n: u64,
    seen: Mutex<u64>,
}

impl IoHooks for FailNth {
    fn before(&self, op: IoOp, _path: &Path) -> io::Result<()> {
        if op != self.op {
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap();
        *seen += 1;
        if *seen == self.n {
            return Err(io::Error::other(format!("injected {op:?} failure")));
        }
        Ok(())
    }
}

fn injected(op: IoOp, n: u64) -> WalOptions {
    WalOptions {
        hooks: Arc::new(FailNth {
            op,
            n,
            seen: Mutex::new(0),
        }),
        ..manual(512, 1 << 20)
    }
}

#[test]
fn injected_faults_surface_and_reopen_is_consistent() {
    for op in [IoOp::Write, IoOp::Sync, IoOp::Create] {
        for n in 1..12 {
            let dir = tempfile::tempdir().unwrap();
            let mut durable = 0;
            let mut failed = false;
            match Wal::open(dir.path(), injected(op, n)) {
                Err(e) => {
                    assert!(matches!(e, Error::Io { .. }), "{e}");
                    failed = true;
                }
                Ok((wal, _)) => {
                    for k in 1..=30 {
                        let res = wal.append(&[batch(k, 50)]).and_then(|_| wal.sync());
                        match res {
                            Ok(d) => durable = d,
                            Err(e) => {
                                assert!(matches!(e, Error::Io { .. }), "{op:?}#{n}: {e}");
                                // Poisoned from now on: no silent success.
                                assert!(matches!(
                                    wal.append(&[batch(99, 5)]),
                                    Err(Error::Poisoned)
                                ));
                                failed = true;
                                break;
                            }
                        }
                    }
                }
            }
            assert!(failed || n > 1, "{op:?}#{n} was never hit");
            let (wal, report) = Wal::open(dir.path(), manual(512, 1 << 20)).unwrap();
            let (seqs, skipped) = read_seqs(&wal, 1);
            assert_eq!(skipped, 0, "{op:?}#{n}");
            assert!(
                seqs.len() as u64 >= durable,
                "{op:?}#{n}: lost durable records"
            );
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
            assert_eq!(report.next_seq, seqs.len() as u64 + 1);
        }
    }
}
