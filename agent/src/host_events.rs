//! The host's metrics as events (issue #19 item 2), when `[host_metrics]
//! topic` is set: searchable next to the host's logs.
//!
//! Every `interval_secs` a thread appends one JSON line — a
//! [`common::host::HostSample`] — to `<data_dir>/host-metrics/host-metrics.jsonl`,
//! and the agent collects that file with a built-in entry (`json`, under
//! the key `host_metrics`). So the samples take the lines' path: the WAL,
//! Kafka's acknowledgement, checkpoints; an outage delays them, it does not
//! drop them. At 8 MiB the file is renamed to `host-metrics.jsonl.1`
//! (replacing the one before), which the harvester reads to its end.
//!
//! A line:
//!
//! ```json
//! {"cpu_busy_ratio":0.12,"cpus":2,"load1":0.5,"load5":0.4,"load15":0.3,
//!  "memory_total_bytes":25000000000,"memory_available_bytes":20000000000,
//!  "memory_used_ratio":0.2,
//!  "filesystems":[{"fs":"data_dir","path":"/var/lib/logagent","size_bytes":…,
//!                  "avail_bytes":…,"used_ratio":0.31}],
//!  "network":[{"device":"eth0","receive_bytes":…,"transmit_bytes":…}]}
//! ```

use crate::collect::CollectEntry;
use crate::config::AgentConfig;
use common::host::{Filesystem, HostSample};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file's directory under `data_dir`.
pub const DIR: &str = "host-metrics";
/// The file the samples are appended to.
pub const FILE: &str = "host-metrics.jsonl";
/// Where the JSON of a sample goes in the event.
pub const JSON_KEY: &str = "host_metrics";
/// The file is rotated at this size.
pub const MAX_BYTES: u64 = 8 << 20;

/// The directory of the samples' file.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// The config the agent runs with: with shipping on, the built-in entry
/// for the samples' file, and its directory among the allowed roots.
pub fn effective(mut cfg: AgentConfig) -> AgentConfig {
    if cfg.host_metrics.topic.is_empty() {
        return cfg;
    }
    let d = dir(&cfg.data_dir);
    cfg.collect.push(CollectEntry {
        path: d.join(FILE).display().to_string(),
        topic: cfg.host_metrics.topic.clone(),
        exclude: Vec::new(),
        multiline: None,
        json: true,
        json_key: Some(JSON_KEY.into()),
        fields: Default::default(),
        partition: Default::default(),
        max_line_bytes: None,
        follow_symlinks: false,
        container: None,
    });
    cfg.allowed_roots.push(d);
    cfg
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// One sample as the JSON line written (pure): the sample's values plus
/// the ratios a dashboard wants (CPU busy since `earlier`, memory and
/// filesystems used).
pub fn line(sample: &HostSample, earlier: Option<&HostSample>) -> String {
    let mut o = Map::new();
    if let Some(b) = earlier.and_then(|e| sample.cpu_busy_since(e)) {
        o.insert("cpu_busy_ratio".into(), json!(round(b, 4)));
    }
    if let Some(c) = sample.cpus {
        o.insert("cpus".into(), json!(c));
    }
    if let Some([l1, l5, l15]) = sample.load {
        o.insert("load1".into(), json!(round(l1, 2)));
        o.insert("load5".into(), json!(round(l5, 2)));
        o.insert("load15".into(), json!(round(l15, 2)));
    }
    if let Some(t) = sample.memory_total_bytes {
        o.insert("memory_total_bytes".into(), json!(t));
        if let Some(a) = sample.memory_available_bytes {
            o.insert("memory_available_bytes".into(), json!(a));
            if t > 0 {
                let used = 1.0 - a as f64 / t as f64;
                o.insert("memory_used_ratio".into(), json!(round(used, 4)));
            }
        }
    }
    let fs: Vec<Value> = sample
        .filesystems
        .iter()
        .map(|f| {
            let used = if f.size_bytes > 0 {
                1.0 - f.avail_bytes as f64 / f.size_bytes as f64
            } else {
                0.0
            };
            json!({"fs": f.fs, "path": f.path, "size_bytes": f.size_bytes,
                   "avail_bytes": f.avail_bytes, "used_ratio": round(used, 4)})
        })
        .collect();
    if !fs.is_empty() {
        o.insert("filesystems".into(), Value::Array(fs));
    }
    if !sample.network.is_empty() {
        o.insert("network".into(), json!(sample.network));
    }
    Value::Object(o).to_string()
}

/// Appends `line` to the file in `dir`, renaming it to `.1` first once it
/// has reached [`MAX_BYTES`].
pub fn append(dir: &Path, line: &str) -> std::io::Result<()> {
    let path = dir.join(FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() >= MAX_BYTES) {
        std::fs::rename(&path, dir.join(format!("{FILE}.1")))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// Starts the sampling thread (with shipping on); it runs until the
/// process ends. The first sample is written at once.
///
/// # Errors
/// The directory cannot be made.
pub fn spawn(cfg: &AgentConfig, filesystems: Vec<Filesystem>) -> std::io::Result<()> {
    if cfg.host_metrics.topic.is_empty() {
        return Ok(());
    }
    let d = dir(&cfg.data_dir);
    std::fs::create_dir_all(&d)?;
    let every = Duration::from_secs(cfg.host_metrics.interval_secs.max(1));
    std::thread::Builder::new()
        .name("host-metrics".into())
        .spawn(move || {
            let mut earlier: Option<HostSample> = None;
            let mut failing = false;
            loop {
                let s = HostSample::read(&filesystems);
                match append(&d, &line(&s, earlier.as_ref())) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(dir = %d.display(), error = %e, "cannot write the host metrics sample; retrying at each interval");
                    }
                    Err(_) => {}
                }
                earlier = Some(s);
                std::thread::sleep(every);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::host::FilesystemSample;

    #[test]
    fn a_sample_is_one_json_object_with_its_ratios() {
        let at = |user: f64, idle: f64| HostSample {
            cpu_seconds: vec![("user", user), ("idle", idle)],
            cpus: Some(2),
            load: Some([0.5, 0.25, 0.125]),
            memory_total_bytes: Some(1000),
            memory_available_bytes: Some(250),
            filesystems: vec![FilesystemSample {
                fs: "data_dir".into(),
                path: "/var/lib/logagent".into(),
                size_bytes: 200,
                avail_bytes: 50,
            }],
            network: Vec::new(),
        };
        let v: Value = serde_json::from_str(&line(&at(30.0, 70.0), Some(&at(10.0, 50.0)))).unwrap();
        assert_eq!(v["cpu_busy_ratio"], 0.5);
        assert_eq!(v["cpus"], 2);
        assert_eq!(v["load5"], 0.25);
        assert_eq!(v["memory_used_ratio"], 0.75);
        assert_eq!(v["filesystems"][0]["used_ratio"], 0.75);
        assert!(v.get("network").is_none());
        let first: Value = serde_json::from_str(&line(&at(1.0, 1.0), None)).unwrap();
        assert!(first.get("cpu_busy_ratio").is_none(), "no earlier sample");
    }

    #[test]
    fn the_file_is_rotated_at_its_size() {
        let tmp = tempfile::tempdir().unwrap();
        let big = "x".repeat(1 << 20);
        for _ in 0..9 {
            append(tmp.path(), &big).unwrap();
        }
        append(tmp.path(), "{}").unwrap();
        let rotated = std::fs::metadata(tmp.path().join(format!("{FILE}.1"))).unwrap();
        assert!(rotated.len() >= MAX_BYTES);
        let now = std::fs::read_to_string(tmp.path().join(FILE)).unwrap();
        assert_eq!(now, format!("{big}\n{{}}\n"));
    }

    #[test]
    fn shipping_adds_the_entry_and_its_root_only_when_on() {
        let text = "data_dir = \"/var/lib/logagent\"\n[kafka]\nbrokers = \"k:9092\"\n[etcd]\nendpoints = [\"http://e:2379\"]\n";
        let off: AgentConfig = toml::from_str(text).unwrap();
        let n = off.collect.len();
        assert_eq!(effective(off).collect.len(), n);
        let on: AgentConfig = toml::from_str(&format!(
            "{text}[host_metrics]\ntopic = \"host_metrics\"\ninterval_secs = 5\n"
        ))
        .unwrap();
        let on = effective(on);
        let e = on.collect.last().unwrap();
        assert_eq!(e.path, "/var/lib/logagent/host-metrics/host-metrics.jsonl");
        assert_eq!(
            (e.topic.as_str(), e.json_key.as_deref()),
            ("host_metrics", Some("host_metrics"))
        );
        assert!(crate::collect::validate(e, &on.allowed_roots).is_ok());
    }
}
