//! Prometheus metrics and the `/metrics` and `/health` endpoints.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

/// Every metric logtransfer exports.
pub struct Metrics {
    pub registry: Registry,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub docs_written: Family<SinkLabels, Counter>,
    pub bulk_seconds: Histogram,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub commit_failures: Counter,
    pub commits: Counter,
    pub paused: Gauge,
    pub buffered_bytes: Gauge,
    pub healthy: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("logtransfer");
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
        let bulk_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "bulk_seconds",
            "Latency of one sink write (one bulk request)",
            bulk_seconds.clone(),
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
            "Documents refused by Elasticsearch and written as dead letters",
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
        Arc::new(Self {
            registry,
            consumer_lag,
            docs_written,
            bulk_seconds,
            retries,
            dead_lettered,
            commit_failures,
            commits,
            paused,
            buffered_bytes,
            healthy: AtomicBool::new(true),
        })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
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
        Arc::new(move || {
            if metrics.healthy.load(Ordering::Relaxed) {
                Ok("ok\n".into())
            } else {
                Err("unhealthy\n".into())
            }
        }),
    )
    .await
}
