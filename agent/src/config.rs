//! The agent's local config file (TOML).
//!
//! Which files go to which topic normally comes from etcd
//! (`<etcd.prefix>/collect/<host_id>`); `[[collect]]` entries here are static
//! additions. Unknown keys are errors that name the key.

use common::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// librdkafka producer settings that the delivery contract depends on; a
/// config that overrides them is refused.
pub const PINNED_PRODUCER_SETTINGS: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "bootstrap.servers",
    "metadata.broker.list",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `auto` = the local address used to reach the first etcd endpoint plus
    /// the hostname; anything else is used as given.
    #[serde(default = "default_host_id")]
    pub host_id: String,
    /// Holds the WAL (`wal/`) and the checkpoint store (`checkpoints/`).
    pub data_dir: PathBuf,
    /// Files outside these directories are never collected, whatever etcd says.
    #[serde(default = "default_allowed_roots")]
    pub allowed_roots: Vec<PathBuf>,
    pub kafka: KafkaConfig,
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub wal: WalConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Static collect entries, merged with the ones from etcd.
    #[serde(default)]
    pub collect: Vec<CollectEntry>,
    #[serde(default, skip_serializing_if = "HostMetricsConfig::is_off")]
    pub host_metrics: HostMetricsConfig,
}

/// Shipping the host's metrics as events (`crate::host_events`); off by
/// default (they are on `/metrics` either way).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostMetricsConfig {
    /// The topic the events go to; `""` (default): not shipped.
    #[serde(default)]
    pub topic: String,
    /// Seconds between two samples (default 60, at least 1).
    #[serde(default = "default_host_metrics_interval")]
    pub interval_secs: u64,
}

fn default_host_metrics_interval() -> u64 {
    60
}

impl HostMetricsConfig {
    fn is_off(&self) -> bool {
        self.topic.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// `lz4` (default), `zstd`, `snappy`, `gzip` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Most bytes in one produce batch (librdkafka `batch.size`).
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    /// The largest message (librdkafka `message.max.bytes`; the broker's
    /// `message.max.bytes` must allow it). Larger events get their message
    /// cut and the flag `truncated`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Where messages Kafka refuses for good go (too large for their topic,
    /// a partition or topic that does not exist): the original event with
    /// headers naming its topic and the error. `""`: no dead-letter topic —
    /// such messages are retried forever and the WAL cannot be acknowledged
    /// past them. Either way `/health` reports degraded naming the topic.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// A message refused because its topic or partition is missing or not
    /// writable counts as refused for good once it kept failing this long
    /// (metadata can lag right after a topic is made).
    #[serde(default = "default_dead_letter_after_secs")]
    pub dead_letter_after_secs: u64,
    /// After a crash, the read-back of what Kafka already has gives up after
    /// this long (no READ permission, a topic too busy to scan): those
    /// records are then sent without the check (possible duplicates,
    /// counted in `logagent_lines_unchecked_total`).
    #[serde(default = "default_readback_timeout_secs")]
    pub readback_timeout_secs: u64,
    /// Extra librdkafka producer settings passed through as they are
    /// (TLS: `security.protocol`, `ssl.ca.location`…; SASL: `sasl.mechanism`…).
    #[serde(default)]
    pub producer: common::secret::Settings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    /// Never printed (`common::Secret`).
    #[serde(default)]
    pub password: Option<common::Secret>,
    /// The CA that signed etcd's certificate (`https://` endpoints).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for an etcd that requires
    /// one (`--client-cert-auth`). Both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Send `username`/`password` over `http://` endpoints anyway (they
    /// cross the network in clear text). Default false: refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext_credentials: bool,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    #[serde(default = "default_wal_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// `group` (default), `always` or `none`.
    #[serde(default = "default_sync")]
    pub sync: String,
    #[serde(default = "default_group_commit_ms")]
    pub group_commit_ms: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            max_bytes: default_wal_max_bytes(),
            segment_bytes: default_segment_bytes(),
            sync: default_sync(),
            group_commit_ms: default_group_commit_ms(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The checkpoint of a file that no harvester has seen for this long
    /// (deleted, rotated away and read to its end, its entry removed) and
    /// whose lines Kafka acknowledged is forgotten; if the file comes back
    /// later it is read from 0. Default 7 days, at least 60.
    #[serde(default = "default_gc_after_secs")]
    pub gc_after_secs: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            gc_after_secs: default_gc_after_secs(),
        }
    }
}

fn default_gc_after_secs() -> u64 {
    checkpoint::DEFAULT_RETENTION.as_secs()
}

/// Static collect entries use the same schema as the ones in etcd.
pub use crate::collect::CollectEntry;

fn default_compression() -> String {
    "lz4".into()
}
fn default_linger_ms() -> u64 {
    5
}
fn default_batch_bytes() -> u64 {
    1_000_000
}
fn default_max_message_bytes() -> usize {
    1_000_000
}
fn default_dead_letter_topic() -> String {
    "logagent_dead_letters".into()
}
fn default_dead_letter_after_secs() -> u64 {
    60
}
fn default_readback_timeout_secs() -> u64 {
    120
}
fn default_host_id() -> String {
    "auto".into()
}
fn default_allowed_roots() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/log")]
}
fn default_prefix() -> String {
    "/logagent".into()
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9101".into()
}
fn default_wal_max_bytes() -> u64 {
    1 << 30
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_sync() -> String {
    "group".into()
}
fn default_group_commit_ms() -> u64 {
    10
}

pub use common::valid_topic;

impl AgentConfig {
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
        if self.host_id.trim().is_empty() {
            return Err(bad("host_id", "must not be empty (use \"auto\")".into()));
        }
        if let Err(m) = common::check_brokers(&self.kafka.brokers) {
            return Err(bad("kafka.brokers", m));
        }
        if !matches!(
            self.kafka.compression.as_str(),
            "lz4" | "zstd" | "snappy" | "gzip" | "none"
        ) {
            return Err(bad(
                "kafka.compression",
                format!(
                    "`{}`: expected lz4, zstd, snappy, gzip or none",
                    self.kafka.compression
                ),
            ));
        }
        if !(4096..=100_000_000).contains(&self.kafka.max_message_bytes) {
            return Err(bad(
                "kafka.max_message_bytes",
                "must be between 4096 and 100000000".into(),
            ));
        }
        if !self.kafka.dead_letter_topic.is_empty() && !valid_topic(&self.kafka.dead_letter_topic) {
            return Err(bad(
                "kafka.dead_letter_topic",
                format!(
                    "`{}` is not a valid Kafka topic name (or \"\" for none)",
                    self.kafka.dead_letter_topic
                ),
            ));
        }
        if self.kafka.readback_timeout_secs == 0 {
            return Err(bad(
                "kafka.readback_timeout_secs",
                "must be at least 1".into(),
            ));
        }
        for key in self.kafka.producer.keys() {
            if PINNED_PRODUCER_SETTINGS.contains(&key.as_str()) {
                return Err(bad(
                    &format!("kafka.producer.\"{key}\""),
                    "is fixed by logagent's delivery contract and cannot be overridden".into(),
                ));
            }
        }
        if self.etcd.endpoints.is_empty() {
            return Err(bad(
                "etcd.endpoints",
                "must list at least one endpoint".into(),
            ));
        }
        for (i, e) in self.etcd.endpoints.iter().enumerate() {
            if let Err(m) = common::check_endpoint_url(e) {
                return Err(bad(&format!("etcd.endpoints[{i}]"), m));
            }
            let creds = self.etcd.username.is_some() || self.etcd.password.is_some();
            if creds && e.starts_with("http://") && !self.etcd.allow_plaintext_credentials {
                return Err(bad(
                    &format!("etcd.endpoints[{i}]"),
                    format!(
                        "`{}` is plain http: etcd.username/password would cross the network in clear text; use https:// (with etcd.ca_file) or set etcd.allow_plaintext_credentials = true",
                        common::secret::redact_url(e)
                    ),
                ));
            }
        }
        if !self.etcd.prefix.starts_with('/') {
            return Err(bad("etcd.prefix", "must start with '/'".into()));
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "metrics.listen",
                format!("`{}` is not an ip:port address", self.metrics.listen),
            ));
        }
        if !matches!(self.wal.sync.as_str(), "group" | "always" | "none") {
            return Err(bad(
                "wal.sync",
                format!("`{}`: expected group, always or none", self.wal.sync),
            ));
        }
        if self.wal.segment_bytes < 4096 {
            return Err(bad("wal.segment_bytes", "must be at least 4096".into()));
        }
        if !self.host_metrics.topic.is_empty() {
            if !crate::config::valid_topic(&self.host_metrics.topic) {
                return Err(bad(
                    "host_metrics.topic",
                    format!(
                        "`{}` is not a valid Kafka topic name",
                        self.host_metrics.topic
                    ),
                ));
            }
            if self.host_metrics.interval_secs == 0 {
                return Err(bad(
                    "host_metrics.interval_secs",
                    "must be at least 1".into(),
                ));
            }
        }
        if self.checkpoint.gc_after_secs < 60 {
            // Files are marked seen about every second; a retention near
            // that could collect a live file's entry during a slow walk.
            return Err(bad(
                "checkpoint.gc_after_secs",
                "must be at least 60".into(),
            ));
        }
        if self.wal.max_bytes < self.wal.segment_bytes {
            return Err(bad(
                "wal.max_bytes",
                "must be at least wal.segment_bytes".into(),
            ));
        }
        for (i, root) in self.allowed_roots.iter().enumerate() {
            if !root.is_absolute() {
                return Err(bad(
                    &format!("allowed_roots[{i}]"),
                    format!("`{}` is not an absolute path", root.display()),
                ));
            }
        }
        // Static entries are held to the same rules as etcd's, allowed_roots
        // and `..` included.
        for (i, entry) in self.collect.iter().enumerate() {
            if let Err(message) = crate::collect::validate(entry, &self.allowed_roots) {
                return Err(bad(&format!("collect[{i}]"), message));
            }
        }
        Ok(())
    }

    /// The effective config as TOML, with secrets replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        // Passwords are `Secret`s (shown as ***); pass-through settings are
        // shown only for keys known to hold no secret; URL credentials are
        // masked everywhere.
        let mut shown = self.clone();
        shown.kafka.brokers = common::secret::redact_url(&shown.kafka.brokers);
        shown.kafka.producer = shown.kafka.producer.redacted();
        for e in &mut shown.etcd.endpoints {
            *e = common::secret::redact_url(e);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
data_dir = "/tmp/logagent"
[kafka]
brokers = "127.0.0.1:9092"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        let path = Path::new("agent.toml");
        let cfg: AgentConfig = common::config::parse_config(path, text, |_| None)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.host_id, "auto");
        assert_eq!(cfg.etcd.prefix, "/logagent");
        assert_eq!(cfg.wal.max_bytes, 1 << 30);
        assert_eq!(cfg.allowed_roots, vec![PathBuf::from("/var/log")]);
        assert_eq!(cfg.metrics.listen, "127.0.0.1:9101");
        assert_eq!(cfg.checkpoint.gc_after_secs, 7 * 24 * 3600);
        let err = parse(&format!("{MINIMAL}[checkpoint]\ngc_after_secs = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("checkpoint.gc_after_secs"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}[wal]\nmax_byte = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_byte"), "{err}");
    }

    #[test]
    fn pinned_producer_setting_is_refused() {
        let err = parse(&format!("{MINIMAL}[kafka.producer]\nacks = \"1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.producer.\"acks\""), "{err}");
    }

    #[test]
    fn bad_topic_names_the_entry() {
        let err = parse(&format!(
            "{MINIMAL}[[collect]]\npath = \"/var/log/a.log\"\ntopic = \"no spaces\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("collect[0]") && err.contains("topic"), "{err}");
    }

    /// Issue #14 item 1: static entries obey allowed_roots and `..` too.
    #[test]
    fn static_entries_are_bound_by_allowed_roots() {
        for path in [
            "/etc/passwd",
            "/var/log/../../etc/passwd",
            "/var/logs-not/a.log",
        ] {
            let err = parse(&format!(
                "{MINIMAL}[[collect]]\npath = \"{path}\"\ntopic = \"t\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("collect[0]") && err.contains("allowed_roots"),
                "{path}: {err}"
            );
        }
        let ok = parse(&format!(
            "{MINIMAL}[[collect]]\npath = \"/var/log/containers/*.log\"\ntopic = \"t\"\nfollow_symlinks = true\n"
        ))
        .unwrap();
        assert!(ok.collect[0].follow_symlinks);
    }

    /// Issue #14 item 4.
    #[test]
    fn etcd_credentials_over_plain_http_are_refused_unless_allowed() {
        let creds = format!("{MINIMAL}username = \"agent\"\npassword = \"pw\"\n");
        let err = parse(&creds).unwrap_err().to_string();
        assert!(
            err.contains("etcd.endpoints[0]") && err.contains("allow_plaintext_credentials"),
            "{err}"
        );
        assert!(!err.contains("pw\""), "{err}");
        parse(&format!("{creds}allow_plaintext_credentials = true\n")).unwrap();
        parse(&creds.replace("http://", "https://")).unwrap();
    }

    /// Issue #14 item 4: every secret-carrying place is masked in the
    /// printed config and in `Debug`.
    #[test]
    fn no_planted_secret_is_printed() {
        let text = format!(
            "{}username = \"agent\"\npassword = \"PLANTED1\"\n[kafka.producer]\n\"sasl.password\" = \"PLANTED2\"\n\"ssl.key.pem\" = \"PLANTED3\"\n\"sasl.oauthbearer.config\" = \"x=PLANTED4\"\n\"security.protocol\" = \"SASL_SSL\"\n",
            MINIMAL.replace("http://", "https://")
        );
        let cfg = parse(&text).unwrap();
        for shown in [cfg.to_redacted_toml(), format!("{cfg:?}")] {
            assert!(!shown.contains("PLANTED1"), "{shown}");
            assert!(shown.contains("SASL_SSL"), "{shown}");
            for p in ["PLANTED2", "PLANTED3", "PLANTED4"] {
                assert!(!shown.contains(p), "{shown}");
            }
        }
    }

    #[test]
    fn redacted_output_hides_password_and_reparses() {
        let cfg = parse(&format!(
            "{MINIMAL}password = \"hunter2\"\nallow_plaintext_credentials = true\n"
        ))
        .unwrap();
        let shown = cfg.to_redacted_toml();
        assert!(!shown.contains("hunter2"));
        let again: AgentConfig = toml::from_str(&shown).unwrap();
        assert_eq!(
            again.etcd.password.as_ref().map(|p| p.expose().to_string()),
            Some("***".into())
        );
    }

    /// Issue #12 item 10: `--check-config` used to accept these.
    #[test]
    fn unusable_broker_and_etcd_addresses_are_refused() {
        let err = parse(&MINIMAL.replace("127.0.0.1:9092", "::not a broker::"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.brokers"), "{err}");
        let err = parse(&MINIMAL.replace("http://127.0.0.1:2379", "ftp://127.0.0.1:2379"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("etcd.endpoints[0]") && err.contains("ftp"),
            "{err}"
        );
    }

    #[test]
    fn dead_letter_topic_must_be_a_topic_or_empty() {
        let cfg = parse(&MINIMAL.replace("[etcd]", "dead_letter_topic = \"\"\n[etcd]")).unwrap();
        assert!(cfg.kafka.dead_letter_topic.is_empty());
        let err = parse(&MINIMAL.replace("[etcd]", "dead_letter_topic = \"a b\"\n[etcd]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.dead_letter_topic"), "{err}");
    }

    #[test]
    fn topic_names() {
        assert!(valid_topic("web_log"));
        assert!(valid_topic("a.b-c"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a/b"));
        assert!(!valid_topic(&"x".repeat(250)));
    }
}
