//! The whole pipeline under fire: files → logagent → Kafka → logtransfer →
//! Elasticsearch, while a seeded schedule kills and restarts everything.
//!
//! Writers append numbered lines (`tt w=<writer> seq=<n> …`, some 30 KB
//! long, some JSON, some with invalid UTF-8) to `w<k>/app.log` under a
//! globbed directory, rotating by rename (`app.log` → `app.log.<g>`) and, for
//! some writers, by copytruncate (copy to `bak-<g>`, keep writing, then
//! truncate). Meanwhile the schedule SIGKILLs and restarts the agent and the
//! transfer, and stops and restarts Kafka, Elasticsearch and etcd. A probe
//! writer measures write → searchable latency. At the end the tool waits for
//! the pipeline to drain (bounded), reads every document back (scroll) and
//! prints one summary line:
//!
//! `written=N indexed=N lost=N duplicated=N copytruncate_at_risk=N
//! copytruncate_lost=N latency_ms p50=… p99=… max=… faults …`
//!
//! Besides, for issue #12: nested entries (`nest/*.log` → topic `<run>-nest`
//! and `nest/sub/*.jsonl` → `<run>-json`, a JSON entry, under the same
//! root), written by writers that rotate by a rename chain that deletes the
//! oldest generation (`f.1` … `f.3`, like logrotate's `rotate 3`), and a
//! poison entry (a partition its topic does not have) that must not hold
//! the others back. Every line carries its writer, each writer has one
//! topic: a line found under another topic is `misrouted`. One more line
//! per topic gives `written`, `lost`, `duplicated`, `misrouted`.
//!
//! Then, for issue #13 item 5, the failover figures (`failover
//! transfer_kill …` and `failover kafka_back …`, see
//! `integration::failover`): per logtransfer kill -9 and per Kafka restart,
//! the time from the restart (Kafka: its port accepting again) until the
//! first probe line written after it is searchable; target ≤ 10 s.
//!
//! Lines lost from a copytruncated file's last generation are copytruncate's
//! inherent window (not yet read when the file was truncated): counted apart
//! as `copytruncate_lost`, never hidden. Lines lost from a generation the
//! chain deleted are counted apart as `deleted_lost` (README "Guarantees": a
//! deleted file's unread rest is gone when the agent is killed before
//! reading it). Any other loss, or any misrouted line, makes it exit 1.
//!
//! Needs the local stack (`eval "$(scripts/stack env)"`) and the logagent and
//! logtransfer binaries built beside this one. See `scripts/torture`.

use clap::Parser;
use integration::agent_run::{etcd_put, free_port};
use integration::failover::{Failover, Failovers};
use integration::readback::{all_messages, drain, parse_id, pct, search};
use integration::{cluster_cmd, stack_cmd, workspace_bin, Stack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser, Clone)]
#[command(name = "torture")]
struct Args {
    /// How long writers write and faults are injected, in seconds.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Seed of the fault schedule and of the writers (default: the time).
    #[arg(long)]
    seed: Option<u64>,
    /// Writers (files); the first `copytruncate_writers` rotate by copytruncate too.
    #[arg(long, default_value_t = 3)]
    writers: u64,
    #[arg(long, default_value_t = 1)]
    copytruncate_writers: u64,
    /// Writers of the nested plain entry (`nest/n<k>.log`, rename chain).
    #[arg(long, default_value_t = 1)]
    nest_writers: u64,
    /// Writers of the nested JSON entry (`nest/sub/j<k>.jsonl`, rename chain).
    #[arg(long, default_value_t = 1)]
    json_writers: u64,
    /// Generations a rename chain keeps before deleting the oldest.
    #[arg(long, default_value_t = 3)]
    keep: u64,
    /// Lines per second per writer.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 12)]
    agent_kills: u64,
    #[arg(long, default_value_t = 6)]
    transfer_kills: u64,
    #[arg(long, default_value_t = 1)]
    kafka_restarts: u64,
    #[arg(long, default_value_t = 1)]
    es_restarts: u64,
    #[arg(long, default_value_t = 1)]
    etcd_restarts: u64,
    /// Against `scripts/cluster` (issue #18; `eval "$(scripts/cluster
    /// env)"`): the single services' restarts above are off, these faults
    /// run instead.
    #[arg(long)]
    cluster: bool,
    /// Cluster: kill -9 the leader broker of the run topic's partition 0,
    /// start it again 3–12 s later.
    #[arg(long, default_value_t = 2)]
    leader_kills: u64,
    /// Cluster: cut one broker off (link down) for `cut_secs`.
    #[arg(long, default_value_t = 1)]
    broker_cuts: u64,
    #[arg(long, default_value_t = 60)]
    cut_secs: u64,
    /// Cluster: kill -9 the etcd leader, start it again 3–12 s later; a hot
    /// reload follows each (a new entry and its file must arrive).
    #[arg(long, default_value_t = 2)]
    etcd_leader_kills: u64,
    /// Cluster: kill -9 one Elasticsearch node, start it again 3–12 s later.
    #[arg(long, default_value_t = 1)]
    es_node_kills: u64,
    /// Most seconds to wait for the pipeline to drain at the end.
    #[arg(long, default_value_t = 300)]
    drain: u64,
}

/// `bin --config config`, logging to `log` at `TORTURE_LOG` (default
/// `warn`; `info` to follow each file).
fn command(bin: &'static str, config: PathBuf, log: PathBuf) -> Box<dyn Fn() -> Command + Send> {
    Box::new(move || {
        let mut c = Command::new(workspace_bin(bin));
        c.arg("--config").arg(&config);
        c.env(
            "RUST_LOG",
            std::env::var("TORTURE_LOG").unwrap_or_else(|_| "warn".into()),
        );
        c.stdout(Stdio::null());
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            c.stderr(f);
        }
        c
    })
}

/// A child process that can be SIGKILLed and started again.
struct Proc {
    name: &'static str,
    cmd: Box<dyn Fn() -> Command + Send>,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        match (self.cmd)().spawn() {
            Ok(c) => self.child = Some(c),
            Err(e) => eprintln!("torture: cannot start {}: {e}", self.name),
        }
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn terminate(&mut self) {
        if let Some(c) = self.child.take() {
            integration::stop_child(c, false);
        }
    }
}

/// The hot reload after an etcd election (cluster mode): the collect key
/// gains an entry for a new directory, whose file then gets
/// [`RELOAD_LINES`] numbered lines of their own writer (2000 + k). Unless
/// the agent followed the change (its watch survived the election and no
/// event was missed) they are never read, and the run reports them lost.
struct Reload {
    stack: Stack,
    key: String,
    logs: PathBuf,
    topic: String,
    entries: Mutex<Vec<Value>>,
    /// (writer, lines written) per reload.
    written: Mutex<Vec<(u64, u64)>>,
    runtime: tokio::runtime::Handle,
}

const RELOAD_LINES: u64 = 100;

impl Reload {
    fn after_election(&self) {
        let k = self.written.lock().map(|w| w.len()).unwrap_or(0) as u64;
        let (w, dir) = (2000 + k, self.logs.join(format!("reload{k}")));
        let value = {
            let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            e.push(json!({"path": format!("{}/*.log", dir.display()), "topic": self.topic}));
            Value::Array(e.clone()).to_string()
        };
        self.runtime
            .block_on(etcd_put(&self.stack, &self.key, &value));
        // Written after the put: the agent must see the entry to read them.
        std::thread::sleep(Duration::from_secs(1));
        if std::fs::create_dir_all(&dir).is_err() {
            eprintln!("torture: cannot make {}", dir.display());
            return;
        }
        let mut f = open_append(&dir.join("r.log"));
        for seq in 0..RELOAD_LINES {
            let _ = writeln!(f, "tt w={w} seq={seq} after an etcd election");
        }
        eprintln!(
            "torture: reload {k}: entry for {} put, {RELOAD_LINES} lines written",
            dir.display()
        );
        if let Ok(mut l) = self.written.lock() {
            l.push((w, RELOAD_LINES));
        }
    }
}

/// One fault of the cluster mode (issue #18), on its own thread: the member
/// it hits (`pick` chooses among brokers or nodes where the fault does not
/// name one), the fault recorded for the failover figures, `down` later the
/// member back.
fn cluster_fault(
    fault: &str,
    pick: usize,
    down: Duration,
    topic: &str,
    failover: &Failovers,
    faults: &Faults,
) {
    let member = match fault {
        "leader-kill" => cluster_cmd(&["leader", topic, "0"]).filter(|m| !m.is_empty()),
        "etcd-leader-kill" => cluster_cmd(&["etcd-leader"]).filter(|m| !m.is_empty()),
        "broker-cut" => Some(format!("k{}", pick % 3 + 1)),
        _ => Some(format!("s{}", pick % 2 + 1)),
    };
    let Some(member) = member else {
        eprintln!("torture: {fault}: cannot tell which member; skipped");
        return;
    };
    eprintln!("torture: {fault} {member} for {down:?}");
    let (hit, back, kind, counter) = match fault {
        "broker-cut" => ("cut", "heal", Failover::BrokerCut, &faults.broker_cut),
        "leader-kill" => ("kill", "start", Failover::LeaderKill, &faults.leader_kill),
        "etcd-leader-kill" => (
            "kill",
            "start",
            Failover::EtcdLeaderKill,
            &faults.etcd_leader_kill,
        ),
        _ => ("kill", "start", Failover::EsNodeKill, &faults.es_node_kill),
    };
    let outage = failover.outage_began(match kind {
        Failover::EtcdLeaderKill => "etcd",
        Failover::EsNodeKill => "elasticsearch",
        _ => "kafka",
    });
    cluster_cmd(&[hit, &member]);
    failover.record(kind);
    std::thread::sleep(down);
    while cluster_cmd(&[back, &member]).is_none() {
        eprintln!("torture: {back} {member} failed; retrying");
        cluster_cmd(&["kill", &member]);
        std::thread::sleep(Duration::from_secs(2));
    }
    failover.outage_ended(outage);
    counter.fetch_add(1, Ordering::SeqCst);
}

/// Per writer: where each copytruncated or deleted generation started and
/// ended.
#[derive(Default)]
struct WriterLog {
    /// (first seq, last seq) of generations lost to truncation if unread.
    truncated: Vec<(u64, u64)>,
    /// (first seq, last seq) of generations the rename chain deleted.
    deleted: Vec<(u64, u64)>,
}

/// How a writer rotates its file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rotation {
    /// `app.log` → `app.log.<g>` (kept); some by copytruncate when set.
    Numbered { copytruncate: bool },
    /// `f` → `f.1` → … → `f.<keep>`, then deleted.
    Chain { keep: u64 },
}

fn line(w: u64, seq: u64, rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..50) {
        0 => format!("tt w={w} seq={seq} long {}", "L".repeat(30_000)).into_bytes(),
        1 => format!(r#"{{"torture":"tt w={w} seq={seq}","level":"info","n":{seq}}}"#).into_bytes(),
        2 => {
            let mut v = format!("tt w={w} seq={seq} bad utf8 ").into_bytes();
            v.extend_from_slice(b"\xff\xfe\x00end");
            v
        }
        _ => format!("tt w={w} seq={seq} GET /item/{seq} 200 {}", "x".repeat(40)).into_bytes(),
    }
}

fn open_append(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .expect("open log file")
}

/// One writer's settings.
struct WriterSpec {
    w: u64,
    path: PathBuf,
    rate: u64,
    rotation: Rotation,
    /// Lines are JSON objects (for a `json` entry).
    json: bool,
    seed: u64,
}

/// Writes numbered lines to `spec.path` until `stop`; returns how many.
fn writer(spec: WriterSpec, stop: Arc<AtomicBool>, log: Arc<Mutex<WriterLog>>) -> u64 {
    let WriterSpec {
        w,
        path,
        rate,
        rotation,
        json,
        seed,
    } = spec;
    let copytruncate = matches!(rotation, Rotation::Numbered { copytruncate: true });
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = path.parent().expect("writer dir").to_path_buf();
    std::fs::create_dir_all(&dir).expect("writer dir");
    let name = path
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    // Rename chain: the seq ranges of f.1, f.2, … (newest first).
    let mut chain: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    let make = |w: u64, seq: u64, rng: &mut StdRng| {
        if json {
            format!(r#"{{"tt":"tt w={w} seq={seq}","n":{seq}}}"#).into_bytes()
        } else {
            line(w, seq, rng)
        }
    };
    let mut f = open_append(&path);
    let mut seq = 0;
    let mut gen_start = 0;
    let mut gen = 0;
    let start = Instant::now();
    let mut next_rotation = rng.random_range(2_000..8_000u64);
    while !stop.load(Ordering::SeqCst) {
        // 10 ms worth of lines, then keep to the rate.
        for _ in 0..(rate / 100).max(1) {
            let mut l = make(w, seq, &mut rng);
            l.push(b'\n');
            f.write_all(&l).expect("write line");
            seq += 1;
        }
        let due = start + Duration::from_micros(seq * 1_000_000 / rate.max(1));
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if start.elapsed().as_millis() as u64 >= next_rotation {
            next_rotation += rng.random_range(4_000..15_000u64);
            gen += 1;
            if copytruncate && rng.random_bool(0.5) {
                // copytruncate: copy, the app keeps writing, then truncate.
                let _ = std::fs::copy(&path, dir.join(format!("bak-{gen}")));
                for _ in 0..rng.random_range(0..20) {
                    let mut l = make(w, seq, &mut rng);
                    l.push(b'\n');
                    f.write_all(&l).expect("write line");
                    seq += 1;
                }
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|t| t.set_len(0));
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .truncated
                    .push((gen_start, seq - 1));
            } else if let Rotation::Chain { keep } = rotation {
                drop(f);
                // logrotate's `rotate keep`: delete f.<keep>, shift, f → f.1.
                if chain.len() as u64 >= keep {
                    let _ = std::fs::remove_file(dir.join(format!("{name}.{keep}")));
                    if let Some(r) = chain.pop_back() {
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .deleted
                            .push(r);
                    }
                }
                for k in (1..=chain.len() as u64).rev() {
                    let _ = std::fs::rename(
                        dir.join(format!("{name}.{k}")),
                        dir.join(format!("{name}.{}", k + 1)),
                    );
                }
                let _ = std::fs::rename(&path, dir.join(format!("{name}.1")));
                chain.push_front((gen_start, seq.saturating_sub(1)));
                f = open_append(&path);
            } else {
                drop(f);
                let _ = std::fs::rename(&path, dir.join(format!("{name}.{gen}")));
                f = open_append(&path);
            }
            gen_start = seq;
        }
    }
    seq
}

#[derive(Default)]
struct Faults {
    agent_kill: AtomicU64,
    transfer_kill: AtomicU64,
    kafka_restart: AtomicU64,
    es_restart: AtomicU64,
    etcd_restart: AtomicU64,
    leader_kill: AtomicU64,
    broker_cut: AtomicU64,
    etcd_leader_kill: AtomicU64,
    es_node_kill: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let stack = Stack::from_env();
    let run = format!("torture-{seed}-{}", std::process::id());
    let dir = tempfile::Builder::new()
        .prefix("torture-")
        .tempdir()
        .expect("tmp");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    eprintln!(
        "torture: seed={seed} duration={}s writers={} rate={}/s dir={}",
        args.duration,
        args.writers,
        args.rate,
        dir.path().display()
    );
    stack.create_topic(&run, 4).await;
    let nest_topic = format!("{run}-nest");
    let json_topic = format!("{run}-json");
    stack.create_topic(&nest_topic, 2).await;
    stack.create_topic(&json_topic, 2).await;
    // Issue #13 item 5: a probe straight into Kafka, outside `<run>-*`.
    let failover_topic = format!("failover-{run}");
    stack.create_topic(&failover_topic, 2).await;

    // The agent: collect entry in etcd, config on disk.
    let prefix = format!("/{run}");
    let host = format!("{run}-host");
    let agent_setup = integration::agent_run::setup(
        &stack,
        dir.path(),
        &host,
        &prefix,
        &[&logs],
        "[wal]\nmax_bytes = 268435456\n",
    );
    // Poison messages go to the dead-letter topic after 10 s (not 60).
    integration::agent_run::kafka_keys(&agent_setup, "dead_letter_after_secs = 10");
    // Nested entries under one root, a JSON one, and a poison entry whose
    // partition its topic does not have.
    let entries = vec![
        json!({"path": format!("{}/*/app.log*", logs.display()), "topic": run}),
        json!({"path": format!("{}/nest/*.log", logs.display()), "topic": nest_topic}),
        json!({"path": format!("{}/nest/sub/*.jsonl", logs.display()), "topic": json_topic, "json": true}),
        json!({"path": format!("{}/poison/*.log", logs.display()), "topic": run, "partition": {"fixed": 99}}),
    ];
    etcd_put(
        &stack,
        &agent_setup.collect_key(),
        &Value::Array(entries.clone()).to_string(),
    )
    .await;
    // Cluster mode: after each etcd leader kill a new entry is put and its
    // file written (`Reload::after_election`).
    let reload = Arc::new(Reload {
        stack: stack.clone(),
        key: agent_setup.collect_key(),
        logs: logs.clone(),
        topic: run.clone(),
        entries: Mutex::new(entries),
        written: Mutex::new(Vec::new()),
        runtime: tokio::runtime::Handle::current(),
    });
    let agent = Arc::new(Mutex::new(Proc {
        name: "logagent",
        cmd: command(
            "logagent",
            agent_setup.config.clone(),
            agent_setup.log.clone(),
        ),
        child: None,
    }));

    // The transfer: its own group, index `<run>-*`.
    let tcfg = dir.path().join("transfer.toml");
    let metrics = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &tcfg,
        integration::transfer_run::config_text(
            &stack,
            &[&run, &nest_topic, &json_topic, &failover_topic],
            &run,
            &metrics,
            "",
        ),
    )
    .expect("transfer config");
    let transfer = Arc::new(Mutex::new(Proc {
        name: "logtransfer",
        cmd: command("logtransfer", tcfg, dir.path().join("transfer.log")),
        child: None,
    }));
    agent.lock().expect("agent").start();
    transfer.lock().expect("transfer").start();

    // Writers and the probe.
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut logs_of = Vec::new();
    // Each writer's topic: a line found elsewhere is misrouted.
    let mut topic_of: HashMap<u64, String> = HashMap::new();
    let mut specs = Vec::new();
    for w in 0..args.writers {
        let rotation = Rotation::Numbered {
            copytruncate: w < args.copytruncate_writers,
        };
        specs.push((
            logs.join(format!("w{w}/app.log")),
            rotation,
            false,
            run.clone(),
        ));
    }
    let chain = Rotation::Chain { keep: args.keep };
    for k in 0..args.nest_writers {
        specs.push((
            logs.join(format!("nest/n{k}.log")),
            chain,
            false,
            nest_topic.clone(),
        ));
    }
    for k in 0..args.json_writers {
        specs.push((
            logs.join(format!("nest/sub/j{k}.jsonl")),
            chain,
            true,
            json_topic.clone(),
        ));
    }
    for (w, (path, rotation, json, topic)) in specs.into_iter().enumerate() {
        let w = w as u64;
        let wl = Arc::new(Mutex::new(WriterLog::default()));
        logs_of.push(Arc::clone(&wl));
        topic_of.insert(w, topic);
        let spec = WriterSpec {
            w,
            path,
            rate: args.rate,
            rotation,
            json,
            seed: seed.wrapping_add(w + 1),
        };
        let s = Arc::clone(&stop);
        handles.push(std::thread::spawn(move || writer(spec, s, wl)));
    }
    // The poison entry's file: a line every 500 ms, never indexed.
    let poison = {
        let dir = logs.join("poison");
        std::fs::create_dir_all(&dir).expect("poison dir");
        let s = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut f = open_append(&dir.join("p.log"));
            while !s.load(Ordering::SeqCst) {
                let _ = writeln!(f, "poison line (partition 99 does not exist)");
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let probe_w = 999;
    topic_of.insert(probe_w, run.clone());
    let probe_dir = logs.join("probe");
    std::fs::create_dir_all(&probe_dir).expect("probe dir");
    let probe_stack = stack.clone();
    let probe_index = format!("{run}-*");
    let probe_stop = Arc::clone(&stop);
    // Fault moments on the probe's clock (issue #13 item 5).
    let epoch = Instant::now();
    let failover = Arc::new(Failovers::new(epoch));
    let kafka_probe = tokio::spawn(integration::failover::kafka_probe(
        stack.clone(),
        failover_topic.clone(),
        format!("{failover_topic}-*"),
        epoch,
        Arc::clone(&stop),
        Duration::from_secs(120),
    ));
    let probe = tokio::spawn(async move {
        // One probe line every 250 ms carrying its write time; a checker
        // finds new probes in Elasticsearch every 100 ms.
        let mut f = open_append(&probe_dir.join("app.log"));
        let mut written: Vec<Duration> = Vec::new();
        let mut found: HashMap<u64, Duration> = HashMap::new();
        let mut last_write = Duration::ZERO;
        loop {
            let stopping = probe_stop.load(Ordering::SeqCst);
            let now = epoch.elapsed();
            if !stopping && (written.is_empty() || now - last_write >= Duration::from_millis(250)) {
                let _ = writeln!(f, "tt w={probe_w} seq={} probe", written.len());
                written.push(epoch.elapsed());
                last_write = now;
            }
            let q = json!({"size": 200, "_source": ["message"], "sort": [{"log.offset": "desc"}],
                "query": {"match_phrase": {"message": format!("tt w={probe_w}")}}});
            if let Some(v) = search(&probe_stack, &probe_index, q).await {
                for h in v["hits"]["hits"].as_array().into_iter().flatten() {
                    let Some((_, seq)) = h["_source"]["message"].as_str().and_then(parse_id) else {
                        continue;
                    };
                    if let (Some(at), false) = (written.get(seq as usize), found.contains_key(&seq))
                    {
                        found.insert(seq, epoch.elapsed().saturating_sub(*at));
                    }
                }
            }
            if stopping
                && (found.len() == written.len()
                    || epoch.elapsed() - last_write > Duration::from_secs(120))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lat: Vec<f64> = found.values().map(|d| d.as_secs_f64() * 1000.0).collect();
        let each: Vec<(Duration, Option<Duration>)> = (0..written.len() as u64)
            .map(|s| (written[s as usize], found.get(&s).copied()))
            .collect();
        (written.len() as u64, lat, each)
    });

    // The fault schedule.
    let mut rng = StdRng::seed_from_u64(seed);
    let span = (5.0, (args.duration as f64 - 15.0).max(6.0));
    let mut schedule: Vec<(f64, &str)> = Vec::new();
    let single = |n: u64| if args.cluster { 0 } else { n };
    let cluster = |n: u64| if args.cluster { n } else { 0 };
    for (kind, n) in [
        ("agent", args.agent_kills),
        ("transfer", args.transfer_kills),
        ("kafka", single(args.kafka_restarts)),
        ("elasticsearch", single(args.es_restarts)),
        ("etcd", single(args.etcd_restarts)),
        ("leader-kill", cluster(args.leader_kills)),
        ("broker-cut", cluster(args.broker_cuts)),
        ("etcd-leader-kill", cluster(args.etcd_leader_kills)),
        ("es-node-kill", cluster(args.es_node_kills)),
    ] {
        for _ in 0..n {
            schedule.push((rng.random_range(span.0..span.1), kind));
        }
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let faults = Arc::new(Faults::default());
    let t0 = Instant::now();
    let mut service_threads = Vec::new();
    let mut restarting: HashMap<&str, Arc<std::sync::Mutex<()>>> = HashMap::new();
    for (at, kind) in schedule {
        if let Some(d) = Duration::from_secs_f64(at).checked_sub(t0.elapsed()) {
            tokio::time::sleep(d).await;
        }
        match kind {
            "agent" => {
                let mut a = agent.lock().expect("agent");
                a.kill9();
                a.start();
                faults.agent_kill.fetch_add(1, Ordering::SeqCst);
            }
            "transfer" => {
                let mut t = transfer.lock().expect("transfer");
                t.kill9();
                t.start();
                failover.record(Failover::TransferRestart);
                faults.transfer_kill.fetch_add(1, Ordering::SeqCst);
            }
            fault @ ("leader-kill" | "broker-cut" | "etcd-leader-kill" | "es-node-kill") => {
                let down = Duration::from_secs(match fault {
                    "broker-cut" => args.cut_secs,
                    _ => rng.random_range(3..12),
                });
                let pick = rng.random_range(0..6usize);
                let (failover_c, topic) = (Arc::clone(&failover), run.clone());
                let f = Arc::clone(&faults);
                let reload = Arc::clone(&reload);
                let lock = Arc::clone(restarting.entry("cluster").or_default());
                service_threads.push(std::thread::spawn(move || {
                    // One cluster fault at a time: two brokers down at once
                    // would leave partitions without min.insync.replicas.
                    let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
                    cluster_fault(fault, pick, down, &topic, &failover_c, &f);
                    if fault == "etcd-leader-kill" {
                        reload.after_election();
                    }
                }));
            }
            service => {
                let down = Duration::from_secs(rng.random_range(3..12));
                let f = Arc::clone(&faults);
                let lock = Arc::clone(restarting.entry(service).or_default());
                let failover_o = Arc::clone(&failover);
                let back = (service == "kafka")
                    .then(|| (Arc::clone(&failover), stack.kafka_brokers.clone()));
                service_threads.push(std::thread::spawn(move || {
                    // Restarts of one service never overlap (a second stop
                    // while the first start still waits would leave two
                    // instances fighting over the port).
                    let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
                    eprintln!("torture: {service} down for {down:?}");
                    let outage = failover_o.outage_began(service);
                    stack_cmd(&["stop", service]);
                    std::thread::sleep(down);
                    let watch = back.map(|(failover, brokers)| {
                        std::thread::spawn(move || {
                            let addr = brokers.split(',').next().unwrap_or_default().to_string();
                            failover.record_when_accepting(&addr, Duration::from_secs(300));
                        })
                    });
                    while !stack_cmd(&["start", service]) {
                        // A start that timed out may have left it running
                        // (a loaded machine): stop it before trying again.
                        eprintln!("torture: {service} did not start; stopping it and retrying");
                        stack_cmd(&["stop", service]);
                        std::thread::sleep(Duration::from_secs(2));
                    }
                    failover_o.outage_ended(outage);
                    if let Some(w) = watch {
                        let _ = w.join();
                    }
                    let counter = match service {
                        "kafka" => &f.kafka_restart,
                        "elasticsearch" => &f.es_restart,
                        _ => &f.etcd_restart,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                }));
            }
        }
    }
    if let Some(d) = Duration::from_secs(args.duration).checked_sub(t0.elapsed()) {
        tokio::time::sleep(d).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = poison.join();
    let mut written: HashMap<u64, u64> = HashMap::new();
    for (w, h) in handles.into_iter().enumerate() {
        written.insert(w as u64, h.join().expect("writer"));
    }
    for t in service_threads {
        let _ = t.join();
    }
    let (probes, mut lat, probe_log) = probe.await.expect("probe");
    written.insert(probe_w, probes);
    for (w, n) in reload.written.lock().expect("reloads").iter() {
        written.insert(*w, *n);
        topic_of.insert(*w, run.clone());
    }
    let total: u64 = written.values().sum();
    eprintln!("torture: writers stopped after {total} lines; draining");

    // `<run>-*` covers the nest and json topics' indices too.
    let index = format!("{run}-*,-*-deadletter");
    let drain_secs = drain(
        &stack,
        &index,
        total,
        Duration::from_secs(args.drain),
        || agent_setup.try_metric("logagent_wal_unacked_records") == Some(0.0),
    )
    .await;
    let messages = all_messages(&stack, &index).await.unwrap_or_default();
    agent.lock().expect("agent").terminate();
    transfer.lock().expect("transfer").terminate();

    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    // Per topic: lines found there that belong to another topic.
    let mut misrouted: HashMap<String, u64> = HashMap::new();
    let mut misrouted_first = Vec::new();
    for (topic, m) in &messages {
        if let Some(id) = parse_id(m) {
            *seen.entry(id).or_default() += 1;
            if topic_of.get(&id.0).is_some_and(|t| t != topic) {
                *misrouted.entry(topic.clone()).or_default() += 1;
                if misrouted_first.len() < 10 {
                    misrouted_first.push((topic.clone(), id));
                }
            }
        }
    }
    if !misrouted_first.is_empty() {
        eprintln!("torture: misrouted (topic, (writer, seq)), first 10: {misrouted_first:?}");
    }
    let duplicated: u64 = seen.values().map(|c| c - 1).sum();
    let dups: Vec<&(u64, u64)> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, _)| k)
        .take(10)
        .collect();
    if !dups.is_empty() {
        eprintln!("torture: duplicated (writer, seq), first 10: {dups:?}");
    }
    let mut lost = Vec::new();
    let mut ct_lost = 0;
    let mut ct_at_risk = 0;
    let mut deleted_lost = 0;
    let ranges_of = |pick: fn(&WriterLog) -> &Vec<(u64, u64)>| -> HashMap<u64, Vec<(u64, u64)>> {
        logs_of
            .iter()
            .enumerate()
            .map(|(w, l)| {
                (
                    w as u64,
                    l.lock().map(|l| pick(&l).clone()).unwrap_or_default(),
                )
            })
            .collect()
    };
    let truncated = ranges_of(|l| &l.truncated);
    let deleted = ranges_of(|l| &l.deleted);
    let within = |r: &HashMap<u64, Vec<(u64, u64)>>, w: u64, s: u64| {
        r.get(&w)
            .is_some_and(|r| r.iter().any(|(a, b)| (*a..=*b).contains(&s)))
    };
    for ranges in truncated.values() {
        ct_at_risk += ranges.iter().map(|(a, b)| b - a + 1).sum::<u64>();
    }
    for (&w, &n) in &written {
        for s in 0..n {
            if !seen.contains_key(&(w, s)) {
                if within(&truncated, w, s) {
                    ct_lost += 1;
                } else if within(&deleted, w, s) {
                    deleted_lost += 1;
                } else {
                    lost.push((w, s));
                }
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    // Per topic: written, lost, duplicated, misrouted (issue #12).
    let mut topics: Vec<&String> = topic_of.values().collect();
    topics.sort();
    topics.dedup();
    for t in &topics {
        let ws: Vec<u64> = topic_of
            .iter()
            .filter(|(_, x)| x == t)
            .map(|(w, _)| *w)
            .collect();
        let w_total: u64 = ws
            .iter()
            .map(|w| written.get(w).copied().unwrap_or(0))
            .sum();
        let t_lost = lost.iter().filter(|(w, _)| ws.contains(w)).count();
        let t_dup: u64 = seen
            .iter()
            .filter(|((w, _), _)| ws.contains(w))
            .map(|(_, c)| c - 1)
            .sum();
        println!(
            "topic={t} written={w_total} lost={t_lost} duplicated={t_dup} misrouted={}",
            misrouted.get(*t).copied().unwrap_or(0)
        );
    }
    let misrouted_total: u64 = misrouted.values().sum();
    let cluster_faults = if args.cluster {
        format!(
            " leader_kill={} broker_cut={} etcd_leader_kill={} es_node_kill={} reloads={}",
            faults.leader_kill.load(Ordering::SeqCst),
            faults.broker_cut.load(Ordering::SeqCst),
            faults.etcd_leader_kill.load(Ordering::SeqCst),
            faults.es_node_kill.load(Ordering::SeqCst),
            reload.written.lock().map(|w| w.len()).unwrap_or(0),
        )
    } else {
        String::new()
    };
    println!(
        "written={total} indexed={} lost={} duplicated={duplicated} misrouted={misrouted_total} copytruncate_at_risk={ct_at_risk} copytruncate_lost={ct_lost} deleted_lost={deleted_lost} \
         latency_ms p50={:.0} p99={:.0} max={:.0} (probes={}) \
         faults agent_kill={} transfer_kill={} kafka_restart={} es_restart={} etcd_restart={}{cluster_faults} \
         seed={seed} duration={}s drain={drain_secs:.0}s",
        seen.len(),
        lost.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        lat.len(),
        faults.agent_kill.load(Ordering::SeqCst),
        faults.transfer_kill.load(Ordering::SeqCst),
        faults.kafka_restart.load(Ordering::SeqCst),
        faults.es_restart.load(Ordering::SeqCst),
        faults.etcd_restart.load(Ordering::SeqCst),
        args.duration,
    );
    let kafka_log = kafka_probe.await.unwrap_or_default();
    for l in failover
        .report("kafka", &kafka_log)
        .into_iter()
        .chain(failover.report("agent", &probe_log))
    {
        println!("{l}");
    }
    if misrouted_total > 0 {
        eprintln!(
            "torture: MISROUTED {misrouted_total} lines; logs kept in {}",
            dir.path().display()
        );
        let _ = dir.keep();
        std::process::exit(1);
    }
    if !lost.is_empty() {
        eprintln!(
            "torture: LOST {} lines, first {:?}; logs kept in {}",
            lost.len(),
            &lost[..lost.len().min(20)],
            dir.path().display()
        );
        let _ = dir.keep();
        std::process::exit(1);
    }
    if std::env::var_os("TORTURE_KEEP").is_some() {
        eprintln!(
            "torture: logs kept in {} (TORTURE_KEEP)",
            dir.path().display()
        );
        let _ = dir.keep();
    }
}
