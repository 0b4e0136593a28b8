//! WAL figures for docs/BENCHMARKS.md, measured in one run on one disk:
//!
//! 1. the sequential write bandwidth `dd if=/dev/zero bs=1M conv=fdatasync`
//!    reaches in the benchmark's directory;
//! 2. WAL append throughput with group-commit fsync for 100-byte and 1 KiB
//!    records (appended 64 KiB of records per call, everything durable at the
//!    end), as on-disk bytes/s (comparable with dd) and line bytes/s;
//! 3. the recovery scan of a 1 GiB log (open = scan + validate every record),
//!    with a warm page cache and, when run as root, a cold one;
//! 4. peak RSS after each step, to show memory does not grow with the log.
//!
//! Run: `cargo run --release -p benches --bin wal_throughput [DIR] [MiB]`
//! (DIR defaults to a temporary directory under target/, MiB to 1024).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wal::{Append, Batch, SyncPolicy, Wal, WalOptions};

fn dd_bandwidth(dir: &Path, mib: u64) -> f64 {
    let file = dir.join("dd.bin");
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fdatasync")
        .output()
        .expect("run dd");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stderr);
    // "... copied, 1.234 s, 567 MB/s": recompute from bytes and seconds.
    let secs: f64 = text
        .split(", ")
        .find_map(|p| p.strip_suffix(" s").and_then(|s| s.trim().parse().ok()))
        .unwrap_or_else(|| panic!("cannot parse dd output: {text}"));
    (mib << 20) as f64 / secs
}

/// Writes dirty pages back and drops the page cache (root only).
fn drop_page_cache() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Reads every file in `dir` in 1 MiB chunks; returns the bytes read.
fn read_all_files(dir: &Path) -> u64 {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let Ok(mut f) = std::fs::File::open(entry.path()) else {
            continue;
        };
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Appends `total` line bytes of `line_len`-byte records; returns
/// (elapsed, on-disk bytes, line bytes).
fn append_run(dir: &Path, line_len: usize, total: u64) -> (Duration, u64, u64) {
    let opts = WalOptions {
        max_bytes: 4 << 30,
        sync: SyncPolicy::default(),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir, opts).expect("open wal");
    let per_call = (64 * 1024 / line_len).max(1);
    let calls = total / (per_call * line_len) as u64;
    let batches: Vec<Batch> = (0..per_call as u64)
        .map(|n| benches::sample_batch(line_len, n))
        .collect();
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..calls {
        match wal.append(&batches).expect("append") {
            Append::Appended(r) => last = *r.end(),
            Append::Full => panic!("log full: raise max_bytes"),
        }
    }
    assert!(wal
        .wait_durable(last, Duration::from_secs(600))
        .expect("durable"));
    let elapsed = start.elapsed();
    let disk = dir_bytes(dir);
    wal.close().expect("close");
    (elapsed, disk, calls * (per_call * line_len) as u64)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base: PathBuf = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"));
    let mib: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    std::fs::create_dir_all(&base).expect("create bench dir");
    let tmp = tempfile::tempdir_in(&base).expect("tempdir");
    let mb = |bytes: f64| bytes / 1e6;

    // The disk's speed drifts (a shared virtual disk): dd runs right before
    // and right after each WAL run, and the ratio uses their mean.
    let dd_mib = mib.min(1024);
    let mut dd_before = dd_bandwidth(tmp.path(), dd_mib);

    for line_len in [100usize, 1024] {
        let dir = tmp.path().join(format!("append-{line_len}"));
        let (t, disk, lines) = append_run(&dir, line_len, mib << 20);
        let disk_bw = disk as f64 / t.as_secs_f64();
        let dd_after = dd_bandwidth(tmp.path(), dd_mib);
        let dd = (dd_before + dd_after) / 2.0;
        println!(
            "dd conv=fdatasync ({dd_mib} MiB): {:.0} MB/s before, {:.0} MB/s after, mean {:.0} MB/s",
            mb(dd_before),
            mb(dd_after),
            mb(dd)
        );
        dd_before = dd_after;
        println!(
            "wal append {line_len}B records, group commit: {:.0} MB/s on disk ({:.0} MB/s of lines, {:.2} M records/s), {:.0}% of dd; peak RSS {} MiB",
            mb(disk_bw),
            mb(lines as f64 / t.as_secs_f64()),
            lines as f64 / line_len as f64 / t.as_secs_f64() / 1e6,
            100.0 * disk_bw / dd,
            benches::peak_rss_kib() / 1024
        );
        if line_len == 1024 {
            for cache in ["warm", "cold"] {
                if cache == "cold" && !drop_page_cache() {
                    println!("wal recovery scan, cold cache: skipped (cannot drop the page cache; needs root)");
                    continue;
                }
                let rss_before = benches::peak_rss_kib();
                let start = Instant::now();
                let (wal, report) = Wal::open(
                    &dir,
                    WalOptions {
                        max_bytes: 4 << 30,
                        ..WalOptions::default()
                    },
                )
                .expect("reopen");
                let t = start.elapsed();
                assert_eq!(report.records_recovered, lines / line_len as u64);
                assert!(report.is_clean());
                println!(
                    "wal recovery scan of {} MiB ({} records), {cache} page cache: {:.0} MB/s; peak RSS {} MiB before, {} MiB after",
                    disk >> 20,
                    report.records_recovered,
                    mb(disk as f64 / t.as_secs_f64()),
                    rss_before / 1024,
                    benches::peak_rss_kib() / 1024
                );
                drop(wal);
            }
            if drop_page_cache() {
                let start = Instant::now();
                let bytes = read_all_files(&dir);
                println!(
                    "raw sequential read of the same files, cold page cache: {:.0} MB/s (the disk's bound for a cold scan)",
                    mb(bytes as f64 / start.elapsed().as_secs_f64())
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
