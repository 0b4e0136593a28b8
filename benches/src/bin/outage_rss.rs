//! logagent's memory during a long Kafka outage (issue #12 item 8).
//!
//! Starts the release `logagent` with a static `[[collect]]` entry, Kafka
//! pointed at an address where nothing listens (the outage, from the first
//! second) and etcd too (so the static entry is used after the start-up
//! wait). `--files` files get `--rate` lines a second each, and each file is
//! rotated by rename every `--rotate-secs` (staggered; the generation before
//! is deleted, as `rotate 1` does). A small `--wal-mib` makes the WAL fill
//! and reading pause mid-run. Every `--every` seconds it samples the agent's
//! VmRSS and VmHWM (`/proc/<pid>/status`), the anonymous memory
//! (`smaps_rollup`), its threads and open descriptors, and its metrics
//! (`logagent_wal_unacked_bytes`, `logagent_paused`, lines read, files
//! open); at the end it prints a summary.
//!
//!   cargo build --release -p agent
//!   cargo run --release -p benches --bin outage_rss -- --duration 3600
//!
//! No stack is needed. Options (defaults): `--duration 3600 --files 300
//! --rate 20 --line-bytes 100 --rotate-secs 600 --wal-mib 512 --every 10
//! --agent target/release/logagent --kafka 127.0.0.1:59999
//! --etcd http://127.0.0.1:59998 --dir <a temp dir>`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Opts {
    duration: u64,
    files: usize,
    rate: u64,
    line_bytes: usize,
    rotate_secs: u64,
    wal_mib: u64,
    every: u64,
    agent: PathBuf,
    kafka: String,
    etcd: String,
    dir: Option<PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        duration: 3600,
        files: 300,
        rate: 20,
        line_bytes: 100,
        rotate_secs: 600,
        wal_mib: 512,
        every: 10,
        agent: benches::repo_root().join("target/release/logagent"),
        kafka: "127.0.0.1:59999".into(),
        etcd: "http://127.0.0.1:59998".into(),
        dir: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let (k, v) = match pair {
            [k, v] => (k.as_str(), v.as_str()),
            _ => usage(&format!("`{}` needs a value", pair[0])),
        };
        let num = |v: &str| -> u64 { v.parse().unwrap_or_else(|_| usage(&format!("{k} {v}"))) };
        match k {
            "--duration" => o.duration = num(v),
            "--files" => o.files = num(v) as usize,
            "--rate" => o.rate = num(v).max(1),
            "--line-bytes" => o.line_bytes = (num(v) as usize).max(40),
            "--rotate-secs" => o.rotate_secs = num(v),
            "--wal-mib" => o.wal_mib = num(v).max(1),
            "--every" => o.every = num(v).max(1),
            "--agent" => o.agent = v.into(),
            "--kafka" => o.kafka = v.into(),
            "--etcd" => o.etcd = v.into(),
            "--dir" => o.dir = Some(v.into()),
            _ => usage(&format!("unknown option {k}")),
        }
    }
    o
}

fn usage(why: &str) -> ! {
    eprintln!("outage_rss: {why}\nsee the module docs of benches/src/bin/outage_rss.rs");
    std::process::exit(2)
}

/// Nothing may answer at the outage addresses (never someone's broker).
fn refuse_if_listening(addr: &str) {
    let hostport = addr.split("://").last().unwrap_or(addr);
    if std::net::TcpStream::connect(hostport).is_ok() {
        usage(&format!(
            "something listens at {hostport}: pick a port where nothing does"
        ));
    }
}

fn start_agent(o: &Opts, dir: &Path, logs: &Path, metrics: &str) -> Child {
    let seg_mib = (o.wal_mib / 8).clamp(1, 64);
    let cfg = format!(
        "host_id = \"outage-bench\"\ndata_dir = \"{}\"\nallowed_roots = [\"{}\"]\n\
         [kafka]\nbrokers = \"{}\"\n[etcd]\nendpoints = [\"{}\"]\n\
         [metrics]\nlisten = \"{metrics}\"\n\
         [wal]\nmax_bytes = {}\nsegment_bytes = {}\n\
         [[collect]]\npath = \"{}/*.log\"\ntopic = \"outage_bench\"\n",
        dir.join("data").display(),
        logs.display(),
        o.kafka,
        o.etcd,
        o.wal_mib << 20,
        seg_mib << 20,
        logs.display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).expect("config");
    if !o.agent.exists() {
        usage(&format!(
            "{} is missing: cargo build --release -p agent (or --agent PATH)",
            o.agent.display()
        ));
    }
    let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
    Command::new(&o.agent)
        .arg("--config")
        .arg(&path)
        .arg("--shutdown-grace")
        .arg("2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn logagent")
}

/// Appends `rate` lines a second to each file and rotates each one every
/// `rotate_secs` (staggered) until `stop`; returns the lines written.
fn write_files(o: &Opts, logs: &Path, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::sync::atomic::Ordering;
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("log file")
    };
    let names: Vec<PathBuf> = (0..o.files)
        .map(|i| logs.join(format!("app{i:03}.log")))
        .collect();
    let mut files: Vec<std::fs::File> = names.iter().map(|p| open(p)).collect();
    let tick = Duration::from_secs_f64(1.0 / o.rate as f64);
    let start = Instant::now();
    let mut written = 0u64;
    let mut rotations = 0u64;
    let mut line = Vec::with_capacity(o.line_bytes);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = start + tick * u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        for (i, f) in files.iter_mut().enumerate() {
            line.clear();
            let _ = write!(line, "file={i:03} seq={n:09} ");
            line.resize(o.line_bytes - 1, b'x');
            line.push(b'\n');
            if f.write_all(&line).is_ok() {
                written += 1;
            }
        }
        n += 1;
        // Rotation: file i turns over when (ticks + its stagger) crosses a
        // multiple of the period.
        if o.rotate_secs > 0 {
            let period = o.rotate_secs * o.rate;
            for (i, p) in names.iter().enumerate() {
                let stagger = i as u64 * period / o.files as u64;
                if (n + stagger).is_multiple_of(period) {
                    let old = p.with_extension("log.1");
                    let _ = std::fs::remove_file(&old);
                    let _ = std::fs::rename(p, &old);
                    files[i] = open(p);
                    rotations += 1;
                }
            }
        }
    }
    eprintln!("writer: {written} lines, {rotations} rotations");
    written
}

/// A `Key:  N kB` field of a `/proc/<pid>/…` file, in KiB.
fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy, Default)]
struct Sample {
    t: u64,
    rss: u64,
    hwm: u64,
    anon: u64,
    threads: u64,
    fds: u64,
    wal: f64,
    paused: f64,
    read: f64,
    open: f64,
}

fn sample(pid: u32, metrics: &str, t: u64) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let body = benches::metrics_text(metrics).unwrap_or_default();
    Sample {
        t,
        rss: kib_field(&status, "VmRSS:"),
        hwm: kib_field(&status, "VmHWM:"),
        anon: kib_field(&rollup, "Anonymous:"),
        threads: kib_field(&status, "Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        wal: benches::metric_in(&body, "logagent_wal_unacked_bytes"),
        paused: benches::metric_in(&body, "logagent_paused"),
        read: benches::metric_in(&body, "logagent_lines_read_total"),
        open: benches::metric_in(&body, "logagent_files_open"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let o = opts();
    refuse_if_listening(&o.kafka);
    refuse_if_listening(&o.etcd);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = o.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs");
    let metrics = format!("127.0.0.1:{}", benches::free_port());
    println!(
        "outage_rss: {} files x {} lines/s x {} B, rotation every {} s, wal.max_bytes {} MiB, Kafka {} (nothing listens), {} s; dir {}",
        o.files, o.rate, o.line_bytes, o.rotate_secs, o.wal_mib, o.kafka, o.duration, dir.display()
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, logs) = (std::sync::Arc::clone(&stop), logs.clone());
        let o = o.clone();
        std::thread::spawn(move || write_files(&o, &logs, &stop))
    };
    let mut child = start_agent(&o, &dir, &logs, &metrics);
    let pid = child.id();
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut paused_at: Option<u64> = None;
    println!(
        "t_s rss_mib hwm_mib anon_mib threads fds wal_unacked_mib paused lines_read files_open"
    );
    while start.elapsed() < Duration::from_secs(o.duration) {
        std::thread::sleep(
            Duration::from_secs(o.every)
                .min(Duration::from_secs(o.duration).saturating_sub(start.elapsed())),
        );
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "logagent exited early: {status}; see {}",
                dir.join("agent.log").display()
            );
            break;
        }
        let s = sample(pid, &metrics, start.elapsed().as_secs());
        if s.paused >= 1.0 {
            paused_at = paused_at.or(Some(s.t));
        }
        println!(
            "{} {:.1} {:.1} {:.1} {} {} {:.1} {} {} {}",
            s.t,
            mib(s.rss),
            mib(s.hwm),
            mib(s.anon),
            s.threads,
            s.fds,
            s.wal / 1048576.0,
            s.paused,
            s.read,
            s.open
        );
        let _ = std::io::stdout().flush();
        samples.push(s);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let at = |secs: u64| {
        samples
            .iter()
            .find(|s| s.t >= secs)
            .map_or("-".to_string(), |s| format!("{:.1}", mib(s.rss)))
    };
    let last = samples.last().copied().unwrap_or_default();
    let max = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    println!(
        "summary: RSS MiB at 1 min {}, 10 min {}, 30 min {}, 60 min {}, max {:.1}, VmHWM {:.1}, last {:.1} (anonymous {:.1}) after {} s",
        at(60),
        at(600),
        at(1800),
        at(3600),
        mib(max),
        mib(last.hwm),
        mib(last.rss),
        mib(last.anon),
        last.t
    );
    println!(
        "summary: WAL unacked {:.1} MiB of {} MiB, paused since {}, lines written {written}, read into the WAL {}, files open {}, fds {}, threads {}",
        last.wal / 1048576.0,
        o.wal_mib,
        paused_at.map_or("never".to_string(), |t| format!("{t} s")),
        last.read,
        last.open,
        last.fds,
        last.threads
    );
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    println!(
        "agent log: {} lines ({} bytes)",
        log.lines().count(),
        log.len()
    );
}
