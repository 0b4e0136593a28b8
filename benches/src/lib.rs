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

/// A `/proc/<pid>/status` field in KiB (`VmHWM`, `VmRSS`); 0 when unknown.
fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's peak resident set size (VmHWM) in KiB; 0 when unknown.
pub fn peak_rss_kib() -> u64 {
    status_kib("self", "VmHWM:")
}

/// Another process's peak resident set size (VmHWM) in KiB.
pub fn process_peak_rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmHWM:")
}

/// Another process's resident set size (VmRSS) in KiB.
pub fn process_rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:")
}

/// CPU seconds (user + system) a process used so far, from
/// `/proc/<pid>/stat`; `pid` 0 = this process.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
