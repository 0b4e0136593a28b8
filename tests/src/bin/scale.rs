//! Many agents on one machine (issue #18 item 4): `--steps 10,25,50` agents
//! (distinct host ids, data, log and metrics), each following its own
//! collect key `<prefix>/collect/h<k>` and tailing its own file at `--rate`
//! lines/s, into one topic consumed by `--transfers` logtransfer instances
//! of one group, of which one leaves (SIGTERM, or kill -9 every other time)
//! or joins every `--churn-secs`.
//!
//! Every agent's key is in etcd before the first starts, so each start-up
//! happens in front of the whole fleet's keys. Per step it prints:
//!
//! `step agents=N startup_ms p50=… max=… etcd_reads_per_start=…
//!  etcd_cpu_pct=… etcd_watchers=… etcd_rx_bytes_per_s=… agent_cpu_pct=…
//!  agent_rss_mib=… lines_per_s=…`
//!
//! - start-up: from spawning an agent until Kafka acknowledged its first
//!   line (a line waits in its file before the spawn), agents started one
//!   at a time while the others run;
//! - etcd figures: from the members' own `/metrics`, summed over them:
//!   read requests (Range, Txn) served during the step's start-ups per
//!   agent started,
//!   then over a `--step-secs` window with every agent running: CPU (% of
//!   one core), watchers, bytes received from clients per second;
//! - agent figures over the same window: CPU (% of one core) and RSS, the
//!   average per agent (from /proc), and the lines Kafka acknowledged per
//!   second for all of them.
//!
//! At the end the writers stop, the tool waits for Elasticsearch to hold
//! every line (bounded by `--drain`), reads every document back and prints
//! `written=N indexed=N lost=N duplicated=N agents=N transfer_joins=N
//! transfer_leaves=N transfer_kills=N startup_failures=N drain=Ns`. Exits 1
//! when a line was lost or duplicated, or an agent did not start.
//!
//! Needs a stack (`eval "$(scripts/cluster env)"` or `scripts/stack env`)
//! and the binaries built beside this one. See `scripts/scale`.

use clap::Parser;
use integration::agent_run::{self, etcd_put, free_port, http_get, Agent, AgentSetup};
use integration::readback::{all_messages, drain, parse_id, pct};
use integration::{transfer_run, Stack};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "scale")]
struct Args {
    /// Agent counts to step through, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50")]
    steps: Vec<usize>,
    /// Lines per second per agent.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// logtransfer instances (one group).
    #[arg(long, default_value_t = 3)]
    transfers: usize,
    /// Seconds measured at each step once its agents are up.
    #[arg(long, default_value_t = 60)]
    step_secs: u64,
    /// Every this many seconds one transfer leaves or one joins.
    #[arg(long, default_value_t = 20)]
    churn_secs: u64,
    /// Partitions of the run's topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Most seconds to wait for the pipeline to drain at the end.
    #[arg(long, default_value_t = 300)]
    drain: u64,
    /// Seed of the churn (default: the time).
    #[arg(long)]
    seed: Option<u64>,
}

/// The sum of the samples of `name` whose labels contain `label` ("" for
/// all) in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']) && r.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the etcd members say of themselves, summed over them.
#[derive(Debug, Default, Clone, Copy)]
struct EtcdSample {
    cpu_secs: f64,
    /// Range and Txn requests served.
    reads: f64,
    watchers: f64,
    rx_bytes: f64,
}

fn etcd_sample(stack: &Stack) -> EtcdSample {
    let mut s = EtcdSample::default();
    for e in &stack.etcd_endpoints {
        let addr = e.trim_start_matches("http://").trim_end_matches('/');
        let Some((200, text)) = http_get(addr, "/metrics") else {
            eprintln!("scale: no /metrics from etcd {addr}");
            continue;
        };
        s.cpu_secs += metric_sum(&text, "process_cpu_seconds_total", "");
        // An agent reads its two keys in one Txn; a plain get is a Range.
        for method in ["grpc_method=\"Range\"", "grpc_method=\"Txn\""] {
            s.reads += metric_sum(&text, "grpc_server_handled_total", method);
        }
        s.watchers += metric_sum(&text, "etcd_debugging_mvcc_watcher_total", "");
        s.rx_bytes += metric_sum(&text, "etcd_network_client_grpc_received_bytes_total", "");
    }
    s
}

/// CPU seconds (user + system) a process used so far; 0 when it is gone.
fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command's closing parenthesis: state is the 3rd
    // field of the line, utime the 14th, stime the 15th. Linux's clock
    // tick is 100 Hz on every architecture this runs on.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// A process's resident memory in MiB; 0 when it is gone.
fn proc_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The writers of every agent's file, on one thread: an agent's file gets
/// lines from the moment it is activated, `rate` per second.
struct Writers {
    files: Vec<PathBuf>,
    since: Mutex<Vec<Option<Instant>>>,
    written: Vec<AtomicU64>,
}

impl Writers {
    fn activate(&self, k: usize) {
        if let Ok(mut s) = self.since.lock() {
            s[k] = Some(Instant::now());
        }
    }

    fn run(&self, rate: u64, stop: &AtomicBool) {
        let mut open: Vec<Option<std::fs::File>> = self.files.iter().map(|_| None).collect();
        let pad = "p".repeat(60);
        while !stop.load(Ordering::SeqCst) {
            let since = self.since.lock().map(|s| s.clone()).unwrap_or_default();
            for (k, at) in since.iter().enumerate() {
                let Some(at) = at else { continue };
                // One line at once, then `rate` per second.
                let due = 1 + (at.elapsed().as_secs_f64() * rate as f64) as u64;
                let done = self.written[k].load(Ordering::SeqCst);
                if due <= done {
                    continue;
                }
                if open[k].is_none() {
                    open[k] = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.files[k])
                        .map_err(|e| eprintln!("scale: {}: {e}", self.files[k].display()))
                        .ok();
                }
                let Some(f) = open[k].as_mut() else { continue };
                let mut buf = Vec::new();
                for seq in done..due {
                    let _ = writeln!(buf, "tt w={k} seq={seq} scale {pad}");
                }
                if f.write_all(&buf).is_ok() {
                    self.written[k].store(due, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The logtransfer instances of the run's group, leaving and joining.
struct Transfers {
    configs: Vec<(PathBuf, PathBuf)>,
    children: Vec<Option<Child>>,
    joins: u64,
    leaves: u64,
    kills: u64,
}

impl Transfers {
    fn start(&mut self, i: usize) {
        if self.children[i].is_none() {
            let (cfg, log) = &self.configs[i];
            self.children[i] = Some(transfer_run::spawn(cfg, log));
        }
    }

    /// SIGTERM (a clean leave) or, with `kill`, kill -9.
    fn stop(&mut self, i: usize, kill: bool) {
        if let Some(c) = self.children[i].take() {
            integration::stop_child(c, kill);
        }
    }

    /// One leave (when all run) or one join (when one is out).
    fn churn(&mut self, rng: &mut StdRng) {
        let out: Vec<usize> = (0..self.children.len())
            .filter(|i| self.children[*i].is_none())
            .collect();
        if let Some(&i) = out.first() {
            eprintln!("scale: transfer {i} joins");
            self.start(i);
            self.joins += 1;
        } else {
            let i = rng.random_range(0..self.children.len());
            let kill = self.leaves % 2 == 1;
            eprintln!(
                "scale: transfer {i} leaves ({})",
                if kill { "kill -9" } else { "SIGTERM" }
            );
            self.stop(i, kill);
            self.leaves += 1;
            self.kills += u64::from(kill);
        }
    }
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
    let max = args.steps.iter().copied().max().unwrap_or(0);
    if max == 0 || args.transfers == 0 {
        eprintln!("scale: --steps needs a positive count and --transfers at least 1");
        std::process::exit(2);
    }
    let stack = Stack::from_env();
    let run = format!("scale-{seed}-{}", std::process::id());
    let dir = tempfile::Builder::new()
        .prefix("scale-")
        .tempdir()
        .expect("tmp");
    eprintln!(
        "scale: seed={seed} steps={:?} rate={}/s transfers={} dir={}",
        args.steps,
        args.rate,
        args.transfers,
        dir.path().display()
    );
    stack.create_topic(&run, args.partitions).await;
    let prefix = format!("/{run}");

    // Every agent's files and collect key, before any starts.
    let mut setups: Vec<AgentSetup> = Vec::new();
    let mut files = Vec::new();
    for k in 0..max {
        let adir = dir.path().join(format!("a{k}"));
        let logs = adir.join("logs");
        std::fs::create_dir_all(&logs).expect("agent dirs");
        let setup = agent_run::setup(&stack, &adir, &format!("h{k}"), &prefix, &[&logs], "");
        let entry = json!([{"path": format!("{}/*.log", logs.display()), "topic": run}]);
        etcd_put(&stack, &setup.collect_key(), &entry.to_string()).await;
        files.push(logs.join("app.log"));
        setups.push(setup);
    }
    let writers = Arc::new(Writers {
        since: Mutex::new(vec![None; max]),
        written: (0..max).map(|_| AtomicU64::new(0)).collect(),
        files,
    });
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = {
        let (w, s, rate) = (Arc::clone(&writers), Arc::clone(&stop_writing), args.rate);
        std::thread::spawn(move || w.run(rate, &s))
    };

    // The transfers and their churn.
    let transfers = Arc::new(Mutex::new(Transfers {
        configs: (0..args.transfers)
            .map(|i| {
                let cfg = dir.path().join(format!("transfer{i}.toml"));
                let metrics = format!("127.0.0.1:{}", free_port());
                std::fs::write(
                    &cfg,
                    transfer_run::config_text(&stack, &[&run], &run, &metrics, ""),
                )
                .expect("transfer config");
                (cfg, dir.path().join(format!("transfer{i}.log")))
            })
            .collect(),
        children: (0..args.transfers).map(|_| None).collect(),
        joins: 0,
        leaves: 0,
        kills: 0,
    }));
    if let Ok(mut t) = transfers.lock() {
        for i in 0..args.transfers {
            t.start(i);
        }
    }
    let stop_churn = Arc::new(AtomicBool::new(false));
    let churn = {
        let (t, s, every) = (
            Arc::clone(&transfers),
            Arc::clone(&stop_churn),
            Duration::from_secs(args.churn_secs.max(1)),
        );
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut last = Instant::now();
            while !s.load(Ordering::SeqCst) {
                if last.elapsed() >= every {
                    if let Ok(mut t) = t.lock() {
                        t.churn(&mut rng);
                    }
                    last = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    // The steps.
    let mut agents: Vec<Agent> = Vec::new();
    let mut startup_failures = 0;
    for &n in &args.steps {
        let before = etcd_sample(&stack);
        let mut startups = Vec::new();
        let first_new = agents.len();
        while agents.len() < n {
            let k = agents.len();
            writers.activate(k);
            let t = Instant::now();
            agents.push(setups[k].start_logging("warn"));
            let up = agent_run::wait_for(Duration::from_secs(120), || {
                setups[k].metric("logagent_lines_acked_total") >= 1.0
            });
            if up {
                startups.push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                startup_failures += 1;
                eprintln!(
                    "scale: agent h{k} acknowledged nothing within 120 s; its log: {}",
                    setups[k].log.display()
                );
            }
        }
        let started = (agents.len() - first_new).max(1) as f64;
        let after_starts = etcd_sample(&stack);
        // The window: every agent running.
        let pids: Vec<u32> = agents.iter().map(|a| a.child.id()).collect();
        let cpu0: f64 = pids.iter().map(|p| proc_cpu_secs(*p)).sum();
        let acked = |upto: usize| -> f64 {
            setups[..upto]
                .iter()
                .map(|s| s.metric("logagent_lines_acked_total"))
                .sum()
        };
        let acked0 = acked(agents.len());
        let t0 = Instant::now();
        let e0 = etcd_sample(&stack);
        tokio::time::sleep(Duration::from_secs(args.step_secs)).await;
        let e1 = etcd_sample(&stack);
        let secs = t0.elapsed().as_secs_f64();
        let cpu1: f64 = pids.iter().map(|p| proc_cpu_secs(*p)).sum();
        let rss: f64 = pids.iter().map(|p| proc_rss_mib(*p)).sum();
        let acked1 = acked(agents.len());
        startups.sort_by(f64::total_cmp);
        let count = agents.len() as f64;
        println!(
            "step agents={} startup_ms p50={:.0} max={:.0} etcd_reads_per_start={:.1} \
             etcd_cpu_pct={:.1} etcd_watchers={:.0} etcd_rx_bytes_per_s={:.0} \
             agent_cpu_pct={:.2} agent_rss_mib={:.1} lines_per_s={:.0}",
            agents.len(),
            pct(&startups, 0.5),
            startups.last().copied().unwrap_or(0.0),
            (after_starts.reads - before.reads) / started,
            (e1.cpu_secs - e0.cpu_secs) / secs * 100.0,
            e1.watchers,
            (e1.rx_bytes - e0.rx_bytes) / secs,
            (cpu1 - cpu0) / secs * 100.0 / count,
            rss / count,
            (acked1 - acked0) / secs,
        );
    }

    // Stop writing; every transfer back for the drain.
    stop_churn.store(true, Ordering::SeqCst);
    let _ = churn.join();
    if let Ok(mut t) = transfers.lock() {
        for i in 0..args.transfers {
            t.start(i);
        }
    }
    stop_writing.store(true, Ordering::SeqCst);
    let _ = writer.join();
    let written: Vec<u64> = writers
        .written
        .iter()
        .map(|w| w.load(Ordering::SeqCst))
        .collect();
    let total: u64 = written.iter().sum();
    eprintln!("scale: writers stopped after {total} lines; draining");
    let index = format!("{run}-*");
    // An agent that does not answer counts as not drained.
    let drain_secs = drain(
        &stack,
        &index,
        total,
        Duration::from_secs(args.drain),
        || {
            setups[..agents.len()]
                .iter()
                .all(|s| s.try_metric("logagent_wal_unacked_records") == Some(0.0))
        },
    )
    .await;
    let messages = all_messages(&stack, &index).await.unwrap_or_default();
    for a in &mut agents {
        a.terminate(Duration::from_secs(20));
    }
    let (joins, leaves, kills) = match transfers.lock() {
        Ok(mut t) => {
            for i in 0..args.transfers {
                t.stop(i, false);
            }
            (t.joins, t.leaves, t.kills)
        }
        Err(_) => (0, 0, 0),
    };

    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    for (_, m) in &messages {
        if let Some(id) = parse_id(m) {
            *seen.entry(id).or_default() += 1;
        }
    }
    let duplicated: u64 = seen.values().map(|c| c - 1).sum();
    let mut lost = Vec::new();
    for (w, &n) in written.iter().enumerate() {
        for s in 0..n {
            if !seen.contains_key(&(w as u64, s)) {
                lost.push((w, s));
            }
        }
    }
    println!(
        "written={total} indexed={} lost={} duplicated={duplicated} agents={} \
         transfer_joins={joins} transfer_leaves={leaves} transfer_kills={kills} \
         startup_failures={startup_failures} seed={seed} drain={drain_secs:.0}s",
        seen.len(),
        lost.len(),
        agents.len(),
    );
    if !lost.is_empty() || duplicated > 0 || startup_failures > 0 {
        eprintln!(
            "scale: FAILED: lost first {:?}; logs kept in {}",
            &lost[..lost.len().min(20)],
            dir.path().display()
        );
        let _ = dir.keep();
        std::process::exit(1);
    }
}
