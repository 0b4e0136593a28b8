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

/// Creates `topic` with `partitions` partitions and produces `payloads`
/// round-robin over them (lz4, idempotence off: a fixture, not the agent);
/// returns each payload's (partition, offset, index in `payloads`).
pub async fn produce_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    payloads: &[String],
) -> Vec<(i32, i64, usize)> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    for r in admin
        .create_topics(&[new_topic(topic, partitions)], &AdminOptions::new())
        .await
        .expect("create topic")
    {
        r.expect("topic created");
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .expect("producer");
    let mut futs = Vec::with_capacity(payloads.len());
    for (seq, payload) in payloads.iter().enumerate() {
        let p = (seq % partitions as usize) as i32;
        let mut rec = FutureRecord::<(), _>::to(topic)
            .partition(p)
            .payload(payload);
        loop {
            match producer.send_result(rec) {
                Ok(f) => {
                    futs.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }
    let mut offsets = Vec::with_capacity(payloads.len());
    for (seq, f) in futs.into_iter().enumerate() {
        let d = f.await.expect("delivery").expect("delivered");
        offsets.push((d.partition, d.offset, seq));
    }
    offsets
}

/// Deletes a topic (best effort).
pub async fn delete_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    if let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<AdminClient<DefaultClientContext>>()
    {
        let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// ~200 bytes of JSON, like a short access-log line from logagent.
pub fn access_event(seq: u64) -> String {
    format!(
        r#"{{"@timestamp":"2026-11-21T04:33:32.123Z","message":"GET /item/{seq:08} HTTP/1.1 200 512 ref=/home ua=Mozilla/5.0 (X11; Linux x86_64) bench","host":{{"name":"web-1"}},"log":{{"offset":{off}}},"seq":{seq}}}"#,
        off = seq * 200
    )
}

/// `n` [`access_event`]s produced to a new `topic` ([`produce_topic`]),
/// said on stdout: the payloads and where each went.
pub async fn access_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    n: u64,
) -> (Vec<String>, Vec<(i32, i64, usize)>) {
    let payloads: Vec<String> = (0..n).map(access_event).collect();
    let offsets = produce_topic(brokers, topic, partitions, &payloads).await;
    let avg = payloads.iter().map(String::len).sum::<usize>() as f64 / n.max(1) as f64;
    println!(
        "produced {n} events of {avg:.0} bytes on average to {topic} ({partitions} partitions)"
    );
    (payloads, offsets)
}

/// What [`run_transfer`] measured.
pub struct TransferRun {
    /// From the pipeline's start until every document arrived.
    pub secs: f64,
    /// From the start until the first document arrived (consumer group
    /// join, the sink's connection and tables).
    pub first_secs: f64,
    /// CPU seconds (user+sys) of this process meanwhile.
    pub cpu: f64,
    /// Sink writes made (`logtransfer_bulk_seconds_count`).
    pub writes: f64,
}

impl TransferRun {
    /// The seconds from the first document to the last.
    pub fn loading_secs(&self) -> f64 {
        self.secs - self.first_secs
    }
}

/// Runs logtransfer's pipeline in this process with `cfg_text` until
/// `count()` reaches `n`.
pub async fn run_transfer<F, Fut>(cfg_text: &str, n: u64, mut count: F) -> TransferRun
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    use std::time::{Duration, Instant};
    let path = std::path::Path::new("bench.toml");
    let cfg: transfer::config::TransferConfig =
        common::config::parse_config(path, cfg_text, |_| None).expect("config");
    cfg.validate(path).expect("valid config");
    let metrics = transfer::metrics::Metrics::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cpu0 = process_cpu_seconds(0);
    let start = Instant::now();
    let task = tokio::spawn(transfer::pipeline::run(
        cfg,
        std::sync::Arc::clone(&metrics),
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));
    let mut first_secs = None;
    loop {
        let c = count().await;
        if c > 0 && first_secs.is_none() {
            first_secs = Some(start.elapsed().as_secs_f64());
        }
        if c >= n {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "logtransfer did not finish in 900 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(0) - cpu0;
    let _ = tx.send(());
    let _ = task.await;
    TransferRun {
        secs,
        first_secs: first_secs.unwrap_or(secs),
        cpu,
        writes: metric_in(&metrics.encode(), "logtransfer_bulk_seconds_count"),
    }
}

/// Index operations Elasticsearch completed in indices matching `pattern`
/// (`indexing.index_total` of the primaries), without a refresh: polling it
/// does not make Elasticsearch refresh more often than the template says.
/// 0 on error.
pub async fn es_indexed(es: &elasticsearch::Elasticsearch, pattern: &str) -> u64 {
    use elasticsearch::indices::IndicesStatsParts;
    match es
        .indices()
        .stats(IndicesStatsParts::IndexMetric(&[pattern], &["indexing"]))
        .send()
        .await
    {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["_all"]["primaries"]["indexing"]["index_total"].as_u64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// The documents logtransfer would make of `payloads` at `offsets`
/// (partition, offset, payload index): what the ideal loaders send.
pub fn ideal_docs(
    topic: &str,
    offsets: &[(i32, i64, usize)],
    payloads: &[String],
    pattern: &transfer::doc::IndexPattern,
) -> Vec<transfer::doc::Doc> {
    offsets
        .iter()
        .map(|(p, o, seq)| {
            transfer::doc::make_doc(
                topic,
                *p,
                *o,
                Some(payloads[*seq].as_bytes()),
                None,
                pattern,
            )
        })
        .collect()
}

/// A benchmark topic: replication factor `KAFKA_REPLICATION` (`scripts/cluster
/// env` says 3; then `min.insync.replicas=2`, as the cluster's topics), else 1.
pub fn new_topic(name: &str, partitions: i32) -> rdkafka::admin::NewTopic<'_> {
    use rdkafka::admin::{NewTopic, TopicReplication};
    let rf = std::env::var("KAFKA_REPLICATION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(rf));
    if rf >= 3 {
        topic.set("min.insync.replicas", "2")
    } else {
        topic
    }
}
