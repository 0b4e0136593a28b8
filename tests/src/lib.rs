//! Helpers for the integration tests: the stack's endpoints from the
//! environment (`eval "$(scripts/stack env)"`), unique names per test run,
//! and small clients for Kafka and Elasticsearch.

use elasticsearch::http::transport::{MultiNodeConnectionPool, Transport, TransportBuilder};
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

    /// `POSTGRES_URL` (`scripts/stack env`).
    ///
    /// # Panics
    /// When it is not set.
    pub fn postgres_url(&self) -> String {
        required("POSTGRES_URL")
    }

    /// `MARIADB_URL` (`scripts/stack env`).
    ///
    /// # Panics
    /// When it is not set.
    pub fn mariadb_url(&self) -> String {
        required("MARIADB_URL")
    }

    /// `REDIS_URL` (`scripts/stack env`).
    ///
    /// # Panics
    /// When it is not set.
    pub fn redis_url(&self) -> String {
        required("REDIS_URL")
    }

    /// `redis-cli --raw ARGS` against the stack's Redis; its output, or the
    /// error.
    ///
    /// # Panics
    /// When redis-cli cannot be run.
    pub fn redis(&self, args: &[&str]) -> Result<String, String> {
        // redis://:password@host:port/
        let url = self.redis_url();
        let rest = url.trim_start_matches("redis://");
        let (creds, addr) = rest.split_once('@').expect(":password@host in REDIS_URL");
        let (host, port) = addr
            .trim_end_matches('/')
            .split_once(':')
            .expect("host:port");
        let out = std::process::Command::new("redis-cli")
            .args(["--raw", "-h", host, "-p", port])
            .args(args)
            .env("REDISCLI_AUTH", creds.trim_start_matches(':'))
            .output()
            .expect("run redis-cli");
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        if !out.status.success() || text.starts_with("ERR") || text.contains("Connection refused") {
            return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(text)
    }

    /// Runs `sql` on the stack's PostgreSQL (`postgres`) or MariaDB
    /// (`mariadb`) with their command-line clients; the rows as
    /// tab-separated lines.
    ///
    /// # Panics
    /// When the client fails.
    pub fn sql(&self, server: &str, sql: &str) -> String {
        self.sql_try(server, sql)
            .unwrap_or_else(|e| panic!("{server}: {sql}: {e}"))
    }

    /// Rows in `table` on `server` (`postgres`, `mariadb`); 0 before a sink
    /// made the table or while the server is down.
    pub fn rows(&self, server: &str, table: &str) -> u64 {
        self.sql_try(server, &format!("SELECT count(*) FROM {table}"))
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Entries of the Redis stream `key`; 0 when missing or Redis is down.
    pub fn redis_len(&self, key: &str) -> u64 {
        self.redis(&["XLEN", key])
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// [`Stack::sql`], the client's error as `Err`.
    ///
    /// # Panics
    /// When the client cannot be run.
    pub fn sql_try(&self, server: &str, sql: &str) -> Result<String, String> {
        let out = match server {
            "postgres" => std::process::Command::new("psql")
                .args([&self.postgres_url(), "-tAX", "-F", "\t", "-c", sql])
                .output(),
            "mariadb" => {
                // mysql://user:password@host:port/db
                let url = self.mariadb_url();
                let rest = url.trim_start_matches("mysql://");
                let (creds, addr) = rest.split_once('@').expect("user@host in MARIADB_URL");
                let (user, password) = creds.split_once(':').expect("user:password");
                let (hostport, db) = addr.split_once('/').expect("host:port/db");
                let (host, port) = hostport.split_once(':').expect("host:port");
                std::process::Command::new("mariadb")
                    .args([
                        "--no-defaults",
                        "-h",
                        host,
                        "-P",
                        port,
                        "-u",
                        user,
                        db,
                        "-N",
                        "-B",
                        "-e",
                        sql,
                    ])
                    .env("MYSQL_PWD", password)
                    .output()
            }
            other => panic!("no SQL server {other}"),
        }
        .expect("run the SQL client");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    }

    /// A client of `ES_URL`: one node, or a cluster's nodes separated by
    /// commas (`scripts/cluster env`), used in turn.
    pub fn es(&self) -> Elasticsearch {
        let urls = transfer::es::node_urls(&self.es_url).expect("ES_URL");
        if urls.len() == 1 {
            return Elasticsearch::new(Transport::single_node(&self.es_url).expect("ES_URL"));
        }
        let pool = MultiNodeConnectionPool::round_robin(urls, None);
        Elasticsearch::new(TransportBuilder::new(pool).build().expect("ES_URL"))
    }

    /// The replication factor of the topics tests make: `KAFKA_REPLICATION`
    /// (`scripts/cluster env` says 3), else 1.
    pub fn replication(&self) -> i32 {
        std::env::var("KAFKA_REPLICATION")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]).await;
    }

    /// Creates `topic` with topic-level settings (`max.message.bytes`…).
    pub async fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .create()
            .expect("admin client");
        let replication = self.replication();
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        if replication >= 3 {
            new = new.set("min.insync.replicas", "2");
        }
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let res = admin
            .create_topics(
                &[new],
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

    /// The committed offsets of `group` for partitions `0..partitions` of
    /// `topic` (-1 where nothing is committed).
    ///
    /// # Panics
    /// When Kafka does not answer within 10 s.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
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

    /// The answer of a GET of document `id` in `index` (`found`, `_source`).
    ///
    /// # Panics
    /// When the request fails or the answer is not JSON.
    pub async fn get_doc(&self, index: &str, id: &str) -> Value {
        self.es()
            .get(elasticsearch::GetParts::IndexId(index, id))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("get body")
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

/// A binary of the workspace built beside this executable (a test's, in
/// `target/<profile>/deps/`, or a binary's, in `target/<profile>/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    [dir, dir.parent().unwrap_or(dir)]
        .iter()
        .map(|d| d.join(name))
        .find(|b| b.exists())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not built beside {}: run `cargo build --workspace --bins`",
                exe.display()
            )
        })
}

/// Stops a child process: SIGTERM, then waits up to 40 s for it to exit
/// before kill -9 (`kill9` skips the SIGTERM).
pub fn stop_child(mut c: std::process::Child, kill9: bool) {
    if !kill9 {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Runs `scripts/stack ARGS` (start/stop of single services in fault
/// tests); whether it succeeded.
pub fn stack_cmd(args: &[&str]) -> bool {
    std::process::Command::new(repo_root().join("scripts/stack"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `scripts/cluster ARGS` (the cluster mode's faults, issue #18); its
/// standard output, trimmed, when it succeeded.
pub fn cluster_cmd(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(repo_root().join("scripts/cluster"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls `f` every 250 ms (without blocking the runtime) until it is true
/// or `limit` passed; its last answer.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    f()
}

/// Waits until the first of `brokers` (`host:port,…`) accepts a TCP
/// connection (polled every 50 ms, for at most `limit`); returns when.
///
/// # Panics
/// When `limit` passes first.
pub async fn wait_accepting(brokers: &str, limit: Duration) -> Instant {
    let addr = brokers
        .split(',')
        .next()
        .unwrap_or(brokers)
        .trim()
        .to_string();
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "{addr} accepts no connection after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod failover;
pub mod readback;

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
        let text = config_text(stack, topics, group, "127.0.0.1:0", extra);
        let path = Path::new("test-transfer.toml");
        let cfg: TransferConfig =
            common::config::parse_config(path, &text, |_| None).expect("test config parses");
        cfg.validate(path).expect("test config is valid");
        cfg
    }

    /// The TOML of [`config`], serving metrics on `metrics`.
    pub fn config_text(
        stack: &Stack,
        topics: &[&str],
        group: &str,
        metrics: &str,
        extra: &str,
    ) -> String {
        let topics: Vec<String> = topics.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
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
listen = "{metrics}"
{extra}
"#,
            brokers = stack.kafka_brokers,
            es = stack.es_url,
            topics = topics.join(","),
        )
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

    /// Starts the logtransfer binary with `config`; its log (RUST_LOG=info)
    /// is appended to `log`.
    ///
    /// # Panics
    /// When the binary cannot be started.
    pub fn spawn(config: &Path, log: &Path) -> std::process::Child {
        spawn_with_env(config, log, &[])
    }

    /// [`spawn`] with more environment variables.
    ///
    /// # Panics
    /// When the binary cannot be started.
    pub fn spawn_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> std::process::Child {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        std::process::Command::new(super::workspace_bin("logtransfer"))
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn logtransfer")
    }

    /// The last 40 lines of a log file.
    pub fn tail(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The value of an unlabelled metric `name` in `metrics`' encoding.
    pub fn metric(metrics: &Metrics, name: &str) -> f64 {
        metrics
            .encode()
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
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
            self.metric_sum("logtransfer_docs_written_total", "") as u64
        }

        /// The sum of the samples of metric `name` whose labels contain
        /// `label` (`sink="redis"`; "" for all of them).
        pub fn metric_sum(&self, name: &str, label: &str) -> f64 {
            self.metrics
                .encode()
                .lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{']) && rest.contains(label))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        }
    }
}

/// Running the `logagent` binary as a child process (so tests can kill -9 it).
pub mod agent_run {
    use super::{workspace_bin, Stack};
    use std::io::{Read, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A free port on 127.0.0.1 (bound and released).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// An agent's files: its config, data dir and log, all under `dir`.
    pub struct AgentSetup {
        pub dir: PathBuf,
        pub config: PathBuf,
        pub metrics: String,
        pub host_id: String,
        pub prefix: String,
        pub log: PathBuf,
    }

    /// Writes a config for an agent collecting under `roots`, following
    /// `<prefix>/collect/<host_id>` in etcd; `extra` is appended (TOML).
    pub fn setup(
        stack: &Stack,
        dir: &Path,
        host_id: &str,
        prefix: &str,
        roots: &[&Path],
        extra: &str,
    ) -> AgentSetup {
        let metrics = format!("127.0.0.1:{}", free_port());
        let roots: Vec<String> = roots
            .iter()
            .map(|r| format!("\"{}\"", r.display()))
            .collect();
        let endpoints: Vec<String> = stack
            .etcd_endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let text = format!(
            r#"host_id = "{host_id}"
data_dir = "{data}"
allowed_roots = [{roots}]
[kafka]
brokers = "{brokers}"
linger_ms = 2
[etcd]
endpoints = [{endpoints}]
prefix = "{prefix}"
[metrics]
listen = "{metrics}"
{extra}
"#,
            data = dir.join("data").display(),
            roots = roots.join(", "),
            brokers = stack.kafka_brokers,
            endpoints = endpoints.join(", "),
        );
        let config = dir.join("agent.toml");
        std::fs::write(&config, text).expect("write agent.toml");
        AgentSetup {
            dir: dir.to_path_buf(),
            config,
            metrics,
            host_id: host_id.to_string(),
            prefix: prefix.to_string(),
            log: dir.join("agent.log"),
        }
    }

    /// A temporary directory with `logs/` (the agent's allowed root) and an
    /// agent set up with a unique host id and etcd prefix.
    pub struct Fixture {
        pub tmp: tempfile::TempDir,
        pub logs: PathBuf,
        pub agent: AgentSetup,
    }

    pub fn fixture(stack: &Stack, extra: &str) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let agent = setup(
            stack,
            tmp.path(),
            &super::unique("host"),
            &format!("/{}", super::unique("p")),
            &[&logs],
            extra,
        );
        Fixture { tmp, logs, agent }
    }

    /// A [`fixture`] whose one collect entry `<logs>/*.log` goes to a new
    /// one-partition topic named after `prefix` (returned).
    pub async fn fixture_one_entry(stack: &Stack, prefix: &str) -> (Fixture, String) {
        let fx = fixture(stack, "");
        let topic = super::unique(prefix);
        stack.create_topic(&topic, 1).await;
        etcd_put(
            stack,
            &fx.agent.collect_key(),
            &format!(
                r#"[{{"path":"{}/*.log","topic":"{topic}"}}]"#,
                fx.logs.display()
            ),
        )
        .await;
        (fx, topic)
    }

    /// Adds `kafka.*` keys to an agent's config (the fixture's `extra` comes
    /// after `[metrics]`).
    pub fn kafka_keys(a: &AgentSetup, keys: &str) {
        let text = std::fs::read_to_string(&a.config).expect("config");
        let text = text.replacen("linger_ms = 2\n", &format!("linger_ms = 2\n{keys}\n"), 1);
        std::fs::write(&a.config, text).expect("config");
    }

    /// Polls `f` every 250 ms until it holds or `limit` passed; its last answer.
    pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        f()
    }

    /// Appends `lines` (each with a newline) to the file at `path`.
    pub fn append_lines(path: &Path, lines: &[String]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log");
        for l in lines {
            writeln!(f, "{l}").expect("write");
        }
    }

    /// Puts `value` at `key` in etcd.
    pub async fn etcd_put(stack: &Stack, key: &str, value: &str) {
        let mut c = etcd_client::Client::connect(&stack.etcd_endpoints, None)
            .await
            .expect("etcd");
        c.put(key, value, None).await.expect("etcd put");
    }

    /// GET `path` (URL-encoded) on `addr` (an agent's, transfer's or
    /// Prometheus's address): (status, body). HTTP/1.0, so that no server
    /// answers with a chunked body.
    pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let status = body.split(' ').nth(1)?.parse().ok()?;
        let text = body.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        Some((status, text.to_string()))
    }

    /// A running logagent.
    pub struct Agent {
        pub child: Child,
    }

    impl AgentSetup {
        /// This agent's collect key in etcd.
        pub fn collect_key(&self) -> String {
            format!("{}/collect/{}", self.prefix, self.host_id)
        }

        /// Starts `logagent --config …`, its stderr appended to `log`.
        pub fn start(&self) -> Agent {
            self.start_logging("info,rdkafka=warn")
        }

        /// Starts the agent with `RUST_LOG` = `filter`.
        pub fn start_logging(&self, filter: &str) -> Agent {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("agent log");
            let child = Command::new(workspace_bin("logagent"))
                .arg("--config")
                .arg(&self.config)
                .arg("--shutdown-grace")
                .arg("10")
                .env("RUST_LOG", filter)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn logagent");
            Agent { child }
        }

        /// GET `path` on the agent's metrics address: (status, body).
        pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
            http_get(&self.metrics, path)
        }

        /// The sum of a metric's samples (all label sets); 0 when absent
        /// or when the agent does not answer.
        pub fn metric(&self, name: &str) -> f64 {
            self.try_metric(name).unwrap_or(0.0)
        }

        /// The sum of a metric's samples, or `None` when the agent's
        /// endpoint does not answer: a drain must not take an agent it
        /// cannot reach for one whose WAL is empty.
        pub fn try_metric(&self, name: &str) -> Option<f64> {
            let (_, text) = self.http_get("/metrics")?;
            Some(
                text.lines()
                    .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum(),
            )
        }

        /// Waits until `/health` answers (the agent is up), for at most `limit`.
        pub fn wait_up(&self, limit: Duration) -> bool {
            let start = Instant::now();
            while start.elapsed() < limit {
                if self.http_get("/health").is_some() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        }

        /// The agent's log so far (for assertion messages).
        pub fn log_text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }
    }

    impl Agent {
        pub fn kill9(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// SIGTERM; asserts a clean exit (0 within 30 s), showing the log if not.
        pub fn terminate_ok(&mut self, setup: &AgentSetup) {
            assert_eq!(
                self.terminate(Duration::from_secs(30)),
                Some(0),
                "logagent did not exit 0 on SIGTERM\n{}",
                setup.log_text()
            );
        }

        /// SIGTERM, then waits (at most `limit`); returns the exit code.
        pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let start = Instant::now();
            while start.elapsed() < limit {
                if let Ok(Some(st)) = self.child.try_wait() {
                    return st.code();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill9();
            None
        }
    }

    impl Drop for Agent {
        fn drop(&mut self) {
            if let Ok(None) = self.child.try_wait() {
                self.kill9();
            }
        }
    }
}

/// Reading what landed in Kafka.
pub mod kafka_read {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    /// One message as the tests look at it.
    #[derive(Debug, Clone)]
    pub struct Msg {
        pub partition: i32,
        pub offset: i64,
        pub value: serde_json::Value,
        pub raw: Vec<u8>,
        pub headers: HashMap<String, String>,
    }

    impl Msg {
        /// `N` of a line `seq N …` (the numbered lines the tests write).
        pub fn seq(&self) -> Option<u64> {
            self.value["message"]
                .as_str()?
                .strip_prefix("seq ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        }
    }

    /// What a topic holds of the numbered lines `seq 0 …` to `seq n-1`.
    #[derive(Debug)]
    pub struct Tally {
        pub in_kafka: usize,
        pub lost: Vec<u64>,
        pub duplicated: u64,
    }

    /// Reads `topic` until all `n` numbered lines are there (or `limit`).
    pub fn tally_numbered(brokers: &str, topic: &str, n: u64, limit: Duration) -> Tally {
        let start = Instant::now();
        let got = loop {
            let got = read_topic(brokers, topic, n as usize, Duration::from_secs(20));
            let distinct: std::collections::HashSet<u64> =
                got.iter().filter_map(Msg::seq).collect();
            if distinct.len() as u64 >= n || start.elapsed() > limit {
                break got;
            }
        };
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for m in &got {
            if let Some(s) = m.seq() {
                *counts.entry(s).or_default() += 1;
            }
        }
        Tally {
            in_kafka: got.len(),
            lost: (0..n).filter(|i| !counts.contains_key(i)).collect(),
            duplicated: counts.values().map(|c| c - 1).sum(),
        }
    }

    /// [`tally_numbered`] off the async runtime's workers.
    pub async fn tally_in(brokers: &str, topic: &str, n: u64, limit: Duration) -> Tally {
        let (b, t) = (brokers.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || tally_numbered(&b, &t, n, limit))
            .await
            .expect("tally task")
    }

    /// Every message of `topic` from the beginning, reading until `want`
    /// messages were seen and none arrived for `settle`, or `limit` passed.
    pub fn read_topic(brokers: &str, topic: &str, want: usize, limit: Duration) -> Vec<Msg> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "it-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let start = Instant::now();
        let parts = loop {
            let md = c
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .expect("metadata");
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 || start.elapsed() > limit {
                break n;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            let p = i32::try_from(p).expect("partition");
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let mut last = Instant::now();
        let settle = Duration::from_secs(2);
        while start.elapsed() < limit {
            if out.len() >= want && last.elapsed() > settle {
                break;
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                {
                    last = Instant::now();
                    let raw = m.payload().unwrap_or_default().to_vec();
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Msg {
                        partition: m.partition(),
                        offset: m.offset(),
                        value: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
                        raw,
                        headers,
                    });
                }
            }
        }
        out
    }
}

/// The secure parts of the stack (`scripts/stack`, on unless
/// `STACK_SECURE=0`): Kafka's SASL_SSL and mTLS listeners, etcd-tls and
/// es-tls, their certificates and the test credentials, from the variables
/// `scripts/stack env` prints.
pub mod secure {
    use std::path::PathBuf;

    #[derive(Debug, Clone)]
    pub struct Secure {
        pub tls_dir: PathBuf,
        pub sasl_brokers: String,
        pub mtls_brokers: String,
        pub scram_user: String,
        pub scram_password: String,
        pub etcd_endpoints: Vec<String>,
        pub etcd_root_password: String,
        pub es_url: String,
        pub es_user: String,
        pub es_password: String,
        pub es_api_key: String,
        /// `rediss://…` of the stack's Redis TLS port.
        pub redis_tls_url: String,
    }

    fn required(var: &str) -> String {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => panic!(
                "{var} is not set: these tests need the stack's secure parts (Kafka SASL_SSL \
                 and mTLS listeners, etcd-tls, es-tls). `scripts/stack up` starts them unless \
                 STACK_SECURE=0; export them with `eval \"$(scripts/stack env)\"`"
            ),
        }
    }

    impl Secure {
        /// # Panics
        /// With a message saying how to start the secure parts when a
        /// variable is missing.
        pub fn from_env() -> Self {
            Self {
                tls_dir: PathBuf::from(required("STACK_TLS_DIR")),
                sasl_brokers: required("KAFKA_SASL_BROKERS"),
                mtls_brokers: required("KAFKA_MTLS_BROKERS"),
                scram_user: required("KAFKA_SCRAM_USER"),
                scram_password: required("KAFKA_SCRAM_PASSWORD"),
                etcd_endpoints: vec![required("ETCD_TLS_ENDPOINTS")],
                etcd_root_password: required("ETCD_ROOT_PASSWORD"),
                es_url: required("ES_TLS_URL"),
                es_user: required("ES_TLS_USER"),
                es_password: required("ES_TLS_PASSWORD"),
                es_api_key: required("ES_TLS_API_KEY"),
                redis_tls_url: required("REDIS_TLS_URL"),
            }
        }

        /// A file of the stack's TLS directory (`ca.pem`, `other-ca.pem`,
        /// `client.pem`, `client.key`).
        pub fn file(&self, name: &str) -> String {
            self.tls_dir.join(name).display().to_string()
        }

        /// librdkafka settings for the SASL_SSL listener with `password`.
        pub fn sasl_settings(&self, password: &str) -> Vec<(&'static str, String)> {
            vec![
                ("security.protocol", "SASL_SSL".into()),
                ("sasl.mechanism", "SCRAM-SHA-512".into()),
                ("sasl.username", self.scram_user.clone()),
                ("sasl.password", password.into()),
                ("ssl.ca.location", self.file("ca.pem")),
            ]
        }

        /// librdkafka settings for the mTLS listener, trusting `ca`.
        pub fn mtls_settings(&self, ca: &str) -> Vec<(&'static str, String)> {
            vec![
                ("security.protocol", "SSL".into()),
                ("ssl.ca.location", self.file(ca)),
                ("ssl.certificate.location", self.file("client.pem")),
                ("ssl.key.location", self.file("client.key")),
            ]
        }

        /// An etcd client of etcd-tls as `user` (root: the stack's root).
        ///
        /// # Errors
        /// etcd's, e.g. authentication failed.
        pub async fn etcd_as(
            &self,
            user: &str,
            password: &str,
        ) -> Result<etcd_client::Client, etcd_client::Error> {
            let tls = agent::etcd_config::EtcdTls::load(
                Some(&self.tls_dir.join("ca.pem")),
                Some(&self.tls_dir.join("client.pem")),
                Some(&self.tls_dir.join("client.key")),
            )
            .expect("the stack's TLS files");
            agent::etcd_config::connect_to(
                &self.etcd_endpoints,
                Some(&(user.to_string(), common::Secret::new(password))),
                &tls,
            )
            .await
        }

        pub async fn etcd_root(&self) -> etcd_client::Client {
            self.etcd_as("root", &self.etcd_root_password)
                .await
                .expect("etcd-tls as root")
        }

        /// Creates the user and role of one agent host (as an operator
        /// would): it may read only `<prefix>/collect/<host>` and
        /// `<prefix>/collect/_all` and write only `<prefix>/agents/<host>`.
        /// Returns (user, password).
        pub async fn etcd_agent_user(&self, prefix: &str, host: &str) -> (String, String) {
            use etcd_client::Permission;
            let (user, role) = (format!("agent-{host}"), format!("agent-{host}"));
            let password = format!("pw-{host}");
            let mut c = self.etcd_root().await;
            c.role_add(role.as_str()).await.expect("role add");
            for perm in [
                Permission::read(format!("{prefix}/collect/{host}")),
                Permission::read(format!("{prefix}/collect/_all")),
                Permission::write(format!("{prefix}/agents/{host}")),
            ] {
                c.role_grant_permission(role.as_str(), perm)
                    .await
                    .expect("grant");
            }
            c.user_add(user.as_str(), password.as_str(), None)
                .await
                .expect("user add");
            c.user_grant_role(user.as_str(), role.as_str())
                .await
                .expect("grant role");
            (user, password)
        }
    }
}
