//! logagent side by side with rsyslog (Debian's imfile → omkafka) on the
//! local Kafka, in the same run, so each figure is also a ratio to a fixed
//! reference that survives this machine's noise (issue #17).
//!
//! Each round and shipper gets a fresh 4-partition topic:
//! - backlog: N lines of 100 B in 4 files written before the shipper
//!   starts, timed from its start until the topic's high watermarks add up
//!   to N. CPU (user+sys) of the shipper and of the Kafka broker over that
//!   time, the shipper's peak RSS, the lines per partition and the average
//!   message (payload + key + headers) of a sample.
//! - steady: 20,000 lines/s appended to 4 files for S seconds (every
//!   millisecond 20 lines, round robin over the files); CPU of the shipper
//!   and of the broker from the first write until all lines are in Kafka.
//!
//! Both ship with acks=all and lz4; logagent with idempotence (its only
//! mode), rsyslog with `enable.idempotence=true` and `partitions.auto="on"`.
//! Shippers alternate within each round; medians over the rounds.
//!
//!   cargo build --release -p agent
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin shipper_compare [backlog|steady|all] [ROUNDS] [LINES] [SHIPPERS]
//!   # defaults: all 5 2000000 logagent,rsyslog; steady runs 30 s

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PARTITIONS: i32 = 4;
const FILES: usize = 4;
const STEADY_RATE: u64 = 20_000;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn kafka_pid() -> Option<u32> {
    benches::pid_file(&benches::stack_dir().join("kafka.pid"))
}

fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let _ = rt.block_on(admin.create_topics(
        &[benches::new_topic(topic, PARTITIONS)],
        &AdminOptions::new(),
    ));
}

/// 100 bytes with the newline.
fn line(f: &mut impl Write, i: u64) {
    writeln!(
        f,
        "10.0.0.{} - - [21/Nov/2026:07:00:00 +0000] \"GET /item/{i:010} HTTP/1.1\" 200 512 \"-\" \"bench\"",
        i % 250
    )
    .expect("write");
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shipper {
    Logagent,
    Rsyslog,
}

impl Shipper {
    fn name(self) -> &'static str {
        match self {
            Shipper::Logagent => "logagent",
            Shipper::Rsyslog => "rsyslog",
        }
    }

    fn start(self, dir: &Path, logs: &Path, topic: &str) -> Child {
        let brokers = benches::stack_env("KAFKA_BROKERS");
        match self {
            Shipper::Logagent => {
                let etcd = benches::stack_env("ETCD_ENDPOINTS");
                let cfg = format!(
                    "host_id = \"bench-{}\"\ndata_dir = \"{}\"\nallowed_roots = [\"{}\"]\n\
                     [kafka]\nbrokers = \"{brokers}\"\n[etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"/bench-{}\"\n\
                     [metrics]\nlisten = \"127.0.0.1:{}\"\n\
                     [[collect]]\npath = \"{}/*.log\"\ntopic = \"{topic}\"\n",
                    std::process::id(),
                    dir.join("data").display(),
                    logs.display(),
                    now_ns(),
                    benches::free_port(),
                    logs.display(),
                );
                // AGENT_EXTRA: more TOML for the agent's config (experiments).
                let cfg = format!(
                    "{cfg}{}\n",
                    std::env::var("AGENT_EXTRA").unwrap_or_default()
                );
                let path = dir.join("agent.toml");
                std::fs::write(&path, cfg).expect("config");
                let bin = benches::repo_root().join("target/release/logagent");
                assert!(
                    bin.exists(),
                    "build it first: cargo build --release -p agent"
                );
                // AGENT_WRAP: a command the agent runs under (`perf record … --`);
                // its CPU and RSS are then the wrapper's.
                let wrap = std::env::var("AGENT_WRAP").unwrap_or_default();
                let mut words = wrap.split_whitespace();
                let mut cmd = match words.next() {
                    Some(w) => {
                        let mut c = Command::new(w);
                        c.args(words).arg(bin);
                        c
                    }
                    None => Command::new(bin),
                };
                cmd.arg("--config")
                    .arg(&path)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn logagent")
            }
            Shipper::Rsyslog => {
                let work = dir.join("rsyslog-work");
                std::fs::create_dir_all(&work).expect("work dir");
                let broker_list = brokers
                    .split(',')
                    .map(|b| format!("\"{b}\""))
                    .collect::<Vec<_>>()
                    .join(",");
                let cfg = format!(
                    r#"global(workDirectory="{work}")
module(load="imfile")
module(load="omkafka")
template(name="event" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="path" name="$!metadata!filename" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
}}
input(type="imfile" File="{logs}/*.log" Tag="bench" addMetadata="on" Ruleset="kafka")
ruleset(name="kafka") {{
  action(type="omkafka" broker=[{broker_list}] topic="{topic}" partitions.auto="on" template="event"
         confParam=["compression.codec=lz4", "enable.idempotence=true"]
         topicConfParam=["request.required.acks=-1"])
}}
"#,
                    work = work.display(),
                    logs = logs.display(),
                );
                let path = dir.join("rsyslog.conf");
                std::fs::write(&path, cfg).expect("config");
                Command::new("rsyslogd")
                    .arg("-n")
                    .arg("-f")
                    .arg(&path)
                    .arg("-i")
                    .arg(dir.join("rsyslog.pid"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect(
                        "spawn rsyslogd (apt-get install rsyslog rsyslog-kafka, or scripts/setup)",
                    )
            }
        }
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Messages per partition (high watermarks).
fn watermarks(c: &BaseConsumer, topic: &str) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(_, h)| h)
        })
        .collect()
}

fn wait_for(c: &BaseConsumer, topic: &str, n: u64, limit: Duration) -> Option<Vec<i64>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let w = watermarks(c, topic);
        if w.iter().sum::<i64>() as u64 >= n {
            return Some(w);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The average size of up to 2,000 messages (payload + key + headers).
fn average_message(brokers: &str, topic: &str) -> f64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-compare-sample")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    c.assign(&tpl).expect("assign");
    let (mut n, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    while n < 2000 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            n += 1;
            bytes += (m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64;
            if let Some(h) = m.headers() {
                for x in h.iter() {
                    bytes += (x.key.len() + x.value.map_or(0, <[u8]>::len)) as u64;
                }
            }
        }
    }
    bytes as f64 / n.max(1) as f64
}

struct Run {
    lines_per_s: f64,
    cpu_per_m: f64,
    broker_cpu_per_m: f64,
    peak_rss_mib: f64,
    avg_message: f64,
    spread: Vec<i64>,
}

fn backlog(shipper: Shipper, n: u64) -> Run {
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let tmp = tempfile::tempdir().expect("tmp");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let topic = format!("bench-cmp-{}-{}", shipper.name(), now_ns());
    create_topic(&brokers, &topic);
    for f in 0..FILES {
        let mut w = BufWriter::new(
            std::fs::File::create(logs.join(format!("access-{f}.log"))).expect("file"),
        );
        for i in (f as u64..n).step_by(FILES) {
            line(&mut w, i);
        }
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("consumer");
    let start = Instant::now();
    let child = shipper.start(tmp.path(), &logs, &topic);
    let meter = Meter::new(child.id(), start);
    meter.finish(shipper, child, &c, &topic, n, Duration::from_secs(600))
}

/// CPU of a shipper and of the broker from `start` on.
struct Meter {
    pid: u32,
    start: Instant,
    cpu0: f64,
    kafka: Option<u32>,
    kcpu0: f64,
}

impl Meter {
    fn new(pid: u32, start: Instant) -> Self {
        let kafka = kafka_pid();
        Self {
            pid,
            start,
            cpu0: benches::process_cpu_seconds(pid),
            kafka,
            kcpu0: kafka.map_or(0.0, benches::process_cpu_seconds),
        }
    }

    /// Waits until `lines` are in `topic`, stops the shipper, and measures.
    fn finish(
        self,
        shipper: Shipper,
        child: Child,
        c: &BaseConsumer,
        topic: &str,
        lines: u64,
        limit: Duration,
    ) -> Run {
        let spread = wait_for(c, topic, lines, limit);
        let secs = self.start.elapsed().as_secs_f64();
        let cpu = benches::process_cpu_seconds(self.pid) - self.cpu0;
        let kcpu = self.kafka.map_or(0.0, benches::process_cpu_seconds) - self.kcpu0;
        let rss = benches::process_peak_rss_kib(self.pid) as f64 / 1024.0;
        stop(child);
        let spread = spread.unwrap_or_else(|| {
            panic!(
                "{}: not all {lines} lines in Kafka in {limit:?}",
                shipper.name()
            )
        });
        let m = lines as f64 / 1e6;
        Run {
            lines_per_s: lines as f64 / secs,
            cpu_per_m: cpu / m,
            broker_cpu_per_m: kcpu / m,
            peak_rss_mib: rss,
            avg_message: average_message(&benches::stack_env("KAFKA_BROKERS"), topic),
            spread,
        }
    }
}

fn steady(shipper: Shipper, secs: u64) -> Run {
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let tmp = tempfile::tempdir().expect("tmp");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let topic = format!("bench-cmp-steady-{}-{}", shipper.name(), now_ns());
    create_topic(&brokers, &topic);
    let paths: Vec<_> = (0..FILES)
        .map(|f| logs.join(format!("access-{f}.log")))
        .collect();
    for p in &paths {
        std::fs::File::create(p).expect("file");
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("consumer");
    let child = shipper.start(tmp.path(), &logs, &topic);
    std::thread::sleep(Duration::from_secs(3));
    let total = STEADY_RATE * secs;
    let start = Instant::now();
    let meter = Meter::new(child.id(), start);
    {
        let mut files: Vec<_> = paths
            .iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(p)
                    .expect("open")
            })
            .collect();
        let per_ms = STEADY_RATE / 1000;
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); FILES];
        let mut i = 0;
        while i < total {
            let due = start + Duration::from_millis(i / per_ms);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            for _ in 0..per_ms {
                line(&mut bufs[(i % FILES as u64) as usize], i);
                i += 1;
            }
            for (f, b) in files.iter_mut().zip(bufs.iter_mut()) {
                if !b.is_empty() {
                    f.write_all(b).expect("append");
                    b.clear();
                }
            }
        }
    }
    meter.finish(shipper, child, &c, &topic, total, Duration::from_secs(120))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_run(phase: &str, round: usize, s: Shipper, r: &Run) {
    println!(
        "{phase} round {round} {:<8} {:>8.0} lines/s  {:>5.2} CPU-s/M  broker {:>5.2} CPU-s/M  peak RSS {:>6.1} MiB  avg message {:>4.0} B  per partition {:?}",
        s.name(),
        r.lines_per_s,
        r.cpu_per_m,
        r.broker_cpu_per_m,
        r.peak_rss_mib,
        r.avg_message,
        r.spread
    );
}

fn summary(phase: &str, shippers: &[Shipper], runs: &[(Shipper, Run)]) {
    println!(
        "{phase}: medians over {} rounds",
        runs.len() / shippers.len().max(1)
    );
    println!("| shipper | lines/s | CPU-s per M lines | broker CPU-s per M lines | peak RSS | avg message |");
    println!("|---|---|---|---|---|---|");
    let reference = shippers.contains(&Shipper::Rsyslog).then(|| {
        let of = |f: fn(&Run) -> f64| {
            median(
                runs.iter()
                    .filter(|(s, _)| *s == Shipper::Rsyslog)
                    .map(|(_, r)| f(r))
                    .collect(),
            )
        };
        (
            of(|r| r.lines_per_s),
            of(|r| r.cpu_per_m),
            of(|r| r.broker_cpu_per_m),
        )
    });
    for s in shippers {
        let of = |f: fn(&Run) -> f64| {
            median(
                runs.iter()
                    .filter(|(x, _)| x == s)
                    .map(|(_, r)| f(r))
                    .collect(),
            )
        };
        let (lps, cpu, bcpu) = (
            of(|r| r.lines_per_s),
            of(|r| r.cpu_per_m),
            of(|r| r.broker_cpu_per_m),
        );
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!(" ({:.2}× rsyslog)", a / b)
            } else {
                String::new()
            }
        };
        let (rl, rc, rb) = reference.map_or(
            (String::new(), String::new(), String::new()),
            |(l, c, b)| (ratio(lps, l), ratio(cpu, c), ratio(bcpu, b)),
        );
        println!(
            "| {} | {lps:.0}{rl} | {cpu:.2}{rc} | {bcpu:.2}{rb} | {:.0} MiB | {:.0} B |",
            s.name(),
            of(|r| r.peak_rss_mib),
            of(|r| r.avg_message)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let phase = args.get(1).map_or("all", String::as_str).to_string();
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let n: u64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let shippers: Vec<Shipper> = args
        .get(4)
        .map_or("logagent,rsyslog", String::as_str)
        .split(',')
        .map(|s| match s {
            "logagent" => Shipper::Logagent,
            "rsyslog" => Shipper::Rsyslog,
            other => {
                eprintln!("unknown shipper {other:?} (logagent, rsyslog)");
                std::process::exit(2)
            }
        })
        .collect();
    let steady_secs: u64 = std::env::var("STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    if phase == "all" || phase == "backlog" {
        let mut runs = Vec::new();
        for round in 1..=rounds {
            for &s in &shippers {
                let r = backlog(s, n);
                print_run("backlog", round, s, &r);
                runs.push((s, r));
            }
        }
        summary(
            &format!("backlog of {n} lines in {FILES} files"),
            &shippers,
            &runs,
        );
    }
    if phase == "all" || phase == "steady" {
        let mut runs = Vec::new();
        for round in 1..=rounds {
            for &s in &shippers {
                let r = steady(s, steady_secs);
                print_run("steady", round, s, &r);
                runs.push((s, r));
            }
        }
        summary(
            &format!("steady {STEADY_RATE} lines/s for {steady_secs} s"),
            &shippers,
            &runs,
        );
    }
}
