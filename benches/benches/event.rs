//! Encoding one log line into the Kafka event JSON, as the agent's shipper
//! does for every line it sends. `cargo bench -p benches --bench event`
use agent::event::{encode, timestamp, Identity, ShipSpec};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

fn serialize(c: &mut Criterion) {
    let id = Identity {
        host_id: "web-1-10.0.0.5".into(),
        host_name: "web-1".into(),
        host_ip: "10.0.0.5".into(),
        version: "0.1.0".into(),
    };
    let spec = ShipSpec::default();
    let mut group = c.benchmark_group("event_to_json");
    for len in [80usize, 512, 4096] {
        let batch = benches::sample_batch(len, 1 << 20);
        let ts = timestamp(1_795_000_000_123);
        let mut buf = Vec::new();
        encode(
            &id,
            &spec,
            &batch,
            &ts,
            &batch.lines[0],
            1_000_000,
            &mut buf,
        );
        group.throughput(Throughput::Bytes(buf.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &batch, |b, batch| {
            b.iter(|| {
                encode(
                    &id,
                    &spec,
                    black_box(batch),
                    &ts,
                    &batch.lines[0],
                    1_000_000,
                    &mut buf,
                );
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, serialize);
criterion_main!(benches);
