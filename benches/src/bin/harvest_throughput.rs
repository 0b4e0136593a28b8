//! Harvester figures for docs/BENCHMARKS.md:
//!
//! 1. read + split + emit of a file of 100-byte lines from the page cache on
//!    one thread, beside `wc -l` on the same file in the same run;
//! 2. start-up with 10,000 tracked files: open a checkpoint store holding
//!    their 10,000 entries, match the glob, open and fingerprint every file
//!    and read what was appended since the checkpoint; with peak RSS.
//!
//! Run: `cargo run --release -p benches --bin harvest_throughput [MiB]`
//! (default 1024 MiB; files go under target/bench-tmp).

use agent::harvester::{HarvestConfig, Harvester};
use checkpoint::{FileState, Store};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn write_lines(path: &Path, bytes: u64) -> u64 {
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut line = [b'x'; 100];
    line[99] = b'\n';
    let n = bytes / 100;
    for i in 0..n {
        let digits = format!("{i:012}");
        line[..12].copy_from_slice(digits.as_bytes());
        f.write_all(&line).expect("write");
    }
    f.flush().expect("flush");
    n
}

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&base).expect("bench dir");
    let tmp = tempfile::tempdir_in(&base).expect("tempdir");

    // 1. Throughput.
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let file = logs.join("big.log");
    let lines = write_lines(&file, mib << 20);
    let bytes = lines * 100;
    // Into the page cache, without holding it in memory.
    let _ = std::io::copy(
        &mut std::fs::File::open(&file).expect("open"),
        &mut std::io::sink(),
    );
    let start = Instant::now();
    let wc = Command::new("wc")
        .arg("-l")
        .arg(&file)
        .output()
        .expect("wc");
    let wc_secs = start.elapsed().as_secs_f64();
    let wc_lines: u64 = String::from_utf8_lossy(&wc.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert_eq!(wc_lines, lines);

    let store_dir = tmp.path().join("cp");
    let (store, _) = Store::open(&store_dir, Duration::from_secs(60)).expect("store");
    let mut h = Harvester::new(HarvestConfig {
        include: vec![format!("{}/*.log", logs.display())],
        ..HarvestConfig::default()
    })
    .expect("harvester");
    let rss_before = benches::peak_rss_kib() / 1024;
    let start = Instant::now();
    let mut emitted = 0u64;
    let mut line_bytes = 0u64;
    while emitted < lines {
        for e in h.poll(&store) {
            emitted += e.lines.len() as u64;
            line_bytes += e.lines.iter().map(|l| l.bytes.len() as u64).sum::<u64>();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "harvest timed out"
        );
    }
    let h_secs = start.elapsed().as_secs_f64();
    assert_eq!(emitted, lines);
    assert_eq!(line_bytes, lines * 99);
    println!(
        "harvest 100-byte lines, page cache, one thread, default 1 MiB per poll: {:.0} MB/s ({:.1} M lines/s) for {} MiB; wc -l on the same file: {:.0} MB/s; peak RSS {} MiB (before {} MiB)",
        bytes as f64 / h_secs / 1e6,
        lines as f64 / h_secs / 1e6,
        bytes >> 20,
        bytes as f64 / wc_secs / 1e6,
        benches::peak_rss_kib() / 1024,
        rss_before
    );
    drop(h);
    drop(store);
    let _ = std::fs::remove_file(&file);

    // 2. Start-up with 10,000 tracked files.
    let many = tmp.path().join("many");
    std::fs::create_dir_all(&many).expect("mkdir");
    let n_files = 10_000u64;
    let store_dir = tmp.path().join("cp-many");
    {
        let (mut store, _) = Store::open(&store_dir, Duration::from_secs(60)).expect("store");
        let mut h = Harvester::new(HarvestConfig {
            include: vec![format!("{}/*.log", many.display())],
            ..HarvestConfig::default()
        })
        .expect("harvester");
        for i in 0..n_files {
            std::fs::write(
                many.join(format!("app-{i:05}.log")),
                format!("first line of file {i}\nsecond line\n"),
            )
            .expect("write");
        }
        for e in h.poll(&store) {
            store.update(
                e.id,
                FileState::durable_at(e.path.display().to_string(), e.resume_offset),
            );
        }
        assert_eq!(store.len() as u64, n_files);
        store.flush().expect("flush");
    }
    // Every file grows by one line while the agent is down.
    for i in 0..n_files {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(many.join(format!("app-{i:05}.log")))
            .expect("open");
        f.write_all(b"third line\n").expect("append");
    }
    let rss_before = benches::peak_rss_kib() / 1024;
    let start = Instant::now();
    let (store, report) = Store::open(&store_dir, Duration::from_secs(60)).expect("reopen");
    let open_secs = start.elapsed().as_secs_f64();
    let mut h = Harvester::new(HarvestConfig {
        include: vec![format!("{}/*.log", many.display())],
        ..HarvestConfig::default()
    })
    .expect("harvester");
    let out = h.poll(&store);
    let total_secs = start.elapsed().as_secs_f64();
    let new_lines: usize = out.iter().map(|e| e.lines.len()).sum();
    assert_eq!(report.entries as u64, n_files);
    assert_eq!(
        new_lines as u64, n_files,
        "exactly the one new line per file"
    );
    println!(
        "start-up with {n_files} tracked files: checkpoint store opened in {:.0} ms, all files matched, opened, fingerprinted and read in {:.0} ms total; peak RSS {} MiB (before start-up {} MiB)",
        open_secs * 1e3,
        total_secs * 1e3,
        benches::peak_rss_kib() / 1024,
        rss_before
    );
}
