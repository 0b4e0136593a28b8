//! The whole pipeline on the local stack: files → logagent → Kafka →
//! logtransfer → Elasticsearch.
//!
//! N lines of about 100 bytes are written to 4 files before the binaries
//! start (so the pipeline runs at the highest rate it sustains); timed from
//! the start of logagent and logtransfer until Elasticsearch counts N
//! documents. Reports lines/s and the CPU seconds used meanwhile by each
//! process: logagent, logtransfer, the Kafka broker, Elasticsearch.
//!
//! Run on the local stack (release builds first):
//!   cargo build --release -p agent -p transfer
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin pipeline_throughput [N]   # N = 1000000

use elasticsearch::http::transport::Transport;
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::{CountParts, Elasticsearch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: eval \"$(scripts/stack env)\" first");
        std::process::exit(2)
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn pid_file(p: PathBuf) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn spawn(bin: &str, config: &Path) -> Child {
    let path = repo().join("target/release").join(bin);
    assert!(
        path.exists(),
        "build it first: cargo build --release -p agent -p transfer"
    );
    Command::new(path)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn")
}

fn terminate(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

async fn count(es: &Elasticsearch, pattern: &str) -> u64 {
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

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let brokers = env("KAFKA_BROKERS");
    let es_url = env("ES_URL");
    let etcd = env("ETCD_ENDPOINTS");
    let stack = std::env::var("STACK_DIR").map_or_else(|_| repo().join(".stack"), PathBuf::from);
    let tmp = tempfile::tempdir().expect("tmp");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let run = format!(
        "bench-pipeline-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin");
    let _ = admin
        .create_topics(
            &[NewTopic::new(&run, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await;
    for f in 0..4u64 {
        let mut w =
            BufWriter::new(std::fs::File::create(logs.join(format!("app{f}.log"))).expect("file"));
        for i in (f..n).step_by(4) {
            writeln!(
                w,
                "10.0.0.{} - - [21/Nov/2026:07:00:00 +0000] \"GET /item/{i:010} HTTP/1.1\" 200 512 \"-\" \"bench\"",
                i % 250
            )
            .expect("write");
        }
    }
    let agent_cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "host_id = \"bench\"\ndata_dir = \"{}\"\nallowed_roots = [\"{}\"]\n\
             [kafka]\nbrokers = \"{brokers}\"\n[etcd]\nendpoints = [\"{etcd}\"]\nprefix = \"/{run}\"\n\
             [metrics]\nlisten = \"127.0.0.1:{}\"\n\
             [[collect]]\npath = \"{}/*.log\"\ntopic = \"{run}\"\n",
            tmp.path().join("data").display(),
            logs.display(),
            free_port(),
            logs.display(),
        ),
    )
    .expect("agent config");
    let transfer_cfg = tmp.path().join("transfer.toml");
    std::fs::write(
        &transfer_cfg,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{run}\"\ntopics = [\"{run}\"]\n\
             [elasticsearch]\nurl = \"{es_url}\"\nindex_pattern = \"{{topic}}-%Y.%m.%d\"\n\
             [metrics]\nlisten = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )
    .expect("transfer config");
    let kafka = pid_file(stack.join("kafka.pid"));
    let es_pid = pid_file(stack.join("elasticsearch/elasticsearch.pid"));
    let cpu = |p: Option<u32>| p.map_or(0.0, benches::process_cpu_seconds);
    let (k0, e0) = (cpu(kafka), cpu(es_pid));
    let es = Elasticsearch::new(Transport::single_node(&es_url).expect("ES_URL"));
    let pattern = format!("{run}-*");
    let start = Instant::now();
    let agent = spawn("logagent", &agent_cfg);
    let transfer = spawn("logtransfer", &transfer_cfg);
    let (apid, tpid) = (agent.id(), transfer.id());
    let mut last = (0, Instant::now());
    let mut got = 0;
    while got < n && last.1.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        got = count(&es, &pattern).await;
        if got != last.0 {
            last = (got, Instant::now());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (ac, tc) = (cpu(Some(apid)), cpu(Some(tpid)));
    let (kc, ec) = (cpu(kafka) - k0, cpu(es_pid) - e0);
    terminate(agent);
    terminate(transfer);
    assert_eq!(got, n, "not everything was indexed");
    println!(
        "pipeline: {n} lines of 100 B in 4 files → searchable in {secs:.1} s: {:.0} lines/s",
        n as f64 / secs
    );
    for (name, c) in [
        ("logagent", ac),
        ("logtransfer", tc),
        ("kafka", kc),
        ("elasticsearch", ec),
    ] {
        println!(
            "  {name:<14} CPU {c:6.1} s  ({:.2} s per million lines, {:.2} cores)",
            c / (n as f64 / 1e6),
            c / secs
        );
    }
}
