//! The agent's Prometheus metrics; served with `/health` by
//! [`common::http::serve`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a problem keeps `/health` degraded after it was last seen.
pub const PROBLEM_MEMORY: Duration = Duration::from_secs(300);

/// Something that needs an operator although the agent keeps running: a
/// topic refusing messages for good, read-back given up. Keyed by what it
/// is about (e.g. `topic:web_log`), so a repeat updates one entry.
#[derive(Debug, Clone)]
pub struct Problem {
    pub reason: String,
    pub since: Instant,
    pub last_seen: Instant,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: String,
}

/// Every metric logagent exports (prefix `logagent_`).
pub struct Metrics {
    pub registry: Registry,
    pub lines_read: Family<TopicLabels, Counter>,
    pub bytes_read: Family<TopicLabels, Counter>,
    pub lines_acked: Family<TopicLabels, Counter>,
    pub files_open: Gauge,
    pub wal_unacked_bytes: Gauge,
    pub wal_unacked_records: Gauge,
    /// Bytes cut from torn or zero-filled WAL tails at start.
    pub wal_recovery_truncated_bytes: Counter,
    /// Records at start: `kind` skipped (damaged) or replayed (unacked, sent again).
    pub wal_recovery_records: Family<KindLabels, Counter>,
    pub wal_recovery_segments_set_aside: Counter,
    pub wal_max_bytes: Gauge,
    pub wal_oldest_unacked_age_seconds: Gauge,
    pub last_ack_timestamp_seconds: Gauge,
    /// Bytes not yet in Kafka of the files with the most (at most
    /// [`common::agent_state::FILES_SHOWN`] paths, replaced each refresh).
    pub file_unshipped_bytes: Family<PathLabels, Gauge>,
    pub build_info: Family<VersionLabels, Gauge>,
    pub produce_seconds: Histogram,
    pub delivery_errors: Counter,
    pub duplicates_skipped: Counter,
    pub dead_letters: Family<TopicLabels, Counter>,
    pub lines_unchecked: Counter,
    pub paused: Gauge,
    pub config_reloads: Counter,
    pub config_rejections: Counter,
    pub files_refused: Family<ReasonLabels, Counter>,
    pub etcd_connected: Gauge,
    pub draining: AtomicBool,
    pub wal_full: AtomicBool,
    /// Reasons `/health` reports as degraded (see [`Problem`]).
    pub problems: Mutex<BTreeMap<String, Problem>>,
    /// The filesystems whose use `logagent_host_filesystem_*` reports: the
    /// data directory (the WAL's disk) and the allowed roots.
    pub filesystems: Mutex<Vec<common::host::Filesystem>>,
}

fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    m: M,
) -> M {
    r.register(name, help, m.clone());
    m
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("logagent");
        let lines_read = reg(
            &mut r,
            "lines_read",
            "Lines read from files and written to the WAL, per topic",
            Family::default(),
        );
        let bytes_read = reg(
            &mut r,
            "bytes_read",
            "Bytes of lines read, per topic",
            Family::default(),
        );
        let lines_acked = reg(
            &mut r,
            "lines_acked",
            "Lines acknowledged by Kafka, per topic",
            Family::default(),
        );
        let files_open = reg(
            &mut r,
            "files_open",
            "Files open for reading",
            Gauge::default(),
        );
        let wal_unacked_bytes = reg(
            &mut r,
            "wal_unacked_bytes",
            "Bytes of WAL segments on disk (not yet freed by Kafka acks)",
            Gauge::default(),
        );
        let wal_unacked_records = reg(
            &mut r,
            "wal_unacked_records",
            "WAL records appended and not yet acknowledged by Kafka",
            Gauge::default(),
        );
        let wal_recovery_truncated_bytes = reg(
            &mut r,
            "wal_recovery_truncated_bytes",
            "Bytes WAL recovery cut from torn or zero-filled segment tails at start",
            Counter::default(),
        );
        let wal_recovery_records = reg(
            &mut r,
            "wal_recovery_records",
            "WAL records at start: kind skipped (damaged, counted and passed over) or replayed (unacknowledged, sent again)",
            Family::default(),
        );
        let wal_recovery_segments_set_aside = reg(
            &mut r,
            "wal_recovery_segments_set_aside",
            "WAL segments with a bad header set aside at start",
            Counter::default(),
        );
        let wal_max_bytes = reg(
            &mut r,
            "wal_max_bytes",
            "The WAL's capacity (wal.max_bytes); reading pauses when wal_unacked_bytes reaches it",
            Gauge::default(),
        );
        let wal_oldest_unacked_age_seconds = reg(
            &mut r,
            "wal_oldest_unacked_age_seconds",
            "Age of the oldest line not yet acknowledged by Kafka (0: none), refreshed every 5 s",
            Gauge::default(),
        );
        let last_ack_timestamp_seconds = reg(
            &mut r,
            "last_ack_timestamp_seconds",
            "Unix time of Kafka's last acknowledgement of a line (0: none since start)",
            Gauge::default(),
        );
        let file_unshipped_bytes = reg(
            &mut r,
            "file_unshipped_bytes",
            "Bytes of a file not yet acknowledged by Kafka, for the 20 files with the most (refreshed every 5 s)",
            Family::default(),
        );
        let build_info = reg(
            &mut r,
            "build_info",
            "1, labelled with the version of logagent",
            Family::<VersionLabels, Gauge>::default(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let produce_seconds = reg(
            &mut r,
            "produce_seconds",
            "From handing a WAL record's first message to the producer to Kafka's ack of its last",
            Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
        );
        let delivery_errors = reg(
            &mut r,
            "delivery_errors",
            "Messages Kafka refused or failed to take (each is sent again)",
            Counter::default(),
        );
        let duplicates_skipped = reg(
            &mut r,
            "duplicates_skipped",
            "Lines not sent again after a restart because Kafka already had them",
            Counter::default(),
        );
        let dead_letters = reg(
            &mut r,
            "dead_letters",
            "Messages Kafka refused for good, sent to the dead-letter topic, per original topic",
            Family::default(),
        );
        let lines_unchecked = reg(
            &mut r,
            "lines_unchecked",
            "Lines of unacknowledged records sent after a restart without the read-back check (it gave up): possible duplicates",
            Counter::default(),
        );
        let paused = reg(
            &mut r,
            "paused",
            "1 while harvesting is paused because the WAL is full",
            Gauge::default(),
        );
        let config_reloads = reg(
            &mut r,
            "config_reloads",
            "Collect configurations applied (from etcd, the cache or SIGHUP)",
            Counter::default(),
        );
        let config_rejections = reg(
            &mut r,
            "config_rejections",
            "Collect values refused (bad JSON, unknown field, path outside allowed_roots…)",
            Counter::default(),
        );
        let files_refused = reg(
            &mut r,
            "files_refused",
            "Files under the globs not read, once per path and harvester: symlink, not_regular, outside_roots (real path outside allowed_roots), unverifiable, walk_error",
            Family::default(),
        );
        let etcd_connected = reg(
            &mut r,
            "etcd_connected",
            "1 while the etcd watch is established",
            Gauge::default(),
        );
        Arc::new(Self {
            registry: r,
            lines_read,
            bytes_read,
            lines_acked,
            files_open,
            wal_unacked_bytes,
            wal_unacked_records,
            wal_recovery_truncated_bytes,
            wal_recovery_records,
            wal_recovery_segments_set_aside,
            wal_max_bytes,
            wal_oldest_unacked_age_seconds,
            last_ack_timestamp_seconds,
            file_unshipped_bytes,
            build_info,
            produce_seconds,
            delivery_errors,
            duplicates_skipped,
            dead_letters,
            lines_unchecked,
            paused,
            config_reloads,
            config_rejections,
            files_refused,
            etcd_connected,
            draining: AtomicBool::new(false),
            wal_full: AtomicBool::new(false),
            problems: Mutex::new(BTreeMap::new()),
            filesystems: Mutex::new(Vec::new()),
        })
    }

    pub fn topic(&self, family: &Family<TopicLabels, Counter>, topic: &str) -> Counter {
        family
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .clone()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        let host = {
            let fs = self.filesystems.lock().unwrap_or_else(|p| p.into_inner());
            common::host::host_metrics("logagent", &fs)
        };
        common::http::with_process_metrics(common::http::with_metrics(out, &host))
    }

    /// Records (or refreshes) a problem that makes `/health` degraded.
    pub fn problem(&self, key: &str, reason: String) {
        let now = Instant::now();
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        p.entry(key.to_string())
            .and_modify(|e| {
                e.reason.clone_from(&reason);
                e.last_seen = now;
            })
            .or_insert(Problem {
                reason,
                since: now,
                last_seen: now,
            });
    }

    /// Forgets a problem that was resolved.
    pub fn resolved(&self, key: &str) {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The problems seen within [`PROBLEM_MEMORY`]: (key, reason, seconds
    /// since it started).
    /// Whether `key` is a problem now.
    pub fn has_problem(&self, key: &str) -> bool {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Ends a problem at once (its cause is gone).
    pub fn clear_problem(&self, key: &str) {
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        p.remove(key);
    }

    pub fn current_problems(&self) -> Vec<(String, String, u64)> {
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        p.retain(|_, e| e.last_seen.elapsed() < PROBLEM_MEMORY);
        p.iter()
            .map(|(k, e)| (k.clone(), e.reason.clone(), e.since.elapsed().as_secs()))
            .collect()
    }

    /// `/health`: 200 `ok` while running; 503 while draining or with a full
    /// WAL (reading paused); 503 with a JSON body
    /// `{"status":"degraded","problems":[{"key","reason","for_secs"}]}`
    /// while a problem needs an operator (messages refused for good, …).
    pub fn health(&self) -> Result<String, String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining\n".into());
        }
        if self.wal_full.load(Ordering::Relaxed) {
            return Err("wal full: harvesting paused until Kafka acknowledges\n".into());
        }
        let problems = self.current_problems();
        if problems.is_empty() {
            return Ok("ok\n".into());
        }
        let list: Vec<serde_json::Value> = problems
            .into_iter()
            .map(|(key, reason, for_secs)| {
                serde_json::json!({"key": key, "reason": reason, "for_secs": for_secs})
            })
            .collect();
        Err(serde_json::json!({"status": "degraded", "problems": list}).to_string() + "\n")
    }

    /// Serves `/metrics` and `/health` on `listen`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn serve(self: &Arc<Self>, listen: &str) -> std::io::Result<()> {
        let a = Arc::clone(self);
        let b = Arc::clone(self);
        common::http::serve(
            listen,
            Arc::new(move || a.encode()),
            Arc::new(move || b.health()),
        )
        .await
    }
}

impl crate::harvester::Observer for Metrics {
    fn refused(&self, why: crate::harvester::Refusal) {
        self.files_refused
            .get_or_create(&ReasonLabels {
                reason: why.label().to_string(),
            })
            .inc();
    }
}
