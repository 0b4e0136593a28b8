//! The host's own state as Prometheus metrics (issue #19 item 2), read at
//! each scrape from `/proc` (the procfs crate) and `statvfs` (rustix): CPU
//! seconds by mode, load averages, memory, the filesystems of the paths the
//! caller names (the agent: its data directory — the WAL's disk — and its
//! allowed roots) and bytes per network interface. Rendered as OpenMetrics
//! text under `prefix` (`logagent_host_…`); what cannot be read is left out.

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

/// The OpenMetrics text of the host's metrics (no `# EOF`).
pub fn host_metrics(prefix: &str, filesystems: &[Filesystem]) -> String {
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
    use procfs::{Current, CurrentSI};
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
        let samples: Vec<(String, f64)> = modes
            .iter()
            .filter_map(|(m, v)| v.map(|v| (format!("{{mode=\"{m}\"}}"), v as f64 / tps)))
            .collect();
        family(
            "cpu_seconds",
            "counter",
            "CPU time of all cores by mode, in seconds.",
            &samples,
        );
        family(
            "cpus",
            "gauge",
            "CPUs (cores) the kernel reports.",
            &[(String::new(), k.cpu_time.len() as f64)],
        );
    }
    if let Ok(l) = procfs::LoadAverage::current() {
        for (n, v) in [("load1", l.one), ("load5", l.five), ("load15", l.fifteen)] {
            family(
                n,
                "gauge",
                "Load average.",
                &[(String::new(), f64::from(v))],
            );
        }
    }
    if let Ok(m) = procfs::Meminfo::current() {
        family(
            "memory_total_bytes",
            "gauge",
            "Physical memory.",
            &[(String::new(), m.mem_total as f64)],
        );
        if let Some(a) = m.mem_available {
            family(
                "memory_available_bytes",
                "gauge",
                "Memory available to new work without swapping.",
                &[(String::new(), a as f64)],
            );
        }
    }
    let mut size = Vec::new();
    let mut avail = Vec::new();
    for fs in filesystems {
        if let Ok(s) = rustix::fs::statvfs(&fs.path) {
            let labels = format!(
                "{{fs=\"{}\",path=\"{}\"}}",
                escape(&fs.label),
                escape(&fs.path.display().to_string())
            );
            size.push((labels.clone(), (s.f_blocks * s.f_frsize) as f64));
            avail.push((labels, (s.f_bavail * s.f_frsize) as f64));
        }
    }
    family(
        "filesystem_size_bytes",
        "gauge",
        "Size of the filesystem holding the path.",
        &size,
    );
    family(
        "filesystem_avail_bytes",
        "gauge",
        "Bytes available to unprivileged users on the filesystem holding the path.",
        &avail,
    );
    if let Ok(devs) = procfs::net::dev_status() {
        let mut names: Vec<&String> = devs.keys().collect();
        names.sort();
        let pick = |f: fn(&procfs::net::DeviceStatus) -> u64| -> Vec<(String, f64)> {
            names
                .iter()
                .map(|n| (format!("{{device=\"{}\"}}", escape(n)), f(&devs[*n]) as f64))
                .collect()
        };
        family(
            "network_receive_bytes",
            "counter",
            "Bytes received by the interface.",
            &pick(|d| d.recv_bytes),
        );
        family(
            "network_transmit_bytes",
            "counter",
            "Bytes sent by the interface.",
            &pick(|d| d.sent_bytes),
        );
    }
    out
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
}
