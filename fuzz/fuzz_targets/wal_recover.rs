//! Never-panic: arbitrary bytes as segment files (and as the ack file) go
//! through recovery and a full read; the log opens and keeps appending.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wal::{Append, Batch, Line, SourceId, SyncPolicy, Wal, WalOptions};

fn header(id: u64, first_seq: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(b"LPWALSEG");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    // First byte: flags. Bit 0: give segment 1 a valid header. Bit 1: split
    // the rest into two segments. Bit 2: also write an ack file.
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let (a, b) = if flags & 2 != 0 {
        rest.split_at(rest.len() / 2)
    } else {
        (rest, &[][..])
    };
    let mut seg1 = if flags & 1 != 0 {
        header(1, 1)
    } else {
        Vec::new()
    };
    seg1.extend_from_slice(a);
    let _ = std::fs::write(dir.path().join("00000000000000000001.seg"), &seg1);
    if flags & 2 != 0 {
        let _ = std::fs::write(dir.path().join("00000000000000000002.seg"), b);
    }
    if flags & 4 != 0 {
        let _ = std::fs::write(dir.path().join("ack"), &rest[..rest.len().min(24)]);
    }
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 24,
        sync: SyncPolicy::Manual,
        ..WalOptions::default()
    };
    let Ok((wal, report)) = Wal::open(dir.path(), opts) else {
        return;
    };
    for item in wal.reader_including_unsynced(1).take(100_000) {
        if item.is_err() {
            break;
        }
    }
    let batch = Batch {
        source: SourceId {
            device: 0,
            inode: 0,
            fingerprint: 0,
            path: String::new(),
        },
        topic: "t".into(),
        end_offset: 0,
        read_ms: 0,
        meta: Vec::new(),
        lines: vec![Line {
            offset: 0,
            bytes: b"x".to_vec(),
            flags: 0,
        }],
    };
    if let Ok(Append::Appended(r)) = wal.append(&[batch]) {
        assert_eq!(*r.start(), report.next_seq);
    }
});
