//! Serialising one log line into the Kafka event JSON: the agent does this for
//! every line it ships. `cargo bench -p benches --bench event`
use common::event::{Agent, FileInfo, Host, LogEvent, LogInfo};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::collections::BTreeMap;
use std::hint::black_box;

fn event(message: String) -> LogEvent {
    LogEvent {
        timestamp: "2026-11-21T04:33:32.123Z".into(),
        message,
        host: Host {
            name: "web-1".into(),
            id: "10.0.0.5-web-1".into(),
        },
        log: LogInfo {
            file: FileInfo {
                path: "/var/log/nginx/access.log".into(),
                device: 2049,
                inode: 1_234_567,
                fingerprint: "9f86d081884c7d65".into(),
            },
            offset: 1 << 33,
            flags: vec![],
        },
        agent: Agent {
            kind: "logagent".into(),
            version: "0.1.0".into(),
        },
        fields: BTreeMap::new(),
    }
}

fn serialize(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_to_json");
    for len in [80usize, 512, 4096] {
        let ev = event("x".repeat(len));
        let bytes = serde_json::to_vec(&ev).expect("serialisable").len();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &ev, |b, ev| {
            let mut buf = Vec::with_capacity(bytes);
            b.iter(|| {
                buf.clear();
                serde_json::to_writer(&mut buf, black_box(ev)).expect("serialisable");
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, serialize);
criterion_main!(benches);
