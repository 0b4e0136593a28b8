//! Helpers for the integration tests: the stack's endpoints from the
//! environment (`eval "$(scripts/stack env)"`), unique names per test run,
//! and small clients for Kafka and Elasticsearch.

use elasticsearch::http::transport::Transport;
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::{CountParts, Elasticsearch};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Endpoints of the local stack started by `scripts/stack up`.
#[derive(Debug, Clone)]
pub struct Stack {
    pub kafka_brokers: String,
    pub es_url: String,
    pub etcd_endpoints: Vec<String>,
}

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{var} is not set: these tests run against the real stack. Start it with \
             `scripts/stack up` and export its endpoints with `eval \"$(scripts/stack env)\"` \
             (or run `scripts/test`, which does both)"
        ),
    }
}

impl Stack {
    /// Reads `KAFKA_BROKERS`, `ES_URL` and `ETCD_ENDPOINTS`.
    ///
    /// # Panics
    /// With a message saying how to start the stack when one is missing.
    pub fn from_env() -> Self {
        Self {
            kafka_brokers: required("KAFKA_BROKERS"),
            es_url: required("ES_URL"),
            etcd_endpoints: required("ETCD_ENDPOINTS")
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
        }
    }

    pub fn es(&self) -> Elasticsearch {
        Elasticsearch::new(Transport::single_node(&self.es_url).expect("ES_URL"))
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .create()
            .expect("admin client");
        let res = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await
            .expect("create_topics");
        for r in res {
            r.expect("topic created");
        }
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .expect("producer")
    }

    /// Produces `values` to `partition` of `topic` (in order, pipelined);
    /// returns their offsets once all are acknowledged.
    pub async fn produce(&self, topic: &str, partition: i32, values: &[String]) -> Vec<i64> {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let producer = self.producer();
        let mut futs = Vec::with_capacity(values.len());
        for v in values {
            let mut record = FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(v);
            loop {
                match producer.send_result(record) {
                    Ok(f) => {
                        futs.push(f);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => panic!("produce to {topic}: {e}"),
                }
            }
        }
        let mut offsets = Vec::with_capacity(values.len());
        for f in futs {
            let delivery = f.await.expect("delivery future").expect("delivered");
            offsets.push(delivery.offset);
        }
        offsets
    }

    /// Number of documents in indices matching `pattern` (after a refresh).
    pub async fn es_count(&self, pattern: &str) -> u64 {
        let es = self.es();
        let _ = es
            .indices()
            .refresh(IndicesRefreshParts::Index(&[pattern]))
            .allow_no_indices(true)
            .ignore_unavailable(true)
            .send()
            .await;
        let resp = es
            .count(CountParts::Index(&[pattern]))
            .allow_no_indices(true)
            .ignore_unavailable(true)
            .send()
            .await;
        match resp {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Waits until `es_count(pattern) >= n`, for at most `limit`; returns the
    /// last count.
    pub async fn wait_count(&self, pattern: &str, n: u64, limit: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let c = self.es_count(pattern).await;
            if c >= n || start.elapsed() > limit {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs a search on `index` (a name or pattern) and returns its answer.
    ///
    /// # Panics
    /// When the request fails or Elasticsearch answers with an error.
    pub async fn search(&self, index: &str, body: Value) -> Value {
        let v: Value = self
            .es()
            .search(elasticsearch::SearchParts::Index(&[index]))
            .body(body)
            .send()
            .await
            .expect("search")
            .json()
            .await
            .expect("search body");
        assert!(v.get("error").is_none(), "search failed: {v}");
        v
    }

    /// The distinct values of the numeric field `field` in `pattern`, sorted,
    /// paged with `search_after` on that field (exact, unlike a cardinality
    /// aggregation). With the document count, this tells duplicates apart:
    /// `count == n` and `n` distinct values means each value once.
    pub async fn all_values(&self, pattern: &str, field: &str) -> Vec<i64> {
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({
                "size": 10000,
                "sort": [{field: "asc"}],
                "_source": [field],
                "query": {"match_all": {}}
            });
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let v = self.search(pattern, body).await;
            let hits = v["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                return out;
            }
            for h in &hits {
                out.push(h["_source"][field].as_i64().expect("numeric field"));
            }
            after = hits.last().map(|h| h["sort"].clone());
        }
    }
}

/// A name unique to this process and call, for topics, indices and keys
/// (lowercase: it is also used in index names).
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The repository's root (for `scripts/stack`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// A binary of the workspace built beside the test executable
/// (`cargo test --workspace` builds `logagent` and `logtransfer`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build -p transfer -p agent` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

/// Running logtransfer pipelines in this process.
pub mod transfer_run {
    use super::Stack;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use transfer::config::TransferConfig;
    use transfer::metrics::Metrics;

    /// A config consuming `topics` in `group`, indexing to
    /// `{topic}-%Y.%m.%d`, with small batches and quick retries.
    pub fn config(stack: &Stack, topics: &[&str], group: &str, extra: &str) -> TransferConfig {
        let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = [{topics}]
[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[elasticsearch]
url = "{es}"
index_pattern = "{{topic}}-%Y.%m.%d"
[bulk]
max_docs = 2000
flush_interval_ms = 200
[retry]
initial_backoff_ms = 100
max_backoff_ms = 2000
[metrics]
listen = "127.0.0.1:0"
{extra}
"#,
            brokers = stack.kafka_brokers,
            es = stack.es_url,
            topics = topics.join(","),
        );
        let path = Path::new("test-transfer.toml");
        let cfg: TransferConfig =
            common::config::parse_config(path, &text, |_| None).expect("test config parses");
        cfg.validate(path).expect("test config is valid");
        cfg
    }

    /// A pipeline running on the test's runtime.
    pub struct Running {
        pub metrics: Arc<Metrics>,
        stop: Option<oneshot::Sender<()>>,
        handle: tokio::task::JoinHandle<Result<(), transfer::Error>>,
    }

    pub fn start(cfg: TransferConfig) -> Running {
        let metrics = Metrics::new();
        let (tx, rx) = oneshot::channel::<()>();
        let m = Arc::clone(&metrics);
        let handle = tokio::spawn(async move {
            transfer::pipeline::run(
                cfg,
                m,
                async move {
                    let _ = rx.await;
                },
                Duration::from_secs(10),
            )
            .await
        });
        Running {
            metrics,
            stop: Some(tx),
            handle,
        }
    }

    impl Running {
        /// Stops gracefully (as on SIGTERM) and waits for the pipeline.
        pub async fn stop(mut self) {
            if let Some(tx) = self.stop.take() {
                let _ = tx.send(());
            }
            self.handle
                .await
                .expect("pipeline task")
                .expect("pipeline ran without error");
        }

        pub fn docs_written(&self) -> u64 {
            let text = self.metrics.encode();
            text.lines()
                .filter(|l| l.starts_with("logtransfer_docs_written_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        }
    }
}
