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

/// A stack endpoint from the environment; exits with a hint when unset.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: eval \"$(scripts/stack env)\" first");
        std::process::exit(2)
    })
}

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// The local stack's directory (`STACK_DIR`, default `.stack/`).
pub fn stack_dir() -> std::path::PathBuf {
    std::env::var("STACK_DIR").map_or_else(|_| repo_root().join(".stack"), Into::into)
}

/// A pid from a pid file.
pub fn pid_file(p: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Documents in indices matching `pattern`, after a refresh (0 on error).
pub async fn es_count(es: &elasticsearch::Elasticsearch, pattern: &str) -> u64 {
    use elasticsearch::indices::IndicesRefreshParts;
    use elasticsearch::CountParts;
    let _ = es
        .indices()
        .refresh(IndicesRefreshParts::Index(&[pattern]))
        .allow_no_indices(true)
        .send()
        .await;
    match es
        .count(CountParts::Index(&[pattern]))
        .allow_no_indices(true)
        .send()
        .await
    {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// The sum of the samples of every metric whose name starts with `name` in
/// the Prometheus text at `addr` (`ip:port`); -1 when it cannot be read.
pub fn metric(addr: &str, name: &str) -> f64 {
    metrics_text(addr).map_or(-1.0, |body| metric_in(&body, name))
}

/// The `/metrics` text served at `addr` (`ip:port`).
pub fn metrics_text(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The sum of the samples of every metric whose name starts with `name`.
pub fn metric_in(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
