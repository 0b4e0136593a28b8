//! logagent on the local stack: file → WAL → Kafka with acks=all.
//!
//! 1. throughput: N 100-byte lines written to a file before the agent
//!    starts; timed from the agent's start until its
//!    `logagent_lines_acked_total` reaches N (Kafka acknowledged all), with
//!    the CPU seconds (user+sys) of the agent and of the Kafka broker.
//! 2. latency: a writer appends lines carrying their write time at a fixed
//!    rate (10k lines/s) for 20 s; a consumer reads them from Kafka. Each
//!    line's latency is write → consumed, an upper bound of write → Kafka
//!    ack (it adds the consumer's fetch). p50/p99/max.
//! 3. rss: 1,000 files of 100 lines each; the agent's peak RSS (VmHWM)
//!    once it shipped them all and kept tailing for 10 s.
//!
//! Run on the local stack (release build of logagent first):
//!   cargo build --release -p agent
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin agent_throughput [N [PHASE]]   # N = 2000000

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn kafka_pid() -> Option<u32> {
    benches::pid_file(&benches::stack_dir().join("kafka.pid"))
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let _ = admin
        .create_topics(
            &[benches::new_topic(topic, partitions)],
            &AdminOptions::new(),
        )
        .await;
}

struct Agent {
    child: Child,
    metrics: String,
}

impl Agent {
    fn start(dir: &Path, logs: &Path, topic: &str, glob: &str) -> Agent {
        let brokers = benches::stack_env("KAFKA_BROKERS");
        let etcd = benches::stack_env("ETCD_ENDPOINTS");
        let host = format!("bench-{}", std::process::id());
        let prefix = format!("/bench-{}", now_ns());
        let port = benches::free_port();
        let metrics = format!("127.0.0.1:{port}");
        let cfg = format!(
            "host_id = \"{host}\"\ndata_dir = \"{}\"\nallowed_roots = [\"{}\"]\n\
             [kafka]\nbrokers = \"{brokers}\"\n[etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"{prefix}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n\
             [[collect]]\npath = \"{}/{glob}\"\ntopic = \"{topic}\"\n",
            dir.join("data").display(),
            logs.display(),
            logs.display(),
        );
        let path = dir.join("agent.toml");
        std::fs::write(&path, cfg).expect("config");
        let bin = benches::repo_root().join("target/release/logagent");
        assert!(
            bin.exists(),
            "build it first: cargo build --release -p agent"
        );
        let child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn logagent");
        Agent { child, metrics }
    }

    fn metric(&self, name: &str) -> f64 {
        benches::metric(&self.metrics, name)
    }

    fn wait_acked(&self, n: u64, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.metric("logagent_lines_acked_total") >= n as f64 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn throughput(n: u64) {
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let tmp = tempfile::tempdir().expect("tmp");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let topic = format!("bench-agent-{}", now_ns());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(create_topic(&brokers, &topic, 4));
    {
        let mut f = BufWriter::new(std::fs::File::create(logs.join("access.log")).expect("file"));
        for i in 0..n {
            // 100 bytes with the newline.
            writeln!(
                f,
                "10.0.0.{} - - [21/Nov/2026:07:00:00 +0000] \"GET /item/{i:010} HTTP/1.1\" 200 512 \"-\" \"bench\"",
                i % 250
            )
            .expect("write");
        }
    }
    let kafka = kafka_pid();
    let kafka_cpu0 = kafka.map(benches::process_cpu_seconds);
    let start = Instant::now();
    let agent = Agent::start(tmp.path(), &logs, &topic, "*.log");
    let pid = agent.child.id();
    let ok = agent.wait_acked(n, Duration::from_secs(600));
    let secs = start.elapsed().as_secs_f64();
    let cpu = benches::process_cpu_seconds(pid);
    let kafka_cpu = kafka.map(benches::process_cpu_seconds);
    let rss = benches::process_peak_rss_kib(pid);
    agent.stop();
    assert!(ok, "not everything was acknowledged in 600 s");
    println!(
        "throughput: {n} lines of 100 B, file → WAL → Kafka (acks=all, 4 partitions): {secs:.1} s, {:.0} lines/s, {:.1} MB/s",
        n as f64 / secs,
        n as f64 * 100.0 / secs / 1e6
    );
    println!(
        "  agent CPU {cpu:.1} s ({:.2} s per million lines, {:.2} cores), peak RSS {} MiB",
        cpu / (n as f64 / 1e6),
        cpu / secs,
        rss / 1024
    );
    if let (Some(a), Some(b)) = (kafka_cpu0, kafka_cpu) {
        println!(
            "  Kafka broker CPU {:.1} s ({:.2} cores)",
            b - a,
            (b - a) / secs
        );
    }
}

fn latency(rate: u64, secs: u64) {
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let tmp = tempfile::tempdir().expect("tmp");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let topic = format!("bench-agent-lat-{}", now_ns());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(create_topic(&brokers, &topic, 4));
    let agent = Agent::start(tmp.path(), &logs, &topic, "*.log");
    std::thread::sleep(Duration::from_secs(3));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench-latency")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        let _ = tpl.add_partition_offset(&topic, p, Offset::End);
    }
    consumer.assign(&tpl).expect("assign");
    let path = logs.join("lat.log");
    let total = rate * secs;
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).expect("file");
        let start = Instant::now();
        let per_ms = rate / 1000;
        let mut i = 0;
        let mut buf = Vec::new();
        while i < total {
            // Every millisecond, that millisecond's lines in one write.
            let due = start + Duration::from_millis(i / per_ms.max(1));
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            buf.clear();
            for _ in 0..per_ms.max(1) {
                let _ = writeln!(buf, "t={} seq={i} {}", now_ns(), "z".repeat(50));
                i += 1;
            }
            f.write_all(&buf).expect("write");
        }
    });
    let mut lat_us: Vec<u64> = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(secs + 60);
    while (lat_us.len() as u64) < total && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let got = now_ns();
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            if let Some(t) = v["message"]
                .as_str()
                .and_then(|s| s.strip_prefix("t="))
                .and_then(|s| s.split(' ').next())
                .and_then(|s| s.parse::<u128>().ok())
            {
                lat_us.push(u64::try_from((got.saturating_sub(t)) / 1000).unwrap_or(u64::MAX));
            }
        }
    }
    let _ = writer.join();
    agent.stop();
    lat_us.sort_unstable();
    let pct = |p: f64| {
        lat_us
            .get(((lat_us.len() as f64 * p) as usize).min(lat_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "latency at {rate} lines/s for {secs} s (write → consumed from Kafka, {} of {total} lines seen): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat_us.len(),
        pct(0.5),
        pct(0.99),
        lat_us.last().copied().unwrap_or(0) as f64 / 1000.0
    );
}

fn rss(files: u64) {
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let tmp = tempfile::tempdir().expect("tmp");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let topic = format!("bench-agent-rss-{}", now_ns());
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(create_topic(&brokers, &topic, 4));
    for f in 0..files {
        let mut w =
            BufWriter::new(std::fs::File::create(logs.join(format!("f{f:04}.log"))).expect("file"));
        for i in 0..100 {
            let _ = writeln!(w, "file {f} line {i} {}", "r".repeat(70));
        }
    }
    let agent = Agent::start(tmp.path(), &logs, &topic, "*.log");
    let ok = agent.wait_acked(files * 100, Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(10));
    let open = agent.metric("logagent_files_open");
    let peak = benches::process_peak_rss_kib(agent.child.id());
    let now = benches::process_rss_kib(agent.child.id());
    agent.stop();
    assert!(ok, "not everything was acknowledged");
    println!(
        "rss: tailing {files} files ({open} open): peak RSS {:.1} MiB, RSS after 10 s idle {:.1} MiB",
        peak as f64 / 1024.0,
        now as f64 / 1024.0
    );
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    // Optional second argument: one phase only (throughput, latency, rss).
    let only = std::env::args().nth(2);
    let run = |p: &str| only.as_deref().is_none_or(|o| o == p);
    if run("throughput") {
        throughput(n);
    }
    if run("latency") {
        latency(10_000, 20);
    }
    if run("rss") {
        rss(1000);
    }
}
