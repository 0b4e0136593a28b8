//! One WAL append call of 64 KiB of records (100 B or 1 KiB each), without
//! waiting for fsync: the CPU cost of framing, encoding and writing.
//! `cargo bench -p benches --bench wal`. Disk throughput with group commit,
//! compared with dd, is `cargo run --release -p benches --bin wal_throughput`.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wal::{Append, Batch, SyncPolicy, Wal, WalOptions};

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_64KiB");
    for line_len in [100usize, 1024] {
        let per_call = 64 * 1024 / line_len;
        let batches: Vec<Batch> = (0..per_call as u64)
            .map(|n| benches::sample_batch(line_len, n))
            .collect();
        group.throughput(Throughput::Bytes((per_call * line_len) as u64));
        group.bench_function(BenchmarkId::from_parameter(line_len), |b| {
            let dir = tempfile::tempdir().expect("tempdir");
            let opts = WalOptions {
                segment_bytes: 64 << 20,
                max_bytes: 1 << 30,
                sync: SyncPolicy::Manual,
                ..WalOptions::default()
            };
            let (wal, _) = Wal::open(dir.path(), opts).expect("open");
            b.iter(|| match wal.append(&batches).expect("append") {
                Append::Appended(r) => {
                    // Keep the log bounded across iterations.
                    if wal.disk_bytes() > 512 << 20 {
                        wal.ack(*r.end()).expect("ack");
                    }
                }
                Append::Full => panic!("full"),
            });
        });
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
