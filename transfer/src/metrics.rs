//! Prometheus metrics and the `/metrics` and `/health` endpoints.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

/// Every metric logtransfer exports.
pub struct Metrics {
    pub registry: Registry,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub docs_written: Family<SinkLabels, Counter>,
    /// Per sink (a fan-out route's sinks joined by `+`).
    pub bulk_seconds: Family<SinkLabels, Histogram, fn() -> Histogram>,
    pub sink_write_failures: Family<SinkLabels, Counter>,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub commit_failures: Counter,
    pub commits: Counter,
    pub paused: Gauge,
    pub buffered_bytes: Gauge,
    pub distinct_ids: Counter,
    pub stopped_partitions: Gauge,
    pub assigned_partitions: Gauge,
    pub batches_in_flight: Gauge,
    pub batches_cancelled: Counter,
    pub dead_letters_kafka: Counter,
    pub rebootstraps: Counter,
    /// False until the index template is installed.
    pub healthy: AtomicBool,
    /// Why `/health` reports degraded, by what it is about
    /// (`partition:<topic>/<n>`, `sink:<name>`): reason and since when.
    /// The pipeline sets and clears them.
    problems: Mutex<BTreeMap<String, (String, Instant)>>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("logtransfer");
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the version of logtransfer",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages between the partition's high watermark and the consumer position",
            consumer_lag.clone(),
        );
        let docs_written = Family::<SinkLabels, Counter>::default();
        registry.register(
            "docs_written",
            "Documents written by a sink (created, or already present)",
            docs_written.clone(),
        );
        let bulk_seconds =
            Family::<SinkLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            });
        registry.register(
            "bulk_seconds",
            "Latency of one sink write (one bulk request, one SQL statement, one Redis script), per sink",
            bulk_seconds.clone(),
        );
        let sink_write_failures = Family::<SinkLabels, Counter>::default();
        registry.register(
            "sink_write_failures",
            "Sink writes that failed as a whole (server down, connection lost, a timeout) and are retried, per sink",
            sink_write_failures.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Documents sent again after a retryable failure",
            retries.clone(),
        );
        let dead_lettered = Counter::default();
        registry.register(
            "dead_lettered",
            "Documents refused by their sink (Elasticsearch, a SQL table) and written as dead letters",
            dead_lettered.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "commit_failures",
            "Kafka offset commits that failed",
            commit_failures.clone(),
        );
        let commits = Counter::default();
        registry.register(
            "commits",
            "Kafka offset commits that succeeded",
            commits.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "paused",
            "1 while consumption is paused (buffers full)",
            paused.clone(),
        );
        let buffered_bytes = Gauge::default();
        registry.register(
            "buffered_bytes",
            "Bytes of documents consumed and not yet written",
            buffered_bytes.clone(),
        );
        let distinct_ids = Counter::default();
        registry.register(
            "distinct_ids",
            "Documents written under a distinct _id because their plain one held a different message (a recreated topic reused the offset)",
            distinct_ids.clone(),
        );
        let stopped_partitions = Gauge::default();
        registry.register(
            "stopped_partitions",
            "Partitions stopped because Elasticsearch refused even a dead letter",
            stopped_partitions.clone(),
        );
        let assigned_partitions = Gauge::default();
        registry.register(
            "assigned_partitions",
            "Partitions assigned to this instance by the consumer group",
            assigned_partitions.clone(),
        );
        let batches_in_flight = Gauge::default();
        registry.register(
            "batches_in_flight",
            "Bulk batches being written or waiting to retry (at most bulk.max_in_flight)",
            batches_in_flight.clone(),
        );
        let batches_cancelled = Counter::default();
        registry.register(
            "batches_cancelled",
            "Batches in flight cancelled uncommitted because their partition was revoked",
            batches_cancelled.clone(),
        );
        let dead_letters_kafka = Counter::default();
        registry.register(
            "dead_letters_kafka",
            "Dead letters written to the dead-letter Kafka topic (dead_letter.kafka_topic)",
            dead_letters_kafka.clone(),
        );
        let rebootstraps = Counter::default();
        registry.register(
            "rebootstraps",
            "Times librdkafka was left with no broker (a starting Kafka listed none) and was given the bootstrap brokers again",
            rebootstraps.clone(),
        );
        Arc::new(Self {
            registry,
            consumer_lag,
            docs_written,
            bulk_seconds,
            sink_write_failures,
            retries,
            dead_lettered,
            commit_failures,
            commits,
            paused,
            buffered_bytes,
            distinct_ids,
            stopped_partitions,
            assigned_partitions,
            batches_in_flight,
            batches_cancelled,
            dead_letters_kafka,
            rebootstraps,
            healthy: AtomicBool::new(true),
            problems: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records (or updates the reason of) a problem; its start is kept.
    pub fn problem(&self, key: &str, reason: String) {
        let mut p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        p.entry(key.to_string())
            .and_modify(|e| e.0.clone_from(&reason))
            .or_insert((reason, Instant::now()));
    }

    /// Forgets a problem that is over.
    pub fn resolved(&self, key: &str) {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Forgets the problems whose key starts with `prefix` that `keep` refuses.
    pub fn retain_problems(&self, prefix: &str, keep: impl Fn(&str) -> bool) {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(prefix) || keep(k));
    }

    /// `/health`: 200 `ok`; 503 `{"status":"starting",…}` until the index
    /// template is installed; 503 `{"status":"degraded","problems":[{"key",
    /// "reason","for_secs"}]}` while a partition is stuck or stopped, or a
    /// sink refuses every write.
    ///
    /// # Errors
    /// The 503 body.
    pub fn health(&self) -> Result<String, String> {
        let p = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        if !self.healthy.load(Ordering::Relaxed) {
            // The last refusal when there was one (`template` problem: a
            // 401, a certificate Elasticsearch's CA did not sign …).
            let reason = p.get("template").map_or(
                "the index template is not installed yet (Elasticsearch unreachable or refusing it)",
                |r| r.0.as_str(),
            );
            return Err(serde_json::json!({"status": "starting", "problems": [
                {"key": "template", "reason": reason}
            ]})
            .to_string()
                + "\n");
        }
        if p.is_empty() {
            return Ok("ok\n".into());
        }
        let list: Vec<serde_json::Value> = p
            .iter()
            .map(|(key, (reason, since))| {
                serde_json::json!({"key": key, "reason": reason, "for_secs": since.elapsed().as_secs()})
            })
            .collect();
        Err(serde_json::json!({"status": "degraded", "problems": list}).to_string() + "\n")
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        common::http::with_process_metrics(out)
    }
}

/// Serves `/metrics` and `/health` on `listen` until the process ends.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(listen: &str, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let m1 = Arc::clone(&metrics);
    common::http::serve(
        listen,
        Arc::new(move || m1.encode()),
        Arc::new(move || metrics.health()),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_its_problems_as_json() {
        let m = Metrics::new();
        assert_eq!(m.health(), Ok("ok\n".into()));
        m.problem("partition:t/0", "stuck".into());
        m.problem("sink:elasticsearch", "refusing".into());
        let body = m.health().unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["problems"][0]["key"], "partition:t/0");
        assert_eq!(v["problems"][1]["reason"], "refusing");
        m.retain_problems("partition:", |_| false);
        m.resolved("sink:elasticsearch");
        assert_eq!(m.health(), Ok("ok\n".into()));
        m.healthy.store(false, Ordering::Relaxed);
        assert!(m.health().unwrap_err().contains("starting"));
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let t = Metrics::new().encode();
        let want = format!(
            "logtransfer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(t.contains(&want), "{t}");
        assert!(t.contains("\nprocess_open_fds "), "{t}");
        assert!(t.ends_with("# EOF\n"));
    }
}
