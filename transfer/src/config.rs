//! The transfer's config file (TOML). Unknown keys are errors that name the key.

use common::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// librdkafka consumer settings that the delivery contract depends on.
pub const PINNED_CONSUMER_SETTINGS: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "group.id",
    "bootstrap.servers",
    "metadata.broker.list",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    pub kafka: KafkaConfig,
    pub elasticsearch: EsConfig,
    #[serde(default)]
    pub bulk: BulkConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub file_sink: Option<FileSinkConfig>,
    /// The PostgreSQL server of `sink = "postgres"` routes.
    #[serde(default)]
    pub postgres: Option<SqlConfig>,
    /// The MariaDB/MySQL server of `sink = "mariadb"` routes.
    #[serde(default)]
    pub mariadb: Option<SqlConfig>,
    /// The Redis server of `sink = "redis"` routes.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Per-topic sink choice; topics not routed go to Elasticsearch.
    #[serde(default)]
    pub route: Vec<Route>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
}

/// Where dead letters go (issue #13 item 8). A dead letter stands in for a
/// document Elasticsearch refused for good; by default it is written to
/// `<index><elasticsearch.dead_letter_suffix>`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// A Kafka topic for dead letters (`""`, the default: none). With
    /// `mode = "index_then_kafka"` it takes the dead letters the dead-letter
    /// index refuses (else their partition stops); with `"kafka"` every
    /// dead letter goes there instead of the index.
    #[serde(default)]
    pub kafka_topic: String,
    #[serde(default)]
    pub mode: DeadLetterMode,
}

/// See [`DeadLetterConfig`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterMode {
    /// The dead-letter index; the Kafka topic (when set) when the index
    /// refuses the dead letter.
    #[default]
    IndexThenKafka,
    /// The Kafka topic only (needs `kafka_topic`).
    Kafka,
}

impl DeadLetterConfig {
    /// The topic dead letters go to when the index refused them, if any.
    pub fn topic(&self) -> Option<&str> {
        let t = self.kafka_topic.trim();
        (!t.is_empty()).then_some(t)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `/health` answers 503 naming a partition that has lag and has not
    /// advanced for this long, or a sink that has failed every write for
    /// this long. Default 120.
    #[serde(default = "default_stuck_after")]
    pub stuck_after_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stuck_after_secs: default_stuck_after(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff_ms: default_initial_backoff(),
            max_backoff_ms: default_max_backoff(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
}

/// An SQL server (`transfer::sql`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// `postgres://user:password@host:port/db` or
    /// `mysql://user:password@host:port/db`; TLS by the URL's parameters
    /// (`sslmode=verify-full&sslrootcert=…`, `ssl-mode=VERIFY_IDENTITY&ssl-ca=…`).
    /// Never printed.
    pub url: common::Secret,
    /// Connections in the pool (default 4).
    #[serde(default = "default_sql_connections")]
    pub max_connections: u32,
}

fn default_sql_connections() -> u32 {
    4
}

/// A Redis server (`transfer::redis_sink`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://:password@host:6379/0` (`rediss://` for TLS, verified
    /// against the system's trusted CAs). Never printed.
    pub url: common::Secret,
    /// `stream` (default: XADD) or `list` (RPUSH).
    #[serde(default)]
    pub data_type: crate::redis_sink::DataType,
    /// A stream is trimmed to about this many entries (`MAXLEN ~`); 0
    /// (default): never trimmed.
    #[serde(default)]
    pub maxlen: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Elasticsearch,
    File,
    Postgres,
    MariaDb,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub topics: Vec<String>,
    /// Where the topics go: one sink …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkKind>,
    /// … or several (`sinks = ["elasticsearch", "mariadb"]`): a message
    /// counts as written, and its offset may be committed, once every one
    /// of them wrote it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkKind>,
    /// The table of an SQL sink (`postgres`, `mariadb`); created if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The key of a Redis sink (a stream or a list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Route {
    /// The route's sinks, `sink` or `sinks`.
    pub fn kinds(&self) -> Vec<SinkKind> {
        self.sink
            .into_iter()
            .chain(self.sinks.iter().copied())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics to subscribe to; entries starting with `^` are regexes.
    pub topics: Vec<String>,
    /// Static group membership (`group.instance.id`): a restarted instance
    /// gets its partitions back at once instead of after the session
    /// timeout. `"auto"` (default): `<hostname>-<group_id>-<metrics.listen>`
    /// — stable across restarts of one instance, unique on a host (two
    /// instances cannot listen on one address); `""`: off (dynamic
    /// membership); anything else is used as given (unique per instance).
    #[serde(default = "default_instance_id")]
    pub group_instance_id: String,
    /// Extra librdkafka consumer settings passed through (TLS/SASL…).
    #[serde(default)]
    pub consumer: common::secret::Settings,
}

impl TransferConfig {
    /// The index template's name (see [`EsConfig::template_name`]).
    pub fn template_name(&self) -> String {
        self.elasticsearch.template_name.clone().unwrap_or_else(|| {
            let g: String = self
                .kafka
                .group_id
                .to_ascii_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("logtransfer-{g}")
        })
    }

    /// The `group.instance.id` to use, if any (see
    /// [`KafkaConfig::group_instance_id`]). `auto` with a metrics port of 0
    /// (not stable) is off.
    pub fn instance_id(&self) -> Option<String> {
        match self.kafka.group_instance_id.as_str() {
            "" => None,
            "auto" => {
                if self.metrics.listen.ends_with(":0") {
                    return None;
                }
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "host".into());
                let id = format!("{host}-{}-{}", self.kafka.group_id, self.metrics.listen);
                Some(
                    id.chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect(),
                )
            }
            explicit => Some(explicit.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsConfig {
    pub url: String,
    /// `{topic}` plus strftime fields of the event's `@timestamp`.
    #[serde(default = "default_index_pattern")]
    pub index_pattern: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<common::Secret>,
    #[serde(default)]
    pub api_key: Option<common::Secret>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout; a timed-out bulk request is retried.
    #[serde(default = "default_es_timeout")]
    pub timeout_ms: u64,
    /// Refused documents go to `<index><suffix>`.
    #[serde(default = "default_dead_letter_suffix")]
    pub dead_letter_suffix: String,
    /// The index template's name (default `logtransfer-<kafka.group_id>`:
    /// one per deployment, so two never overwrite each other's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// Delete indices of ours (the template's patterns) whose day (in their
    /// name) is more than this many days ago, checked at start and hourly;
    /// 0 (default): keep everything. Needs `%Y`, `%m`, `%d` in the pattern.
    /// The local stack has no ILM; this is the ILM-free retention.
    #[serde(default)]
    pub retention_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkConfig {
    #[serde(default = "default_max_docs")]
    pub max_docs: usize,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// Batches in flight at once per sink (one per partition at most).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Consumption pauses while this many bytes wait to be written.
    #[serde(default = "default_buffered")]
    pub max_buffered_bytes: usize,
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            max_docs: default_max_docs(),
            max_bytes: default_max_bytes(),
            flush_interval_ms: default_flush_ms(),
            max_in_flight: default_in_flight(),
            max_buffered_bytes: default_buffered(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_stuck_after() -> u64 {
    120
}
fn default_group() -> String {
    "logtransfer".into()
}
fn default_instance_id() -> String {
    "auto".into()
}
fn default_index_pattern() -> String {
    "{topic}-%Y.%m.%d".into()
}
fn default_max_docs() -> usize {
    5000
}
fn default_max_bytes() -> usize {
    5 << 20
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9102".into()
}
fn default_es_timeout() -> u64 {
    30_000
}
fn default_dead_letter_suffix() -> String {
    "-deadletter".into()
}
fn default_in_flight() -> usize {
    4
}
fn default_buffered() -> usize {
    64 << 20
}
fn default_initial_backoff() -> u64 {
    100
}
fn default_max_backoff() -> u64 {
    30_000
}

impl TransferConfig {
    /// Loads and validates the config at `path`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the key at fault.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = common::load_config(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks values that TOML types cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key at fault.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if let Err(m) = common::check_brokers(&self.kafka.brokers) {
            return Err(bad("kafka.brokers", m));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(bad("kafka.group_id", "must not be empty".into()));
        }
        if self.kafka.topics.is_empty() {
            return Err(bad("kafka.topics", "must list at least one topic".into()));
        }
        for key in self.kafka.consumer.keys() {
            if PINNED_CONSUMER_SETTINGS.contains(&key.as_str()) {
                return Err(bad(
                    &format!("kafka.consumer.\"{key}\""),
                    "is fixed by logtransfer's delivery contract and cannot be overridden".into(),
                ));
            }
        }
        crate::es::node_urls(&self.elasticsearch.url).map_err(|e| bad("elasticsearch.url", e))?;
        let pattern = crate::doc::IndexPattern::new(&self.elasticsearch.index_pattern)
            .map_err(|e| bad("elasticsearch.index_pattern", e))?;
        if self.elasticsearch.retention_days > 0 && !pattern.is_daily() {
            return Err(bad(
                "elasticsearch.retention_days",
                format!(
                    "needs daily indices: `{}` must have %Y, %m and %d after {{topic}}",
                    self.elasticsearch.index_pattern
                ),
            ));
        }
        if self.elasticsearch.dead_letter_suffix.is_empty() {
            return Err(bad(
                "elasticsearch.dead_letter_suffix",
                "must not be empty (dead letters would mix with documents)".into(),
            ));
        }
        // Explicit topics that go to Elasticsearch must make index names it
        // takes, dead-letter indices included: otherwise even their dead
        // letters would be refused. (Regex topics are checked as they come:
        // such a partition stops, named on /health.)
        for (i, topic) in self.kafka.topics.iter().enumerate() {
            let not_indexed = self
                .route
                .iter()
                .any(|r| !r.kinds().contains(&SinkKind::Elasticsearch) && r.topics.contains(topic));
            if topic.starts_with('^') || not_indexed {
                continue;
            }
            if let Err(e) = pattern.check_topic(topic, &self.elasticsearch.dead_letter_suffix) {
                return Err(bad(
                    &format!("kafka.topics[{i}]"),
                    format!("the topic `{topic}` {e}"),
                ));
            }
        }
        if let Some(t) = self.dead_letter.topic() {
            if !common::valid_topic(t) {
                return Err(bad(
                    "dead_letter.kafka_topic",
                    format!("`{t}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
                ));
            }
            if self.kafka.topics.iter().any(|c| c == t) {
                return Err(bad(
                    "dead_letter.kafka_topic",
                    format!("`{t}` is also consumed (kafka.topics): dead letters would loop"),
                ));
            }
        } else if self.dead_letter.mode == DeadLetterMode::Kafka {
            return Err(bad(
                "dead_letter.mode",
                "is \"kafka\" but dead_letter.kafka_topic is not set".into(),
            ));
        }
        if self.elasticsearch.password.is_some() && self.elasticsearch.username.is_none() {
            return Err(bad(
                "elasticsearch.password",
                "is set without elasticsearch.username".into(),
            ));
        }
        if self.bulk.max_docs == 0 {
            return Err(bad("bulk.max_docs", "must be at least 1".into()));
        }
        if self.bulk.max_bytes < 1024 {
            return Err(bad("bulk.max_bytes", "must be at least 1024".into()));
        }
        if self.bulk.max_in_flight == 0 {
            return Err(bad("bulk.max_in_flight", "must be at least 1".into()));
        }
        if self.bulk.max_buffered_bytes < self.bulk.max_bytes {
            return Err(bad(
                "bulk.max_buffered_bytes",
                "must be at least bulk.max_bytes".into(),
            ));
        }
        if self.retry.initial_backoff_ms == 0
            || self.retry.max_backoff_ms < self.retry.initial_backoff_ms
        {
            return Err(bad(
                "retry.max_backoff_ms",
                "must be at least retry.initial_backoff_ms, which must be positive".into(),
            ));
        }
        for (i, r) in self.route.iter().enumerate() {
            let at = |k: &str| format!("route[{i}].{k}");
            let kinds = r.kinds();
            if r.sink.is_some() && !r.sinks.is_empty() {
                return Err(bad(&at("sinks"), "give `sink` or `sinks`, not both".into()));
            }
            if kinds.is_empty() {
                return Err(bad(&at("sink"), "missing: name a sink (or `sinks`)".into()));
            }
            if kinds
                .iter()
                .enumerate()
                .any(|(n, k)| kinds[..n].contains(k))
            {
                return Err(bad(&at("sinks"), "names a sink twice".into()));
            }
            let key = if r.sink.is_some() { "sink" } else { "sinks" };
            if r.topics.is_empty() {
                return Err(bad(&at("topics"), "must list a topic".into()));
            }
            for k in &kinds {
                let (name, configured) = match k {
                    SinkKind::Elasticsearch => continue,
                    SinkKind::File => ("file_sink", self.file_sink.is_some()),
                    SinkKind::Postgres => ("postgres", self.postgres.is_some()),
                    SinkKind::MariaDb => ("mariadb", self.mariadb.is_some()),
                    SinkKind::Redis => ("redis", self.redis.is_some()),
                };
                if !configured {
                    let what = if *k == SinkKind::File { "dir" } else { "url" };
                    return Err(bad(
                        &at(key),
                        format!("names {k:?} but [{name}] has no {what}").to_lowercase(),
                    ));
                }
            }
            let sql = kinds
                .iter()
                .any(|k| matches!(k, SinkKind::Postgres | SinkKind::MariaDb));
            match (sql, &r.table) {
                (true, None) => return Err(bad(&at("table"), "an SQL sink needs a table".into())),
                (true, Some(t)) if !crate::sql::valid_table(t) => {
                    return Err(bad(
                        &at("table"),
                        format!("`{t}` is not a table name ([A-Za-z_][A-Za-z0-9_]*, at most 48)"),
                    ))
                }
                (false, Some(_)) => {
                    return Err(bad(
                        &at("table"),
                        "only an SQL sink (postgres, mariadb) has a table".into(),
                    ))
                }
                _ => {}
            }
            match (kinds.contains(&SinkKind::Redis), &r.key) {
                (true, None) => return Err(bad(&at("key"), "a Redis sink needs a key".into())),
                (true, Some(k)) if k.is_empty() => {
                    return Err(bad(&at("key"), "must not be empty".into()))
                }
                (false, Some(_)) => {
                    return Err(bad(&at("key"), "only a Redis sink has a key".into()))
                }
                _ => {}
            }
        }
        if self.health.stuck_after_secs == 0 {
            return Err(bad("health.stuck_after_secs", "must be at least 1".into()));
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics.listen",
                format!("`{}` is not an ip:port address", self.metrics.listen),
            ));
        }
        Ok(())
    }

    /// The effective config as TOML, with secrets replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        // Passwords and keys are `Secret`s (shown as ***); consumer settings
        // are shown only for keys known to hold no secret; URL credentials
        // are masked.
        let mut shown = self.clone();
        shown.kafka.brokers = common::secret::redact_url(&shown.kafka.brokers);
        shown.kafka.consumer = shown.kafka.consumer.redacted();
        shown.elasticsearch.url = common::secret::redact_url(&shown.elasticsearch.url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["web_log"]
[elasticsearch]
url = "http://127.0.0.1:9200"
"#;

    fn parse(text: &str) -> Result<TransferConfig, ConfigError> {
        let path = Path::new("transfer.toml");
        let cfg: TransferConfig = common::config::parse_config(path, text, |_| None)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.kafka.group_id, "logtransfer");
        assert_eq!(cfg.elasticsearch.index_pattern, "{topic}-%Y.%m.%d");
        assert_eq!(cfg.bulk.max_docs, 5000);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}[bulk]\nmax_doc = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_doc"), "{err}");
    }

    #[test]
    fn auto_commit_cannot_be_turned_on() {
        let err = parse(&format!(
            "{MINIMAL}[kafka.consumer]\n\"enable.auto.commit\" = \"true\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn bad_url_is_named() {
        let err = parse(&MINIMAL.replace("http://127.0.0.1:9200", "127.0.0.1:9200"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("elasticsearch.url"), "{err}");
    }

    /// Issue #18: the nodes of a cluster, comma-separated; each checked.
    #[test]
    fn elasticsearch_url_may_list_a_clusters_nodes() {
        let two = "http://10.77.0.31:9200, http://10.77.0.32:9200";
        assert!(parse(&MINIMAL.replace("http://127.0.0.1:9200", two)).is_ok());
        assert_eq!(crate::es::node_urls(two).unwrap().len(), 2);
        for (bad_list, named) in [
            ("http://a:9200,,http://b:9200", "empty URL"),
            ("http://a:9200,b:9200", "`b:9200`"),
            ("http://u:secret@a:9200,ftp://u:secret@b", "must start with"),
        ] {
            let err = parse(&MINIMAL.replace("http://127.0.0.1:9200", bad_list))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("elasticsearch.url") && err.contains(named),
                "{err}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn sql_routes_need_their_server_and_a_table() {
        let route = |sink: &str, table: &str| {
            format!("[[route]]\ntopics = [\"web_log\"]\nsink = \"{sink}\"\n{table}")
        };
        let pg = "[postgres]\nurl = \"postgres://u:p@127.0.0.1:5432/logpipe\"\n";
        for (text, key) in [
            (route("postgres", "table = \"t\"\n"), "route[0].sink"),
            (format!("{pg}{}", route("postgres", "")), "route[0].table"),
            (
                format!("{pg}{}", route("postgres", "table = \"a;b\"\n")),
                "route[0].table",
            ),
            (route("elasticsearch", "table = \"t\"\n"), "route[0].table"),
            (route("mariadb", "table = \"t\"\n"), "route[0].sink"),
        ] {
            let err = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let rd = "[redis]\nurl = \"redis://:pw@127.0.0.1:6379/\"\n";
        for (text, key) in [
            (route("redis", "key = \"k\"\n"), "route[0].sink"),
            (format!("{rd}{}", route("redis", "")), "route[0].key"),
            (
                format!("{rd}{}", route("redis", "key = \"\"\n")),
                "route[0].key",
            ),
            (
                format!("{rd}{}", route("elasticsearch", "key = \"k\"\n")),
                "route[0].key",
            ),
        ] {
            let err = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let r = parse(&format!(
            "{MINIMAL}{rd}data_type = \"list\"\n{}",
            route("redis", "key = \"k\"\n")
        ))
        .unwrap();
        assert_eq!(
            r.redis.as_ref().map(|c| c.data_type),
            Some(crate::redis_sink::DataType::List)
        );
        assert!(!r.to_redacted_toml().contains(":pw@"));
        let ok = parse(&format!(
            "{MINIMAL}{pg}{}",
            route("postgres", "table = \"web\"\n")
        ))
        .unwrap();
        assert_eq!(ok.route[0].kinds(), vec![SinkKind::Postgres]);
        let my = "[mariadb]\nurl = \"mysql://u:p@127.0.0.1:3306/logpipe\"\n";
        let both = parse(&format!(
            "{MINIMAL}{my}[[route]]\ntopics = [\"web_log\"]\nsinks = [\"elasticsearch\", \"mariadb\"]\ntable = \"web\"\n"
        ))
        .unwrap();
        assert_eq!(
            both.route[0].kinds(),
            vec![SinkKind::Elasticsearch, SinkKind::MariaDb]
        );
        for (text, want) in [
            (
                "sink = \"mariadb\"\nsinks = [\"elasticsearch\"]\ntable = \"w\"\n",
                "not both",
            ),
            (
                "sinks = [\"mariadb\", \"mariadb\"]\ntable = \"w\"\n",
                "twice",
            ),
            ("sinks = []\n", "missing"),
        ] {
            let err = parse(&format!(
                "{MINIMAL}{my}[[route]]\ntopics = [\"web_log\"]\n{text}"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        assert!(
            !ok.to_redacted_toml().contains("u:p@"),
            "the URL's password is never shown: {}",
            ok.to_redacted_toml()
        );
    }

    #[test]
    fn file_route_needs_a_dir_and_bad_patterns_are_named() {
        let err = parse(&format!(
            "{MINIMAL}[[route]]\ntopics = [\"a\"]\nsink = \"file\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("route[0].sink"), "{err}");
        let err = parse(&format!("{MINIMAL}index_pattern = \"{{topic}}-%Q\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("elasticsearch.index_pattern"), "{err}");
        let err = parse(&format!(
            "{MINIMAL}[[route]]\ntopics = [\"a\"]\nsink = \"s3\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("route[0].sink") || err.contains("route"),
            "{err}"
        );
    }

    #[test]
    fn topics_that_make_illegal_indices_are_named() {
        // Issue #13 item 2: such a topic's dead letters were refused too and
        // its partition looped forever.
        let err = parse(&MINIMAL.replace("[\"web_log\"]", "[\"ok_log\", \"_hidden\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kafka.topics[1]") && err.contains("_hidden"),
            "{err}"
        );
        // 240 bytes: the index (251) fits, its dead-letter index (262) does not.
        let long = "a".repeat(240);
        let err = parse(&MINIMAL.replace("web_log", &long))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kafka.topics[0]") && err.contains("-deadletter") && err.contains("255"),
            "{err}"
        );
        // Regexes are checked as topics come; file-routed topics make no index.
        parse(&MINIMAL.replace("[\"web_log\"]", "[\"^_.*\"]")).unwrap();
        parse(&format!(
            "{}[file_sink]\ndir = \"/tmp/x\"\n[[route]]\ntopics = [\"_audit\"]\nsink = \"file\"\n",
            MINIMAL.replace("[\"web_log\"]", "[\"_audit\"]")
        ))
        .unwrap();
        let err = parse(&format!("{MINIMAL}[health]\nstuck_after_secs = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.stuck_after_secs"), "{err}");
    }

    #[test]
    fn dead_letter_topic_settings_are_checked() {
        let cfg = parse(&format!("{MINIMAL}[dead_letter]\nkafka_topic = \"dlq\"\n")).unwrap();
        assert_eq!(cfg.dead_letter.topic(), Some("dlq"));
        assert_eq!(cfg.dead_letter.mode, DeadLetterMode::IndexThenKafka);
        for (text, key) in [
            ("kafka_topic = \"a/b\"", "dead_letter.kafka_topic"),
            ("kafka_topic = \"web_log\"", "dead_letter.kafka_topic"),
            ("mode = \"kafka\"", "dead_letter.mode"),
        ] {
            let err = parse(&format!("{MINIMAL}[dead_letter]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let cfg = parse(&format!(
            "{MINIMAL}[dead_letter]\nkafka_topic = \"dlq\"\nmode = \"kafka\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.dead_letter.mode, DeadLetterMode::Kafka);
    }

    #[test]
    fn redacted_output_hides_secrets() {
        let cfg = parse(&format!("{MINIMAL}api_key = \"sekrit\"\n")).unwrap();
        assert!(!cfg.to_redacted_toml().contains("sekrit"));
    }

    /// Issue #14 item 4: every secret-carrying place is masked in the
    /// printed config and in `Debug`.
    #[test]
    fn no_planted_secret_is_printed() {
        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:9200\"",
            "url = \"http://elastic:PLANTED1@127.0.0.1:9200\"\nusername = \"elastic\"\npassword = \"PLANTED2\"\napi_key = \"PLANTED3\"",
        ) + "[kafka.consumer]\n\"sasl.password\" = \"PLANTED4\"\n\"sasl.oauthbearer.config\" = \"k=PLANTED5\"\n\"security.protocol\" = \"SASL_SSL\"\n";
        let cfg = parse(&text).unwrap();
        for shown in [cfg.to_redacted_toml(), format!("{cfg:?}")] {
            assert!(shown.contains("SASL_SSL"), "{shown}");
            for p in ["PLANTED2", "PLANTED3", "PLANTED4", "PLANTED5"] {
                assert!(!shown.contains(p), "{p}: {shown}");
            }
        }
        assert!(!cfg.to_redacted_toml().contains("PLANTED1"));
    }
}
