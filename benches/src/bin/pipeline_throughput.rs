//! The whole pipeline on the local stack: files → logagent → Kafka →
//! logtransfer → Elasticsearch.
//!
//! N lines of about 100 bytes are written to 4 files before the binaries
//! start (so the pipeline runs at the highest rate it sustains); timed from
//! the start of logagent and logtransfer until Elasticsearch counts N
//! documents. Reports lines/s and the CPU seconds used meanwhile by each
//! process: logagent, logtransfer, the Kafka broker, Elasticsearch.
//!
//! Progress is polled from Elasticsearch's indexing stats, which does not
//! refresh; one `_refresh` and `_count` at the end makes and checks every
//! document searchable (inside the timed window). `refresh-poll` as the
//! second argument polls with `_refresh` + `_count` every 500 ms instead
//! (how this benchmark measured before issue #17: that forces a refresh
//! every 500 ms whatever the index template says, which costs
//! Elasticsearch CPU a deployment does not spend).
//!
//! Run on the local stack (release builds first):
//!   cargo build --release -p agent -p transfer
//!   eval "$(scripts/stack env)"
//!   cargo run --release -p benches --bin pipeline_throughput [N] [refresh-poll]   # N = 1000000

use elasticsearch::http::transport::Transport;

use elasticsearch::Elasticsearch;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(bin: &str, config: &Path) -> Child {
    let path = benches::repo_root().join("target/release").join(bin);
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

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let refresh_poll = std::env::args().nth(2).as_deref() == Some("refresh-poll");
    let brokers = benches::stack_env("KAFKA_BROKERS");
    let es_url = benches::stack_env("ES_URL");
    let etcd = benches::stack_env("ETCD_ENDPOINTS");
    let stack = benches::stack_dir();
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
        .create_topics(&[benches::new_topic(&run, 4)], &AdminOptions::new())
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
            benches::free_port(),
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
            benches::free_port()
        ),
    )
    .expect("transfer config");
    let kafka = benches::pid_file(&stack.join("kafka.pid"));
    let es_pid = benches::pid_file(&stack.join("elasticsearch/elasticsearch.pid"));
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
        got = if refresh_poll {
            benches::es_count(&es, &pattern).await
        } else {
            benches::es_indexed(&es, &pattern).await
        };
        if got != last.0 {
            last = (got, Instant::now());
        }
    }
    if !refresh_poll {
        // Searchable: one refresh, then the count must be N.
        got = benches::es_count(&es, &pattern).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (ac, tc) = (cpu(Some(apid)), cpu(Some(tpid)));
    let (kc, ec) = (cpu(kafka) - k0, cpu(es_pid) - e0);
    terminate(agent);
    terminate(transfer);
    assert_eq!(got, n, "not everything was indexed");
    println!(
        "pipeline: {n} lines of 100 B in 4 files → searchable in {secs:.1} s: {:.0} lines/s ({})",
        n as f64 / secs,
        if refresh_poll {
            "polled with _refresh every 500 ms"
        } else {
            "polled without refresh, one _refresh at the end"
        }
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
