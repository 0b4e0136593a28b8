//! Shared fixtures of the benchmarks in `benches/` and `src/bin/`; figures in
//! docs/BENCHMARKS.md.

use wal::{Batch, Line, SourceId};

/// A WAL record holding one `line_len`-byte line at offset `n * line_len` of
/// a typical access log.
pub fn sample_batch(line_len: usize, n: u64) -> Batch {
    Batch {
        source: SourceId {
            device: 2049,
            inode: 1_234_567,
            fingerprint: 0x9f86_d081,
            path: "/var/log/nginx/access.log".into(),
        },
        topic: "web_log".into(),
        end_offset: (n + 1) * line_len as u64,
        read_ms: 0,
        meta: Vec::new(),
        lines: vec![Line {
            offset: n * line_len as u64,
            bytes: vec![b'x'; line_len],
            flags: 0,
        }],
    }
}

/// This process's peak resident set size (VmHWM) in KiB; 0 when unknown.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
