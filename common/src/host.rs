//! The host's own state as Prometheus metrics (issue #19 item 2), read at
//! each scrape from `/proc` (the procfs crate) and `statvfs` (rustix): CPU
//! seconds by mode, load averages, memory, the filesystems of the paths the
//! caller names (the agent: its data directory — the WAL's disk — and its
//! allowed roots) and bytes per network interface. Rendered as OpenMetrics
//! text under `prefix` (`logagent_host_…`); what cannot be read is left out.
//! The same [`HostSample`] is what the agent ships as events when
//! `[host_metrics] topic` is set (`agent::host_events`).

use std::fmt::Write;
use std::path::PathBuf;

/// A filesystem to report: a label (`data_dir`, `root:/var/log`) and a path on it.
#[derive(Debug, Clone)]
pub struct Filesystem {
    pub label: String,
    pub path: PathBuf,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One reading of the host's state; what could not be read is absent.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HostSample {
    /// CPU seconds of all cores by mode (user, nice, system, idle, iowait,
    /// irq, softirq, steal), since boot.
    pub cpu_seconds: Vec<(&'static str, f64)>,
    pub cpus: Option<usize>,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: Option<[f64; 3]>,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub filesystems: Vec<FilesystemSample>,
    pub network: Vec<NetworkSample>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FilesystemSample {
    pub fs: String,
    pub path: String,
    pub size_bytes: u64,
    pub avail_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NetworkSample {
    pub device: String,
    pub receive_bytes: u64,
    pub transmit_bytes: u64,
}

impl HostSample {
    /// Reads `/proc` and `statvfs` of each of `filesystems`.
    pub fn read(filesystems: &[Filesystem]) -> Self {
        use procfs::{Current, CurrentSI};
        let mut s = Self::default();
        if let Ok(k) = procfs::KernelStats::current() {
            let tps = procfs::ticks_per_second() as f64;
            let t = &k.total;
            let modes = [
                ("user", Some(t.user)),
                ("nice", Some(t.nice)),
                ("system", Some(t.system)),
                ("idle", Some(t.idle)),
                ("iowait", t.iowait),
                ("irq", t.irq),
                ("softirq", t.softirq),
                ("steal", t.steal),
            ];
            s.cpu_seconds = modes
                .iter()
                .filter_map(|(m, v)| v.map(|v| (*m, v as f64 / tps)))
                .collect();
            s.cpus = Some(k.cpu_time.len());
        }
        if let Ok(l) = procfs::LoadAverage::current() {
            s.load = Some([f64::from(l.one), f64::from(l.five), f64::from(l.fifteen)]);
        }
        if let Ok(m) = procfs::Meminfo::current() {
            s.memory_total_bytes = Some(m.mem_total);
            s.memory_available_bytes = m.mem_available;
        }
        for fs in filesystems {
            if let Ok(v) = rustix::fs::statvfs(&fs.path) {
                s.filesystems.push(FilesystemSample {
                    fs: fs.label.clone(),
                    path: fs.path.display().to_string(),
                    size_bytes: v.f_blocks * v.f_frsize,
                    avail_bytes: v.f_bavail * v.f_frsize,
                });
            }
        }
        if let Ok(devs) = procfs::net::dev_status() {
            let mut names: Vec<&String> = devs.keys().collect();
            names.sort();
            s.network = names
                .into_iter()
                .map(|n| NetworkSample {
                    device: n.clone(),
                    receive_bytes: devs[n].recv_bytes,
                    transmit_bytes: devs[n].sent_bytes,
                })
                .collect();
        }
        s
    }

    /// The share of CPU time spent working (not idle or waiting for I/O)
    /// between `earlier` and this sample, 0–1.
    pub fn cpu_busy_since(&self, earlier: &Self) -> Option<f64> {
        let sum = |s: &Self, idle: bool| -> f64 {
            s.cpu_seconds
                .iter()
                .filter(|(m, _)| idle == matches!(*m, "idle" | "iowait"))
                .map(|(_, v)| v)
                .sum()
        };
        let busy = sum(self, false) - sum(earlier, false);
        let idle = sum(self, true) - sum(earlier, true);
        (busy + idle > 0.0).then(|| (busy / (busy + idle)).clamp(0.0, 1.0))
    }

    /// The OpenMetrics text of the sample (no `# EOF`).
    pub fn openmetrics(&self, prefix: &str) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            if samples.is_empty() {
                return;
            }
            let full = format!("{prefix}_host_{name}");
            let _ = writeln!(out, "# HELP {full} {help}\n# TYPE {full} {kind}");
            let suffix = if kind == "counter" { "_total" } else { "" };
            for (labels, v) in samples {
                let _ = writeln!(out, "{full}{suffix}{labels} {v}");
            }
        };
        let one = |v: Option<f64>| -> Vec<(String, f64)> {
            v.map(|v| (String::new(), v)).into_iter().collect()
        };
        family(
            "cpu_seconds",
            "counter",
            "CPU time of all cores by mode, in seconds.",
            &self
                .cpu_seconds
                .iter()
                .map(|(m, v)| (format!("{{mode=\"{m}\"}}"), *v))
                .collect::<Vec<_>>(),
        );
        family(
            "cpus",
            "gauge",
            "CPUs (cores) the kernel reports.",
            &one(self.cpus.map(|c| c as f64)),
        );
        for (i, n) in ["load1", "load5", "load15"].iter().enumerate() {
            family(n, "gauge", "Load average.", &one(self.load.map(|l| l[i])));
        }
        family(
            "memory_total_bytes",
            "gauge",
            "Physical memory.",
            &one(self.memory_total_bytes.map(|v| v as f64)),
        );
        family(
            "memory_available_bytes",
            "gauge",
            "Memory available to new work without swapping.",
            &one(self.memory_available_bytes.map(|v| v as f64)),
        );
        let fs_labels = |f: &FilesystemSample| {
            format!("{{fs=\"{}\",path=\"{}\"}}", escape(&f.fs), escape(&f.path))
        };
        family(
            "filesystem_size_bytes",
            "gauge",
            "Size of the filesystem holding the path.",
            &self
                .filesystems
                .iter()
                .map(|f| (fs_labels(f), f.size_bytes as f64))
                .collect::<Vec<_>>(),
        );
        family(
            "filesystem_avail_bytes",
            "gauge",
            "Bytes available to unprivileged users on the filesystem holding the path.",
            &self
                .filesystems
                .iter()
                .map(|f| (fs_labels(f), f.avail_bytes as f64))
                .collect::<Vec<_>>(),
        );
        let dev = |n: &NetworkSample| format!("{{device=\"{}\"}}", escape(&n.device));
        family(
            "network_receive_bytes",
            "counter",
            "Bytes received by the interface.",
            &self
                .network
                .iter()
                .map(|n| (dev(n), n.receive_bytes as f64))
                .collect::<Vec<_>>(),
        );
        family(
            "network_transmit_bytes",
            "counter",
            "Bytes sent by the interface.",
            &self
                .network
                .iter()
                .map(|n| (dev(n), n.transmit_bytes as f64))
                .collect::<Vec<_>>(),
        );
        out
    }
}

/// The OpenMetrics text of the host's metrics (no `# EOF`).
pub fn host_metrics(prefix: &str, filesystems: &[Filesystem]) -> String {
    HostSample::read(filesystems).openmetrics(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_described() {
        let t = host_metrics(
            "x",
            &[Filesystem {
                label: "data_dir".into(),
                path: std::env::temp_dir(),
            }],
        );
        for m in [
            "x_host_cpu_seconds_total{mode=\"idle\"} ",
            "x_host_load1 ",
            "x_host_memory_total_bytes ",
            "x_host_memory_available_bytes ",
            "x_host_filesystem_size_bytes{fs=\"data_dir\",path=",
            "x_host_filesystem_avail_bytes{fs=\"data_dir\",path=",
            "x_host_network_receive_bytes_total{device=\"lo\"} ",
            "# TYPE x_host_cpu_seconds counter",
        ] {
            assert!(t.contains(m), "{m} in\n{t}");
        }
    }

    #[test]
    fn cpu_busy_is_the_share_of_working_time() {
        let at = |user: f64, idle: f64| HostSample {
            cpu_seconds: vec![("user", user), ("idle", idle), ("iowait", 0.0)],
            ..HostSample::default()
        };
        assert_eq!(at(30.0, 70.0).cpu_busy_since(&at(10.0, 50.0)), Some(0.5));
        assert_eq!(at(1.0, 1.0).cpu_busy_since(&at(1.0, 1.0)), None);
    }
}
